"""Master failover as a pure role machine: the only place failover is decided.

    as a slave:
      FOLLOWING <--the master is suspect / answers again--> DOUBTING
      DOUBTING --confirmed down, quorate--> ELECTING (vote; withdrawn if it answers again)
      ELECTING --a strict majority elects us--> PROMOTING --promote_timeout--> ELECTING
    as the master, each tick, the first gate that holds names the role:
      PROMOTED       the tick our xapi turned master: raise the epoch, act from the next view
      STEPPING_DOWN  outvoted now (emergency_reset_master), or within STEP_DOWN_HOLD of it
      HELD           a host is promoting; no quorum; a rival answers that ranks first, or
                     while no majority is behind us
      WAITING_LOCK   the incident lock is another's, or cannot be written
      RECONCILING    a host has not rejoined since a promotion or a stray; or one more read
      ACTING         none of the above: incidents open and run

`step(state, facts, settings)` takes the role and timers carried from the last tick
(`State`) and what this tick saw (`Facts`), and returns a `Decision`: the next state, the actions to
perform, a human reason, and whether this master may act so far. The executor
(coordinator.py) performs the actions (the XAPI calls) and feeds back the few outcomes a
rule depends on (`transition_failed`, `slaves_recovered`, `hold_lock`, `lock_written`,
`reconcile_recorded`, `reconcile_unrecorded`); `reconcile`, once the lock is held, and
`reread_gate` are the master's last gates.

The rules above all: of two masters, the one that ranks first stays (`rank`: the later
promotion, then the election's order, facts both know alike) and the other steps down, on
proof only (the first answers as a master, its xapi and its daemon, and is not one this
master told to follow it, whose xapi answers as a master until it restarts as our slave); a
master recovers no slave while a master that ranks before it answers; no incident acts
before the lock is held and the database is reconciled (every host rejoined, or down).

Every rule is a steady state, not a one-shot step: a daemon restarted in the middle of a
failover finds the same facts and carries on.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace

from xenhad.detector import HostState
from xenhad.failover import lock as pool_lock
from xenhad.failover.election import Vote, choose, elected
from xenhad.failover.witness import WITNESS
from xenhad.model import HostId, PoolView

STEP_DOWN_HOLD = 30.0
"""Seconds after pool.emergency_reset_master during which this master acts on nothing: its
xapi restarts as a slave within them; if it has not, the step-down is weighed again."""

PROMOTION_WINDOW = 20.0
"""Seconds after emergency_transition_to_master during which heartbeats say this host is
becoming master: xapi restarts as one 10 s after the call (Xapi_fuse) and is up a few
seconds later. A promotion not done by then is one whose call was lost or whose xapi hangs;
the old master, if it is back, must not wait on it (promote_timeout retries it)."""

REJOIN_WATCH = 30.0
"""Seconds after our promotion during which hosts not yet rejoined are awaited urgently:
each restarts its xapi (pool.recover_slaves) and is back within seconds. One still away
after this is not coming back soon, and waits at the daemon's usual pace."""

RECONCILED_KEY = "xenhad_reconciled"
"""pool.other_config: the promotion epoch whose new master saw every host rejoin."""


class Role(enum.Enum):
    """What this host's daemon is in the failover, and what it may do."""

    FOLLOWING = "following"
    """A slave whose master answers: it watches the master, and acts on nothing."""
    DOUBTING = "doubting"
    """A slave whose master is suspect (or down while we are not quorate): watched every
    urgent tick; no vote is cast."""
    ELECTING = "electing"
    """A quorate slave whose master is confirmed down: it votes, and promotes itself once a
    strict majority of the pool elects it."""
    PROMOTING = "promoting"
    """pool.emergency_transition_to_master was called: our xapi restarts as the master.
    Heartbeats say so for PROMOTION_WINDOW; tried again after promote_timeout."""
    PROMOTED = "promoted"
    """The first tick our xapi is master after our promotion: the epoch is raised, and the
    master acts only from a view read after it."""
    STEPPING_DOWN = "stepping_down"
    """pool.emergency_reset_master was called: our xapi restarts as another master's slave;
    this master acts on nothing for STEP_DOWN_HOLD."""
    HELD = "held"
    """A master that acts on nothing this tick: another host is becoming master, no quorum,
    or another master answers while no majority follows this one."""
    WAITING_LOCK = "waiting_lock"
    """A master that does not hold the pool-wide incident lock: it waits for it."""
    RECONCILING = "reconciling"
    """A master with the lock whose database is not trusted yet (a copy from before a
    promotion, or hosts followed another master): it waits for every host to rejoin."""
    ACTING = "acting"
    """The master with the lock and a reconciled database: it opens and runs incidents."""


@dataclass(frozen=True)
class FailoverSettings:
    priority: int = 0
    stall: float = 15.0
    recover_retry: float = 5.0
    sync_interval: float = 60.0
    lock_ttl: float = 30.0
    promote_timeout: float = 90.0
    """How long a transition may take before it is tried again."""
    listen: float = 0.0
    """How long a master listens for heartbeats, from when it became master or regained
    quorum, before it takes a host that answers as a master, and whose daemon says nothing,
    for a stray or a rival it may rank before (peers.window)."""


@dataclass(frozen=True)
class Contact:
    """What the heartbeats of hosts in mutual contact say, as of this tick."""

    mutual: frozenset[HostId]
    priorities: Mapping[HostId, int] = field(default_factory=dict)
    ballots: Mapping[HostId, Vote | None] = field(default_factory=dict)
    masters: Mapping[HostId, HostId] = field(default_factory=dict)
    """Whom each peer's own xapi follows."""
    witness: bool | None = None
    """None: the pool has no witness; else whether this host holds its lease."""
    epochs: Mapping[HostId, int] = field(default_factory=dict)
    """The promotion epoch each peer's database is at (Heartbeat.epoch)."""
    promoting: frozenset[HostId] = frozenset()
    """Peers whose xapi is on its way to becoming a master (Heartbeat.promoting)."""
    unread: frozenset[HostId] = frozenset()
    """Peers whose daemon has not read the pool since it started (Heartbeat.unread): alive
    and counted for quorum, but never a candidate: it could not promote its host, knowing
    nothing of the pool, and voters would wait out a stall for it."""


@dataclass(frozen=True)
class Joined:
    """The master's last probe of one host: does its xapi follow us?"""

    answered: bool
    follows: str | None
    """The master address it answered HOST_IS_SLAVE with (None: answered as a master; "":
    answered, following no master it names, ProbeResult.follows)."""
    at: float = float("-inf")
    """The time of the tick that made it (a host heard by heartbeat is probed only now and
    then): one made before we told the host to follow us says nothing of it since."""


@dataclass(frozen=True)
class Facts:
    """What one tick saw. As a slave: `master_state` and `master_down_since` (our watch of
    the master); as the master: `probes`, `down`, `proven_off`, and `wall` (the lock's
    time, set by the executor when it performs HoldLock)."""

    me: HostId
    now: float
    view: PoolView
    quorate: bool
    contact: Contact
    probes: Mapping[HostId, Joined] = field(default_factory=dict)
    down: frozenset[HostId] = frozenset()
    """Hosts the detector confirmed down (DOWN or RETURNING)."""
    proven_off: frozenset[HostId] = frozenset()
    """Hosts of `down` that a fence powered off (an incident closed done): one that answers
    again has rebooted, with no VM running, into whatever pool.conf it had, and is
    recovered into the pool like any stray."""
    master_state: HostState = HostState.UP
    """As a slave: the detector's state of our master, as of this tick."""
    master_down_since: float | None = None
    """As a slave: set on the tick our master was confirmed down (when its misses began)."""
    wall: float = 0.0


# -- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Say:
    """A log line (structlog), said by the executor at `level`."""

    level: str
    event: str
    facts: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class TransitionToMaster:
    """pool.emergency_transition_to_master on our own xapi (fed back: transition_failed)."""


@dataclass(frozen=True)
class ResetMaster:
    """pool.emergency_reset_master on our own xapi: rejoin `address` as its slave."""

    address: str


@dataclass(frozen=True)
class RaiseEpoch:
    """Write pool.other_config's promotion epoch, the tick after our promotion."""

    epoch: int
    exists: bool


@dataclass(frozen=True)
class RecoverSlaves:
    """pool.recover_slaves: every host that follows another master is told to follow us."""

    strays: tuple[str, ...]
    names_by_ref: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SyncDatabase:
    """pool.sync_database: the slaves' copies of the database are refreshed."""


@dataclass(frozen=True)
class HoldLock:
    """Decide on the incident lock as of the wall clock once the calls before it are done
    (fed back: hold_lock), since its expiry is counted from then."""


@dataclass(frozen=True)
class WriteLock:
    """Take, renew or take over the incident lock (fed back: lock_written)."""

    step: pool_lock.Step
    value: str
    why: str
    epoch: int


@dataclass(frozen=True)
class RecordReconciled:
    """pool.other_config: this epoch's database is reconciled (fed back:
    reconcile_recorded)."""

    epoch: int
    exists: bool


@dataclass(frozen=True)
class ReadNow:
    """Run the next tick at once: it reads the pool afresh, and acts from that view."""


@dataclass(frozen=True)
class BeatNow:
    """Send our heartbeat now: peers count our ballot, our promotion or our step-down from
    it, not up to an interval later."""


Action = (Say | TransitionToMaster | ResetMaster | RaiseEpoch | RecoverSlaves | SyncDatabase
          | HoldLock | WriteLock | RecordReconciled | ReadNow | BeatNow)


# -- state ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """The role and the timers carried from one tick to the next."""

    role: Role = Role.FOLLOWING
    reason: str = ""
    """Empty until the first decision."""
    watched: HostId | None = None
    """As a slave: the master we watch (a master watches none)."""
    vote: Vote | None = None
    cast_at: float = 0.0
    promoting_at: float | None = None
    promoted_at: float | None = None
    master_since: float | None = None
    """When this daemon began acting as master, or last regained quorum as one: until
    `listen` has passed, it may not have heard a rival's heartbeat yet (a partition healed
    in between, our ears were cut as long as it lasted)."""
    last_recover: float = float("-inf")
    told: Mapping[HostId, float] = field(default_factory=dict)
    """Hosts our pool.recover_slaves told (or may have told) to follow us, and when
    (`slaves_recovered`): each one's xapi answers as a master until its fuse restarts it as
    our slave, so it is no master to step down to (`told_to_follow`) until it has answered
    as anything else, or for STEP_DOWN_HOLD (`_told_since`)."""
    last_sync: float | None = None
    last_step_down: float = float("-inf")
    stepping_to: HostId | None = None
    replaced: HostId | None = None
    """Once, after our promotion: the master we replaced (take_replaced)."""
    raised: int = 0
    """As a master: the epoch we raised at our promotion. Until a view read after the write
    carries it, our heartbeats say it and we rank by it (`epoch`): a master ranked by the
    epoch it had before could yield, the tick after its promotion, to the one it replaced."""
    rejoined: frozenset[HostId] = frozenset()
    """Hosts whose last answer to our probe, since we last told the slaves to follow us,
    was that they do."""
    waiting_for: tuple[str, ...] = ()
    strays_seen: bool = False
    rivals: tuple[str, ...] = ()
    """The rival masters last said (failover.rival_master), while no majority follows us."""
    promoting_seen: frozenset[HostId] = frozenset()
    probes_fresh_since: float = float("-inf")
    lock_why: str = ""
    timeline: tuple[tuple[str, float], ...] = ()
    acted: bool = True
    """Whether this master could act at the end of the last tick (reread_gate)."""
    rereading: bool = False
    """This master may act from the next view on, read at once (reread_gate)."""

    # -- what the daemon reads of the state ------------------------------------------

    def announced_master(self, read: HostId, now: float) -> HostId:
        """The master our heartbeats name: the one our last read of the pool says, or,
        while we step down, the one we rejoin. Our xapi still answers as a master until it
        restarts as that one's slave, and a heartbeat naming ourselves meanwhile made us a
        master with a majority in the other master's eyes: it stepped down too, and the
        pool had none (chaos seed 7700024100004)."""
        if self.stepping_to is not None and now - self.last_step_down < STEP_DOWN_HOLD:
            return self.stepping_to
        return read

    def epoch(self, view: PoolView) -> int:
        """The promotion epoch our heartbeats say: the database's, or the one we raised."""
        return max(pool_lock.current_epoch(dict(view.other_config)), self.raised)

    def told_to_follow(self, host: HostId, now: float) -> bool:
        """Whether our pool.recover_slaves told `host` to follow us within STEP_DOWN_HOLD,
        and it has answered as a master, or not at all, since (`_told_since`). xapi's
        emergency_reset_master rewrites pool.conf, which "takes effect on next server restart
        only", and restarts xapi after the fuse (Xapi_fuse.light_fuse_and_run, 5 to 10 s):
        until then the host still answers as the master it was
        (ocaml/xapi/xapi_pool_transition.ml become_another_masters_slave, set_role). Stepping
        down to it then, each would follow the other, and the pool have no master (virtual
        chaos seeds 8000443, 8000690, 8001766: docs/virtual-time.md defect 10)."""
        at = self.told.get(host)
        return at is not None and now - at < STEP_DOWN_HOLD

    def listened(self, now: float, settings: FailoverSettings) -> bool:
        """As a master: whether `listen` has passed since we became one or regained
        quorum, so a rival's heartbeats would have reached us."""
        return self.master_since is not None and now - self.master_since >= settings.listen

    def announces_promotion(self, now: float) -> bool:
        """What our heartbeats say (Heartbeat.promoting): our xapi may become master now."""
        return self.promoting_at is not None and now - self.promoting_at < PROMOTION_WINDOW

    def role_changing(self, now: float) -> bool:
        """Our own xapi is restarting into another role (we promoted it, or stepped it
        down): what it answered before, event tokens included, was another database's."""
        return self.promoting_at is not None or now - self.last_step_down < STEP_DOWN_HOLD

    def awaits_rejoin(self, now: float) -> bool:
        """Just promoted, we wait for the slaves to rejoin: no VM of the dead master is
        reset before they have, so every tick of the wait is downtime."""
        return bool(self.waiting_for) and self.promoted_at is not None and (
            now - self.promoted_at < REJOIN_WATCH)

    @property
    def wants_fresh_probes(self) -> bool:
        """Whom each host's xapi follows is changing (we recovered slaves, wait for them to
        rejoin, or another master answers): every host should be probed every tick, heard
        or not."""
        return bool(self.waiting_for) or self.last_recover > self.probes_fresh_since \
            or bool(self.rivals)

    @property
    def settled(self) -> frozenset[HostId]:
        """Hosts whose last answer to our probe, since we last told the slaves to follow
        us, was that they do: while others rejoin, they need no fresh probe. While another
        master answers, every host does."""
        return frozenset() if self.rivals else self.rejoined


@dataclass(frozen=True)
class Decision:
    state: State
    actions: tuple[Action, ...] = ()
    may_act: bool = False
    """As the master: whether it may act, as far as this decision goes (a HoldLock or
    WriteLock among the actions still decides)."""

    @property
    def reason(self) -> str:
        return self.state.reason

    @property
    def role(self) -> Role:
        return self.state.role


def _say(level: str, event: str, **facts: object) -> Say:
    return Say(level, event, tuple(facts.items()))


def _decided(state: State, role: Role, reason: str, actions: list[Action] | None = None,
             *, may_act: bool = False) -> Decision:
    return Decision(replace(state, role=role, reason=reason), tuple(actions or ()), may_act)


def mark(state: State, phase: str, now: float) -> State:
    """The failover's timeline: the first time each phase was reached."""
    if any(p == phase for p, _ in state.timeline):
        return state
    return replace(state, timeline=(*state.timeline, (phase, now)))


def since(state: State, phase: str, now: float) -> float | None:
    start = dict(state.timeline).get(phase)
    return None if start is None else round(now - start, 2)


def timeline_since(state: State) -> dict[str, float]:
    start = dict(state.timeline).get("detected")
    if start is None:
        return {}
    return {phase: round(t - start, 2) for phase, t in
            sorted(state.timeline, key=lambda kv: kv[1])}


def step(state: State, facts: Facts, settings: FailoverSettings) -> Decision:
    """One tick of the failover: as a slave (watch the master, vote, promote) or as the
    master (its gates, then its duties up to the lock)."""
    if facts.view.master == facts.me:
        return _as_master(state, facts, settings)
    return _as_slave(state, facts, settings)


# -- on a slave ----------------------------------------------------------------------------


def _as_slave(state: State, facts: Facts, settings: FailoverSettings) -> Decision:
    view, now, me = facts.view, facts.now, facts.me
    old = view.master
    name = _name(view, old)
    state = replace(state, master_since=None, raised=0)
    if old != state.watched:
        state = replace(state, watched=old, vote=None)
    if facts.master_down_since is not None:
        state = replace(state, timeline=(("detected", facts.master_down_since),
                                         ("confirmed", now)))
    actions: list[Action] = []
    if facts.master_state is not HostState.DOWN or not facts.quorate:
        if state.vote is not None:
            actions.append(_say("info", "failover.vote_withdrawn", master=name,
                                why="the master answers again" if facts.quorate
                                else "no quorum"))
            state = replace(state, vote=None)
        if state.promoting_at is not None:
            return _decided(state, Role.PROMOTING, "this host's xapi restarts as master",
                            actions)
        if facts.master_state is HostState.UP:
            return _decided(state, Role.FOLLOWING, f"the master {name} answers", actions)
        if facts.master_state is HostState.DOWN:
            return _decided(state, Role.DOUBTING, f"the master {name} is down, but this "
                            "host is not quorate: it votes for nobody", actions)
        return _decided(state, Role.DOUBTING, f"the master {name} is "
                        f"{facts.master_state.value}: watched every urgent tick", actions)
    if state.promoting_at is not None:
        if now - state.promoting_at > settings.promote_timeout:
            actions.append(_say("error", "failover.promotion_stalled",
                                after_s=round(now - state.promoting_at),
                                why="this host's xapi did not come back as master; "
                                "trying again"))
            return _decided(replace(state, promoting_at=None), Role.ELECTING,
                            "our promotion stalled: the election is held again", actions)
        return _decided(state, Role.PROMOTING, "this host's xapi restarts as master",
                        actions)
    contact = facts.contact
    members = set(view.hosts)
    if contact.witness is not None:
        members.add(WITNESS)
    eligible = {me: settings.priority}
    for peer in contact.mutual & members:
        if peer != old and peer not in contact.unread:
            eligible[peer] = contact.priorities.get(peer, 0)
    before = state.vote
    vote, cast_at = choose(before, state.cast_at, me, old, eligible, now, stall=settings.stall)
    state = replace(state, vote=vote, cast_at=cast_at)
    if vote != before:
        actions.append(_say("warning", "failover.voted", master=name,
                            candidate=_name(view, vote.candidate),
                            among=sorted(_name(view, h) for h in eligible)))
    if vote.candidate != me:
        return _decided(state, Role.ELECTING, f"the master {name} is down: this host votes "
                        f"for {_name(view, vote.candidate)}", actions)
    ballots = {**contact.ballots, me: vote}
    if contact.witness:
        ballots[WITNESS] = vote  # the lease's vote goes with its holder
    if not elected(vote, ballots, members):
        return _decided(state, Role.ELECTING, f"the master {name} is down: this host is the "
                        "candidate, and no majority has voted for it yet", actions)
    state = mark(state, "agreed", now)
    actions.append(_say("warning", "failover.agreed", master=name, candidate=_name(view, me),
                        voters=sorted(_name(view, h) for h, b in ballots.items() if b == vote),
                        pool=len(members)))
    actions.append(TransitionToMaster())
    return _decided(replace(state, promoting_at=now), Role.PROMOTING,
                    f"a majority elected this host to replace the master {name}: "
                    "pool.emergency_transition_to_master", actions)


def transition_failed(state: State, why: str) -> Decision:
    """pool.emergency_transition_to_master failed: retried at the next tick while this host
    is still elected."""
    return _decided(replace(state, promoting_at=None), Role.ELECTING,
                    "the transition to master failed: retried while elected",
                    [_say("error", "failover.transition_failed", why=why,
                          fix="retried at the next tick while this host is still elected")])


def transition_called(state: State, facts: Facts) -> Decision:
    state = mark(state, "promoting", facts.now)
    return Decision(state, (_say("warning", "failover.promoting",
                                 master=_name(facts.view, facts.view.master),
                                 why="pool.emergency_transition_to_master called; xapi "
                                 "restarts as master"),))


# -- on the master -------------------------------------------------------------------------


def _as_master(state: State, facts: Facts, settings: FailoverSettings) -> Decision:
    view, now, contact = facts.view, facts.now, facts.contact
    # A master watches no master: left set, the one it replaced (DOWN) would keep it "in
    # doubt" for good, and every read of the pool on the short budget that is meant for
    # a slave whose master is silent (at 64 hosts and 1,000 VMs, one it never met).
    watched = state.watched
    state = replace(state, vote=None, watched=None)
    state = _told_since(state, facts)
    if state.master_since is None:
        state = replace(state, master_since=now)
    if state.promoting_at is not None:
        epoch = pool_lock.current_epoch(dict(view.other_config)) + 1
        state = replace(state, promoting_at=None, promoted_at=now, replaced=watched,
                        rejoined=frozenset(), raised=epoch)
        state = mark(state, "promoted", now)
        # Without a new epoch, a lock resurrected from our old copy would keep us waiting
        # until it expires: slower, not unsafe (the executor says so if the write fails).
        return _decided(state, Role.PROMOTED, "promoted: this view predates the new epoch; "
                        "acting from the next one",
                        [RaiseEpoch(epoch, pool_lock.EPOCH_KEY in view.other_config),
                         _say("warning", "failover.promoted",
                              after_s=since(state, "detected", now))])
    if now - state.last_step_down < STEP_DOWN_HOLD:
        # emergency_reset_master was called: our xapi restarts as the rival's slave and
        # answers as a master until then. Whatever this view says (a host that boots
        # still following us makes a majority of it), pool.recover_slaves now would
        # make the rival our slave while we become its: a pool with no master.
        return _decided(state, Role.STEPPING_DOWN, "stepped down to rejoin "
                        f"{_name(view, state.stepping_to or '')}: acting on nothing "
                        "while our xapi restarts as its slave")
    rejoin = outvoted(state, facts, settings)
    if rejoin is not None:
        return _step_down(state, facts, rejoin)
    if contact.promoting - {facts.me}:
        # The survivors elected a replacement for a master they found dead, which may
        # be this one come back: until it is master (and this one is outranked by its
        # epoch, or followed by none), recovering slaves would make it ours.
        actions: list[Action] = []
        hosts = sorted(_name(view, h) for h in contact.promoting)
        if state.promoting_seen != contact.promoting:
            actions.append(_say("warning", "failover.rival_promoting", hosts=hosts,
                                why="a host is becoming master: this one acts on nothing"))
        return _decided(replace(state, promoting_seen=contact.promoting), Role.HELD,
                        f"{', '.join(hosts)} is becoming master: this one acts on nothing",
                        actions)
    state = replace(state, promoting_seen=frozenset())
    if not facts.quorate:
        return _decided(replace(state, master_since=None), Role.HELD,
                        "no quorum: this master acts on nothing")
    rivals = rival_masters(facts, state, settings)
    if rivals:
        actions = []
        if rivals != state.rivals:
            actions.append(_say("warning", "failover.rival_master", masters=list(rivals),
                                why="another master answers, and it ranks first or no "
                                "majority follows this one: nothing is recovered until "
                                "one of the two steps down"))
        return _decided(replace(state, rivals=rivals), Role.HELD,
                        f"rival master {', '.join(rivals)} answers; it ranks first or no "
                        "majority follows us", actions)
    state = replace(state, rivals=())
    state, actions = _recover_strays(state, facts, settings)
    state, synced = _sync(state, now, settings)
    actions += synced
    actions.append(HoldLock())
    return _decided(state, Role.WAITING_LOCK, "reading the incident lock", actions)


def rank(epoch: int, priority: int, host: HostId) -> tuple[int, int, HostId]:
    """Which of two masters stays: the later promotion (the higher epoch: an old master
    back from the dead yields to the one the survivors elected), then as the election
    decides, priority, then the lower uuid. The least ranks first. Every input is one both
    masters know alike (an epoch is what its master announces, and only ever rises), so each
    computes the same order; whom the other hosts seem to follow is not, and is no part of
    it (chaos seeds 7600023800054, 1000007, 1000082: two masters each yielding to the other
    over who followed whom)."""
    return (-epoch, -priority, host)


def _ranking(state: State, facts: Facts, settings: FailoverSettings
             ) -> Callable[[HostId], tuple[int, int, HostId]]:
    """`rank` of any master this one knows of: itself by its own epoch and priority, the
    others by what their heartbeats say (nothing heard: epoch and priority 0)."""
    contact = facts.contact

    def ranked(h: HostId) -> tuple[int, int, HostId]:
        if h == facts.me:
            return rank(state.epoch(facts.view), settings.priority, h)
        return rank(contact.epochs.get(h, 0), contact.priorities.get(h, 0), h)

    return ranked


def outvoted(state: State, facts: Facts, settings: FailoverSettings) -> tuple[HostId, int] | None:
    """The master to rejoin, and how many follow it: another master that answers as one
    (its xapi and its daemon say so), that we have not told to follow us
    (`State.told_to_follow`), and that ranks before this one (`rank`); None while this
    master ranks first among those it knows of."""
    view, contact, probes, me = facts.view, facts.contact, facts.probes, facts.me
    followed: dict[HostId, int] = {}
    follows = _follows(view, contact, probes)
    for peer in contact.mutual:
        master = follows.get(peer)
        if master is not None and master != me and master in view.hosts:
            followed[master] = followed.get(master, 0) + 1

    def master_now(h: HostId) -> bool:
        # Its xapi answered as a master, and its daemon (if heard) says so too: a probe
        # of a host we hear is taken only every few minutes, and one that has stepped
        # down since still answers as a master in it.
        probe = probes.get(h)
        return probe is not None and probe.answered and probe.follows is None \
            and follows.get(h) == h

    # Two masters: one must give way, by a rule both compute alike. A master followed by
    # a majority used to stay whatever its rank, and one not followed yielded to it: with
    # the followers each saw taken from heartbeats minutes old, each could count a
    # majority for the other, or the old master one of slaves already told to rejoin the
    # new (chaos seed 1000007, 7 hosts: it recovered the new master into its slave while
    # stepping down to it, and the pool had none).
    # Nor one we told to follow us: its xapi answers as a master until its fuse restarts it
    # as our slave, and its daemon says so until it reads the pool again.
    rivals = [h for h in contact.mutual if h in view.hosts and master_now(h)
              and not state.told_to_follow(h, facts.now)]
    if not rivals:
        return None
    first = min([me, *rivals], key=_ranking(state, facts, settings))
    return None if first == me else (first, followed.get(first, 0))


def _step_down(state: State, facts: Facts, rejoin: tuple[HostId, int]) -> Decision:
    view, now = facts.view, facts.now
    master, count = rejoin
    state = replace(state, last_step_down=now, stepping_to=master)
    why = "another master answers and ranks first (a later promotion, or the election's order)"
    return _decided(state, Role.STEPPING_DOWN, f"{why} ({view.hosts[master].name}): "
                    "this host rejoins it", [
                        _say("error", "failover.stepping_down",
                             new_master=view.hosts[master].name, followers=count,
                             pool=len(view.hosts),
                             why=why + ": this host rejoins it with "
                             "pool.emergency_reset_master, and acts on nothing meanwhile"),
                        ResetMaster(view.hosts[master].address),
                        # we step down: the other master must hear it now, not later
                        BeatNow()])


def _recover_strays(state: State, facts: Facts,
                    settings: FailoverSettings) -> tuple[State, list[Action]]:
    view, now, contact, probes = facts.view, facts.now, facts.contact, facts.probes
    down = facts.down - facts.proven_off
    dead = facts.down
    me = view.hosts.get(facts.me)
    address = me.address if me is not None else ""

    listened = state.listened(now, settings)

    def still_master(h: HostId) -> bool:
        probe = probes.get(h)
        if probe is not None and probe.answered:
            return probe.follows is None
        return contact.masters.get(h) == h

    def stray(h: HostId) -> bool:
        probe = probes.get(h)
        named = contact.masters.get(h)
        if probe is not None and probe.answered and probe.follows is None:
            # It answers as a master. One whose daemon lives and says so gives way on
            # its own side (outvoted: to the master that ranks first):
            # told to be our slave while it told us to be its own, the pool had no
            # master at all (chaos seed 7400023200013). One whose daemon is silent,
            # once we have listened long enough to hear it, is told.
            return listened and not (h in contact.mutual and named == h)
        if probe is not None and probe.answered and probe.follows != address:
            return True
        if h not in contact.mutual or named in (None, facts.me, h):
            return False  # (itself: a rival whose daemon lives, as above)
        # Its heartbeat names another master: one that is a master still is a rival it
        # follows. One that is dead, or that follows us now (it stepped down to us, or
        # we recovered it), is what its daemon read before and has not read since;
        # whether its xapi follows us is for the probe to say (above), and telling it
        # again on the heartbeat's word restarted its xapi once more (at 64 hosts,
        # every slave's, every recover_retry, while each re-read the pool; virtual chaos
        # seed 1000821: each restart before its daemon could read the pool, four slaves
        # named a master that had stepped down to us, were told every 5 s, and none was
        # ever enabled again).
        return named not in dead and still_master(named)

    strays = sorted(
        h.uuid for h in view.hosts.values()
        if h.uuid != facts.me and h.uuid not in down and stray(h.uuid)
    )
    if strays:
        # A host that followed another master may run VMs our database never heard of
        # (that master restarted them there): whatever the record says, the database
        # is trusted again only once every such host has rejoined us and resynced.
        state = replace(state, strays_seen=True)
    if not strays or now - state.last_recover < settings.recover_retry:
        return state, []
    # every host told restarts its xapi: seen anew once it has
    state = replace(state, last_recover=now, rejoined=frozenset())
    names = tuple(_name(view, h) for h in strays)
    by_ref = tuple((h.ref, h.name) for h in view.hosts.values())
    return state, [RecoverSlaves(names, by_ref)]


def slaves_recovered(state: State, facts: Facts, refs: Collection[str] | None) -> State:
    """pool.recover_slaves returned the hosts it told (`refs`), or failed (None: it may have
    told any of them before it did). xapi tells every other host of its database whose xapi
    answers, a master included, and leaves out any it cannot reach (xapi_pool.ml
    recover_slaves): one that was off is told nothing, and may yet be a master to rejoin."""
    now = facts.now
    told = {h: at for h, at in state.told.items() if now - at < STEP_DOWN_HOLD}
    for host in facts.view.hosts.values():
        if host.uuid != facts.me and (refs is None or host.ref in refs):
            told[host.uuid] = now
    return replace(state, told=told)


def _told_since(state: State, facts: Facts) -> State:
    """`State.told` as of this tick: a host told to follow us that a probe made since
    found answering as anything but a master (our slave, booting, or in emergency) has had
    its xapi restart, or was no master when told. Its xapi now follows the pool.conf written
    last, ours or that of a promotion of its own since: one that answers as a master again
    was made one after we told it, and is a rival like any other (virtual chaos seed
    10000044: told while an emergency slave, then promoted by a majority of the pool, it
    held the master that had told it for the whole hold)."""
    now, probes = facts.now, facts.probes
    told = {}
    for host, at in state.told.items():
        probe = probes.get(host)
        if now - at >= STEP_DOWN_HOLD or (
                probe is not None and probe.at > at and probe.answered
                and probe.follows is not None):
            continue
        told[host] = at
    return state if told == state.told else replace(state, told=told)


def _sync(state: State, now: float, settings: FailoverSettings) -> tuple[State, list[Action]]:
    interval = settings.sync_interval
    if interval <= 0:
        return state, []
    if state.last_sync is None:
        return replace(state, last_sync=now), []  # the first push one interval after we start
    if now - state.last_sync < interval:
        return state, []
    return replace(state, last_sync=now), [SyncDatabase()]


def hold_lock(state: State, facts: Facts, settings: FailoverSettings) -> Decision:
    """HoldLock: the incident lock as read in `facts.view`, at `facts.wall` (the time it is
    written, after this tick's other calls)."""
    actions: list[Action] = []
    view = facts.view
    ttl = settings.lock_ttl
    epoch = pool_lock.current_epoch(dict(view.other_config))
    decision = pool_lock.decide(view.other_config.get(pool_lock.LOCK_KEY), me=facts.me,
                                epoch=epoch, now=facts.wall, ttl=ttl)
    if decision.step is pool_lock.Step.HELD:
        return lock_written(Decision(state, tuple(actions)), True, "")
    if decision.step is pool_lock.Step.WAIT:
        return lock_written(Decision(state, tuple(actions)), False, decision.why)
    mine = pool_lock.Lock(facts.me, epoch, facts.wall + ttl).encode()
    actions.append(WriteLock(decision.step, mine, decision.why, epoch))
    return _decided(state, Role.WAITING_LOCK, f"writing the incident lock ({decision.why})",
                    actions, may_act=True)


def lock_written(decision: Decision, held: bool, why: str) -> Decision:
    """The lock as held (or not, and why) after this tick's read or write of it."""
    state, actions = decision.state, list(decision.actions)
    if why != state.lock_why:
        if why:
            actions.append(_say("warning", "failover.lock_not_held", why=why,
                                fix="only the holder acts on incidents; this node waits"))
        state = replace(state, lock_why=why)
    if not held:
        return _decided(state, Role.WAITING_LOCK, f"the incident lock is not ours: {why}",
                        actions)
    return _decided(state, Role.RECONCILING, "holding the incident lock", actions,
                    may_act=True)


def reconcile(state: State, facts: Facts) -> Decision:
    """Whether the database can be trusted about where VMs run: after a promotion, or
    once a host was seen following another master, only when every other host has
    rejoined us (or is itself down), and so resynced its VMs. Recorded in
    pool.other_config, so a restarted daemon knows it too (and its first probes show
    any host that follows another master)."""
    view = facts.view
    epoch = pool_lock.current_epoch(dict(view.other_config))
    recorded = epoch == 0 or _int(view.other_config.get(RECONCILED_KEY)) >= epoch
    if recorded and not state.strays_seen:
        return _decided(state, Role.ACTING, "the master, with the lock and a reconciled "
                        "database", may_act=True)
    me = view.hosts.get(facts.me)
    address = me.address if me is not None else ""
    rejoined = set(state.rejoined)
    for host, probe in facts.probes.items():
        if probe.answered and probe.follows == address:
            rejoined.add(host)
        elif probe.answered:
            rejoined.discard(host)
    state = replace(state, rejoined=frozenset(rejoined))
    # A probe that timed out says nothing new: a host seen following us since we told
    # it has rejoined, however loaded its xapi (at 64 hosts, with every slave's xapi
    # restarting at once, one tick's probes timed out and the wait began again).
    waiting = tuple(sorted(
        h.name for h in view.hosts.values()
        if h.uuid != facts.me and h.uuid not in facts.down and h.uuid not in rejoined
    ))
    if waiting:
        actions: list[Action] = []
        if waiting != state.waiting_for:
            actions.append(_say("warning", "failover.reconcile_waiting", hosts=list(waiting),
                                why="the database may not know what these hosts run (a copy "
                                "from before a promotion, or they followed another master); "
                                "no VM is reset until they rejoin (and say what they run) or "
                                "are confirmed down"))
        return _decided(replace(state, waiting_for=waiting), Role.RECONCILING,
                        f"waiting for {', '.join(waiting)} to rejoin: the database may not "
                        "know what they run", actions)
    state = replace(state, waiting_for=(), strays_seen=False)
    if recorded:
        # Hosts seen following another master after this epoch was reconciled (a stale
        # heartbeat, or strays recovered since) are all back: nothing new to record.
        return _decided(state, Role.ACTING, "the master, with the lock and a reconciled "
                        "database", may_act=True)
    return _decided(state, Role.ACTING, f"every host rejoined: epoch {epoch} reconciled",
                    [RecordReconciled(epoch, RECONCILED_KEY in view.other_config)],
                    may_act=True)


def reconcile_recorded(state: State, epoch: int, now: float) -> Decision:
    state = mark(state, "reconciled", now)
    return _decided(state, Role.ACTING, state.reason,
                    [_say("warning", "failover.reconciled", epoch=epoch,
                          timeline=timeline_since(state) or None)], may_act=True)


def reconcile_unrecorded(state: State, why: str) -> Decision:
    return _decided(state, Role.RECONCILING, f"cannot record the reconciled epoch: {why}",
                    [_say("error", "failover.reconcile_unrecorded", why=why)])


def reread_gate(state: State, may_act: bool) -> Decision:
    """The master's last gate, at the end of each of its ticks: `may_act` as the gates
    before it decided."""
    if may_act and not state.acted and not state.rereading:
        # Allowed to act from this tick's probes (every host rejoined), but this view was
        # read before them: a host that just rejoined is disabled until its xapi has
        # started (Pool.hello), and a VM placed on it would be refused. Act from a view
        # read now, at once.
        return _decided(replace(state, rereading=True, acted=False), Role.RECONCILING,
                        "every host rejoined: acting from a view read now", [ReadNow()])
    return Decision(replace(state, rereading=False, acted=may_act), (), may_act)


# -- who follows whom ----------------------------------------------------------------------


def rival_masters(facts: Facts, state: State, settings: FailoverSettings) -> tuple[str, ...]:
    """The other masters that answer while one of them ranks before this one (`rank`), or
    while no majority follows this one (empty: none, or a majority follows us and we rank
    first). Then this master acts on nothing. pool.recover_slaves tells every host of the
    database that follows another master to follow us, a master included: called while a
    master that ranks before us answers, it made that one our slave while we stepped down
    to it, and the pool had no master (chaos seed 1000007, 7 hosts). And an incident could
    fence hosts that are only following the rival."""
    view, contact, probes, me = facts.view, facts.contact, facts.probes, facts.me
    # A probe can be a tick old: a host that has just promoted itself says so first in
    # its heartbeats.
    hosts = ({h for h, p in probes.items()
              if h != me and h in view.hosts and p.answered and p.follows is None}
             | {h for h, m in contact.masters.items() if h == m and h != me and h in view.hosts})
    if not hosts:
        return ()
    ranked = _ranking(state, facts, settings)
    before = any(ranked(h) < ranked(me) for h in hosts)
    # One that answers as a master and whose daemon we have not heard has a rank we do not
    # know yet: until we have listened long enough to hear it (since we became master, or
    # last regained quorum), it may be the one the others elected while we were cut off,
    # and pool.recover_slaves would take it too (virtual chaos seed 1000135, 5 hosts: the
    # old master, quorate again at the heal, recovered the new master into its slave half
    # a second before it heard it, then stepped down to it).
    unknown = not state.listened(facts.now, settings) and any(
        h not in contact.epochs for h in hosts)
    if not before and not unknown and _followed_by_majority(
            facts, _follows(view, contact, probes)):
        return ()
    return tuple(sorted(_name(view, h) for h in hosts))


def _followed_by_majority(facts: Facts, follows: Mapping[HostId, HostId]) -> bool:
    """`follows`: as _follows has it."""
    followers: set[HostId] = {facts.me} | {h for h, m in follows.items() if m == facts.me}
    members = len(facts.view.hosts)
    if facts.contact.witness is not None:
        members += 1
        if facts.contact.witness:
            followers.add(WITNESS)
    return len(followers) * 2 > members


def _follows(view: PoolView, contact: Contact,
             probes: Mapping[HostId, Joined]) -> dict[HostId, HostId]:
    """Whom each host follows, as far as its heartbeat and our last probe of it agree. A
    heartbeat names the master its daemon last read, which can be minutes old (a slave
    reads the pool now and then, and not at all while its master is silent); the probe
    says whom its xapi followed when it answered. Either alone is taken. A host of which
    they disagree counts for no master: after a double crash, a slave whose heartbeat still
    named the old master, while its xapi followed the one promoted since, made a majority
    for each of the two masters when both came back, and both stepped down (chaos seed
    7600023800054)."""
    by_address = {h.address: h.uuid for h in view.hosts.values()}
    follows: dict[HostId, HostId] = {}
    for h in view.hosts:
        named = contact.masters.get(h)
        probe = probes.get(h)
        probed: HostId | None = None
        if probe is not None and probe.answered:
            probed = h if probe.follows is None else by_address.get(probe.follows, "")
        if named is not None and probed is not None and named != probed:
            continue
        master = named if named is not None else probed
        if master:
            follows[h] = master
    return follows


def _int(value: str | None) -> int:
    try:
        return int(value or "0")
    except ValueError:
        return 0


def _name(view: PoolView, host: HostId) -> str:
    return view.hosts[host].name if host in view.hosts else host
