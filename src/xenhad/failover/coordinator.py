"""Master failover, applied once per daemon tick: the executor of roles.py.

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

What to do is decided in roles.py (pure: `step`, and the outcomes fed back to it); this
module keeps the machine's state between ticks, watches the master with a Detector,
performs the actions (the XAPI calls), and logs each decision's reason when it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import structlog

from xenhad.detector import Detector, DetectorSettings, HostState, Observation, VerdictKind
from xenhad.errors import XenhadError
from xenhad.failover import lock as pool_lock
from xenhad.failover import roles
from xenhad.failover.actions import FailoverActions
from xenhad.failover.election import Vote
from xenhad.failover.roles import (
    PROMOTION_WINDOW,
    RECONCILED_KEY,
    REJOIN_WATCH,
    STEP_DOWN_HOLD,
    Contact,
    Decision,
    Facts,
    FailoverSettings,
    Joined,
    Role,
    State,
)
from xenhad.model import HostId, PoolView
from xenhad.xapi.client import Xapi
from xenhad.xapi.errors import XapiError, XapiUnreachable

__all__ = ["PROMOTION_WINDOW", "RECONCILED_KEY", "REJOIN_WATCH", "STEP_DOWN_HOLD", "Contact",
           "Failover", "FailoverOff", "FailoverSettings", "Joined", "Role", "State"]

log = structlog.get_logger("xenhad.failover")

_XAPI_FAILED = (XapiError, XapiUnreachable, XenhadError)


class FailoverOff:
    """Failover turned off (failover.enabled false, or no peer heartbeats): an object that
    does nothing, in place of an `is None` at every call site. A dead master is not
    replaced, and a master acts once it has read the pool."""

    enabled = False
    vote: Vote | None = None
    promoting = False
    master_in_doubt = False
    wants_fresh_probes = False
    rejoined: frozenset[HostId] = frozenset()

    def announced_master(self, read: HostId, now: float) -> HostId:
        return read

    def announces_promotion(self, now: float) -> bool:
        return False

    def announced_epoch(self, view: PoolView) -> int:
        return pool_lock.current_epoch(dict(view.other_config))

    def role_changing(self, now: float) -> bool:
        return False

    def awaits_rejoin(self, now: float) -> bool:
        return False

    def probed_all(self, now: float) -> None:
        pass

    def say_decision(self) -> None:
        pass


class Failover:
    enabled = True

    def __init__(
        self,
        me: HostId,
        settings: FailoverSettings,
        detector: DetectorSettings,
        actions: FailoverActions,
        *,
        wall: Callable[[], float],
        beat: Callable[[], None] = lambda: None,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.me = me
        self.settings = settings
        self._actions = actions
        self._wall = wall
        self._beat = beat
        """Sends our heartbeat now (BeatNow)."""
        self._wake = wake
        """Runs the daemon's next tick at once (ReadNow)."""
        self._watch = Detector(detector)
        self.state = State()
        self._said: tuple[Role, str] | None = None

    # -- what the daemon reads ---------------------------------------------------------

    @property
    def role(self) -> Role:
        return self.state.role

    @property
    def reason(self) -> str:
        return self.state.reason

    @property
    def vote(self) -> Vote | None:
        return self.state.vote

    def take_replaced(self) -> HostId | None:
        """Once, after our promotion: the master we replaced, already confirmed down by our
        watch of it, so that the new master need not confirm it all over again."""
        replaced = self.state.replaced
        if replaced is not None:
            self.state = replace(self.state, replaced=None)
        return replaced

    @property
    def wants_fresh_probes(self) -> bool:
        return self.state.wants_fresh_probes

    def announced_master(self, read: HostId, now: float) -> HostId:
        return self.state.announced_master(read, now)

    def announced_epoch(self, view: PoolView) -> int:
        return self.state.epoch(view)

    def awaits_rejoin(self, now: float) -> bool:
        return self.state.awaits_rejoin(now)

    @property
    def rejoined(self) -> frozenset[HostId]:
        return self.state.settled

    def probed_all(self, now: float) -> None:
        self.state = replace(self.state, probes_fresh_since=now)

    @property
    def master_in_doubt(self) -> bool:
        """As a slave: our master is suspect or down (and we are not replacing it)."""
        watched = self.state.watched
        return (watched is not None and self.state.promoting_at is None
                and self._watch.state(watched) is not HostState.UP)

    @property
    def promoting(self) -> bool:
        return self.state.promoting_at is not None

    def announces_promotion(self, now: float) -> bool:
        return self.state.announces_promotion(now)

    def role_changing(self, now: float) -> bool:
        return self.state.role_changing(now)

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
        if old != self.state.watched:
            self._watch = Detector(self._watch.settings)
        name = view.hosts[old].name if old in view.hosts else old
        obs = Observation(xapi_live=True, answered=answered, enabled=True)
        down_since: float | None = None
        for verdict in self._watch.observe(now, {old: obs}, quorate=quorate):
            if verdict.kind is VerdictKind.DOWN:
                down_since = verdict.since
                log.error("failover.master_down", master=name, misses=verdict.misses,
                          reason=verdict.reason)
            elif verdict.kind is VerdictKind.SUSPECT:
                log.warning("failover.master_suspect", master=name, reason=verdict.reason)
            elif verdict.kind in (VerdictKind.CLEARED, VerdictKind.BACK):
                log.info("failover.master_answers", master=name)
        facts = Facts(self.me, now, view, quorate, contact,
                      master_state=self._watch.state(old), master_down_since=down_since)
        said = (self.state.vote, self.state.announces_promotion(now))
        await self._perform(roles.step(self.state, facts, self.settings), facts, None)
        if (self.state.vote, self.state.announces_promotion(now)) != said:
            # The candidate counts ballots from heartbeats: ours goes out now, not up to an
            # interval later, and so does the news that we are promoting.
            self._beat()

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
        """The master's duties; returns whether this node may open and run incidents (so
        far: check_reconciled decides the rest). `proven_off`: see roles.Facts."""
        facts = Facts(self.me, now, view, quorate, contact, probes=probes, down=down,
                      proven_off=proven_off)
        return await self._perform(roles.step(self.state, facts, self.settings), facts, xapi)

    async def check_reconciled(
        self,
        xapi: Xapi,
        view: PoolView,
        now: float,
        probes: Mapping[HostId, Joined],
        down: frozenset[HostId],
    ) -> bool:
        """Whether the database can be trusted about where VMs run (roles.reconcile)."""
        facts = Facts(self.me, now, view, True, Contact(frozenset()), probes=probes,
                      down=down)
        return await self._perform(roles.reconcile(self.state, facts), facts, xapi)

    async def finish(self, may_act: bool) -> bool:
        """The end of a master's tick: whether it may act, after its last gate
        (roles.reread_gate)."""
        return await self._perform(roles.reread_gate(self.state, may_act), None, None)

    # -- performing a decision ---------------------------------------------------------

    async def _perform(self, decision: Decision, facts: Facts | None,
                       xapi: Xapi | None) -> bool:
        """Perform `decision`'s actions in order, feeding back the outcomes a rule depends
        on; returns whether this master may act, as far as the decision goes."""
        self.state = decision.state
        may_act = decision.may_act
        for action in decision.actions:
            if isinstance(action, roles.Say):
                getattr(log, action.level)(action.event, **dict(action.facts))
            elif isinstance(action, roles.BeatNow):
                self._beat()
            elif isinstance(action, roles.ReadNow):
                self._wake()
            elif facts is None:
                raise AssertionError(f"{action} needs this tick's facts")
            elif isinstance(action, roles.TransitionToMaster):
                try:
                    await self._actions.transition_to_master()
                except _XAPI_FAILED as exc:
                    return await self._perform(roles.transition_failed(self.state, str(exc)),
                                               facts, xapi)
                await self._perform(roles.transition_called(self.state, facts), facts, xapi)
            elif isinstance(action, roles.ResetMaster):
                try:
                    await self._actions.reset_master(action.address)
                except _XAPI_FAILED as exc:
                    log.error("failover.step_down_failed", why=str(exc))
            elif xapi is None:
                raise AssertionError(f"{action} needs the master's xapi")
            elif isinstance(action, roles.RaiseEpoch):
                try:
                    await _replace(xapi, facts.view.pool_ref, pool_lock.EPOCH_KEY,
                                   str(action.epoch), exists=action.exists)
                    log.info("failover.epoch", epoch=action.epoch)
                except _XAPI_FAILED as exc:
                    # Without a new epoch, a lock resurrected from our old copy would keep
                    # us waiting until it expires: slower, not unsafe.
                    log.error("failover.epoch_failed", why=str(exc))
            elif isinstance(action, roles.RecoverSlaves):
                await self._recover_slaves(xapi, action, facts)
            elif isinstance(action, roles.SyncDatabase):
                try:
                    await xapi.pool_sync_database()
                except _XAPI_FAILED as exc:
                    log.warning("failover.sync_failed", why=str(exc))
            elif isinstance(action, roles.HoldLock):
                at = replace(facts, wall=self._wall())
                may_act = await self._perform(roles.hold_lock(self.state, at, self.settings),
                                              at, xapi)
            elif isinstance(action, roles.WriteLock):
                held, why = await self._write_lock(xapi, facts.view, action)
                may_act = await self._perform(
                    roles.lock_written(Decision(self.state), held, why), facts, xapi)
            elif isinstance(action, roles.RecordReconciled):
                try:
                    await _replace(xapi, facts.view.pool_ref, RECONCILED_KEY,
                                   str(action.epoch), exists=action.exists)
                except _XAPI_FAILED as exc:
                    return await self._perform(roles.reconcile_unrecorded(self.state, str(exc)),
                                               facts, xapi)
                may_act = await self._perform(
                    roles.reconcile_recorded(self.state, action.epoch, facts.now), facts, xapi)
        return may_act

    def say_decision(self) -> None:
        """At the end of a tick: the role and its reason, logged when they changed."""
        said = (self.state.role, self.state.reason)
        if said != self._said and said[1]:
            self._said = said
            log.info("failover.decision", role=said[0].value, reason=said[1])

    async def _recover_slaves(self, xapi: Xapi, action: roles.RecoverSlaves,
                              facts: Facts) -> None:
        now = facts.now
        names = list(action.strays)
        try:
            refs = await xapi.pool_recover_slaves()
        except _XAPI_FAILED as exc:
            # A timeout says nothing of the hosts it told before it failed: any may have been.
            self.state = roles.slaves_recovered(self.state, facts, None)
            log.error("failover.recover_slaves_failed", hosts=names, why=str(exc),
                      fix=f"retried in {self.settings.recover_retry:g}s")
            return
        self.state = roles.slaves_recovered(self.state, facts, refs)
        by_ref = dict(action.names_by_ref)
        told = sorted(by_ref.get(r, r) for r in refs)
        self.state = roles.mark(self.state, "slaves_recovered", now)
        log.warning("failover.slaves_recovered", told=told,
                    not_reached=sorted(set(names) - set(told)) or None,
                    after_s=roles.since(self.state, "detected", now))

    async def _write_lock(self, xapi: Xapi, view: PoolView,
                          action: roles.WriteLock) -> tuple[bool, str]:
        try:
            if action.step is not pool_lock.Step.TAKE:
                await xapi.pool_remove_from_other_config(view.pool_ref, pool_lock.LOCK_KEY)
            await xapi.pool_add_to_other_config(view.pool_ref, pool_lock.LOCK_KEY, action.value)
        except XapiError as exc:
            if exc.code == "MAP_DUPLICATE_KEY":
                return False, "another daemon took the lock first"
            return False, f"cannot write the lock: {exc}"
        except (XapiUnreachable, XenhadError) as exc:
            return False, f"cannot write the lock: {exc}"
        if action.step is not pool_lock.Step.RENEW:
            log.info("failover.lock_taken", why=action.why, epoch=action.epoch)
        return True, ""


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
