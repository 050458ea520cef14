"""The daemon's life: start, watch the pool every tick, recover dead hosts, reload, stop.

The loop itself decides nothing: the detector says which hosts are down, the recovery
machine says what to do about one, and this module wires them to XAPI, the journal,
the fencer and systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from xenhad import admission, cadence
from xenhad import config as configuration
from xenhad import log as logsetup
from xenhad import messages as msg
from xenhad.cadence import READ_SPREAD_TICKS
from xenhad.clock import Clock
from xenhad.config import Config
from xenhad.detector import (
    Detector,
    DetectorSettings,
    HostState,
    Observation,
    Verdict,
    VerdictKind,
    describe,
)
from xenhad.environment import Environment, StatusServer, real_environment
from xenhad.errors import XenhadError
from xenhad.failover.actions import FailoverActions
from xenhad.failover.coordinator import Contact, Failover, FailoverOff, FailoverSettings, Joined
from xenhad.failover.election import Vote
from xenhad.failover.witness import Witness
from xenhad.fencer import SelfFenceProof, build_fencer
from xenhad.fencing.config import FencingMode
from xenhad.fencing.watchdog import (
    Watchdog,
    WatchdogPlan,
    self_fence_deadline_passed,
)
from xenhad.journal import JournalError
from xenhad.model import HostId, HostView, PoolView
from xenhad.notify import Notifier
from xenhad.peers.heartbeat import UNREAD
from xenhad.peers.link import HeartbeatLink, Peer, batch_seconds
from xenhad.peers.pace import Pace
from xenhad.peers.roster import Roster, RosterError, roster_of
from xenhad.peers.table import PeerTable
from xenhad.pool_cache import PoolCache
from xenhad.recovery import events as ev
from xenhad.recovery.executor import Executor
from xenhad.recovery.history import History, Recovered
from xenhad.recovery.incident import Incident, Phase, Settings, VmSnapshot, VmStatus
from xenhad.recovery.offline import OFFLINE, offline_protected
from xenhad.recovery.runner import IncidentRunner, RunnerDeps
from xenhad.stranded import Stranded, stranded
from xenhad.xapi.client import Xapi, single_attempt
from xenhad.xapi.errors import XapiError, XapiUnreachable
from xenhad.xapi.probe import ProbeConnections, ProbeResult

if TYPE_CHECKING:
    from xenhad.metrics import Metrics

log = structlog.get_logger("xenhad.daemon")
T = TypeVar("T")

HISTORY_SECONDS = 30 * 24 * 3600
"""How long closed incidents stay in the journal (for `xenhad history`)."""

XAPI_CLOSE_SECONDS = 5.0
ALERTS_DRAIN_SECONDS = 5.0
MESSAGES_DRAIN_SECONDS = 1.0
STOP_SECONDS = XAPI_CLOSE_SECONDS + ALERTS_DRAIN_SECONDS + 5.0
"""The longest a stop takes from SIGTERM to exit: a logout, the alerts' drain, and 5 s for
the rest (parking, XAPI messages still queued (1 s), the watchdog's disarm, the last
heartbeat). The unit's TimeoutStopSec (30 s) leaves room over it; calls in flight are
abandoned, never waited for."""


def heard_within(interval: float) -> float:
    """How old proven contact may be for a peer's daemon to count as beating now. An echo
    travels a round trip: our heartbeat is read there up to a batch after it arrives, the
    peer's next one leaves up to an interval later and is read here up to a batch after it
    arrives, and it is the freshest for up to another interval: 2 intervals and 2 batches at
    most, plus a quarter interval for late timers (a dom0 under load)."""
    return 2 * (interval + batch_seconds(interval)) + interval / 4


_NEVER = Joined(False, None)
"""A host never probed: its xapi has not been seen answering."""

@dataclass
class Health:
    """What the last tick saw, for the status line and the watchdog."""

    snapshot_ok: bool = False
    xapi_error: str = ""
    xapi_failing_since: float | None = None
    passive_reason: str = ""
    quorate: bool = False
    up: int = 0
    down: list[str] = field(default_factory=list)


class Daemon:
    def __init__(
        self,
        config_path: Path,
        config: Config,
        *,
        env: Environment | None = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        """`env` is everything the daemon touches outside itself (environment.py): the
        real host's unless given. `clock` and `notifier`, when given, replace its own."""
        self._path = config_path
        self.config = config
        env = env or real_environment()
        if clock is not None:
            env = replace(env, clock=clock)
        if notifier is not None:
            env = replace(env, notifier=notifier)
        self._env = env
        self._clock = env.clock
        self._notify = env.notifier
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._wake = asyncio.Event()
        """Set to run the next tick now rather than at the interval."""
        self._xapi: Xapi | None = None
        self._view: PoolView | None = None
        self._detector = Detector(_detector_settings(config))
        self._runners: dict[HostId, IncidentRunner] = {}
        self._runner_tasks: dict[HostId, asyncio.Task[object]] = {}
        self._health = Health()
        self._ready = False
        self._me: HostId = ""
        state_dir = Path(config.daemon.state_dir)
        self._journal = env.state.journal(state_dir / "journal.jsonl")
        self._history = History(self._journal, self._clock.wall)
        self._roster_file = env.state.roster(state_dir / "peers.json")
        self._roster: Roster | None = None
        """Whom we beat to until the pool is read: as last saved or loaded (peers/roster.py)."""
        self._roster_failure: str | None = None
        """Why the roster could not be saved, once said; None once it could."""
        self._pending_resume: list[Incident] = []
        self._warned: set[tuple[str, str, str]] = set()
        self._stranded: list[Stranded] = []
        self._stranded_of: tuple[object, object] | None = None
        self._stranded_said: set[tuple[str, str]] = set()
        self._xapi_logged_at = 0.0
        self._peers: PeerTable | None = None
        self._link: HeartbeatLink | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self._peers_since = 0.0
        self._watchdog: Watchdog | None = None
        self._failover: Failover | FailoverOff = FailoverOff()
        self._witness: Witness | None = None
        self._status_server: StatusServer | None = None
        self._metrics: Metrics | None = None
        self._last_snapshot = float("-inf")
        self._read_failures = 0
        self._next_read = float("-inf")
        self._self_probed_at = float("-inf")
        self._read_from: float | None = None
        """When a slave whose master is in doubt, and whose xapi follows a new master, reads
        the pool (_follows_another)."""
        self._jitter = env.rng
        self._ticks = 0
        self._pool_cache = PoolCache()
        self._alerts_config = configuration.AlertsConfig()
        self._alerts = env.alerts(configuration.AlertsConfig(), None)  # none until run()
        self._trimmed_after = 0
        """The pool cache's full reads when the heap was last trimmed (heap.release)."""
        self._probe_connections = ProbeConnections()
        """Kept-alive connections to the other hosts' xapi: a probe at rest is a request
        on an open connection, not a TLS handshake (closed in _shutdown)."""
        self._probes: dict[HostId, Joined] = {}
        """Whom each host's xapi follows, as of its last probe; for a host whose daemon
        beats, as of its last probe that answered (failover's reading: a probe lost under
        load says nothing of whom a live host follows)."""
        self._xapi_answers: dict[HostId, bool] = {}
        """Whether each host's xapi answered its last probe (the detector's reading)."""
        self._pace = Pace()
        """How late each host not heard lately has had its proofs of life come (the hold of
        a host beating slowly: _beating_slowly)."""
        self._deferred: set[HostId] = set()
        self._may_act = True
        self._next_offline_sweep = 0.0
        self._all_joined_since: float | None = None
        self._offline_found: tuple[object, tuple[VmSnapshot, ...]] = (None, ())
        """The offline sweep's last finding and the VM records it read: a quiet pool's view
        shares its VM records with the last (pool_cache.py), and 1,000 of them scanned each
        tick for none found was a tenth of a 64-host master's tick (issue 23)."""
        self._sweep_wants_probes = False
        """The offline sweep found VMs to start: every host is probed each tick until then."""
        self._probed_all_at = float("-inf")
        """The last tick at which every other host was probed."""
        self._proven_off: set[HostId] = set()
        """Hosts fenced by an incident that closed done, and not back since."""
        self._said_two_hosts = False
        self._fatal: XenhadError | None = None
        """What stopped the daemon from a task other than the main loop's."""
        self._loop_task: asyncio.Task[None] | None = None
        self._unwritten_ends: list[HostId] = []
        """Hosts back whose episode end the journal refused: written as soon as it can be."""
        self._journal_failing_since: float | None = None
        self._messages = msg.PoolMessages(lambda: self._xapi, self._clock,
                                          may_post=self._may_post)
        self._down_why: dict[HostId, str] = {}
        self._evidence_of: dict[HostId, str] = {}
        """The evidence each open incident was opened on, for `xenhad status`."""
        """Why the detector confirmed each host down: the evidence its message gives."""
        self._quorum_known = False
        self._quorum_lapsed = False
        """Quorum was lost since the detector's last observation, however briefly: heartbeats
        move it between ticks, and a loss and a regain between two ticks left misses
        counting that were seen partly without a majority (virtual chaos seed 1000138:
        quorum lost at 15.2 s, back at 15.3 s, and host3, healthy, confirmed at 15.7 s on
        misses that went on through it)."""
        self._absorb: admission.Absorb | None = None
        """The last admission check's answer (None: not checked yet, or not master)."""
        self._next_admission = 0.0
        self._mutual: frozenset[HostId] = frozenset()
        """Quorum was held once: a later change of it is news (the first contact is not)."""

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> int:
        env = self._env
        env.signals.install(self.stop, self.reload)
        self._me = env.identity.host_uuid(self.config)
        env.state.lock(Path(self.config.daemon.state_dir))
        self._announce_mode()
        self._check_watchdog_slack()
        self._check_restart_fits()
        self._recover_journal()
        self._failover = self._make_failover()
        self._alerts = env.alerts(self.config.alerts, self._me)
        self._alerts_config = self.config.alerts
        self._configure_messages()
        self._witness = self._make_witness()
        server = await env.servers.status(self.config, self._status_doc)
        self._status_server = server
        self._metrics = env.servers.metrics(self.config)
        if self._metrics is not None:
            log.info("metrics.serving", address=self.config.daemon.metrics_address,
                     port=self.config.daemon.metrics_port)
        self._loop_task = asyncio.ensure_future(self._loop())
        try:
            await self._loop_task
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise
        finally:
            server.close()
            await self._shutdown()
        if self._fatal is not None:
            raise self._fatal
        return 0

    def reload(self) -> None:
        """Read the configuration again at the next tick (SIGHUP)."""
        self._reload.set()

    def stop(self) -> None:
        """Stop now: a tick in flight is abandoned where it stands (its XAPI calls with it,
        as a kill would: the journal holds every step taken), then _shutdown parks."""
        self._stop.set()
        if self._loop_task is not None:
            self._loop_task.cancel()

    async def _loop(self) -> None:
        await self._open_remembered_peers()
        while not self._stop.is_set():
            started = self._clock.monotonic()
            if self._reload.is_set():
                self._reload.clear()
                self._reload_config()
            try:
                await asyncio.wait_for(self._tick(), timeout=2 * self._tick_budget())
            except asyncio.TimeoutError:
                self._xapi_failed("a tick took longer than twice its budget", started)
            self._watch_journal()
            self._report()
            ended = self._clock.monotonic()
            await self._pause(max(0.05, self._interval(ended) - (ended - started)))

    def _interval(self, now: float) -> float:
        """Seconds from one tick's start to the next, as of the tick just done."""
        failover = self._failover
        urgent = (failover.promoting or failover.master_in_doubt
                  or failover.awaits_rejoin(now))
        return cadence.tick_interval(self.config.detector.interval, urgent=urgent)

    async def _pause(self, timeout: float) -> None:
        """Until the next tick: `timeout`, or less on stop, on a wake-up, or when our
        master falls silent. Its first miss then counts from its silence, not from the
        next tick, up to an interval later: every voter confirms it within
        cadence.URGENT_TICK of the others, and the floor of a master's failover has no tick
        in it."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not (self._wake.is_set() or self._stop.is_set()):
            left = end - loop.time()
            if left <= 0:
                return
            heard = self._master_heard_at()
            silent_in = None if heard is None else (
                heard + self._heard_within() - self._clock.monotonic())
            if silent_in is None or not 0 < silent_in < left:
                await self._wait_for_wake(left)
                break
            await self._wait_for_wake(silent_in + 0.01)
            if self._master_heard_at() == heard:
                return  # no heartbeat since: from now on the master misses
        self._wake.clear()

    async def _wait_for_wake(self, timeout: float) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in (self._stop, self._wake)]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _master_heard_at(self) -> float | None:
        """As a slave that watches its master: when its last heartbeat arrived."""
        view, peers = self._view, self._peers
        if view is None or peers is None or not self._failover.enabled or view.master == self._me:
            return None
        return peers.alive_at(view.master)

    def _tick_budget(self) -> float:
        # One snapshot (with its retries) and one round of probes, in the worst case.
        x = self.config.xapi
        budget = x.timeout * 2 + self.config.detector.probe_timeout + self.config.detector.interval
        if self._failover.master_in_doubt:
            # Our xapi forwards to a master that does not answer: a snapshot would only
            # wait, and the master's watch needs its ticks on time. Short, but long enough
            # to learn that a new master took us over.
            return min(budget, max(1.0, 2 * self.config.detector.probe_timeout))
        return budget

    async def _shutdown(self) -> None:
        """Park, say goodbye, let go: within STOP_SECONDS whatever was in flight. XAPI calls
        in flight (a VM.start may run for recovery.start_timeout) are abandoned: their
        worker threads are left to the process's exit (see run()), and what they did is
        read from the pool on the next start, as after a kill."""
        self._notify.stopping("stopping: parking incidents in the journal")
        parked = list(self._runners.items())
        for host, runner in parked:
            await runner.park()
            task = self._runner_tasks.pop(host, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
        if self._watchdog is not None:
            await self._watchdog.disable()  # a clean stop must not reset the host
        if self._link is not None:
            hosts = self._beat_to()
            if hosts:
                # Tell peers we hold no watchdog any more: from now on our silence proves
                # nothing, and they must fence us by other means.
                self._link.send(
                    hosts, master=self._view.master if self._view is not None else UNREAD,
                    quorate=False, armed=False,
                )
            self._link.close()
        # The loop has stopped (probes in flight were cancelled, their connections dropped):
        # what is left are the idle ones.
        self._probe_connections.close()
        if self._xapi is not None:
            # A logout waits behind the calls that hold the XAPI threads: bounded.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._xapi.close(), XAPI_CLOSE_SECONDS)
        # Alerts of the last transitions (parked incidents say nothing new) get a moment.
        await self._alerts.drain(timeout=ALERTS_DRAIN_SECONDS)
        await self._messages.drain(timeout=MESSAGES_DRAIN_SECONDS)
        self._journal.close()
        # Counted before parking: a parked runner leaves self._runners as its task ends.
        log.info("daemon.stopped", open_incidents=len(parked))

    # -- one tick ----------------------------------------------------------------------

    async def _tick(self) -> None:
        now = self._clock.monotonic()
        if self._witness is not None:
            await self._witness.poll(self._clock.wall(), self._clock.monotonic())
        self._update_peer_quorum()
        # The master first: if it does not answer, the snapshot (which our xapi forwards to
        # it) gets a short budget, and the master's watch its ticks on time.
        await self._watch_master(now)
        try:
            await asyncio.wait_for(self._watch(now), timeout=self._tick_budget())
        except asyncio.TimeoutError:
            self._xapi_failed("reading the pool took longer than its budget", now)
        finally:
            # The watchdog is fed by the heartbeat loop, on quorum as of each feed
            # (_feed_watchdog): a tick may last far longer than its contact stays fresh.
            self._update_peer_quorum()
            self._failover.say_decision()

    def _snapshot_due(self, now: float) -> bool:
        """Whether this tick reads the pool (cadence.read_due)."""
        view = self._view
        interval = self.config.detector.slave_interval
        watching = not (view is None or view.master == self._me or self._peers is None
                        or interval <= 0)
        return cadence.read_due(cadence.ReadCadence(
            now=now,
            urgent=self._failover.master_in_doubt or self._failover.promoting,
            next_read=self._next_read, slave_watching=watching,
            last_read=self._last_snapshot, slave_interval=interval,
            last_read_ok=self._health.snapshot_ok,
            masters_named=tuple(self._contact(now).masters.values()) if watching else (),
            master=view.master if view is not None else ""))

    async def _watch(self, now: float) -> None:
        if not self._snapshot_due(now):
            return
        if self._failover.master_in_doubt and not await self._follows_another():
            return
        changing = self._failover.role_changing(now)
        if changing:
            # Our xapi restarts as a master or as another's slave: its event tokens would
            # ask the next database for what changed since a generation of this one's.
            self._pool_cache.reset()
        try:
            # While our xapi restarts, each tick is one try: a retry's backoff would outlast
            # the restart and leave the new master idle. A slave's ticks are its retries
            # too, spaced by _read_failed.
            with single_attempt() if changing or self._slave() else contextlib.nullcontext():
                xapi = await self._connected()
                protection = self.config.recovery.protection_key
                # A slave reads no VM: it acts on none. Whoever may be master by the end of
                # this read (we promote, or were master) reads them all.
                vms = changing or not self._slave()
                snap = await self._pool_cache.read(xapi, protection_key=protection, now=now,
                                                   vms=vms)
                if not vms and snap.view.master == self._me:
                    # Master now (an operator's doing, or a promotion seen late): the view
                    # this master acts on holds every VM, always.
                    snap = await self._pool_cache.read(xapi, protection_key=protection, now=now)
        except (XapiUnreachable, XapiError, XenhadError) as exc:
            self._read_failed(now)
            self._xapi_failed(str(exc), now)
            return
        self._read_failures, self._next_read = 0, float("-inf")
        self._read_from = None
        if self._pool_cache.full_reads != self._trimmed_after:
            # A full read's reply was megabytes, gone now: its pages go back (heap.py).
            self._trimmed_after = self._pool_cache.full_reads
            self._env.offload.release_memory()
        view = snap.view
        for warning in snap.warnings:
            # Once per VM and value, not every tick: the operator fixes it or it stays known.
            key = (warning.vm, warning.field, warning.value)
            if key not in self._warned:
                self._warned.add(key)
                log.warning("vm.protection_unknown", vm=warning.name, why=warning.message)
        if self._health.xapi_failing_since is not None:
            log.info("xapi.reachable", after_s=round(now - self._health.xapi_failing_since, 1))
        self._health.snapshot_ok = True
        self._last_snapshot = now
        self._health.xapi_error = ""
        self._health.xapi_failing_since = None
        self._view = view
        self._note_stranded(view)
        await self._open_peers(view)
        if self._me not in view.hosts:
            self._passive(f"this host {self._me} is not in the pool database; check host.uuid")
            return
        if view.ha_enabled:
            self._passive("native HA is enabled on this pool (pool.ha_enabled): xenhad stays "
                          "passive; disable one of the two")
            return
        self._passive("")
        if view.master != self._me:
            # Only the master's daemon acts on dead slaves; others watch.
            if self._peers is None:
                self._health.quorate = True
            self._health.up = sum(1 for h in view.hosts.values() if h.live)
            self._health.down = []
            return
        await self._observe(view, now)

    async def _follows_another(self) -> bool:
        """As a slave whose master is in doubt: whether to read the pool now, because our
        own xapi follows another master (a new master told it; the read is spread, see
        below) or is one (an operator made it one), so that a read would be answered.
        Until then our xapi forwards every read to the silent master and retries for ever
        (master_connection.ml): the read would only hold up the urgent ticks that watch
        the master, for its whole budget. Our xapi answers a login at once, itself, with
        HOST_IS_SLAVE and whom it follows (xapi_session.ml)."""
        view = self._view
        if view is None or self._me not in view.hosts or view.master not in view.hosts:
            return True
        now = self._clock.monotonic()
        if self._read_from is not None:
            return now >= self._read_from
        if now - self._self_probed_at < self.config.detector.interval:
            # Once an interval, not every urgent tick: a slave's daemon acts on nothing, and
            # the new master's xapi has better to do, just after a promotion, than serve 63
            # slaves' reads at once.
            return False
        self._self_probed_at = now
        mine = await self._probe(view.hosts[self._me])
        if not mine.answered:
            return False
        if not mine.is_slave:
            return True  # master now: it reads every VM at once, and acts
        if mine.master_address == view.hosts[view.master].address:
            return False
        # A new master's slave. It is read at a random point of the next few intervals:
        # right after the slaves rejoin, the new master resets and restarts the dead one's
        # VMs, and the slaves' reads, all at once, slowed that in a 64-host simulator.
        spread = READ_SPREAD_TICKS * self.config.detector.interval
        self._read_from = now + self._jitter.uniform(0.0, spread)
        return False

    async def _observe(self, view: PoolView, now: float) -> None:
        others = [h for h in view.hosts.values() if h.uuid != self._me]
        # A host answers when its xapi does, or when its daemon's heartbeat reached us: a
        # hung xapi with a live dom0 still runs its VMs, and is not dead. So a host heard
        # this tick needs no probe to count as up; it is still probed every few ticks, for
        # whom its xapi follows (failover) and to notice a wedged xapi.
        heard = self._heard_lately(now)
        self._ticks += 1
        everyone = cadence.probe_everyone(self._ticks,
                                          sweep_wants_probes=self._sweep_wants_probes)
        fresh = self._failover.wants_fresh_probes
        settled = self._failover.rejoined if fresh else frozenset()
        # At rest, only a daemon with no peers spaces its probes (cadence.rest_every): with
        # peers, a host not heard is one whose daemon is silent, and is asked every tick.
        detector = self.config.detector
        every = (1 if self._peers is not None
                 else cadence.rest_every(detector.interval, detector.confirm_seconds))
        chosen = {h.uuid for h in cadence.to_probe(
            (cadence.Host(h.uuid, h.live) for h in others), everyone=everyone, fresh=fresh,
            settled=settled, heard=heard, answered=self._xapi_answers, tick=self._ticks,
            every=every)}
        probed = [h for h in others if h.uuid in chosen]
        results = await asyncio.gather(*(self._probe(h) for h in probed))
        for h, r in zip(probed, results):
            self._xapi_answers[h.uuid] = r.answered
            if r.answered or h.uuid not in heard or h.uuid not in self._probes:
                self._probes[h.uuid] = Joined(r.answered, r.follows, now)
        for gone in set(self._probes) - {h.uuid for h in others}:
            del self._probes[gone]
        for gone in set(self._xapi_answers) - {h.uuid for h in others}:
            del self._xapi_answers[gone]
        covered = {h.uuid for h in probed}
        if len(covered) == len(others):
            self._probed_all_at = now
        if all(h.uuid in covered or h.uuid in settled
                                              for h in others):
            self._failover.probed_all(now)
        # Each host's last answer: this tick's, or at rest up to cadence.rest_every ticks
        # old (see there why quorum may be counted from it).
        answers = [self._xapi_answers.get(h.uuid, False) or h.uuid in heard for h in others]
        alive_at = {h.uuid: self._alive_at(h.uuid, heard) for h in others}
        for host_id, at in alive_at.items():
            self._pace.note(host_id, now, at)
        self._pace.keep(alive_at)
        slow = self._beating_slowly(now, heard)
        observations = {
            # A host marked for maintenance counts as disabled even once xapi re-enabled it.
            # Not probed this tick (heard lately): its xapi answered at its last probe.
            h.uuid: Observation(
                xapi_live=h.live,
                answered=self._xapi_answers.get(h.uuid, False),
                enabled=h.enabled and not h.maintenance,
                heard=h.uuid in heard,
                rival_master=(joined := self._probes.get(h.uuid, _NEVER)).answered
                and joined.follows is None,
                beats_slowly=h.uuid in slow,
                beats_why=slow.get(h.uuid, ""),
                alive_at=alive_at[h.uuid],
            )
            for h in others
        }
        if self._peers is None:
            seen = 1 + sum(1 for a in answers if a)
            self._set_quorate(seen * 2 > len(view.hosts), seen, len(view.hosts))
        quorate = self._health.quorate
        # The detector counts misses only while quorum held throughout since its last look:
        # a lapse between ticks starts confirmation over, as a non-quorate tick does.
        steady, self._quorum_lapsed = quorate and not self._quorum_lapsed, False
        verdicts = self._detector.observe(now, observations, quorate=steady)
        self._may_act = await self._master_duties(view, now, quorate)
        if self._may_act and self._pending_resume:
            self._resume_incidents()
        for verdict in verdicts:
            self._on_verdict(view, verdict)
        if self._may_act:
            for host_id in sorted(self._deferred):
                self._deferred.discard(host_id)
                if self._detector.state(host_id) is HostState.DOWN and host_id in view.hosts:
                    self._open_incident(view, view.hosts[host_id])
            self._restart_offline(view, now)
            await self._check_admission(view, now)
        wall = self._clock.wall()
        for runner in self._runners.values():
            runner.observe(view, wall)
        self._health.up = sum(1 for a in answers if a) + 1
        self._health.down = sorted(
            view.hosts[h].name for h in observations
            if self._detector.state(h) in (HostState.DOWN, HostState.RETURNING)
        )

    def _set_quorate(self, quorate: bool, sees: int, pool: int) -> None:
        if quorate != self._health.quorate:
            (log.info if quorate else log.error)(
                "quorum.gained" if quorate else "quorum.lost",
                sees=sees, pool=pool,
                why=None if quorate else "this node is in contact with no majority of the "
                "pool: it recovers nothing, and stops feeding its watchdog if it holds one",
            )
            name = self._host_names().get(self._me, self._me)
            if not quorate and self._quorum_known:
                armed = self._watchdog is not None and self._watchdog.is_running
                self._messages.post(msg.make(
                    msg.QUORUM_LOST, msg.Subject.HOST, self._me,
                    f"{name} lost quorum: in contact with {sees} of {pool} members, it "
                    "recovers nothing" + (" and its watchdog resets it unless contact "
                                          "returns" if armed else ""),
                    repeat_key="quorum"))
            elif quorate and self._quorum_known:
                self._messages.forget("quorum")
                self._messages.post(msg.make(
                    msg.QUORUM_REGAINED, msg.Subject.HOST, self._me,
                    f"{name} regained quorum: in contact with {sees} of {pool} members"))
            self._quorum_known = self._quorum_known or quorate
        if not quorate:
            self._quorum_lapsed = True
        self._health.quorate = quorate

    async def _open_remembered_peers(self) -> None:
        """At start, before any read: beat to the peers of the roster the last reads left
        (peers/roster.py), so that a daemon restarted while it cannot read the pool is not
        silent, and its host not fenced for it (virtual chaos seeds 1000131, 1000067). No
        roster (a host's first start), or one of no use: we beat once we have read, as
        before it existed."""
        if not self.config.peers.enabled:
            return
        try:
            roster = self._roster_file.load()
        except RosterError as exc:
            self._roster_unusable(str(exc))
            return
        if roster is None:
            return
        if roster.me != self._me:
            self._roster_unusable(f"{self._roster_file.path} was written by host {roster.me}, "
                                  f"not by this one ({self._me})")
            return
        self._roster = roster
        await self._open_link(roster.pool)
        log.info("peers.beating_unread", pool=roster.pool, hosts=len(roster.hosts),
                 why="until this daemon has read the pool, its heartbeats say it lives and "
                 "whom it hears; they name no master, claim no quorum and cast no vote")

    def _roster_unusable(self, why: str) -> None:
        log.error("peers.roster_unusable", why=why,
                  effect="this daemon beats only once it has read the pool: while its xapi "
                  "cannot answer, peers may take its host for dead and fence it",
                  fix="nothing to do if the pool reads: the roster is written again after "
                  "the next read; else check the disk of daemon.state_dir")

    def _remember_roster(self, view: PoolView) -> None:
        """After each read: save whom we beat to, when it changed (peers/roster.py)."""
        roster = roster_of(view, self._me)
        if roster is None or roster == self._roster:
            return
        try:
            self._roster_file.save(roster)
        except RosterError as exc:
            if str(exc) != self._roster_failure:
                log.error("peers.roster_unwritten", why=str(exc),
                          effect="if this daemon restarts while it cannot read the pool, it "
                          "is silent until it can, and peers may fence its host",
                          fix="free space on, or remount read-write, the disk of "
                          "daemon.state_dir; tried again after each read")
            self._roster_failure = str(exc)
            return
        if self._roster_failure is not None:
            log.info("peers.roster_written", path=str(self._roster_file.path))
        self._roster, self._roster_failure = roster, None

    def _beat_to(self) -> list[Peer]:
        """Every host of the pool as last read, or, before any read, as the roster has it."""
        if self._view is not None:
            return [Peer(h.uuid, h.address) for h in self._view.hosts.values()]
        return list(self._roster.hosts) if self._roster is not None else []

    async def _open_peers(self, view: PoolView) -> None:
        """After each read: the link open, on the pool as read."""
        if not self.config.peers.enabled:
            return
        self._remember_roster(view)
        if self._link is not None and self._peers is not None:
            if self._peers.pool == view.pool_uuid:
                return
            # Opened from a roster of another pool (this host joined a new one while we were
            # down): no peer of this one would accept a heartbeat of it.
            log.warning("peers.pool_changed", remembered=self._peers.pool, read=view.pool_uuid)
            await self._close_link()
        await self._open_link(view.pool_uuid)

    async def _close_link(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
            self._heartbeats = None
        if self._link is not None:
            self._link.close()
        self._link, self._peers = None, None

    async def _open_link(self, pool: str) -> None:
        cfg = self.config.peers
        secret = self._env.identity.peer_secret(self.config)
        self._peers = PeerTable(self._me, pool, window=cfg.window)
        heartbeats = self._env.heartbeats
        link = HeartbeatLink(
            me=self._me, pool=pool, secret=secret, table=self._peers,
            clock=self._clock, peer_port=cfg.port, batch=batch_seconds(cfg.interval),
            # For the whole window: a host beating slowly, proven alive by a peer's word only
            # (cut from us one way), is then known alive (Observation.beats_slowly; virtual
            # chaos seeds 7000417, 1000138). What counts as heard stays a round trip
            # (_heard_lately's vouched_age).
            vouch_within=cfg.window,
            socket_factory=heartbeats.socket_factory, rng=heartbeats.rng(),
        )
        await link.open(self.config.xapi.source_address, cfg.listen_port or cfg.port)
        self._link = link
        self._peers_since = self._clock.monotonic()
        self._heartbeats = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        interval = self.config.peers.interval
        while not self._stop.is_set():
            try:
                self._beat()
                await self._feed_watchdog()
            except XenhadError as exc:
                # Self-fencing required and impossible: the daemon stops, saying why, as it
                # would at start (run() raises it after the shutdown).
                self._fatal = exc
                self.stop()
                return
            except Exception:
                # A bug must not silence our heartbeats: peers would take us for cut off.
                log.exception("peers.beat_failed")
            await asyncio.sleep(interval)  # the stop cancels this task

    def _beat(self) -> None:
        """One heartbeat to every host of the pool, saying what we know now."""
        view, link = self._view, self._link
        if link is None:
            return
        armed = self._watchdog is not None and self._watchdog.is_running
        if view is None:
            # Restarted, and not able to read the pool yet (_open_remembered_peers): we
            # live and hear whom we hear, and know nothing else. No master (a stale one
            # could make us a stray to recover, or count for a master we no longer follow),
            # no quorum (judged only on a view read, _update_peer_quorum), no vote, no
            # epoch. Receivers neither elect us nor take us as following anyone (_contact).
            link.send(self._beat_to(), master=UNREAD, quorate=False, armed=armed,
                      priority=self.config.failover.priority)
            return
        now = self._clock.monotonic()
        link.send(
            [Peer(h.uuid, h.address) for h in view.hosts.values()],
            master=self._failover.announced_master(view.master, now),
            quorate=self._health.quorate,
            armed=armed,
            priority=self.config.failover.priority,
            vote=self._current_vote(),
            epoch=self._failover.announced_epoch(view),
            promoting=self._failover.announces_promotion(now),
        )

    def _current_vote(self) -> tuple[HostId, HostId] | None:
        vote = self._failover.vote
        return (vote.old_master, vote.candidate) if vote is not None else None

    def _update_peer_quorum(self) -> float:
        """Quorum from the peer table as of this instant (read from the clock here, never
        passed in: a verdict as of a tick's start may be seconds old by its end). Returns
        the instant it was judged at."""
        now = self._clock.monotonic()
        if self._peers is None or self._view is None:
            return now
        members = set(self._view.hosts)
        mutual = self._peers.mutual(now) & members
        if self._metrics is not None:
            for lost in self._mutual - mutual:
                self._metrics.count("peer_contact_lost",
                                    self._host_names().get(lost, lost))
        self._mutual = frozenset(mutual)
        sees, pool = 1 + len(mutual), len(members)
        if self._witness is not None:
            # The witness is one more member; its vote is ours while we hold its lease.
            sees, pool = sees + int(self._witness.held_at(now)), pool + 1
        self._set_quorate(sees * 2 > pool, sees, pool)
        return now

    async def _feed_watchdog(self) -> None:
        """Feed on quorum judged at the feed itself: peers/table.py (latest_feed) bounds
        every feed by the contact it rested on, and the survivors' self-fence deadlines
        follow from that bound. Called every peers.interval by the heartbeat loop."""
        settings = self.config.fencing.self_fence
        if settings is None:
            return
        self._update_peer_quorum()
        if self._watchdog is None:
            if not self._health.quorate or self._two_hosts_without_witness():
                return
            # Armed at the first quorum, not at start: a host booting into a pool that is
            # not up yet must not reset itself in a loop. Until armed it never says it is
            # quorate in its heartbeats, so no peer ever takes its silence as proof it is off.
            device = self._env.watchdog_device(settings, self._me)
            plan = WatchdogPlan(settings.mode, settings.timeout, self.config.detector.interval)
            watchdog = Watchdog(device, plan, clock=self._clock)
            name = self._host_names().get(self._me, self._me)
            if not await watchdog.activate():
                self._messages.post(msg.make(
                    msg.WATCHDOG_NOT_ARMED, msg.Subject.HOST, self._me,
                    f"{name}: self-fencing is NOT armed (its watchdog could not be opened, see "
                    "watchdog.not_armed in its log): if it loses power with its BMC, its VMs "
                    "stay down", repeat_key="watchdog"))
                return
            self._watchdog = watchdog
            self._messages.post(msg.make(
                msg.WATCHDOG_ARMED, msg.Subject.HOST, self._me,
                f"{name}: self-fencing armed ({settings.timeout:g} s watchdog): cut off from "
                "the majority, it resets itself"))
            # Arming awaited the device: quorum is judged again for the feed.
            self._update_peer_quorum()
            await self._watchdog.keepalive(healthy=True, quorate=self._health.quorate)
            # Peers learn it now, not up to an interval later: until they have heard us
            # armed, our silence proves nothing, and a crash in that window leaves our VMs
            # waiting for a fence that may never come (a dead BMC).
            self._beat()
            return
        await self._watchdog.keepalive(healthy=True, quorate=self._health.quorate)

    def _two_hosts_without_witness(self) -> bool:
        """A pool of two hosts and no witness: a majority is both hosts, so any partition
        takes quorum from both, and both would starve their watchdogs and reset, taking
        every VM down. Self-fencing could not save a VM there either: the survivor, never
        quorate alone, recovers nothing. So the watchdog is not armed, and that is said."""
        view = self._view
        two = view is not None and len(view.hosts) == 2 and self._witness is None
        if two and not self._said_two_hosts:
            self._said_two_hosts = True
            self._messages.post(msg.make(
                msg.WATCHDOG_NOT_ARMED, msg.Subject.HOST, self._me,
                f"{self._host_names().get(self._me, self._me)}: self-fencing is NOT armed: a "
                "2-host pool without a witness (set failover.witness)",
                repeat_key="watchdog"))
            log.error("watchdog.not_armed", hosts=2,
                      why="a 2-host pool without a witness: any partition would reset both "
                      "hosts, and the survivor of a failure is never quorate alone",
                      fix="set failover.witness to a directory on storage both hosts mount")
        return two

    def _self_fence_proof(self, host: HostView) -> SelfFenceProof | None:
        """Whether `host`'s own watchdog must have reset it by now, from heartbeats."""
        settings = self.config.fencing.self_fence
        if settings is None or self._peers is None:
            return None
        link = self._link
        if link is None or host.uuid not in link.armed:
            # Never heard it say it holds a fed watchdog (since this daemon started): its
            # silence proves nothing.
            return SelfFenceProof(False, f"{host.name} was never seen holding a watchdog")
        now = self._clock.monotonic()
        last_feed = self._peers.latest_feed(
            host.uuid, now, since=self._peers_since, interval=self.config.peers.interval
        )
        if self._witness is not None and self._witness.held:
            # Our quorum may rest on the witness, which reports nothing about `host`: it may
            # have counted the witness's vote itself (and fed) until just before we took the
            # lease. So its last feed is no earlier than our taking it.
            last_feed = max(last_feed, self._witness.held_since)
        evidence = self._peers.evidence(host.uuid, now)
        vouched = max(self._peers_since, evidence if evidence is not None else self._peers_since)
        passed = self_fence_deadline_passed(last_feed, now, settings.timeout, settings.margin)
        due = last_feed + settings.timeout + settings.margin - now
        detail = (
            f"no heartbeat has vouched for {host.name} for {now - vouched:.1f}s; its watchdog "
            f"({settings.timeout}s) must have reset it" if passed else
            f"self-fence deadline of {host.name} in {due:.1f}s"
        )
        return SelfFenceProof(passed, detail)

    async def _probe(self, host: HostView) -> ProbeResult:
        url = self.config.detector.probe_url.format(address=host.address)
        return await self._env.probe(
            url,
            source_address=self.config.xapi.source_address or None,
            timeout=self.config.detector.probe_timeout,
            connections=self._probe_connections,
        )

    # -- master failover ---------------------------------------------------------------

    def _heard_lately(self, now: float) -> frozenset[HostId]:
        """Peers whose daemon is proven alive as of a round trip ago, by us or by a peer in
        proven contact with us: alive, whatever their xapi says, and whatever one direction
        of the network between us does (a one-way cut once had a healthy host fenced).
        Contact for quorum allows the whole window and must be our own; liveness need not
        wait that long to doubt a host whose xapi is silent too. Proven by echoes, not
        arrival: heartbeats delayed or replayed by the network vouch for no one."""
        if self._peers is None:
            return frozenset()
        within = self._heard_within()
        return self._peers.alive(now, within=within, vouched_age=within)

    def _beating_slowly(self, now: float, heard: frozenset[HostId]) -> dict[HostId, str]:
        """Peers proven alive within the quorum window, or within their own pace for one
        whose proofs of life keep coming late (peers/pace.py), but not lately enough to be
        heard: their heartbeats are slow, not gone (detector.Observation.beats_slowly). Each
        with why ("" for the window's hold, which the detector words itself)."""
        if self._peers is None:
            return {}
        window = self.config.peers.window
        slow = dict.fromkeys(self._peers.alive(now, within=window) - heard, "")
        for host in self._pace.paced():
            if host in heard or host in slow:
                continue
            # Proofs 2 s apart at the window's edge: the window's hold lapsed between two
            # and a healthy host was fenced (virtual chaos seeds 1000130, 3000239).
            hold = self._pace.hold(host, now, self._peers.alive_at(host), window)
            if hold.held:
                slow[host] = hold.reason
        return slow

    def _alive_at(self, host: HostId, heard: frozenset[HostId]) -> float | None:
        """When `host`'s daemon was last proven alive, for a host not heard lately (asked
        only of those: 63 x 63 lookups a tick for the rest would tell the detector nothing,
        a heard host missing nothing)."""
        if self._peers is None or host in heard:
            return None
        return self._peers.alive_at(host)

    def _heard_within(self) -> float:
        return heard_within(self.config.peers.interval)

    def _make_failover(self) -> Failover | FailoverOff:
        cfg = self.config.failover
        if not cfg.enabled or not self.config.peers.enabled:
            log.warning("failover.off", why="failover.enabled is false" if not cfg.enabled
                        else "peer heartbeats are off (peers.secret_file)",
                        effect="a dead master is not replaced; run pool.emergency_transition_"
                        "to_master by hand")
            return FailoverOff()
        return Failover(self._me, _failover_settings(self.config),
                        _detector_settings(self.config),
                        FailoverActions(self.config, connect=self._env.connect),
                        wall=self._clock.wall, beat=self._beat,
                        wake=self._wake.set)

    def _make_witness(self) -> Witness | None:
        directory = self.config.failover.witness
        if directory is None or not self.config.peers.enabled:
            return None
        window = self.config.peers.window
        return self._env.witness(directory, self._me, ttl=max(10.0, 3 * window), skew=window,
                                 settle=self.config.peers.interval, timeout=max(2.0, window))

    def _contact(self, now: float) -> Contact:
        if self._peers is None:
            return Contact(frozenset())
        mutual = self._peers.mutual(now)
        priorities: dict[HostId, int] = {}
        ballots: dict[HostId, Vote | None] = {}
        masters: dict[HostId, HostId] = {}
        epochs: dict[HostId, int] = {}
        promoting: set[HostId] = set()
        unread: set[HostId] = set()
        for peer in mutual:
            hb = self._peers.latest(peer)
            if hb is None:
                continue
            ballots[peer] = Vote(*hb.vote) if hb.vote else None
            if hb.unread:
                # Restarted and not able to read the pool yet (peers/roster.py): it names
                # no master, and its epoch is no reading of its database. Taken as a
                # master it would be a stray to recover, or one that follows no one.
                unread.add(peer)
                continue
            priorities[peer] = hb.priority
            masters[peer] = hb.master
            epochs[peer] = hb.epoch
            if hb.promoting:
                promoting.add(peer)
        witness = self._witness.held if self._witness is not None else None
        return Contact(mutual, priorities, ballots, masters, witness, epochs,
                       frozenset(promoting), frozenset(unread))

    async def _master_duties(self, view: PoolView, now: float, quorate: bool) -> bool:
        """Whether this master may open and run incidents now (see failover.coordinator)."""
        if not isinstance(self._failover, Failover):
            return True  # no failover: the master acts once it has read the pool
        down = frozenset(
            h for h in view.hosts
            if self._detector.state(h) in (HostState.DOWN, HostState.RETURNING)
        )
        xapi = await self._connected()
        # A step-down beats at once (roles.BeatNow): the other master must hear it now.
        may_act = await self._failover.as_master(
            xapi, view, now, contact=self._contact(now), probes=self._probes, down=down,
            quorate=quorate, proven_off=frozenset(self._proven_off),
        )
        replaced = self._failover.take_replaced()
        if replaced is not None:
            names = self._host_names()
            me = names.get(self._me, self._me)
            self._messages.post(msg.make(
                msg.MASTER_PROMOTED, msg.Subject.HOST, self._me,
                f"{me} is the pool master now: xenhad promoted it "
                "(pool.emergency_transition_to_master) after a majority of the pool confirmed "
                f"the master {names.get(replaced, replaced)} down and voted for {me}"))
            # Our xapi is master now; the next tick recovers the slaves (from a view read
            # after the new epoch), and every second counts: run it at once.
            self._wake.set()
        if replaced is not None and replaced in view.hosts and replaced != self._me:
            # The survivors confirmed it down before electing us: its incident opens as
            # soon as we may act (lock held, every host rejoined), with no second wait.
            self._detector.restore_down(replaced, now, "the master this host replaced")
            self._deferred.add(replaced)
            log.warning("incident.deferred", host=view.hosts[replaced].name,
                        why="the replaced master; opened once every host has rejoined")
        if may_act:
            may_act = await self._failover.check_reconciled(xapi, view, now, self._probes, down)
        # Its last gate: acting from a view read after the probes that allowed it.
        return await self._failover.finish(may_act)

    async def _watch_master(self, now: float) -> None:
        """As a slave: whether the master is dead, and if so, vote and maybe promote."""
        view, failover = self._view, self._failover
        if (view is None or not isinstance(failover, Failover) or view.master == self._me
                or view.ha_enabled):
            return
        master = view.hosts.get(view.master)
        if master is None:
            return
        heard = self._heard_lately(now)
        answered = master.uuid in heard or (await self._probe(master)).answered
        # A new ballot or promotion goes out in a heartbeat at once (Failover's beat).
        await failover.watch_master(now, view, quorate=self._health.quorate,
                                    answered=answered, contact=self._contact(now))

    # -- verdicts and incidents --------------------------------------------------------

    def _on_verdict(self, view: PoolView, verdict: Verdict) -> None:
        kind = verdict.kind
        host_id = verdict.host
        host = view.hosts.get(host_id)
        name = host.name if host else host_id
        facts = {"host": name, "misses": verdict.misses, "reason": verdict.reason}
        if kind is VerdictKind.SUSPECT:
            log.warning("host.suspect", **facts)
        elif kind is VerdictKind.CLEARED:
            log.info("host.cleared", **facts)
        elif kind is VerdictKind.HUNG:
            log.error("host.xapi_hung", **facts,
                      fix="its VMs run: restart its toolstack (xe-toolstack-restart); set "
                      "detector.hung_xapi_fence_after to have it fenced after a while instead")
            self._messages.post(msg.make(
                msg.HOST_XAPI_HUNG, msg.Subject.HOST, host_id,
                f"{name}: its xapi does not answer ({verdict.reason}) but its xenhad daemon "
                "beats, so its VMs run and it is left alone; restart its toolstack "
                "(xe-toolstack-restart)", repeat_key=f"hung:{host_id}"))
        elif kind is VerdictKind.DOWN:
            log.error("host.down", **facts)
            now = self._clock.monotonic()
            self._down_why[host_id] = self._evidence(view, host_id, verdict, now)
            if self._metrics is not None:
                self._metrics.observe("detection", now - verdict.since)
            if host is not None and not self._may_act:
                # Opened once this node may act (lock held, database reconciled).
                self._deferred.add(host.uuid)
                log.warning("incident.deferred", host=name,
                            why="this master does not act yet: see the failover lines")
            elif host is not None:
                self._open_incident(view, host)
        elif kind is VerdictKind.BACK:
            log.warning("host.back", **facts)
            self._messages.forget(f"fence:{host_id}")
            self._proven_off.discard(host_id)
            self._unwritten_ends.append(host_id)
            self._write_episode_ends()
            runner = self._runners.get(host_id)
            if runner is not None:
                runner.feed(ev.HostReturned(self._clock.wall()))

    def _evidence(self, view: PoolView, host_id: HostId, verdict: Verdict, now: float) -> str:
        """Why `host_id` was confirmed down, in one line: what each tick saw, when its
        daemon was last heard (by us or a peer), and who made the quorum that allowed it.
        Journaled with the incident, so `xenhad history` can answer "why did it reboot"."""
        names = self._host_names()
        parts = [f"{verdict.misses} missed ticks over {now - verdict.since:.1f} s "
                 f"({verdict.reason})"]
        peers = self._peers
        if peers is not None:
            heard = peers.heard_at(host_id)
            vouched = peers.evidence(host_id, now)
            if heard is None:
                parts.append("its daemon never heard since this one started")
            else:
                parts.append(f"its daemon last heard {now - heard:.1f} s before")
            if vouched is not None and (heard is None or vouched > heard + 0.5):
                parts.append(f"vouched for by a peer until {now - vouched:.1f} s before")
            mutual = sorted(names.get(h, h) for h in peers.mutual(now) & set(view.hosts))
            me = names.get(self._me, self._me)
            parts.append(f"quorum: {', '.join([me, *mutual])} in contact "
                         f"({1 + len(mutual)} of {len(view.hosts)})")
        return "; ".join(parts)

    def _restart_offline(self, view: PoolView, now: float) -> None:
        """Start protected VMs found Halted though nobody shut them down (offline.py), once
        no incident is open and every host is up and joined to us, or proven off by a
        fence, so that XAPI's Halted is the whole truth. A VM that does not start is tried
        again after the longest retry backoff."""
        me = view.hosts.get(self._me)
        address = me.address if me is not None else None
        self._sweep_wants_probes = False
        if self._runners or not self._health.quorate or any(
            h.maintenance for h in view.hosts.values()  # an operator is at work: hands off
        ) or not all(
            h.uuid == self._me or h.uuid in self._proven_off or (
                h.live and self._detector.state(h.uuid) is HostState.UP
                and (joined := self._probes.get(h.uuid)) is not None
                and joined.follows == address)
            for h in view.hosts.values()
        ):
            self._all_joined_since = None
            return
        if self._all_joined_since is None:
            self._all_joined_since = now
        if cadence.sweep_gate(now=now, all_joined_since=self._all_joined_since,
                              view_taken_at=view.taken_at,
                              hold=self.config.detector.recover_hold_seconds,
                              next_sweep=self._next_offline_sweep) is not cadence.Sweep.OPEN:
            return
        if self._offline_found[0] is not view.vms:
            self._offline_found = (view.vms, offline_protected(view))
        vms = self._offline_found[1]
        then = cadence.start_halted(now=now, vms_found=bool(vms),
                                    probed_all_at=self._probed_all_at)
        if then is cadence.Sweep.PROBE_FIRST:
            self._sweep_wants_probes = True
            self._wake.set()
            return
        if then is not cadence.Sweep.RUN:
            return
        self._next_offline_sweep = now + self.config.recovery.retry_backoff_max
        log.error("vms.found_halted", vms=[vm.name for vm in vms],
                  why="protected VMs are Halted though nobody shut them down (their host "
                  "rebooted, or the pool lost power): starting them again")
        wall = self._clock.wall()
        try:
            runner = IncidentRunner.open(ev.Opened(
                incident=time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall)) + "-offline",
                host=OFFLINE, host_name="pool", now=wall, vms=vms, unsafe=False, offline=True,
            ), self._runner_deps())
        except JournalError:
            # Not journaled, so not started: the sweep comes back once the journal can
            # be written (the line saying it cannot is _watch_journal's).
            self._next_offline_sweep = now
            return
        self._start_runner(runner)

    async def _check_admission(self, view: PoolView, now: float) -> None:
        """Every recovery.admission_interval, as the acting master: could the pool absorb
        recovery.tolerate host failures now (admission.py)? Said when the answer changes.
        Not while an incident runs (the pool is in flux) or without quorum."""
        tolerate = self.config.recovery.tolerate
        if tolerate <= 0:
            self._absorb = None
            return
        if self._runners or not self._health.quorate or now < self._next_admission:
            return
        self._next_admission = now + self.config.recovery.admission_interval
        # Hosts the detector counts as up: one it confirmed down receives nothing, and is
        # no longer a failure to come.
        up = {h: v for h, v in view.hosts.items()
              if h == self._me or self._detector.state(h) is HostState.UP}
        xapi = await self._connected()

        async def free(host: HostView) -> int | None:
            try:
                return await xapi.host_compute_free_memory(host.ref)
            except (XapiError, XapiUnreachable):
                return None

        hosts = [h for h in up.values() if h.live and h.enabled and not h.maintenance]
        measured = dict(zip((h.uuid for h in hosts),
                            await asyncio.gather(*(free(h) for h in hosts))))
        # In a thread of its own: 64 hosts and 1,000 VMs take 0.3 s at tolerate = 2 and
        # 0.8 s at 3, which would hold up the heartbeats (and the watchdog's feed) on this
        # loop. Not the default executor (the watchdog's keepalive runs there), and a
        # daemon thread: a stop never waits for it.
        try:
            result = await self._env.offload.run(
                "xenhad-admission",
                lambda: admission.can_absorb(replace(view, hosts=up), measured, tolerate))
        except Exception:  # a bug in a warning must not stop the daemon's recoveries
            log.exception("admission.failed")
            return
        finally:
            # Its placements' memory, freed in the thread's own arena, goes back (heap.py).
            self._env.offload.release_memory()
        previous, self._absorb = self._absorb, result
        if previous is not None and previous.ok == result.ok:
            return
        pool = view.pool_uuid
        if result.ok:
            log.info("pool.can_absorb" if previous is None else "pool.overcommit_cleared",
                     tolerate=tolerate, scenarios=result.scenarios, why=result.line())
            if previous is not None:
                self._messages.post(msg.make(msg.POOL_OVERCOMMIT_CLEARED, msg.Subject.POOL,
                                             pool, result.line()))
        else:
            log.error("pool.overcommitted", tolerate=tolerate, failed=list(result.failed),
                      stranded=[vm for vm, _ in result.stranded], why=result.line(),
                      fix="free memory on the hosts, add a host, or lower the protection "
                      "of some VMs (or recovery.tolerate)")
            self._messages.post(msg.make(msg.POOL_OVERCOMMITTED, msg.Subject.POOL, pool,
                                         result.line()))

    def _open_incident(self, view: PoolView, host: HostView) -> None:
        if host.uuid in self._runners:
            log.info("incident.already_open", host=host.name)  # single flight
            return
        wall = self._clock.wall()
        incident_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall)) + f"-{host.name}"
        vms = tuple(
            VmSnapshot.of(vm) for vm in view.vms_on(host.uuid) if vm.running
        )
        why = self._down_why.pop(host.uuid, "the pool master: the survivors confirmed it "
                                 "down and a majority voted to replace it")
        opened = ev.Opened(
            incident=incident_id,
            host=host.uuid,
            host_name=host.name,
            now=wall,
            vms=vms,
            unsafe=self.config.fencing.mode is FencingMode.TRUST_LIVENESS,
            evidence=why,
            pool_hosts=tuple(sorted((h.uuid, h.name) for h in view.hosts.values())),
        )
        try:
            runner = IncidentRunner.open(opened, self._runner_deps())
        except JournalError:
            # Nothing is done for it until its opening is on disk: tried again each tick
            # (with the deferred), and _watch_journal says loudly why it waits.
            self._deferred.add(host.uuid)
            self._down_why[host.uuid] = why
            return
        self._evidence_of[host.uuid] = why
        if self._metrics is not None:
            self._metrics.incident_opened()
        protected = sum(1 for vm in vms if vm.protection.value != "off")
        me = self._host_names().get(self._me, self._me)
        self._messages.post(msg.make(
            msg.HOST_FAILED, msg.Subject.HOST, host.uuid,
            f"{host.name} confirmed down by xenhad on {me} ({why}): {len(vms)} VMs were "
            f"running there, {protected} protected; "
            + ("restarting them on XAPI's word (trust-liveness)" if opened.unsafe else
               "fencing it before any restart")))
        self._start_runner(runner)

    def _runner_deps(self) -> RunnerDeps:
        return RunnerDeps(
            executor=self._executor(),
            history=self._history,
            settings=_recovery_settings(self.config),
            host_names=self._host_names,
            wall=self._clock.wall,
            alert=self._alerts.send,
            notice=self._incident_notice,
        )

    def _incident_notice(self, before: Incident, after: Incident, event: ev.Event) -> None:
        """Each step of an incident: its XAPI messages and its metrics. Never raises: what
        the administrator is told must not stop the recovery it tells of."""
        try:
            view = self._view
            for message in msg.incident_messages(before, after, self._host_names(),
                                                 view.pool_uuid if view is not None else ""):
                self._messages.post(message)
            if self._metrics is not None:
                _incident_metrics(self._metrics, before, after, event)
        except Exception:
            log.exception("incident.notice_failed", incident=after.id)

    def _configure_messages(self) -> None:
        self._messages.enabled = self.config.alerts.xapi_messages
        self._messages.repeat = self.config.alerts.message_repeat

    def _may_post(self) -> bool:
        """A message reaches the master now: we are it, or its daemon is in contact (a
        slave's call is forwarded; to a silent master it would hang for its timeout)."""
        view = self._view
        if view is None:
            return False
        if view.master == self._me:
            return True
        heard = self._master_heard_at()
        return heard is not None and self._clock.monotonic() - heard < self._heard_within()

    def _start_runner(self, runner: IncidentRunner) -> None:
        host = runner.incident.host
        self._runners[host] = runner
        task = asyncio.get_running_loop().create_task(runner.run())
        self._runner_tasks[host] = task

        def finished(done: asyncio.Task[object]) -> None:
            self._runners.pop(host, None)
            self._evidence_of.pop(host, None)
            self._runner_tasks.pop(host, None)
            if _proves_off(runner.incident):
                self._proven_off.add(host)
            if not done.cancelled() and done.exception() is not None:
                # The journal still holds the incident open: a restart resumes it. Until
                # then the host stays DOWN, so no second incident starts behind its back.
                log.error("incident.crashed", host=runner.incident.host_name,
                          error=repr(done.exception()),
                          fix="restart xenhad to resume the incident from its journal")

        task.add_done_callback(finished)

    def _executor(self) -> Executor:
        assert self._xapi is not None
        return Executor(
            self._xapi,
            build_fencer(self.config, clock=self._clock, self_fence=self._self_fence_proof,
                         chain=self._env.fence_chain),
            view=self._current_view,
            targets=self._placement_targets,
            now=self._clock.wall,
            concurrency=self.config.recovery.concurrency,
            start_timeout=self.config.recovery.start_timeout,
            back=self._back,
            may_fence=self._may_fence,
        )

    def _may_fence(self) -> str:
        """Why no host may be fenced now ("" if one may): quorum judged at this instant."""
        self._update_peer_quorum()
        if self._health.quorate:
            return ""
        return ("this node lost quorum: it fences no host, since the hosts it cannot "
                "reach may be the majority; retried while the incident waits")

    async def _back(self, host: HostView) -> str:
        """Why `host` counts as back now ("" when it is still gone): its daemon in proven
        contact, or its xapi answering, judged by the detector's own rule of a miss."""
        result = await self._probe(host)
        now = self._clock.monotonic()
        current = self._view.hosts.get(host.uuid, host) if self._view is not None else host
        heard = self._heard_lately(now)
        seen = Observation(
            xapi_live=current.live, answered=result.answered, enabled=True,
            heard=host.uuid in heard,
            rival_master=result.answered and not result.is_slave,
            beats_slowly=host.uuid in (slow := self._beating_slowly(now, heard)),
            beats_why=slow.get(host.uuid, ""),
        )
        if self._detector.would_miss(host.uuid, seen, now):
            return ""
        log.warning("fence.held", host=host.name, why=describe(seen),
                    effect="the incident ends: nothing of the host was touched")
        return describe(seen)

    def _current_view(self) -> PoolView:
        assert self._view is not None
        return self._view

    def _placement_targets(self) -> Sequence[HostView]:
        view = self._current_view()
        return [
            h for h in view.hosts.values()
            if h.live and h.enabled and not h.maintenance  # an operator is working on it
            and (h.uuid == self._me or self._detector.state(h.uuid) is HostState.UP)
        ]

    def _host_names(self) -> dict[str, str]:
        view = self._view
        return {h.uuid: h.name for h in view.hosts.values()} if view else {}

    def _recover_journal(self) -> None:
        recovered = self._history.recover(_recovery_settings(self.config))
        for problem in recovered.skipped:
            log.warning("journal.skipped", problem=problem)
        self._compact_journal(recovered)
        for host, since in recovered.down_since.items():
            self._detector.restore_down(host, since)
        self._proven_off = {i.host for i in recovered.closed if _proves_off(i)
                            and recovered.down_since.get(i.host) == i.opened_at}
        self._pending_resume = recovered.open
        if recovered.open:
            log.warning("incident.resuming", incidents=[i.id for i in recovered.open])

    def _write_episode_ends(self) -> None:
        while self._unwritten_ends:
            try:
                self._history.episode_end(self._unwritten_ends[0])
            except JournalError:
                return  # written on a later tick; replay meanwhile holds the host down
            self._unwritten_ends.pop(0)

    def _watch_journal(self) -> None:
        """Once a tick: write what the journal owes, and say when it cannot be written and
        when it can again (one line each). While it cannot, incidents take no step and
        none opens: nothing is done that a restart would not know of."""
        journal = self._journal
        self._write_episode_ends()
        if journal.failure is not None:
            journal.check()  # a write of its own: the disk may be back with nothing owed
        now = self._clock.monotonic()
        if journal.failure is not None and self._journal_failing_since is None:
            self._journal_failing_since = now
            log.error("journal.unwritable", state_dir=str(journal.path.parent),
                      error=journal.failure,
                      effect="no incident opens or takes a step until it can be written; "
                      "xenhad tries again each tick and carries on by itself",
                      fix=f"free space on, or remount read-write, the disk holding "
                      f"{journal.path.parent}")
        elif journal.failure is None and self._journal_failing_since is not None:
            log.warning("journal.writable", state_dir=str(journal.path.parent),
                        after_s=round(now - self._journal_failing_since, 1))
            self._journal_failing_since = None

    def _compact_journal(self, recovered: Recovered) -> None:
        """Keep what replay needs (open incidents, hosts still down) and a month of history."""
        # Whole incidents, by id: a record's "host" is the target host in start records,
        # so keeping by host would cut an incident short, and its replay reopen it.
        keep_hosts = set(recovered.down_since)
        keep_incidents = {i.id for i in recovered.open} | {
            i.id for i in recovered.closed if i.host in keep_hosts
        }
        horizon = self._clock.wall() - HISTORY_SECONDS

        def keep(record: dict[str, Any]) -> bool:
            return (
                float(record.get("t", 0)) >= horizon
                or record.get("incident") in keep_incidents
            )

        try:
            result = self._journal.compact(keep)
        except JournalError as exc:
            # Housekeeping: the journal is intact and replayed. A full disk must not keep
            # the daemon down (and its pool unwatched); if no record can be written either,
            # the first that must be says so (_watch_journal).
            log.warning("journal.not_compacted", error=str(exc))
            return
        if result.dropped:
            log.info("journal.compacted", kept=result.kept, dropped=result.dropped)

    def _resume_incidents(self) -> None:
        pending, self._pending_resume = self._pending_resume, []
        for incident in pending:
            runner = IncidentRunner(incident, self._runner_deps())
            runner.feed(ev.Resumed(self._clock.wall()))
            self._start_runner(runner)

    # -- connection, health, reload ----------------------------------------------------

    async def _connected(self) -> Xapi:
        if self._xapi is None:
            self._xapi = await self._env.connect(self.config)
        return self._xapi

    def _slave(self) -> bool:
        """Whether our reads of the pool go to another host's xapi (or may: no view yet)."""
        return self._view is None or self._view.master != self._me

    def _read_failed(self, now: float) -> None:
        self._read_failures += 1
        if self._slave():
            self._next_read = now + cadence.read_backoff(
                self._read_failures, self.config.detector.interval,
                self._jitter.uniform(0.5, 1.0))

    def _xapi_failed(self, why: str, now: float) -> None:
        first = self._health.xapi_failing_since is None
        changed = why != self._health.xapi_error
        self._health.snapshot_ok = False
        self._health.xapi_error = why
        if first:
            self._health.xapi_failing_since = now
        # Said at once, then again only when the reason changes, at most twice a minute.
        if first or (changed and now - self._xapi_logged_at >= 30.0):
            self._xapi_logged_at = now
            log.error("xapi.unreachable", why=why,
                      effect="no decisions while XAPI cannot be read; the loop keeps going")

    def _passive(self, reason: str) -> None:
        if reason and reason != self._health.passive_reason:
            log.warning("daemon.passive", why=reason)
        elif not reason and self._health.passive_reason:
            log.info("daemon.active")
        self._health.passive_reason = reason

    def _report(self) -> None:
        if self._metrics is not None:
            self._metrics.publish(self._status_doc())
        line = self._status_line()
        if not self._ready and self._health.snapshot_ok:
            self._ready = True
            self._notify.ready(line)
            log.info("daemon.ready", status=line)
        else:
            self._notify.status(line)
        # WATCHDOG only from a loop that completed its tick: a wedged loop gets restarted.
        self._notify.watchdog()

    def _note_stranded(self, view: PoolView) -> None:
        """Protected VMs no other host could run: said once each at warning when they
        appear (and again should one come back after it was fixed), listed in status."""
        if not view.vms or self._stranded_of == (view.vms, view.hosts):
            return  # a slave's read has no VMs; a quiet pool's view is the same objects
        self._stranded_of = (view.vms, view.hosts)
        self._stranded = stranded(view)
        names = self._host_names()
        now = {(s.vm, s.reason) for s in self._stranded}
        for s in self._stranded:
            if (s.vm, s.reason) not in self._stranded_said:
                log.warning("vm.protected_in_name_only", vm=s.name, uuid=s.vm,
                            host=names.get(s.host or "", s.host), why=s.reason,
                            fix="if its host dies, xenhad will not restart it elsewhere: "
                            "move its disks to a shared SR, its VIFs to a network every "
                            "host has, or set its protection off")
        self._stranded_said = now

    def _status_doc(self) -> dict[str, Any]:
        """What `xenhad status` shows: this daemon's view, as of its last tick."""
        view, h, now = self._view, self._health, self._clock.monotonic()
        names = self._host_names()
        heard = self._peers.heard(now) if self._peers is not None else frozenset()
        mutual = self._peers.mutual(now) if self._peers is not None else frozenset()
        hosts = []
        for host in (view.hosts.values() if view is not None else ()):
            peer = ("this host" if host.uuid == self._me else "mutual" if host.uuid in mutual
                    else "heard" if host.uuid in heard else "silent")
            hosts.append({
                "name": host.name, "uuid": host.uuid, "live": host.live,
                "enabled": host.enabled, "maintenance": host.maintenance,
                "state": ("-" if host.uuid == self._me
                          else self._detector.state(host.uuid).value),
                "peer": peer if self._peers is not None else "-",
            })
        members = len(view.hosts) if view is not None else 0
        vote = self._failover.vote
        failover = (self._failover if isinstance(self._failover, Failover)
                    and self._failover.reason else None)  # None: off, or not decided yet
        return {
            "host": names.get(self._me, self._me),
            "role": "master" if view is not None and view.master == self._me else "slave",
            "master": names.get(view.master, view.master) if view is not None else None,
            "quorate": h.quorate,
            "sees": 1 + len(mutual & set(view.hosts)) if view is not None else 1,
            "members": members,
            "passive": h.passive_reason or None,
            "xapi_error": h.xapi_error or None,
            "journal_error": self._journal.failure,
            "fencing_unsafe": ("fencing.mode is trust-liveness: VMs are restarted on XAPI's "
                               "word alone" if self.config.fencing.mode
                               is FencingMode.TRUST_LIVENESS else None),
            "failover": {
                "vote": names.get(vote.candidate, vote.candidate) if vote else None,
                "promoting": self._failover.promoting,
                "role": failover.role.value if failover is not None else None,
                "reason": failover.reason if failover is not None else None,
                "witness_held": self._witness.held if self._witness else None,
            },
            "watchdog_armed": self._watchdog is not None and self._watchdog.is_running,
            "heartbeats": None if self._link is None else {
                "sent": self._link.sent, "received": self._link.received,
                "bad": self._link.bad, "unlogged": self._link.unlogged},
            "messages": {"posted": self._messages.posted, "dropped": self._messages.dropped,
                         "suppressed": self._messages.suppressed},
            "absorb": None if self._absorb is None or view is None or view.master != self._me
            else {"tolerate": self._absorb.tolerate, "ok": self._absorb.ok,
                  "line": self._absorb.line()},
            "hosts": sorted(hosts, key=lambda x: str(x["name"])),
            "incidents": [{**_incident_doc(r.incident, names), "waiting_for_journal": r.blocked,
                           "evidence": self._evidence_of.get(r.incident.host)}
                          for r in self._runners.values()],
            "cannot_restart_elsewhere": [
                {"name": s.name, "uuid": s.vm, "host": names.get(s.host or "", s.host),
                 "why": s.reason} for s in self._stranded],
        }

    def _status_line(self) -> str:
        if self._journal.failure is not None:
            # Before anything else: whatever the pool does, this daemon can take no step.
            return f"CANNOT ACT, journal unwritable: {self._journal.failure}"[:200]
        return self._pool_status_line()

    def _pool_status_line(self) -> str:
        h = self._health
        if not h.snapshot_ok:
            return f"XAPI unreachable: {h.xapi_error}"[:200]
        view = self._view
        assert view is not None
        names = self._host_names()
        master = names.get(view.master, view.master)
        role = "master" if view.master == self._me else "slave"
        if h.passive_reason:
            return f"passive: {h.passive_reason}"[:200]
        parts = [f"{role}; master {master}", f"hosts {h.up}/{len(view.hosts)} up"]
        if h.down:
            parts.append("down: " + ",".join(h.down))
        if role == "master" and not h.quorate:
            parts.append("NO QUORUM")
        if self._runners:
            parts.append("incidents: " + ", ".join(
                f"{r.incident.host_name} {r.incident.phase.value}" for r in self._runners.values()
            ))
        return "; ".join(parts)

    def _reload_config(self) -> None:
        self._notify.reloading()
        try:
            new = self._env.config_source.load(self._path)
        except XenhadError as exc:
            log.error("config.reload_refused", error=str(exc), effect="the old config stays")
            self._notify.ready(self._status_line())
            return
        old, self.config = self.config, new
        self._env.config_source.configure_logs(new)
        self._detector.settings = _detector_settings(new)
        if new.alerts != self._alerts_config:
            # Deliveries in flight to the old targets finish on their own.
            self._alerts = self._env.alerts(new.alerts, self._me)
            self._alerts_config = new.alerts
        self._configure_messages()
        if new.xapi != old.xapi and self._xapi is not None:
            xapi, self._xapi = self._xapi, None
            asyncio.get_running_loop().create_task(xapi.close())
        if new.daemon.state_dir != old.daemon.state_dir:
            log.warning("config.restart_needed", key="daemon.state_dir",
                        why="the journal stays where it is until the daemon restarts")
        self._announce_mode()
        log.info("config.reloaded", path=str(self._path))
        self._notify.ready(self._status_line())

    def _announce_mode(self) -> None:
        if self.config.fencing.mode is FencingMode.TRUST_LIVENESS:
            log.error(
                "fencing.unsafe",
                mode="trust-liveness",
                why="VMs of a host XAPI calls dead are restarted without proof the host is "
                "off; a host that is only cut off will run them twice. Configure fencing.",
            )

    def _check_watchdog_slack(self) -> None:
        watchdog = self._notify.watchdog_seconds()
        if watchdog is None:
            return
        worst = self._tick_budget() + self.config.detector.interval
        if worst * 2 > watchdog:
            log.error("systemd.watchdog_tight", watchdog_s=watchdog, worst_tick_s=worst,
                      fix="raise WatchdogSec= or lower xapi.timeout/detector.interval")


    def _check_restart_fits(self) -> None:
        """What check-config says of the unit's restart delay, said again at start (the
        unit may have changed since): an error refuses the start, a warning is logged."""
        delay = self._env.identity.restart_delay()
        if delay is None:
            return
        warning = configuration.check_restart_fits(self.config, delay.seconds,
                                                   str(delay.source))
        if warning is not None:
            log.warning("self_fence.restart_too_slow", why=warning)


def _incident_metrics(metrics: Metrics, before: Incident, after: Incident,
                      event: ev.Event) -> None:
    if isinstance(event, ev.FenceDone) and not event.returned:
        result = "off" if event.off else "failed"
        metrics.count("fences", event.backend or "none", result)
        if event.off and not before.fenced_by:
            metrics.observe("fencing", event.now - after.opened_at)
    elif isinstance(event, ev.FenceDone):
        metrics.count("fences", event.backend or "none", "host-back")
    for uuid, task in after.vms.items():
        old = before.vms.get(uuid)
        if old is not None and old.status is task.status and old.attempts == task.attempts:
            continue
        if task.status is VmStatus.RUNNING:
            metrics.count("vm_restarts", "restarted")
            metrics.observe("vm_restart", getattr(event, "now", after.opened_at)
                            - after.opened_at)
        elif task.status is VmStatus.FAILED:
            metrics.count("vm_restarts", "given_up")
        elif task.status is VmStatus.RESET and task.last_error and old is not None:
            metrics.count("vm_restarts", "no_room" if task.last_error.startswith(
                "no host fits") else "retry")
    if after.phase.closed and not before.phase.closed:
        metrics.count("incidents_closed", after.phase.value)
        metrics.observe("recovery", (after.closed_at or after.opened_at) - after.opened_at)


def _proves_off(incident: Incident) -> bool:
    """A fence powered the host off (not trust-liveness, not an offline incident)."""
    return incident.phase is Phase.DONE and incident.fenced_by not in ("", "trust-liveness")


def _incident_doc(incident: Incident, names: dict[HostId, str]) -> dict[str, Any]:
    return {
        "id": incident.id,
        "host": incident.host_name,
        "phase": incident.phase.value,
        "fenced_by": incident.fenced_by or None,
        # A fence failed and none has succeeded since: true through the retries too (an
        # incident that cannot be fenced spends most of its time in a retry's "fencing").
        "fence_failed": not incident.phase.closed and not incident.fenced_by and (
            incident.phase is Phase.WAITING_FENCE or incident.fence_attempts > 1),
        "note": incident.note or None,
        "vms": [
            {"name": t.vm.name, "status": t.status.value,
             "target": names.get(t.host, t.host) if t.host else None,
             "error": t.last_error or None}
            for t in incident.vms.values()
        ],
    }


def _failover_settings(config: Config) -> FailoverSettings:
    f = config.failover
    return FailoverSettings(
        priority=f.priority,
        # A split vote is cast again after this long: a few confirmations' worth.
        stall=max(3 * config.peers.window, 2 * config.detector.confirm_seconds),
        recover_retry=f.recover_retry,
        sync_interval=f.sync_interval,
        lock_ttl=f.lock_ttl,
        promote_timeout=f.promote_timeout,
        listen=config.peers.window,
    )


def _detector_settings(config: Config) -> DetectorSettings:
    d = config.detector
    return DetectorSettings(
        confirm_misses=d.confirm_misses,
        confirm_seconds=d.confirm_seconds,
        recover_hold_seconds=d.recover_hold_seconds,
        hung_xapi_fence_after=d.hung_xapi_fence_after,
    )


def _recovery_settings(config: Config) -> Settings:
    r = config.recovery
    return Settings(
        best_effort_attempts=r.best_effort_attempts,
        retry_backoff=r.retry_backoff,
        retry_backoff_max=r.retry_backoff_max,
    )


def run(config_path: Path, *, clock: Clock | None = None) -> int:
    """`xenhad run`: load the config (refusing a bad one), set up logs, run until stopped.

    Whatever stops the daemon (SIGTERM, a state dir it cannot use, an unreadable secret)
    ends in one line at error level, never a traceback, unless it is a bug; and the process
    exits once the daemon has stopped, whatever XAPI calls its worker threads still wait on
    (a VM.start may for recovery.start_timeout): they are abandoned, as a kill would."""
    config = configuration.load(config_path)
    logsetup.configure(fmt=config.daemon.log_format, level=config.daemon.log_level)
    log.info("daemon.starting", config=str(config_path))
    daemon = Daemon(config_path, config, clock=clock)
    # Not asyncio.run: it waits for every worker thread of the default executor.
    loop = asyncio.new_event_loop()
    try:
        code = loop.run_until_complete(daemon.run())
    except (XenhadError, OSError) as exc:
        detail = str(exc) if isinstance(exc, XenhadError) else (
            f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""))
        log.error("daemon.failed", error=detail)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        log.critical("daemon.crashed", exc_info=True, fix="a bug: report it with this log")
        traceback.print_exc()
        code = 1
    finally:
        _close_loop(loop)
    _exit_past_workers(code)
    return code


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left and close the loop, waiting for no thread (close() shuts the
    default executor down without waiting)."""
    try:
        left = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


def _exit_past_workers(code: int) -> None:
    """Exit now if worker threads would hold the interpreter's exit (it joins them all)."""
    workers = [t.name for t in threading.enumerate()
               if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if not workers:
        return
    log.info("daemon.exit", code=code, abandoned=workers,
             why="calls still in flight are not waited for: the next start reads their outcome")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


