"""The failover's role machine, one transition at a time: each scenario is a starting state,
the facts of one or more ticks, and the roles, actions and reasons they must give. Pure: no
pool, no sleeps, time as a number."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import cast

import pytest
from structlog.testing import capture_logs

from xenhad.config import parse
from xenhad.detector import DetectorSettings, HostState
from xenhad.failover import lock as pool_lock
from xenhad.failover.actions import FailoverActions
from xenhad.failover.coordinator import Failover, FailoverOff
from xenhad.failover.election import Vote
from xenhad.failover.roles import (
    RECONCILED_KEY,
    STEP_DOWN_HOLD,
    BeatNow,
    Contact,
    Decision,
    Facts,
    FailoverSettings,
    HoldLock,
    Joined,
    RaiseEpoch,
    ReadNow,
    RecordReconciled,
    RecoverSlaves,
    ResetMaster,
    Role,
    Say,
    State,
    SyncDatabase,
    TransitionToMaster,
    WriteLock,
    hold_lock,
    lock_written,
    reconcile,
    reconcile_recorded,
    reread_gate,
    slaves_recovered,
    step,
    transition_failed,
)
from xenhad.model import HostView, PoolView
from xenhad.status import render
from xenhad.xapi.client import Xapi

ME, A, B = "h1", "h2", "h3"
"""This host, and two others. A is the master while we are a slave."""
ADDRESS = {ME: "10.0.0.1", A: "10.0.0.2", B: "10.0.0.3"}
SETTINGS = FailoverSettings()
WALL = 1_000_000.0


def view(master: str, **other_config: str) -> PoolView:
    hosts = {h: HostView(h, f"ref-{h}", h, ADDRESS[h], True, True) for h in ADDRESS}
    return PoolView("pool", master, False, hosts, {}, other_config=other_config)


def our_lock(epoch: int = 0) -> str:
    return pool_lock.Lock(ME, epoch, WALL + 1000).encode()


def as_slave(now: float, state: HostState = HostState.UP, *, quorate: bool = True,
             contact: Contact | None = None, down_since: float | None = None) -> Facts:
    return Facts(ME, now, view(A), quorate, contact or Contact(frozenset({B})),
                 master_state=state, master_down_since=down_since)


def as_master(now: float, *, contact: Contact | None = None, quorate: bool = True,
              probes: dict[str, Joined] | None = None, down: frozenset[str] = frozenset(),
              **other_config: str) -> Facts:
    followers = Contact(frozenset({A, B}), masters={A: ME, B: ME})
    following = {A: Joined(True, ADDRESS[ME]), B: Joined(True, ADDRESS[ME])}
    return Facts(ME, now, view(ME, **other_config), quorate,
                 followers if contact is None else contact,
                 probes=following if probes is None else probes, down=down, wall=WALL)


def kinds(decision: Decision) -> list[type]:
    return [type(a) for a in decision.actions if not isinstance(a, Say)]


def said(decision: Decision) -> list[str]:
    return [a.event for a in decision.actions if isinstance(a, Say)]


@dataclass(frozen=True)
class Tick:
    facts: Facts
    role: Role
    actions: tuple[type, ...] = ()
    reason: str = ""
    """A few words the reason must hold."""
    may_act: bool = False
    then: Callable[[Decision], Decision] | None = None
    """An outcome fed back after the actions (a failed call, a lock written)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    start: State
    ticks: tuple[Tick, ...]


PROMOTING_SINCE_10 = State(role=Role.PROMOTING, watched=A, vote=Vote(A, ME), cast_at=9.0,
                           promoting_at=10.0)
ELECTED = Contact(frozenset({B}), ballots={B: Vote(A, ME)})
"""B voted for us: with our own ballot, two of three."""
ELECTING_OTHER = Contact(frozenset({B}), priorities={B: 5})
"""B ranks first (priority): we vote for it."""
RIVAL_WITH_MAJORITY = Contact(frozenset({A, B}), masters={A: A, B: A}, epochs={A: 2})
RIVAL_PROBES = {A: Joined(True, None), B: Joined(True, ADDRESS[A])}

SCENARIOS = [
    Scenario("a slave whose master answers follows it", State(), (
        Tick(as_slave(1.0), Role.FOLLOWING, reason="answers"),
    )),
    Scenario("a suspect master is doubted, and followed again once it answers", State(), (
        Tick(as_slave(1.0, HostState.SUSPECT), Role.DOUBTING, reason="suspect"),
        Tick(as_slave(2.0), Role.FOLLOWING),
    )),
    Scenario("a master down without quorum gets no vote", State(), (
        Tick(as_slave(1.0, HostState.DOWN, quorate=False), Role.DOUBTING,
             reason="not quorate"),
    )),
    Scenario("a quorate slave votes for the best candidate", State(), (
        Tick(as_slave(1.0, HostState.DOWN, contact=ELECTING_OTHER, down_since=0.0),
             Role.ELECTING, reason="votes for h3"),
        # The master answers again: the vote is withdrawn.
        Tick(as_slave(2.0, HostState.SUSPECT, contact=ELECTING_OTHER), Role.DOUBTING),
    )),
    Scenario("a peer whose restarted daemon has not read the pool is never the candidate",
             State(), (
                 # B ranks first, but beats unread (peers/roster.py): it could not promote.
                 Tick(as_slave(1.0, HostState.DOWN, down_since=0.0, contact=Contact(
                     frozenset({B}), priorities={B: 5}, unread=frozenset({B}))),
                      Role.ELECTING, reason="this host is the candidate"),
             )),
    Scenario("the candidate waits for a majority of ballots", State(), (
        Tick(as_slave(1.0, HostState.DOWN), Role.ELECTING, reason="no majority"),
    )),
    Scenario("elected by a majority, the candidate promotes itself", State(), (
        Tick(as_slave(1.0, HostState.DOWN, contact=ELECTED), Role.PROMOTING,
             (TransitionToMaster,), reason="elected"),
        Tick(as_slave(2.0, HostState.DOWN, contact=ELECTED), Role.PROMOTING),
    )),
    Scenario("a failed transition is tried again while elected", State(), (
        Tick(as_slave(1.0, HostState.DOWN, contact=ELECTED), Role.ELECTING,
             (TransitionToMaster,), reason="failed",
             then=lambda d: transition_failed(d.state, "no xapi")),
        Tick(as_slave(2.0, HostState.DOWN, contact=ELECTED), Role.PROMOTING,
             (TransitionToMaster,)),
    )),
    Scenario("a promotion not done by promote_timeout is held again", PROMOTING_SINCE_10, (
        Tick(as_slave(10.0 + SETTINGS.promote_timeout + 1, HostState.DOWN,
                      contact=ELECTED), Role.ELECTING, reason="stalled"),
    )),
    Scenario("our xapi master now: promoted, the epoch raised, acts from the next view",
             PROMOTING_SINCE_10, (
                 Tick(as_master(20.0), Role.PROMOTED, (RaiseEpoch,), reason="next one"),
             )),
    Scenario("a live rival master ranks first (a later epoch): this one steps down",
             State(), (
        Tick(as_master(1.0, contact=RIVAL_WITH_MAJORITY, probes=RIVAL_PROBES),
             Role.STEPPING_DOWN, (ResetMaster, BeatNow), reason="ranks first"),
        # Our xapi restarts as the rival's slave meanwhile: nothing is done.
        Tick(as_master(1.0 + STEP_DOWN_HOLD - 1, contact=RIVAL_WITH_MAJORITY,
                       probes=RIVAL_PROBES), Role.STEPPING_DOWN),
        # Still master after the hold: the step-down is weighed again.
        Tick(as_master(1.0 + STEP_DOWN_HOLD, contact=RIVAL_WITH_MAJORITY,
                       probes=RIVAL_PROBES), Role.STEPPING_DOWN, (ResetMaster, BeatNow)),
    )),
    Scenario("a host becoming master holds this one back", State(), (
        Tick(as_master(1.0, contact=Contact(frozenset({A, B}), masters={A: ME, B: ME},
                                            promoting=frozenset({A}))),
             Role.HELD, reason="becoming master"),
    )),
    Scenario("no quorum: the master acts on nothing", State(), (
        Tick(as_master(1.0, quorate=False), Role.HELD, reason="no quorum"),
    )),
    Scenario("a rival master answers and no majority follows us: nothing is recovered",
             State(), (
                 Tick(as_master(1.0, contact=Contact(frozenset({A}), masters={A: A},
                                                     epochs={A: 0}, priorities={A: -1}),
                                probes={A: Joined(True, None), B: Joined(False, None)}),
                      Role.HELD, reason="no majority follows us"),
             )),
    Scenario("a master that finds no lock takes it and may act", State(), (
        Tick(as_master(1.0), Role.RECONCILING, (WriteLock,), may_act=True,
             then=lambda d: lock_written(d, True, "")),
    )),
    Scenario("a master that finds its lock holds it", State(), (
        Tick(as_master(1.0, xenhad_lock=our_lock()), Role.RECONCILING, may_act=True,
             reason="holding"),
    )),
    Scenario("another's live lock: the master waits", State(), (
        Tick(as_master(1.0, xenhad_lock=pool_lock.Lock(A, 0, WALL + 20).encode()),
             Role.WAITING_LOCK, reason="held by h2"),
    )),
    Scenario("a host following another master is told to follow us", State(), (
        Tick(as_master(1.0, xenhad_lock=our_lock(),
                       contact=Contact(frozenset({A, B}), masters={A: ME, B: ME}),
                       probes={A: Joined(True, ADDRESS[ME]), B: Joined(True, "10.0.0.9")}),
             Role.RECONCILING, (RecoverSlaves,), may_act=True),
    )),
    Scenario("the slaves' database copies are refreshed every sync_interval",
             State(last_sync=0.0), (
                 Tick(as_master(SETTINGS.sync_interval, xenhad_lock=our_lock()),
                      Role.RECONCILING, (SyncDatabase,), may_act=True),
             )),
]


def run_tick(state: State, facts: Facts) -> tuple[Decision, tuple[type, ...]]:
    """One tick as the executor runs it: the lock is decided (HoldLock) after the calls
    before it, as of the facts' wall clock. The actions of both decisions, HoldLock left
    out."""
    decision = step(state, facts, SETTINGS)
    actions = kinds(decision)
    if HoldLock in actions:
        assert actions[-1] is HoldLock and not decision.may_act
        decision = hold_lock(decision.state, facts, SETTINGS)
        actions = actions[:-1] + kinds(decision)
    return decision, tuple(actions)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_role_transitions(scenario: Scenario) -> None:
    state = scenario.start
    for n, tick in enumerate(scenario.ticks):
        decision, actions = run_tick(state, tick.facts)
        if tick.then is not None:
            decision = tick.then(decision)
        where = f"tick {n}: {decision.reason}"
        assert decision.role is tick.role, where
        assert actions == tick.actions, where
        assert tick.reason in decision.reason, where
        assert decision.may_act is tick.may_act, where
        state = decision.state


def test_two_masters_rank_by_epoch_whoever_seems_to_follow_whom() -> None:
    """The slaves a new master told to rejoin still name the old master until their xapi
    restarted: the new master, ranked by the epoch it raised before any view carries it,
    stays and recovers no one while the old one answers; the old one, which a majority
    still seems to follow, steps down (chaos seed 1000007, 7 hosts)."""
    promoted = State(promoted_at=100.0, master_since=100.0, raised=3)
    facts = as_master(110.0, contact=RIVAL_WITH_MAJORITY, probes=RIVAL_PROBES)
    decision, actions = run_tick(promoted, facts)
    assert decision.role is Role.HELD and RecoverSlaves not in actions
    # The old master (epoch 0), whom its slaves' heartbeats still name, with the new one
    # (epoch 2) answering: it steps down, and tells no slave to follow it.
    old = as_master(110.0, contact=Contact(frozenset({A, B}), masters={A: A, B: ME},
                                           epochs={A: 2, B: 0}),
                    probes={A: Joined(True, None), B: Joined(True, ADDRESS[A])})
    stepped, actions = run_tick(State(), old)
    assert stepped.role is Role.STEPPING_DOWN and RecoverSlaves not in actions


def test_a_rival_that_ranks_first_heard_but_not_yet_probed_holds_the_master() -> None:
    """A rival whose heartbeat says it is master at a later epoch, while our last probe of
    it is older: this master may not step down on that word alone (the probe is the proof
    it answers as one), and recovers no slave meanwhile, whoever follows it."""
    heard = as_master(1.0, contact=Contact(frozenset({A, B}), masters={A: A, B: ME},
                                           epochs={A: 2, B: 0}),
                      probes={A: Joined(True, ADDRESS[ME]), B: Joined(True, ADDRESS[ME])})
    decision, actions = run_tick(State(), heard)
    assert decision.role is Role.HELD and "ranks first" in decision.reason
    assert RecoverSlaves not in actions


def test_no_incident_acts_before_every_host_rejoined() -> None:
    """After a promotion (epoch 1 not reconciled), the master waits for every host to
    follow it, then records the epoch as reconciled."""
    held = State(role=Role.RECONCILING, promoted_at=100.0)
    silent = {A: Joined(True, ADDRESS[ME]), B: Joined(False, None)}
    first = reconcile(held, as_master(101.0, probes=silent, xenhad_epoch="1"))
    assert first.role is Role.RECONCILING and not first.may_act
    assert "waiting for h3" in first.reason
    assert said(first) == ["failover.reconcile_waiting"]
    # B is still silent: the wait is not said again; A, rejoined, stays so.
    again = reconcile(first.state, as_master(101.5, probes={B: Joined(False, None)},
                                             xenhad_epoch="1"))
    assert again.role is Role.RECONCILING and said(again) == []
    assert again.state.rejoined == {A}
    done = reconcile(again.state, as_master(102.0, xenhad_epoch="1"))
    assert done.role is Role.ACTING and done.may_act
    assert kinds(done) == [RecordReconciled]
    recorded = reconcile_recorded(done.state, 1, 102.0)
    assert recorded.may_act and said(recorded) == ["failover.reconciled"]
    # Recorded in the pool: the next master (or this one, restarted) acts at once.
    fresh = reconcile(State(), as_master(103.0, probes={}, xenhad_epoch="1",
                                         **{RECONCILED_KEY: "1"}))
    assert fresh.role is Role.ACTING and fresh.may_act and not fresh.actions


def test_a_down_host_is_not_awaited() -> None:
    held = State(promoted_at=100.0)
    decision = reconcile(held, as_master(101.0, probes={A: Joined(True, ADDRESS[ME])},
                                         down=frozenset({B}), xenhad_epoch="1"))
    assert decision.role is Role.ACTING and decision.may_act


def test_each_reason_is_said_once_until_it_changes() -> None:
    """A rival master is named in the log when it appears, not every tick."""
    facts = as_master(1.0, contact=Contact(frozenset({A}), masters={A: A}, priorities={A: -1}),
                      probes={A: Joined(True, None), B: Joined(False, None)})
    first = step(State(), facts, SETTINGS)
    second = step(first.state, replace(facts, now=2.0), SETTINGS)
    assert said(first) == ["failover.rival_master"] and said(second) == []
    assert first.reason == second.reason


def test_the_executor_logs_each_decision_once_and_status_shows_it() -> None:
    """Through Failover (the executor): a slave whose master is suspect says so once, in
    failover.decision, and `xenhad status` shows the role and its reason."""
    config = parse("", source="t", env={})
    beats: list[float] = []
    failover = Failover(ME, SETTINGS, DetectorSettings(), FailoverActions(config),
                        wall=lambda: WALL, beat=lambda: beats.append(1.0))

    async def ticks() -> None:
        for now in (1.0, 2.0, 3.0):
            await failover.watch_master(now, view(A), quorate=True, answered=now == 1.0,
                                        contact=Contact(frozenset({B})))
            failover.say_decision()

    with capture_logs() as logs:
        asyncio.run(ticks())
    decisions = [e for e in logs if e["event"] == "failover.decision"]
    assert [d["role"] for d in decisions] == ["following", "doubting"]
    assert failover.role is Role.DOUBTING and failover.master_in_doubt
    assert not beats  # no ballot cast: nothing new to say in a heartbeat
    shown = render({"failover": {"role": failover.role.value, "reason": failover.reason}})
    assert "failover: doubting: the master h2 is suspect" in shown


def test_a_master_allowed_to_act_again_acts_from_a_view_read_after_its_probes() -> None:
    """Every host rejoined as of this tick's probes, but this view was read before them (a
    host that just rejoined is disabled until its xapi has started): one more tick, at once,
    from a view read now."""
    waiting = State(acted=False)
    first = reread_gate(waiting, True)
    assert not first.may_act and kinds(first) == [ReadNow]
    assert first.role is Role.RECONCILING and "view read now" in first.reason
    second = reread_gate(first.state, True)
    assert second.may_act and not second.actions
    # Acting already: no extra tick. Held back: nothing to read again for.
    assert reread_gate(second.state, True).may_act
    assert not reread_gate(second.state, False).may_act
    assert not reread_gate(State(acted=False), False).actions


def test_with_failover_off_nothing_is_announced_or_awaited() -> None:
    off = FailoverOff()
    assert not off.enabled and off.vote is None and not off.promoting
    assert off.announced_master("m", 1.0) == "m" and not off.announces_promotion(1.0)
    assert not off.role_changing(1.0) and not off.awaits_rejoin(1.0)
    assert not off.master_in_doubt and not off.wants_fresh_probes and not off.rejoined


def test_a_master_quorate_again_listens_before_it_recovers_past_a_silent_master() -> None:
    """Back in quorum (a partition healed), a host answers as a master and its daemon is not
    heard yet: it may be the one the others elected meanwhile, and pool.recover_slaves
    would take it too. This master holds for `listen`, counted from the quorum regained,
    then takes a master whose daemon stays silent for a stray (virtual chaos seed 1000135)."""
    settings = replace(SETTINGS, listen=2.0)
    silent = as_master(0.0, xenhad_lock=our_lock(),
                       contact=Contact(frozenset({B}), masters={B: ME}),
                       probes={A: Joined(True, None), B: Joined(True, ADDRESS[ME])})
    acting = State(master_since=-100.0)
    cut = step(acting, replace(silent, now=1.0, quorate=False), settings)
    assert cut.role is Role.HELD and cut.state.master_since is None
    back = step(cut.state, replace(silent, now=2.0), settings)
    assert back.role is Role.HELD and "rival master" in back.reason
    assert not any(isinstance(a, RecoverSlaves) for a in back.actions)
    later = step(back.state, replace(silent, now=4.0), settings)
    assert any(isinstance(a, RecoverSlaves) for a in later.actions)


# -- a master recovered by us answers as one until its xapi restarts (defect 10) ----------

OUTRANKING = Contact(frozenset({A, B}), masters={A: A, B: ME}, epochs={A: 1, B: 0})
"""A's daemon says it is a master of epoch 1 (ours is 0): it ranks first, and B follows us."""
ANSWERS_AS_MASTER = {A: Joined(True, None), B: Joined(True, ADDRESS[ME])}
"""A's xapi answers as a master; B's as our slave."""


def test_a_master_never_steps_down_to_a_master_it_told_to_follow_it() -> None:
    """pool.recover_slaves told A, whose daemon was not heard (off and booting, or paused):
    A's xapi answers as a master until its fuse restarts it as our slave, and its daemon,
    once heard, says it is one, of a later epoch. Stepping down to it, each would follow the
    other and the pool have no master (virtual chaos seeds 8000443, 8000690, 8001766,
    docs/virtual-time.md defect 10). This master holds, recovering no one, and acts once A
    follows it; a rival still a master after STEP_DOWN_HOLD is weighed again."""
    told = slaves_recovered(State(master_since=0.0), as_master(10.0), ["ref-h2", "ref-h3"])
    heard = as_master(11.0, contact=OUTRANKING, probes=ANSWERS_AS_MASTER)
    decision, actions = run_tick(told, heard)
    assert decision.role is Role.HELD and "ranks first" in decision.reason, decision.reason
    assert actions == ()
    # Untold, the same facts make this master step down: the rule is the told host.
    stepped, actions = run_tick(State(master_since=0.0), heard)
    assert stepped.role is Role.STEPPING_DOWN and actions == (ResetMaster, BeatNow)
    # A's xapi restarted as our slave and its daemon read the pool: this master acts.
    followed = as_master(14.0, xenhad_lock=our_lock())
    acting, _ = run_tick(decision.state, followed)
    assert acting.role is Role.RECONCILING and acting.may_act
    # Still answering as a master after the hold (emergency_reset_master lost): weighed
    # again, as any rival.
    later, actions = run_tick(decision.state, replace(heard, now=10.0 + STEP_DOWN_HOLD))
    assert later.role is Role.STEPPING_DOWN and actions == (ResetMaster, BeatNow)


def test_a_master_off_at_the_recovery_is_stepped_down_to_once_it_answers() -> None:
    """xapi's recover_slaves leaves out a host it cannot reach (xapi_pool.ml): A, off when
    we told the others, was told nothing. Booted a master that ranks first, it is rejoined
    at once."""
    told = slaves_recovered(State(master_since=0.0), as_master(10.0), ["ref-h3"])
    assert told.told == {B: 10.0}
    stepped, actions = run_tick(told, as_master(11.0, contact=OUTRANKING,
                                                probes=ANSWERS_AS_MASTER))
    assert stepped.role is Role.STEPPING_DOWN and actions == (ResetMaster, BeatNow)


def test_a_host_told_that_answered_as_no_master_since_is_a_rival_again() -> None:
    """A was told while its xapi answered HOST_STILL_BOOTING (an emergency slave); a
    majority then elected it and it was promoted. A probe made after the telling found it
    no master: its xapi has restarted, or was none, and answers as a master now only by a
    promotion of its own since. It ranks first, and is rejoined at once (virtual chaos seed
    10000044: held for the whole STEP_DOWN_HOLD). A probe made before the telling, in the
    same tick, says nothing of it."""
    told = slaves_recovered(State(master_since=0.0), as_master(10.0), ["ref-h2", "ref-h3"])
    same_tick = {A: Joined(True, "", at=10.0), B: Joined(True, ADDRESS[ME], at=10.0)}
    before = step(told, as_master(10.5, probes=same_tick), SETTINGS)
    assert A in before.state.told
    booting = {A: Joined(True, "", at=11.0), B: Joined(True, ADDRESS[ME], at=11.0)}
    since = step(told, as_master(11.0, probes=booting), SETTINGS)
    assert A not in since.state.told and B not in since.state.told
    promoted = {A: Joined(True, None, at=12.0), B: Joined(True, ADDRESS[ME], at=12.0)}
    stepped, actions = run_tick(since.state, as_master(12.0, contact=OUTRANKING,
                                                       probes=promoted))
    assert stepped.role is Role.STEPPING_DOWN and actions == (ResetMaster, BeatNow)
    # Still answering as a master at every probe since the telling: not rejoined.
    master = {A: Joined(True, None, at=11.0), B: Joined(True, ADDRESS[ME], at=11.0)}
    held, _ = run_tick(told, as_master(11.0, contact=OUTRANKING, probes=master))
    assert held.role is Role.HELD and A in held.state.told


def test_a_failed_recovery_may_have_told_every_host() -> None:
    """A recover_slaves that timed out may have told any host before it failed: each is
    taken as told. Marks older than the hold are let go."""
    told = slaves_recovered(State(told={A: 0.0}), as_master(40.0), None)
    assert told.told == {A: 40.0, B: 40.0}
    again = slaves_recovered(told, as_master(40.0 + STEP_DOWN_HOLD), [])
    assert again.told == {}


def test_the_executor_marks_the_hosts_recover_slaves_told() -> None:
    """Through Failover: the refs pool.recover_slaves returned are the hosts told, and a
    rival among them is no master to step down to."""
    config = parse("", source="t", env={})
    failover = Failover(ME, replace(SETTINGS, sync_interval=0), DetectorSettings(),
                        FailoverActions(config), wall=lambda: WALL)

    class Pool:
        async def pool_recover_slaves(self) -> list[str]:
            return ["ref-h2", "ref-h3"]

        async def pool_add_to_other_config(self, ref: str, key: str, value: str) -> None:
            pass

        async def pool_remove_from_other_config(self, ref: str, key: str) -> None:
            pass

    xapi = cast(Xapi, Pool())
    stray = as_master(10.0, contact=Contact(frozenset({B}), masters={B: ME}),
                      probes={A: Joined(True, "10.0.0.9"), B: Joined(True, ADDRESS[ME])})
    with capture_logs() as logs:
        asyncio.run(failover.as_master(xapi, stray.view, 10.0, contact=stray.contact,
                                       probes=stray.probes, down=frozenset(), quorate=True))
    assert [e["told"] for e in logs if e["event"] == "failover.slaves_recovered"] == [
        [A, B]]
    assert failover.state.told == {A: 10.0, B: 10.0}
    heard = as_master(11.0, contact=OUTRANKING, probes=ANSWERS_AS_MASTER)
    asyncio.run(failover.as_master(xapi, heard.view, 11.0, contact=heard.contact,
                                   probes=heard.probes, down=frozenset(), quorate=True))
    assert failover.role is Role.HELD
