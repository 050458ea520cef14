"""Master failover, applied once per daemon tick.

On a slave: watch the master (its xapi answering our probe, or its daemon's heartbeats);
once it is confirmed down, by the same detector rules as any host and only while quorate,
vote; if elected by a strict majority, promote this host with
pool.emergency_transition_to_master through a local session.

On the master: raise the pool's promotion epoch after a promotion, tell hosts that still
follow another master to follow us (pool.recover_slaves, again until they do), keep the
slaves' database copies fresh (pool.sync_database), hold the pool-wide incident lock, and
hold back new incidents until every host has rejoined or is itself down: a promoted master
starts from a database copy that may be minutes old, and only a host that has rejoined
has told the master which VMs it really runs (xapi resyncs them at Pool.hello).

A master that finds a majority following another master that answers as master steps
down with pool.emergency_reset_master: an old master coming back must not stay a second one.

Every rule here is a steady state, not a one-shot step: a daemon restarted in the middle
of a failover finds the same facts and carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from xenhad.detector import Detector, DetectorSettings, HostState, Observation, VerdictKind
from xenhad.errors import XenhadError
from xenhad.failover import lock as pool_lock
from xenhad.failover.actions import FailoverActions
from xenhad.failover.election import Elector, Vote, elected
from xenhad.failover.witness import WITNESS
from xenhad.model import HostId, PoolView
from xenhad.xapi.client import Xapi
from xenhad.xapi.errors import XapiError, XapiUnreachable

log = structlog.get_logger("xenhad.failover")

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


@dataclass(frozen=True)
class FailoverSettings:
    priority: int = 0
    stall: float = 15.0
    recover_retry: float = 5.0
    sync_interval: float = 60.0
    lock_ttl: float = 30.0
    promote_timeout: float = 90.0
    """How long a transition may take before it is tried again."""
    rejoin_grace: float = 60.0
    """After our own promotion, how long we ignore a majority still naming the old master."""
    listen: float = 0.0
    """How long a master listens for heartbeats before it takes a host that answers as a
    master, and whose daemon says nothing, for a stray (peers.window)."""


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


@dataclass(frozen=True)
class Joined:
    """The master's last probe of one host: does its xapi follow us?"""

    answered: bool
    follows: str | None
    """The master address it answered HOST_IS_SLAVE with (None: answered as a master)."""


class Failover:
    def __init__(
        self,
        me: HostId,
        settings: FailoverSettings,
        detector: DetectorSettings,
        actions: FailoverActions,
        *,
        wall: Callable[[], float],
    ) -> None:
        self.me = me
        self.settings = settings
        self._actions = actions
        self._wall = wall
        self._watch = Detector(detector)
        self._elector = Elector(me, stall=settings.stall)
        self._watched: HostId | None = None
        self._promoting_at: float | None = None
        self._promoted_at: float | None = None
        self._timeline: dict[str, float] = {}
        self._last_recover = float("-inf")
        self._last_sync: float | None = None
        self._last_step_down = float("-inf")
        self._lock_why = ""
        self._waiting_for: list[str] = []
        self._rejoined: set[HostId] = set()
        """Hosts whose last answer to our probe, since we last told the slaves to follow
        us, was that they do."""
        self._strays_seen = False
        self._rivals_logged: list[str] = []
        self._promoting_logged: frozenset[HostId] = frozenset()
        self._probes_fresh_since = float("-inf")
        self._rejoin: tuple[HostId, int] | None = None
        self._stepping_to: HostId | None = None
        self._replaced: HostId | None = None
        self._master_since: float | None = None
        """When this daemon began acting as master (as_master): until `listen` has passed,
        it may not have heard a rival's heartbeat yet."""

    @property
    def vote(self) -> Vote | None:
        return self._elector.vote

    def take_replaced(self) -> HostId | None:
        """Once, after our promotion: the master we replaced, already confirmed down by our
        watch of it, so that the new master need not confirm it all over again."""
        replaced, self._replaced = self._replaced, None
        return replaced

    @property
    def wants_fresh_probes(self) -> bool:
        """Whom each host's xapi follows is changing (we recovered slaves, wait for them to
        rejoin, or another master answers): every host should be probed every tick, heard
        or not."""
        return bool(self._waiting_for) or self._last_recover > self._probes_fresh_since \
            or bool(self._rivals_logged)

    def announced_master(self, read: HostId, now: float) -> HostId:
        """The master our heartbeats name: the one our last read of the pool says, or,
        while we step down, the one we rejoin. Our xapi still answers as a master until it
        restarts as that one's slave, and a heartbeat naming ourselves meanwhile made us a
        master with a majority in the other master's eyes: it stepped down too, and the
        pool had none (chaos seed 7700024100004)."""
        if self._stepping_to is not None and now - self._last_step_down < STEP_DOWN_HOLD:
            return self._stepping_to
        return read

    def awaits_rejoin(self, now: float) -> bool:
        """Just promoted, we wait for the slaves to rejoin: no VM of the dead master is
        reset before they have, so every tick of the wait is downtime."""
        return bool(self._waiting_for) and self._promoted_at is not None and (
            now - self._promoted_at < REJOIN_WATCH)

    @property
    def rejoined(self) -> frozenset[HostId]:
        """Hosts whose last answer to our probe, since we last told the slaves to follow
        us, was that they do: while others rejoin, they need no fresh probe. While another
        master answers, every host does."""
        return frozenset() if self._rivals_logged else frozenset(self._rejoined)

    def probed_all(self, now: float) -> None:
        self._probes_fresh_since = now

    @property
    def master_in_doubt(self) -> bool:
        """As a slave: our master is suspect or down (and we are not replacing it)."""
        return (self._watched is not None and self._promoting_at is None
                and self._watch.state(self._watched) is not HostState.UP)

    @property
    def promoting(self) -> bool:
        return self._promoting_at is not None

    def announces_promotion(self, now: float) -> bool:
        """What our heartbeats say (Heartbeat.promoting): our xapi may become master now."""
        return self._promoting_at is not None and now - self._promoting_at < PROMOTION_WINDOW

    def role_changing(self, now: float) -> bool:
        """Our own xapi is restarting into another role (we promoted it, or stepped it
        down): what it answered before, event tokens included, was another database's."""
        return self._promoting_at is not None or now - self._last_step_down < STEP_DOWN_HOLD

    def _mark(self, phase: str, now: float) -> None:
        self._timeline.setdefault(phase, now)

    # -- on a slave --------------------------------------------------------------------

    async def watch_master(
        self,
        now: float,
        view: PoolView,
        *,
        quorate: bool,
        answered: bool,
        contact: Contact,
    ) -> None:
        old = view.master
        self._master_since = None
        if old != self._watched:
            self._watch = Detector(self._watch.settings)
            self._watched = old
            self._elector.withdraw()
        name = view.hosts[old].name if old in view.hosts else old
        obs = Observation(xapi_live=True, answered=answered, enabled=True)
        for verdict in self._watch.observe(now, {old: obs}, quorate=quorate):
            if verdict.kind is VerdictKind.DOWN:
                self._timeline = {"detected": verdict.since, "confirmed": now}
                log.error("failover.master_down", master=name, misses=verdict.misses,
                          reason=verdict.reason)
            elif verdict.kind is VerdictKind.SUSPECT:
                log.warning("failover.master_suspect", master=name, reason=verdict.reason)
            elif verdict.kind in (VerdictKind.CLEARED, VerdictKind.BACK):
                log.info("failover.master_answers", master=name)
        if self._watch.state(old) is not HostState.DOWN or not quorate:
            if self._elector.vote is not None:
                log.info("failover.vote_withdrawn", master=name,
                         why="the master answers again" if quorate else "no quorum")
                self._elector.withdraw()
            return
        if self._promoting_at is not None:
            if now - self._promoting_at > self.settings.promote_timeout:
                log.error("failover.promotion_stalled", after_s=round(now - self._promoting_at),
                          why="this host's xapi did not come back as master; trying again")
                self._promoting_at = None
            return
        members = set(view.hosts)
        if contact.witness is not None:
            members.add(WITNESS)
        eligible = {self.me: self.settings.priority}
        for peer in contact.mutual & members:
            if peer != old:
                eligible[peer] = contact.priorities.get(peer, 0)
        before = self._elector.vote
        vote = self._elector.choose(old, eligible, now)
        if vote != before:
            log.warning("failover.voted", master=name, candidate=_name(view, vote.candidate),
                        among=sorted(_name(view, h) for h in eligible))
        if vote.candidate != self.me:
            return
        ballots = {**contact.ballots, self.me: vote}
        if contact.witness:
            ballots[WITNESS] = vote  # the lease's vote goes with its holder
        if not elected(vote, ballots, members):
            return
        self._mark("agreed", now)
        log.warning("failover.agreed", master=name, candidate=_name(view, self.me),
                    voters=sorted(_name(view, h) for h, b in ballots.items() if b == vote),
                    pool=len(members))
        self._promoting_at = now
        try:
            await self._actions.transition_to_master()
        except (XapiError, XapiUnreachable, XenhadError) as exc:
            log.error("failover.transition_failed", why=str(exc),
                      fix="retried at the next tick while this host is still elected")
            self._promoting_at = None
            return
        self._mark("promoting", now)
        log.warning("failover.promoting", master=name,
                    why="pool.emergency_transition_to_master called; xapi restarts as master")

    # -- on the master -----------------------------------------------------------------

    async def as_master(
        self,
        xapi: Xapi,
        view: PoolView,
        now: float,
        *,
        contact: Contact,
        probes: Mapping[HostId, Joined],
        down: frozenset[HostId],
        quorate: bool,
        proven_off: frozenset[HostId] = frozenset(),
    ) -> bool:
        """The master's duties; returns whether this node may open and run incidents.
        `proven_off`: hosts of `down` that a fence powered off (an incident closed done):
        one that answers again has rebooted, with no VM running, into whatever pool.conf
        it had, and is recovered into the pool like any stray."""
        self._elector.withdraw()
        # A master watches no master: left set, the one it replaced (DOWN) would keep it "in
        # doubt" for good, and every read of the pool on the short budget that is meant for
        # a slave whose master is silent (at 64 hosts and 1,000 VMs, one it never met).
        watched, self._watched = self._watched, None
        if self._master_since is None:
            self._master_since = now
        if self._promoting_at is not None:
            self._promoting_at = None
            self._promoted_at = now
            self._replaced = watched
            self._rejoined.clear()
            self._mark("promoted", now)
            try:
                await self._raise_epoch(xapi, view)
            except (XapiError, XapiUnreachable, XenhadError) as exc:
                # Without a new epoch, a lock resurrected from our old copy would keep us
                # waiting until it expires: slower, not unsafe.
                log.error("failover.epoch_failed", why=str(exc))
            log.warning("failover.promoted", after_s=self._since("detected", now))
            return False  # this view predates the new epoch: act from the next one
        elif now - self._last_step_down < STEP_DOWN_HOLD:
            # emergency_reset_master was called: our xapi restarts as the rival's slave and
            # answers as a master until then. Whatever this view says (a host that boots
            # still following us makes a majority of it), pool.recover_slaves now would
            # make the rival our slave while we become its: a pool with no master.
            return False
        elif self._outvoted(view, now, contact, probes):
            await self._step_down(view, now)
            return False
        if contact.promoting - {self.me}:
            # The survivors elected a replacement for a master they found dead, which may
            # be this one come back: until it is master (and this one is outranked by its
            # epoch, or followed by none), recovering slaves would make it ours.
            if self._promoting_logged != contact.promoting:
                log.warning("failover.rival_promoting",
                            hosts=sorted(_name(view, h) for h in contact.promoting),
                            why="a host is becoming master: this one acts on nothing")
            self._promoting_logged = contact.promoting
            return False
        self._promoting_logged = frozenset()
        if not quorate or self._rival_answers(view, contact, probes):
            return False
        await self._recover_strays(xapi, view, now, contact, probes, down - proven_off, down)
        await self._sync(xapi, now)
        return await self._hold_lock(xapi, view)

    async def check_reconciled(
        self,
        xapi: Xapi,
        view: PoolView,
        now: float,
        probes: Mapping[HostId, Joined],
        down: frozenset[HostId],
    ) -> bool:
        """Whether the database can be trusted about where VMs run: after a promotion, or
        once a host was seen following another master, only when every other host has
        rejoined us (or is itself down), and so resynced its VMs. Recorded in
        pool.other_config, so a restarted daemon knows it too (and its first probes show
        any host that follows another master)."""
        epoch = pool_lock.current_epoch(dict(view.other_config))
        recorded = epoch == 0 or _int(view.other_config.get(RECONCILED_KEY)) >= epoch
        if recorded and not self._strays_seen:
            return True
        me = view.hosts.get(self.me)
        address = me.address if me is not None else ""
        for host, probe in probes.items():
            if probe.answered and probe.follows == address:
                self._rejoined.add(host)
            elif probe.answered:
                self._rejoined.discard(host)
        # A probe that timed out says nothing new: a host seen following us since we told
        # it has rejoined, however loaded its xapi (at 64 hosts, with every slave's xapi
        # restarting at once, one tick's probes timed out and the wait began again).
        waiting = sorted(
            h.name for h in view.hosts.values()
            if h.uuid != self.me and h.uuid not in down and h.uuid not in self._rejoined
        )
        if waiting:
            if waiting != self._waiting_for:
                log.warning("failover.reconcile_waiting", hosts=waiting,
                            why="the database may not know what these hosts run (a copy from "
                            "before a promotion, or they followed another master); no VM is "
                            "reset until they rejoin (and say what they run) or are "
                            "confirmed down")
            self._waiting_for = waiting
            return False
        self._waiting_for = []
        self._strays_seen = False
        if recorded:
            # Hosts seen following another master after this epoch was reconciled (a stale
            # heartbeat, or strays recovered since) are all back: nothing new to record.
            return True
        try:
            await _replace(xapi, view.pool_ref, RECONCILED_KEY, str(epoch),
                           exists=RECONCILED_KEY in view.other_config)
        except (XapiError, XapiUnreachable, XenhadError) as exc:
            log.error("failover.reconcile_unrecorded", why=str(exc))
            return False
        self._mark("reconciled", now)
        log.warning("failover.reconciled", epoch=epoch,
                    timeline=self._timeline_since(now) or None)
        return True

    async def _raise_epoch(self, xapi: Xapi, view: PoolView) -> None:
        epoch = pool_lock.current_epoch(dict(view.other_config)) + 1
        await _replace(xapi, view.pool_ref, pool_lock.EPOCH_KEY, str(epoch),
                       exists=pool_lock.EPOCH_KEY in view.other_config)
        log.info("failover.epoch", epoch=epoch)

    def _outvoted(
        self, view: PoolView, now: float, contact: Contact, probes: Mapping[HostId, Joined]
    ) -> bool:
        """Whether a majority of the pool follows another master that answers as one; sets
        the master to rejoin."""
        self._rejoin = None
        if (self._promoted_at is not None and now - self._promoted_at < self.settings.rejoin_grace
                and self._last_recover >= self._promoted_at):
            # The slaves we told to rejoin still name the old master until their xapi has
            # restarted. Before we told any, a majority that follows another live master
            # does so for its own reasons (it came back from the dead, and they with it):
            # waiting out the grace only kept two masters (no quorum, nothing recovered) for
            # a minute, which the old master's fencing of this healthy one used to cut short.
            return False
        followed: dict[HostId, int] = {}
        follows = _follows(view, contact, probes)
        for peer in contact.mutual:
            master = follows.get(peer)
            if master is not None and master != self.me and master in view.hosts:
                followed[master] = followed.get(master, 0) + 1

        def master_now(h: HostId) -> bool:
            # Its xapi answered as a master, and its daemon (if heard) says so too: a probe
            # of a host we hear is taken only every few minutes, and one that has stepped
            # down since still answers as a master in it.
            probe = probes.get(h)
            return probe is not None and probe.answered and probe.follows is None \
                and follows.get(h) == h

        for master, count in followed.items():
            if count * 2 > len(view.hosts) and master_now(master):
                self._rejoin = (master, count)
                return True
        if self._followed_by_majority(view, contact, follows):
            return False
        # No master has a majority (a host of the pool is down, and two masters split the
        # rest): neither may act (_rival_answers), so one must give way, by a rule both
        # sides compute alike. The later promotion first (the higher epoch: an old master
        # that rebooted into its old role yields to the one the survivors elected), then
        # as the election decides: priority, then the lower uuid.
        rivals = [h for h in contact.mutual if h in view.hosts and master_now(h)]
        mine = pool_lock.current_epoch(dict(view.other_config))
        ranked = sorted([self.me, *rivals],
                        key=lambda h: (-contact.epochs.get(h, 0), -contact.priorities.get(h, 0),
                                       h) if h != self.me
                        else (-mine, -self.settings.priority, h))
        if ranked[0] != self.me:
            self._rejoin = (ranked[0], followed.get(ranked[0], 0))
            return True
        return False

    async def _step_down(self, view: PoolView, now: float) -> None:
        assert self._rejoin is not None
        master, count = self._rejoin
        self._last_step_down = now
        self._stepping_to = master
        log.error("failover.stepping_down", new_master=view.hosts[master].name,
                  followers=count, pool=len(view.hosts),
                  why=("a majority follows another master" if count * 2 > len(view.hosts)
                       else "no master has a majority, and the other one ranks first")
                  + ": this host rejoins it with pool.emergency_reset_master, and acts on "
                  "nothing meanwhile")
        try:
            await self._actions.reset_master(view.hosts[master].address)
        except (XapiError, XapiUnreachable, XenhadError) as exc:
            log.error("failover.step_down_failed", why=str(exc))

    async def _recover_strays(
        self,
        xapi: Xapi,
        view: PoolView,
        now: float,
        contact: Contact,
        probes: Mapping[HostId, Joined],
        down: frozenset[HostId],
        dead: frozenset[HostId],
    ) -> None:
        me = view.hosts.get(self.me)
        address = me.address if me is not None else ""

        listened = self._master_since is not None and (
            now - self._master_since >= self.settings.listen)

        def stray(h: HostId) -> bool:
            probe = probes.get(h)
            named = contact.masters.get(h)
            if probe is not None and probe.answered and probe.follows is None:
                # It answers as a master. One whose daemon lives and says so gives way on
                # its own side (_outvoted: to a majority, else to the later promotion):
                # told to be our slave while it told us to be its own, the pool had no
                # master at all (chaos seed 7400023200013). One whose daemon is silent,
                # once we have listened long enough to hear it, is told.
                return listened and not (h in contact.mutual and named == h)
            if probe is not None and probe.answered and probe.follows != address:
                return True
            if h not in contact.mutual or named in (None, self.me, h):
                return False  # (itself: a rival whose daemon lives, as above)
            # Its heartbeat names another master: a live one is a rival it follows. A dead
            # one is what its daemon read before the promotion and has not read since;
            # whether its xapi follows us is for the probe to say (above), and telling it
            # again on the heartbeat's word restarted its xapi once more (at 64 hosts,
            # every slave's, every recover_retry, while each re-read the pool).
            return named not in dead

        strays = sorted(
            h.uuid for h in view.hosts.values()
            if h.uuid != self.me and h.uuid not in down and stray(h.uuid)
        )
        if strays:
            # A host that followed another master may run VMs our database never heard of
            # (that master restarted them there): whatever the record says, the database
            # is trusted again only once every such host has rejoined us and resynced.
            self._strays_seen = True
        if not strays or now - self._last_recover < self.settings.recover_retry:
            return
        self._last_recover = now
        self._rejoined.clear()  # every host told restarts its xapi: seen anew once it has
        names = [_name(view, h) for h in strays]
        try:
            refs = await xapi.pool_recover_slaves()
        except (XapiError, XapiUnreachable, XenhadError) as exc:
            log.error("failover.recover_slaves_failed", hosts=names, why=str(exc),
                      fix=f"retried in {self.settings.recover_retry:g}s")
            return
        by_ref = {h.ref: h.name for h in view.hosts.values()}
        told = sorted(by_ref.get(r, r) for r in refs)
        self._mark("slaves_recovered", now)
        log.warning("failover.slaves_recovered", told=told,
                    not_reached=sorted(set(names) - set(told)) or None,
                    after_s=self._since("detected", now))

    def _rival_answers(self, view: PoolView, contact: Contact,
                       probes: Mapping[HostId, Joined]) -> bool:
        """Whether another master answers while no majority follows this one. Then this
        master acts on nothing: pool.recover_slaves could make the rival our slave while
        a majority follows it and we are the one to step down (both would restart as each
        other's slave, and the pool would have no master), and an incident could fence
        hosts that are only following the rival."""
        # A probe can be a tick old: a host that has just promoted itself says so first in
        # its heartbeats.
        rivals = sorted({_name(view, h) for h, p in probes.items()
                         if h != self.me and h in view.hosts and p.answered
                         and p.follows is None}
                        | {_name(view, h) for h, m in contact.masters.items()
                           if h == m and h != self.me and h in view.hosts})
        if not rivals or self._followed_by_majority(view, contact,
                                                    _follows(view, contact, probes)):
            self._rivals_logged = []
            return False
        if rivals != self._rivals_logged:
            log.warning("failover.rival_master", masters=rivals,
                        why="another master answers and no majority follows this one: "
                        "nothing is recovered until one does (or this one steps down)")
        self._rivals_logged = rivals
        return True

    def _followed_by_majority(self, view: PoolView, contact: Contact,
                              follows: Mapping[HostId, HostId]) -> bool:
        """`follows`: as _follows has it."""
        followers: set[HostId] = {self.me} | {h for h, m in follows.items() if m == self.me}
        members = len(view.hosts)
        if contact.witness is not None:
            members += 1
            if contact.witness:
                followers.add(WITNESS)
        return len(followers) * 2 > members

    async def _sync(self, xapi: Xapi, now: float) -> None:
        interval = self.settings.sync_interval
        if interval <= 0:
            return
        if self._last_sync is None:
            self._last_sync = now  # the first push one interval after we start
            return
        if now - self._last_sync < interval:
            return
        self._last_sync = now
        try:
            await xapi.pool_sync_database()
        except (XapiError, XapiUnreachable, XenhadError) as exc:
            log.warning("failover.sync_failed", why=str(exc))

    async def _hold_lock(self, xapi: Xapi, view: PoolView) -> bool:
        wall = self._wall()
        ttl = self.settings.lock_ttl
        epoch = pool_lock.current_epoch(dict(view.other_config))
        decision = pool_lock.decide(view.other_config.get(pool_lock.LOCK_KEY), me=self.me,
                                    epoch=epoch, now=wall, ttl=ttl)
        step = decision.step
        if step is pool_lock.Step.HELD:
            return self._lock_state(True, "")
        if step is pool_lock.Step.WAIT:
            return self._lock_state(False, decision.why)
        mine = pool_lock.Lock(self.me, epoch, wall + ttl).encode()
        try:
            if step is not pool_lock.Step.TAKE:
                await xapi.pool_remove_from_other_config(view.pool_ref, pool_lock.LOCK_KEY)
            await xapi.pool_add_to_other_config(view.pool_ref, pool_lock.LOCK_KEY, mine)
        except XapiError as exc:
            if exc.code == "MAP_DUPLICATE_KEY":
                return self._lock_state(False, "another daemon took the lock first")
            return self._lock_state(False, f"cannot write the lock: {exc}")
        except (XapiUnreachable, XenhadError) as exc:
            return self._lock_state(False, f"cannot write the lock: {exc}")
        if step is not pool_lock.Step.RENEW:
            log.info("failover.lock_taken", why=decision.why, epoch=epoch)
        return self._lock_state(True, "")

    def _lock_state(self, held: bool, why: str) -> bool:
        if why != self._lock_why:
            if why:
                log.warning("failover.lock_not_held", why=why,
                            fix="only the holder acts on incidents; this node waits")
            self._lock_why = why
        return held

    def _since(self, phase: str, now: float) -> float | None:
        start = self._timeline.get(phase)
        return None if start is None else round(now - start, 2)

    def _timeline_since(self, now: float) -> dict[str, float]:
        start = self._timeline.get("detected")
        if start is None:
            return {}
        return {phase: round(t - start, 2) for phase, t in
                sorted(self._timeline.items(), key=lambda kv: kv[1])}


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


async def _replace(xapi: Xapi, pool_ref: str, key: str, value: str, *, exists: bool) -> None:
    if exists:
        await xapi.pool_remove_from_other_config(pool_ref, key)
    try:
        await xapi.pool_add_to_other_config(pool_ref, key, value)
    except XapiError as exc:
        if exc.code != "MAP_DUPLICATE_KEY":
            raise
        await xapi.pool_remove_from_other_config(pool_ref, key)
        await xapi.pool_add_to_other_config(pool_ref, key, value)


def _int(value: str | None) -> int:
    try:
        return int(value or "0")
    except ValueError:
        return 0


def _name(view: PoolView, host: HostId) -> str:
    return view.hosts[host].name if host in view.hosts else host
