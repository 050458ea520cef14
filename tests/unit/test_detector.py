"""The detector as scenarios: a host's observations tick by tick, with explicit times.

Settings throughout (unless a test says otherwise): 3 misses spanning 10 s confirm a host
down; a down host must answer for 30 s to be back. Ticks are 5 s apart, so the third miss
(at +10 s) meets both thresholds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenhad.detector import (
    Detector,
    DetectorSettings,
    HostState,
    Observation,
    Verdict,
    VerdictKind,
)

SUSPECT, CLEARED, DOWN, BACK = (
    VerdictKind.SUSPECT, VerdictKind.CLEARED, VerdictKind.DOWN, VerdictKind.BACK
)

UP_OBS = Observation(xapi_live=True, answered=True, enabled=True)
SILENT = Observation(xapi_live=True, answered=False, enabled=True)  # dead, XAPI not caught up
DEAD = Observation(xapi_live=False, answered=False, enabled=True)
NOT_LIVE = Observation(xapi_live=False, answered=True, enabled=True)
SILENT_DISABLED = Observation(xapi_live=True, answered=False, enabled=False)
UP_DISABLED = Observation(xapi_live=True, answered=True, enabled=False)

H = "host-a"
DEFAULT = DetectorSettings(confirm_misses=3, confirm_seconds=10.0, recover_hold_seconds=30.0)


@dataclass(frozen=True)
class Tick:
    at: float
    obs: Observation
    quorate: bool = True


def run(ticks: Iterable[Tick], s: DetectorSettings = DEFAULT) -> list[tuple[float, Verdict]]:
    d = Detector(s)
    out: list[tuple[float, Verdict]] = []
    for t in ticks:
        out.extend((t.at, v) for v in d.observe(t.at, {H: t.obs}, quorate=t.quorate))
    return out


def kinds(events: Sequence[tuple[float, Verdict]]) -> list[tuple[float, VerdictKind]]:
    return [(at, v.kind) for at, v in events]


def every(
    step: float, start: float, obs: Sequence[Observation], quorate: bool = True
) -> list[Tick]:
    return [Tick(start + i * step, o, quorate) for i, o in enumerate(obs)]


# -- table-driven scenarios -------------------------------------------------------------

SCENARIOS = {
    "healthy host: nothing to say": (
        every(5, 0, [UP_OBS] * 10),
        [],
    ),
    "dead host confirmed at third miss, 10 s after the first": (
        every(5, 0, [UP_OBS, SILENT, SILENT, SILENT, SILENT]),
        [(5, SUSPECT), (15, DOWN)],
    ),
    "XAPI says not live though xapi answers: that is a miss too": (
        every(5, 0, [NOT_LIVE] * 3),
        [(0, SUSPECT), (10, DOWN)],
    ),
    "fast ticks: 3 misses in 2 s wait for confirm_seconds": (
        every(1, 0, [SILENT] * 12),
        [(0, SUSPECT), (10, DOWN)],
    ),
    "slow ticks: 10 s passed but only 2 misses, wait for the third": (
        every(20, 0, [SILENT] * 4),
        [(0, SUSPECT), (40, DOWN)],
    ),
    "blip cleared before confirmation": (
        every(5, 0, [SILENT, SILENT, UP_OBS, UP_OBS]),
        [(0, SUSPECT), (10, CLEARED)],
    ),
    "flapping host (2 misses, 1 answer, forever) never confirms": (
        every(5, 0, [SILENT, SILENT, UP_OBS] * 20),
        [e for i in range(20) for e in ((15 * i, SUSPECT), (15 * i + 10, CLEARED))],
    ),
    "down host that stays down: one DOWN only": (
        every(5, 0, [DEAD] * 50),
        [(0, SUSPECT), (10, DOWN)],
    ),
    "down host back after answering 30 s": (
        every(5, 0, [DEAD] * 3 + [UP_OBS] * 8),
        [(0, SUSPECT), (10, DOWN), (45, BACK)],
    ),
    "returning host that misses once restarts its hold": (
        every(5, 0, [DEAD] * 3 + [UP_OBS] * 5 + [SILENT] + [UP_OBS] * 8),
        [(0, SUSPECT), (10, DOWN), (75, BACK)],
    ),
    "returning host answering while XAPI still says not live is not back": (
        every(5, 0, [DEAD] * 3 + [NOT_LIVE] * 10 + [UP_OBS] * 7),
        [(0, SUSPECT), (10, DOWN), (95, BACK)],
    ),
    "after BACK, a new death is a new episode with its own DOWN": (
        every(5, 0, [DEAD] * 3 + [UP_OBS] * 7 + [DEAD] * 3),
        [(0, SUSPECT), (10, DOWN), (45, BACK), (50, SUSPECT), (60, DOWN)],
    ),
    # Misses seen without quorum say nothing of the host (issue 18: a master cut off by a
    # one-way cut counted 14 misses of a healthy host, and fenced it 5 ms after the heal):
    # quorum back, the run starts over and needs its full thresholds.
    "not quorate: held, then the run starts over at the first quorate miss": (
        every(5, 0, [SILENT] * 5, quorate=False) + every(5, 25, [SILENT] * 3),
        [(0, SUSPECT), (10, SUSPECT), (25, SUSPECT), (35, DOWN)],
    ),
    "not quorate, and the host answers before quorum returns: cleared": (
        every(5, 0, [SILENT] * 5, quorate=False) + every(5, 25, [UP_OBS]),
        [(0, SUSPECT), (10, SUSPECT), (25, CLEARED)],
    ),
    "disabled host (maintenance reboot) never confirms": (
        every(5, 0, [SILENT_DISABLED] * 30 + [UP_DISABLED]),
        [(0, SUSPECT), (10, SUSPECT), (150, CLEARED)],
    ),
    "re-enabled while still missing: the run restarts at re-enable": (
        every(5, 0, [SILENT_DISABLED] * 10) + every(5, 50, [SILENT] * 4),
        [(0, SUSPECT), (10, SUSPECT), (50, SUSPECT), (60, DOWN)],
    ),
}


@pytest.mark.parametrize("ticks,expected", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_scenario(ticks: list[Tick], expected: list[tuple[float, VerdictKind]]) -> None:
    assert kinds(run(ticks)) == expected


# -- what the verdicts carry --------------------------------------------------------------


def test_down_verdict_says_when_the_run_began_and_what_was_seen() -> None:
    events = run(every(5, 100, [UP_OBS, SILENT, SILENT, SILENT]))
    down = next(v for _, v in events if v.kind is DOWN)
    assert down.host == H
    assert down.since == 105
    assert down.misses == 3
    assert down.reason == "xapi not answering, XAPI says live"


def test_held_suspect_names_the_missing_quorum() -> None:
    events = run(every(5, 0, [SILENT] * 4, quorate=False))
    held = [v for _, v in events if v.kind is SUSPECT][-1]
    assert "no quorum" in held.reason


def test_held_suspect_is_said_once_per_cause_not_every_tick() -> None:
    events = run(every(5, 0, [SILENT] * 40, quorate=False))
    assert kinds(events) == [(0, SUSPECT), (10, SUSPECT)]


def test_disabled_host_reason_says_maintenance() -> None:
    events = run(every(5, 0, [SILENT_DISABLED] * 3))
    assert all("disabled" in v.reason for _, v in events)


def test_a_quorum_hold_that_becomes_a_maintenance_hold_is_said_again() -> None:
    ticks = every(5, 0, [SILENT] * 3, quorate=False) + every(5, 15, [SILENT_DISABLED] * 3)
    events = run(ticks)
    # Quorum back, the run starts over (what was seen without it does not count), and the
    # maintenance hold is said when the new run's thresholds are met.
    assert [v.reason.split("; ")[-1].split(":")[0] for _, v in events] == [
        "xapi not answering, XAPI says live", "held", "quorum regained", "held",
    ]
    assert "quorum" in events[1][1].reason and "disabled" in events[3][1].reason


def test_back_verdict_carries_the_episode() -> None:
    events = run(every(5, 0, [DEAD] * 3 + [UP_OBS] * 7))
    back = events[-1][1]
    assert back.kind is BACK
    assert back.since == 0
    assert back.misses == 3
    assert "30 s" in back.reason


# -- state and snapshot -------------------------------------------------------------------


def test_states_through_an_episode() -> None:
    d = Detector(DEFAULT)
    seen = []
    for i, obs in enumerate([UP_OBS, DEAD, DEAD, DEAD, UP_OBS, DEAD, UP_OBS] + [UP_OBS] * 6):
        d.observe(i * 5.0, {H: obs}, quorate=True)
        seen.append(d.state(H))
    U, S, D, R = HostState.UP, HostState.SUSPECT, HostState.DOWN, HostState.RETURNING
    assert seen == [U, S, S, D, R, D, R, R, R, R, R, R, U]


def test_snapshot_for_the_status_line() -> None:
    d = Detector(DEFAULT)
    d.observe(0, {"a": UP_OBS, "b": SILENT, "c": DEAD}, quorate=False)
    d.observe(5, {"a": UP_OBS, "b": SILENT, "c": DEAD}, quorate=False)
    d.observe(10, {"a": UP_OBS, "b": SILENT, "c": DEAD}, quorate=False)
    snap = d.snapshot()
    assert list(snap) == ["a", "b", "c"]
    assert snap["a"].state is HostState.UP and snap["a"].since is None
    assert snap["b"].state is HostState.SUSPECT
    assert (snap["b"].since, snap["b"].misses, snap["b"].held) == (0, 3, "no quorum")
    assert snap["c"].reason == "xapi not answering, XAPI says not live"


def test_unknown_host_is_up() -> None:
    assert Detector(DEFAULT).state("never-seen") is HostState.UP


def test_removed_host_is_forgotten() -> None:
    d = Detector(DEFAULT)
    for i in range(3):
        d.observe(i * 5.0, {"a": UP_OBS, "b": DEAD}, quorate=True)
    assert d.state("b") is HostState.DOWN
    d.observe(15, {"a": UP_OBS}, quorate=True)
    assert d.state("b") is HostState.UP
    assert list(d.snapshot()) == ["a"]


def test_verdicts_of_one_tick_come_sorted_by_host() -> None:
    d = Detector(DEFAULT)
    verdicts = d.observe(0, {"z": DEAD, "a": DEAD, "m": DEAD}, quorate=True)
    assert [v.host for v in verdicts] == ["a", "m", "z"]


# -- restart of the daemon --------------------------------------------------------------


def test_restored_down_host_gets_no_second_down_and_comes_back_normally() -> None:
    d = Detector(DEFAULT)
    d.restore_down(H, since=1.7e9)  # a wall-clock time from the journal: only informative
    verdicts = []
    for i in range(10):
        verdicts += d.observe(i * 5.0, {H: DEAD}, quorate=True)
    assert verdicts == []
    assert d.state(H) is HostState.DOWN
    for i in range(10, 17):
        verdicts += d.observe(i * 5.0, {H: UP_OBS}, quorate=True)
    assert [v.kind for v in verdicts] == [BACK]


def test_restored_down_host_absent_from_the_pool_is_forgotten() -> None:
    d = Detector(DEFAULT)
    d.restore_down(H, since=0)
    d.observe(0, {"other": UP_OBS}, quorate=True)
    assert d.state(H) is HostState.UP


# -- settings -------------------------------------------------------------------------


def test_one_miss_and_no_delay_confirms_at_once() -> None:
    s = DetectorSettings(confirm_misses=1, confirm_seconds=0, recover_hold_seconds=0)
    events = run(every(5, 0, [DEAD, DEAD, UP_OBS]), s)
    assert kinds(events) == [(0, SUSPECT), (0, DOWN), (10, BACK)]


def test_settings_replaced_by_a_reload_apply_from_the_next_tick() -> None:
    d = Detector(DEFAULT)
    d.observe(0, {H: DEAD}, quorate=True)
    d.settings = DetectorSettings(confirm_misses=2, confirm_seconds=1, recover_hold_seconds=1)
    assert [v.kind for v in d.observe(2, {H: DEAD}, quorate=True)] == [DOWN]


@pytest.mark.parametrize("kwargs,word", [
    ({"confirm_misses": 0}, "confirm_misses"),
    ({"confirm_seconds": -1.0}, "confirm_seconds"),
    ({"recover_hold_seconds": -1.0}, "recover_hold_seconds"),
])
def test_bad_settings_are_refused_with_one_line(kwargs: dict[str, float], word: str) -> None:
    with pytest.raises(ValueError, match=word) as info:
        DetectorSettings(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_time_going_backwards_is_refused() -> None:
    d = Detector(DEFAULT)
    d.observe(10, {H: UP_OBS}, quorate=True)
    with pytest.raises(ValueError, match="backwards"):
        d.observe(9, {H: UP_OBS}, quorate=True)


# -- properties -------------------------------------------------------------------------

observations = st.builds(Observation, st.booleans(), st.booleans(), st.booleans())
detector_settings = st.builds(
    DetectorSettings,
    confirm_misses=st.integers(1, 6),
    confirm_seconds=st.floats(0, 30, allow_nan=False),
    recover_hold_seconds=st.floats(0, 30, allow_nan=False),
)
tick_steps = st.lists(
    st.tuples(st.floats(0.1, 10, allow_nan=False), observations, st.booleans()),
    max_size=80,
)


@dataclass
class Trace:
    at: float
    obs: Observation
    quorate: bool
    verdicts: list[Verdict]


def simulate(s: DetectorSettings, steps: list[tuple[float, Observation, bool]]) -> list[Trace]:
    d = Detector(s)
    now = 0.0
    out: list[Trace] = []
    for dt, obs, quorate in steps:
        now += dt
        out.append(Trace(now, obs, quorate, d.observe(now, {H: obs}, quorate=quorate)))
    return out


@settings(max_examples=400, deadline=None)
@given(detector_settings, tick_steps)
def test_down_only_after_both_thresholds_and_only_when_quorate_and_enabled(
    s: DetectorSettings, steps: list[tuple[float, Observation, bool]]
) -> None:
    trace = simulate(s, steps)
    run_start: float | None = None  # the run, restarted by a re-enable while missing
    run_len = 0
    was_enabled = True
    for t in trace:
        if t.obs.missed:
            if run_start is None or (t.obs.enabled and not was_enabled):
                run_start, run_len = t.at, 0
            run_len += 1
        else:
            run_start, run_len = None, 0
        was_enabled = t.obs.enabled
        for v in t.verdicts:
            if v.kind is not DOWN:
                continue
            assert t.quorate and t.obs.enabled and t.obs.missed
            assert run_start is not None
            assert s.confirm_misses <= v.misses <= run_len
            assert v.since >= run_start
            assert t.at - v.since >= s.confirm_seconds


@settings(max_examples=400, deadline=None)
@given(detector_settings, tick_steps)
def test_never_two_downs_without_a_back_between(
    s: DetectorSettings, steps: list[tuple[float, Observation, bool]]
) -> None:
    down = False
    for t in simulate(s, steps):
        for v in t.verdicts:
            if v.kind is DOWN:
                assert not down, "second DOWN in one episode"
                down = True
            elif v.kind is BACK:
                assert down, "BACK without a DOWN"
                down = False
            else:
                assert not down, f"{v.kind} while down"


@settings(max_examples=400, deadline=None)
@given(detector_settings, tick_steps)
def test_back_only_after_answering_for_the_whole_hold(
    s: DetectorSettings, steps: list[tuple[float, Observation, bool]]
) -> None:
    answering_since: float | None = None
    for t in simulate(s, steps):
        if t.obs.missed:
            answering_since = None
        elif answering_since is None:
            answering_since = t.at
        for v in t.verdicts:
            if v.kind is BACK:
                assert answering_since is not None
                assert t.at - answering_since >= s.recover_hold_seconds


@settings(max_examples=300, deadline=None)
@given(
    detector_settings.filter(lambda s: s.confirm_misses >= 2),
    st.data(),
)
def test_host_answering_every_confirm_misses_minus_one_ticks_never_goes_down(
    s: DetectorSettings, data: st.DataObject
) -> None:
    d = Detector(s)
    now = 0.0
    misses_in_a_row = 0
    for _ in range(data.draw(st.integers(0, 100))):
        now += data.draw(st.floats(0.1, 30, allow_nan=False))
        quorate = data.draw(st.booleans())
        if misses_in_a_row == s.confirm_misses - 1:
            obs = Observation(True, True, data.draw(st.booleans()))
        else:
            obs = data.draw(observations)
        misses_in_a_row = misses_in_a_row + 1 if obs.missed else 0
        for v in d.observe(now, {H: obs}, quorate=quorate):
            assert v.kind is not DOWN
        assert d.state(H) in (HostState.UP, HostState.SUSPECT)


@settings(max_examples=200, deadline=None)
@given(detector_settings, st.lists(st.tuples(st.floats(0.1, 10, allow_nan=False),
                                              st.booleans()), max_size=60))
def test_disabled_host_is_never_confirmed(
    s: DetectorSettings, steps: list[tuple[float, bool]]
) -> None:
    d = Detector(s)
    now = 0.0
    for dt, quorate in steps:
        now += dt
        for v in d.observe(now, {H: SILENT_DISABLED}, quorate=quorate):
            assert v.kind is not DOWN


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from("abcdef"), observations), max_size=40))
def test_many_hosts_are_independent(ticks: list[dict[str, Observation]]) -> None:
    """Each host's verdicts are those it would get alone, as long as it stays in the pool."""
    together = Detector(DEFAULT)
    alone: dict[str, Detector] = {}
    for i, obs in enumerate(ticks):
        now = i * 4.0
        got = together.observe(now, obs, quorate=True)
        expected = []
        for host in sorted(obs):
            if host not in alone or host not in ticks[i - 1]:
                alone[host] = Detector(DEFAULT)
            expected += alone[host].observe(now, {host: obs[host]}, quorate=True)
        assert got == expected


def test_a_host_whose_daemon_beats_is_not_missing_whatever_xapi_says() -> None:
    # Issue 18: a master back from a cut, its database stale, saw a healthy host as "xapi
    # answering, XAPI says not live" and fenced it. A heard daemon outweighs XAPI's word.
    stale = Observation(xapi_live=False, answered=True, enabled=True, heard=True)
    assert run(every(5, 0, [stale] * 10)) == []


def test_a_rival_master_is_not_missing() -> None:
    rival = Observation(xapi_live=False, answered=True, enabled=True, rival_master=True)
    assert run(every(5, 0, [rival] * 10)) == []
    # A rival that does not answer is as silent as any host.
    gone = Observation(xapi_live=False, answered=False, enabled=True, rival_master=True)
    assert [k for _, k in kinds(run(every(5, 0, [gone] * 4)))][-1] is DOWN


def test_a_hung_xapi_with_a_beating_daemon_is_left_alone_and_said_once() -> None:
    hung = Observation(xapi_live=False, answered=False, enabled=True, heard=True)
    events = run(every(5, 0, [hung] * 200))  # 1,000 s: past xapi's dead interval
    assert [k for _, k in kinds(events)] == [VerdictKind.HUNG]
    assert "left alone" in events[0][1].reason


def test_a_hung_xapi_is_fenced_after_the_configured_time_if_the_operator_chose_it() -> None:
    hung = Observation(xapi_live=False, answered=False, enabled=True, heard=True)
    d = Detector(DetectorSettings(confirm_misses=3, confirm_seconds=10,
                                  recover_hold_seconds=30, hung_xapi_fence_after=60))
    verdicts = [(t, v.kind) for t in range(0, 200, 5)
                for v in d.observe(float(t), {"h": hung}, quorate=True)]
    assert verdicts == [(0, VerdictKind.HUNG), (60, SUSPECT), (70, DOWN)]
    assert d.would_miss("h", hung, 200.0)
    fresh = Detector(DetectorSettings())
    assert not fresh.would_miss("h", hung, 0.0)  # never fenced by default


# -- a daemon that beats slowly (virtual chaos seeds 7000027, 7000417, 1000138, 1000205) --


def test_a_host_proven_alive_after_its_misses_began_is_not_confirmed_until_silent() -> None:
    # Its xapi silent, its heartbeats too slow to count as heard, but each proof of life
    # (dated by echo on our clock) comes after the run began: the run counts from it, and
    # the host is confirmed only once no proof has come for confirm_seconds.
    ticks = [Tick(float(t), dataclasses.replace(SILENT, alive_at=t - 2.5 if t <= 40 else 37.5))
             for t in range(0, 62, 2)]
    events = run(ticks)
    assert [k for _, k in kinds(events)].count(SUSPECT) == 2  # the first miss, said once
    assert "proven alive after the misses began" in events[1][1].reason
    downs = [(at, v) for at, v in events if v.kind is DOWN]
    assert [at for at, _ in downs] == [48.0]  # 37.5 + 10 s silent, at the next tick
    assert downs[0][1].since == 37.5


def test_a_dead_hosts_last_proof_predates_its_misses_and_costs_no_time() -> None:
    # alive_at can only be dated earlier than the life it proves: a host that died at 1.0
    # has no proof after its first miss, so it is confirmed exactly as before.
    plain = run(Tick(float(t), SILENT) for t in range(2, 30, 2))
    proven = run(Tick(float(t), dataclasses.replace(SILENT, alive_at=1.0))
                 for t in range(2, 30, 2))
    assert kinds(proven) == kinds(plain)


def test_a_host_that_beats_slowly_is_held_not_confirmed_and_never_fenced() -> None:
    slow = dataclasses.replace(SILENT, beats_slowly=True)
    events = run([Tick(float(t), SILENT if t < 4 else slow) for t in range(0, 40, 2)])
    assert DOWN not in [k for _, k in kinds(events)]
    assert sum("its heartbeats slow" in v.reason for _, v in events) == 1  # said once
    d = Detector(DEFAULT)
    for t in range(0, 20, 2):
        d.observe(float(t), {H: SILENT}, quorate=True)
    assert d.state(H) is HostState.DOWN
    assert d.would_miss(H, SILENT, 20.0) and not d.would_miss(H, slow, 20.0)


def test_a_host_held_past_the_window_says_its_pace_in_the_hold() -> None:
    # peers/pace.py holds a host whose proofs keep coming late past the window; the
    # detector's hold says so, once, in the pace's own words (seeds 1000130, 3000239).
    why = "its daemon was proven alive 3.0 s ago, within its proofs of life's pace"
    paced = dataclasses.replace(SILENT, beats_slowly=True, beats_why=why)
    events = run([Tick(float(t), SILENT if t < 4 else paced) for t in range(0, 40, 2)])
    assert DOWN not in [k for _, k in kinds(events)]
    held = [v.reason for _, v in events if why in v.reason]
    assert len(held) == 1 and "never confirmed down" in held[0]
