"""The hold of a host beating slowly, adapted to its pace (peers/pace.py), as scenarios: a
host's proofs of life tick by tick, with explicit times, no sleeping.

Window 2 s and ticks 0.5 s apart, as in the chaos settings (confirm_seconds 2 s, 3 misses).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from xenhad.detector import Detector, DetectorSettings, Observation, VerdictKind
from xenhad.peers.pace import CAP_WINDOWS, FACTOR, MEMORY_WINDOWS, Pace, hold_within, judge

W = 2.0
H = "host4"
CHAOS = DetectorSettings(confirm_misses=3, confirm_seconds=2.0, recover_hold_seconds=3.0)
SILENT = Observation(xapi_live=True, answered=False, enabled=True)

# What host1 was shown of host4 in golden scenario seed-1000130-slow-beats-window-edge
# (tick, PeerTable.alive_at; None: heard lately): heartbeats delayed about a window each
# way, each proof arriving as the one before it aged past the window.
SEED_1000130: list[tuple[float, float | None]] = [
    (20.2, 18.21), (20.7, None), (21.2, 20.2), (21.7, 20.2), (22.2, 20.7), (22.7, 20.7),
    (23.2, 21.2), (23.7, 21.2), (24.2, 21.2), (24.7, 22.7),
]
# And host1 of host2 in seed-3000239-slow-beats-window-edge (a one-way cut, heartbeats
# delayed 5 to 8 s).
SEED_3000239: list[tuple[float, float | None]] = [
    (15.5, 14.0), (16.0, 15.0), (16.5, 15.0), (17.0, 16.0), (17.5, 16.0), (18.0, 16.0),
    (18.5, 17.0), (19.0, 17.0), (19.5, 18.0), (20.0, 18.5), (20.5, 19.0), (21.0, 19.0),
    (21.5, 19.0), (22.0, 20.5),
]


def holds(proofs: Sequence[tuple[float, float | None]], window: float = W) -> list[bool]:
    """Whether the host is held at each tick, its proofs noted as the daemon notes them."""
    pace = Pace()
    out = []
    for now, at in proofs:
        pace.note(H, now, at)
        out.append(at is None or pace.hold(H, now, at, window).held)
    return out


def test_the_hold_is_the_window_until_proofs_keep_coming_late() -> None:
    assert hold_within(W, []) == W
    assert hold_within(W, [2.9]) == W  # one late proof is not a pace
    assert hold_within(W, [0.6, 1.1, 1.3]) == W  # on time: the window, as at rest
    assert hold_within(W, [2.0, 2.5]) == FACTOR * 2.5
    assert hold_within(W, [2.0, 30.0]) == CAP_WINDOWS * W  # never past a few windows


def test_seed_1000130_host4_held_between_proofs_at_the_windows_edge() -> None:
    # At 24.2 its last proof (21.2) is 3.0 s old: past the window, where the healthy host
    # was confirmed down and fenced. Its proofs had come 2.0 and 2.5 s late: it is held.
    assert holds(SEED_1000130) == [True] * len(SEED_1000130)
    assert not judge(24.2, 21.2, W, []).held  # the window's hold alone lapsed there
    pace = Pace()
    for now, at in SEED_1000130[:-1]:
        pace.note(H, now, at)
    hold = pace.hold(H, 24.2, 21.2, W)
    assert hold.held and hold.within == FACTOR * 2.5
    assert "came up to 2.5 s late" in hold.reason


def test_seed_3000239_host2_held_through_proofs_up_to_three_seconds_late() -> None:
    assert holds(SEED_3000239) == [True] * len(SEED_3000239)
    assert not judge(21.5, 19.0, W, []).held


def test_at_rest_a_heard_host_is_never_sampled_and_a_dead_one_costs_no_time() -> None:
    # Heard every tick, then dead at 10.0: its last proof (9.6) never renews, so the hold
    # stays the window and lapses 2 s after it, as before.
    pace = Pace()
    for tick in range(20):
        pace.note(H, tick * 0.5, None)
    assert pace.paced() == []
    for now in (11.5, 12.0, 12.5):
        pace.note(H, now, 9.6)
    assert pace.hold(H, 11.5, 9.6, W).held
    assert not pace.hold(H, 12.0, 9.6, W).held
    assert pace.hold(H, 12.0, 9.6, W).within == W


def test_a_dead_hosts_last_word_arriving_late_does_not_stretch_its_hold() -> None:
    # A peer's word of it, dated before its death, reaches us after our own contact lapsed:
    # one late renewal, not a pace.
    pace = Pace()
    pace.note(H, 11.5, 9.6)
    pace.note(H, 12.0, 9.9)
    assert pace.lateness(H, 12.0, W) == [12.0 - 9.6]
    assert pace.hold(H, 12.0, 9.9, W).within == W
    assert not pace.hold(H, 12.0 + W + 0.1, 9.9, W).held


def test_a_host_heard_in_between_starts_afresh() -> None:
    # Heard at 21.0, its proof then unknown: the next proof is no renewal of the one before.
    pace = Pace()
    pace.note(H, 20.0, 17.0)
    pace.note(H, 21.0, None)
    pace.note(H, 22.0, 21.5)
    assert pace.lateness(H, 22.0, W) == []


def test_a_proof_dated_earlier_than_the_last_is_no_renewal() -> None:
    pace = Pace()
    for now, at in [(10.0, 8.0), (10.5, 7.5), (11.0, 8.5)]:
        pace.note(H, now, at)
    assert pace.lateness(H, 11.0, W) == [11.0 - 8.0]


def test_an_old_pace_is_forgotten_and_a_gone_host_with_it() -> None:
    pace = Pace()
    for now, at in SEED_3000239:
        pace.note(H, now, at)
    assert pace.hold(H, 22.0, 20.5, W).within > W
    later = 22.0 + MEMORY_WINDOWS * W + 1.0
    assert pace.hold(H, later, later - 2.5, W).within == W
    pace.note(H, 22.5, 21.0)
    pace.keep(["host5"])
    assert pace.paced() == [] and pace.lateness(H, 22.5, W) == []


@given(
    lateness=st.lists(st.floats(min_value=0.0, max_value=1e6), max_size=20),
    window=st.floats(min_value=0.1, max_value=3600.0),
)
def test_the_hold_is_never_shorter_than_the_window_nor_longer_than_the_cap(
    lateness: list[float], window: float
) -> None:
    assert window <= hold_within(window, lateness) <= CAP_WINDOWS * window


@given(
    gaps=st.lists(st.floats(min_value=0.01, max_value=20.0), min_size=1, max_size=30),
    delay=st.floats(min_value=0.0, max_value=20.0),
)
def test_a_dead_host_is_released_within_the_cap_whatever_its_pace(
    gaps: list[float], delay: float
) -> None:
    # Proofs dated at any pace until it dies at `died`, each arriving `delay` later, ticks
    # every 0.5 s: a proof is never dated after the life it proves, so past died + the cap
    # nothing holds it.
    dates, t = [], 0.0
    for gap in gaps:
        t += gap
        dates.append(t)
    died = dates[-1]
    pace = Pace()
    now, last = 0.0, None
    end = died + delay + CAP_WINDOWS * W + 1.0
    while now <= end:
        arrived = [d for d in dates if d + delay <= now]
        last = arrived[-1] if arrived else None
        pace.note(H, now, last)
        if now > died + CAP_WINDOWS * W:
            assert not pace.hold(H, now, last, W).held
        now += 0.5


def detect(proofs: Sequence[tuple[float, float | None]], paced: bool) -> list[VerdictKind]:
    """The detector's verdicts for a host whose xapi is silent and whose proofs are these,
    held as the daemon holds it: the window alone, or its pace as well."""
    d, pace, out = Detector(CHAOS), Pace(), []
    for now, at in proofs:
        pace.note(H, now, at)
        hold = pace.hold(H, now, at, W) if paced else judge(now, at, W, [])
        obs = dataclasses.replace(SILENT, heard=at is None, alive_at=at,
                                  beats_slowly=at is not None and hold.held,
                                  beats_why=hold.reason if hold.within > W else "")
        out += [v.kind for v in d.observe(now, {H: obs}, quorate=True)]
    return out


def test_the_detector_confirmed_seed_1000130s_healthy_host_and_holds_it_at_its_pace() -> None:
    assert VerdictKind.DOWN in detect(SEED_1000130, paced=False)
    assert VerdictKind.DOWN not in detect(SEED_1000130, paced=True)
    assert VerdictKind.DOWN in detect(SEED_3000239, paced=False)
    assert VerdictKind.DOWN not in detect(SEED_3000239, paced=True)


def test_a_slow_host_that_dies_is_confirmed_once_its_paced_hold_lapses() -> None:
    # Seed 3000239's pace, then dead: its last proof (20.5) never renews.
    dead = SEED_3000239 + [(22.0 + 0.5 * i, 20.5) for i in range(1, 12)]
    d, pace, downs = Detector(CHAOS), Pace(), []
    for now, at in dead:
        pace.note(H, now, at)
        hold = pace.hold(H, now, at, W)
        obs = dataclasses.replace(SILENT, alive_at=at, beats_slowly=hold.held,
                                  beats_why=hold.reason)
        downs += [now for v in d.observe(now, {H: obs}, quorate=True)
                  if v.kind is VerdictKind.DOWN]
    # It had come up to 3.0 s late: held for 4.5 s after its last proof, then confirmed.
    assert downs == [25.5]
    assert downs[0] - 20.5 <= CAP_WINDOWS * W
