"""SimPool: the physical truth under the databases, the timers, and the fault injectors.

One lock (with a Condition) guards everything; request handlers hold it while they read or
change state and release it while they wait (VM start, event.from, black holes).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import os
import random
import secrets
import shutil
import tempfile
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from xenhad.sim.clock import SimClock, SimTime
from xenhad.sim.model import NULL_REF, Db, build_pool
from xenhad.sim.network import Network
from xenhad.sim.spec import PoolSpec

RESET_OFF_SECONDS = 2.0
"""Sim seconds a host reset by its watchdog stays off before it powers on again (the reset,
then firmware and POST), after which it boots like any host (`spec.boot_seconds`)."""


class SimError(Exception):
    """A bad request to the simulator itself (unknown host, bad argument): one line."""


class Route:
    OK = "ok"
    REFUSED = "refused"
    BLACKHOLE = "blackhole"


@dataclass
class InjectedError:
    method: str
    code: str
    params: list[str]
    count: int
    """How many calls still fail; negative: every call."""


@dataclass
class HostState:
    index: int
    name: str
    uuid: str
    ref: str
    metrics_ref: str
    address: str
    db: Db
    conf_master: str
    """pool.conf: the address of the master this host believes in (its own: it is master)."""
    role_master: str = ""
    """The master address its running xapi read from pool.conf when it started: a new
    pool.conf "takes effect on next server restart only" (xapi_pool_transition.ml set_role).
    A pool's hosts start with their xapi up, so with the pool.conf they were built with;
    until a probe sees the restart, a slave told of a new master by pool.recover_slaves
    still names the old one (pool_role.ml set_role rewrites the file, not the role
    Pool_role_shared cached when xapi started)."""
    powered: bool = True
    xapi: str = "up"
    """"up", "hung" (accepts, never answers) or "down" (booting, restarting, off)."""
    emergency: bool = False
    """Started as a slave while its master was unreachable (xapi's slave emergency mode)."""
    heartbeats: dict[str, float] = field(default_factory=dict)
    shutting_down: set[str] = field(default_factory=set)
    local_sessions: set[str] = field(default_factory=set)
    auto_enable: bool = True
    epoch: int = 0
    """Bumped on every power loss and xapi restart: timers of an older epoch are void."""
    watchdog_deadline: float | None = None
    watchdog_timeout: float = 0.0
    boots: int = 0
    """Times the host was powered on after a power loss (a reset, a BMC cycle, a boot)."""
    watchdog_fired: int = 0
    """Times its watchdog expired and reset it."""
    power_losses: list[float] = field(default_factory=list)
    """Sim wall-clock times at which it went down (crash, BMC off, reset, shutdown)."""
    latency: dict[str, float] = field(default_factory=dict)
    errors: list[InjectedError] = field(default_factory=list)
    port: int = 0
    socket_path: str = ""

    @property
    def running_master(self) -> str:
        return self.role_master or self.conf_master

    @property
    def is_master(self) -> bool:
        return self.running_master == self.address


class _Changes(threading.Condition):
    """The pool's condition; `notify_all` also tells in-process listeners, which have no
    thread to wait on it (xenhad.virtual wakes the calls it holds)."""

    def __init__(self, lock: threading.RLock) -> None:
        super().__init__(lock)
        self.listeners: list[Callable[[], None]] = []

    def notify_all(self) -> None:
        super().notify_all()
        for listener in self.listeners:
            listener()


class SimPool:
    def __init__(self, spec: PoolSpec, *, clock: SimTime | None = None,
                 rng: random.Random | None = None,
                 on_timer: Callable[[float], None] | None = None) -> None:
        """`clock`, `rng` and `on_timer` are for a pool run in process (xenhad.virtual):
        its sim time, the source of the refs it makes (uuid4 without one), and who is told
        each time a timer or watchdog deadline falls due, since no ticker thread polls."""
        spec.validate()
        self.spec = spec
        self.clock: SimTime = clock or SimClock(spec.time_scale)
        self._refs = rng
        self.on_timer = on_timer
        self.in_process = False
        """Driven by xenhad.virtual: nothing may block on the condition (no other thread)."""
        self.lock = threading.RLock()
        self.changed = _Changes(self.lock)
        self.network = Network()
        self._own_base_dir = spec.base_dir is None
        self.base_dir = spec.base_dir or tempfile.mkdtemp(prefix="xenhadsim-")
        if "_" in self.base_dir and self._own_base_dir:
            # XenAPI's UDSTransport turns '_' into '/'; a plain path keeps it usable.
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = os.path.join("/tmp", "xenhadsim-" + secrets.token_hex(6))
            os.makedirs(self.base_dir)
        db, seeds = build_pool(spec, self.clock.wall())
        from xenhad.sim import api

        api.register_classes(db)
        self.pool_uuid: str = db.pool()["uuid"]
        self.pool_ref = db.pool_ref()
        slave_copy = db.copy()
        master_address = seeds[0].address
        self.hosts: list[HostState] = [
            HostState(index=i, name=s.name, uuid=s.uuid, ref=s.ref, metrics_ref=s.metrics_ref,
                      address=s.address, db=db if i == 0 else slave_copy,
                      conf_master=master_address, role_master=master_address,
                      socket_path=os.path.join(self.base_dir, s.name, "xapi.sock"))
            for i, s in enumerate(seeds)]
        self._by_key: dict[str, HostState] = {}
        for h in self.hosts:
            self._by_key[h.name] = h
            self._by_key[h.uuid] = h
            self._by_key[h.address] = h
        self.domains: dict[str, set[str]] = {}
        """vm uuid -> uuids of the hosts where its domain really runs."""
        for rec in db.tables["VM"].values():
            if rec["power_state"] == "Running" and rec["resident_on"] != NULL_REF:
                self.domains.setdefault(rec["uuid"], set()).add(self._host_by_ref(
                    rec["resident_on"]).uuid)
        self._dom0: dict[str, tuple[str, str]] = {
            rec["resident_on"]: (rec["uuid"], rec["name_label"])
            for rec in db.tables["VM"].values() if rec["is_control_domain"]}
        """host ref -> (uuid, name) of its control domain, which runs whenever it is powered."""
        self._double_runs: list[dict[str, Any]] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.calls: dict[tuple[str, str], int] = {}
        self._ticker: threading.Thread | None = None
        self._running = False
        self.server: Any = None
        self.control: Any = None
        self.control_url = ""
        self.started_real = 0.0
        now = self.clock.now()
        self._every(now, spec.host_heartbeat_interval, self._heartbeat_round)
        self._every(now, spec.db_gc_interval, self._gc_round)
        self._every(now, spec.pool_db_sync_interval, self._sync_round)

    # ---- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> SimPool:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        from xenhad.sim.control import ControlServer
        from xenhad.sim.rpc import RpcServer

        t0 = time.monotonic()
        self._running = True
        self.server = RpcServer(self)
        for h in self.hosts:
            os.makedirs(os.path.dirname(h.socket_path), exist_ok=True)
        self._open_on_one_port()
        self.server.start()
        self.control = ControlServer(self)
        self.control_url = self.control.url
        self._ticker = threading.Thread(target=self._tick_loop, name="sim-ticker", daemon=True)
        self._ticker.start()
        self.started_real = time.monotonic() - t0

    def _open_on_one_port(self) -> None:
        """Every host listens on the same port of its own address, as every xapi of a real
        pool listens on 443: a client that knows a host's address (host.address) reaches it.
        The first host picks a free port; if another address has it taken, start over."""
        for _ in range(50):
            try:
                for i, h in enumerate(self.hosts):
                    if i > 0:
                        h.port = self.hosts[0].port
                    self.server.open(h)
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                for h in self.hosts:
                    self.server.close_host(h)
                    h.port = 0
        raise SimError("no port is free on every host address; stop other simulators")

    def stop(self) -> None:
        with self.lock:
            if not self._running:
                return
            self._running = False
            self.changed.notify_all()
        if self.control is not None:
            self.control.close()
        if self.server is not None:
            self.server.close()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        if self._own_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def start_in_process(self) -> None:
        """Run without servers or ticker threads: xenhad.virtual calls api.dispatch itself
        and ticks the pool when `on_timer` says a timer is due."""
        self.in_process = True
        self._running = True

    @property
    def running(self) -> bool:
        return self._running

    def new_ref(self) -> str:
        if self._refs is None:
            return f"OpaqueRef:{uuidlib.uuid4()}"
        return f"OpaqueRef:{uuidlib.UUID(int=self._refs.getrandbits(128), version=4)}"

    # ---- timers ----------------------------------------------------------------------

    def _tick_loop(self) -> None:
        while True:
            with self.lock:
                if not self._running:
                    return
                self.tick()
                self.changed.wait(0.02)

    def tick(self) -> None:
        """Run every timer that is due, in sim-time order (after advance(), many)."""
        with self.lock:
            now = self.clock.now()
            while self._timers and self._timers[0][0] <= now:
                at, _, fn = heapq.heappop(self._timers)
                self._now_override = at
                try:
                    fn()
                finally:
                    self._now_override = None
            for h in self.hosts:
                if h.watchdog_deadline is not None and h.watchdog_deadline <= now:
                    self._watchdog_reset(h)
            self.changed.notify_all()

    _now_override: float | None = None

    def now(self) -> float:
        """Sim time; inside a timer callback, the time the timer was due."""
        return self._now_override if self._now_override is not None else self.clock.now()

    def after(self, seconds: float, fn: Callable[[], None]) -> None:
        self._push(self.now() + seconds, fn)

    def _every(self, start: float, interval: float, fn: Callable[[], None]) -> None:
        def run() -> None:
            fn()
            self._push(self.now() + interval, run)

        self._push(start + interval, run)

    def _push(self, at: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (at, next(self._seq), fn))
        self._due(at)

    def _due(self, at: float) -> None:
        if self.on_timer is not None:
            self.on_timer(at)

    def wait_sim(self, seconds: float) -> None:
        """Block the calling request (lock held on entry and exit) for `seconds` sim time."""
        self._may_block()
        end = self.clock.now() + seconds
        while self._running:
            left = end - self.clock.now()
            if left <= 0:
                return
            self.changed.wait(min(self.clock.real_seconds(left), 0.05))

    def wait_change(self, deadline: float) -> None:
        """Block the calling request (lock held) until the pool changes or a while passes."""
        self._may_block()
        self.changed.wait(min(self.clock.real_seconds(deadline - self.clock.now()), 0.05))

    def _may_block(self) -> None:
        if self.in_process:
            raise SimError("a call of a pool run in process waited on a thread: "
                           "xenhad.virtual drives its waits (api.Pending)")

    def advance(self, seconds: float) -> None:
        if self.in_process:
            raise SimError("advance: a pool run in process moves with its virtual loop")
        if seconds < 0:
            raise SimError("advance: seconds must be >= 0")
        with self.lock:
            self.clock.advance(seconds)
            self.tick()

    # ---- host lookup and routes ------------------------------------------------------

    def host(self, key: str) -> HostState:
        h = self._by_key.get(key)
        if h is None:
            raise SimError(f"unknown host {key!r}: name it host1..host{len(self.hosts)} or by uuid")
        return h

    def _host_by_ref(self, ref: str) -> HostState:
        for h in self.hosts:
            if h.ref == ref:
                return h
        raise SimError(f"no host with ref {ref}")

    def host_by_ref(self, ref: str) -> HostState | None:
        for h in self.hosts:
            if h.ref == ref:
                return h
        return None

    def host_by_address(self, address: str) -> HostState | None:
        return self._by_key.get(address) if address in self._by_key else None

    def route(self, src: HostState | None, dst: HostState) -> str:
        """What a request opened by `src` (None: the outside) to `dst`'s xapi meets."""
        if not dst.powered or dst.xapi == "down":
            return Route.REFUSED
        if self.network.blocked(src.uuid if src else None, dst.uuid):
            return Route.BLACKHOLE
        if dst.xapi == "hung" and src is not dst:
            return Route.BLACKHOLE
        return Route.OK

    def master_of(self, h: HostState) -> HostState | None:
        return self.host_by_address(h.running_master)

    # ---- physical truth --------------------------------------------------------------

    def add_domain(self, vm_uuid: str, name: str, host: HostState) -> None:
        where = self.domains.setdefault(vm_uuid, set())
        where.add(host.uuid)
        if len(where) > 1:
            hosts = sorted(self.host(u).name for u in where)
            self._double_runs.append({"vm": vm_uuid, "name": name, "hosts": hosts,
                                      "host_uuids": sorted(where), "sim_time": self.now(),
                                      "wall_time": time.time()})

    def remove_domain(self, vm_uuid: str, host: HostState) -> None:
        where = self.domains.get(vm_uuid)
        if where:
            where.discard(host.uuid)
            if not where:
                del self.domains[vm_uuid]

    def has_domain(self, vm_uuid: str, host: HostState) -> bool:
        return host.uuid in self.domains.get(vm_uuid, set())

    def _power_loss(self, h: HostState) -> None:
        h.power_losses.append(self.clock.wall())
        h.powered = False
        h.xapi = "down"
        h.epoch += 1
        h.local_sessions.clear()
        h.emergency = False
        h.watchdog_deadline = None
        for vm_uuid in [v for v, where in self.domains.items() if h.uuid in where]:
            self.remove_domain(vm_uuid, h)
        if self.server is not None:
            self.server.close_host(h)

    def _watchdog_reset(self, h: HostState) -> None:
        """A watchdog reset is a reboot: the machine goes down at once with every domain,
        dom0 included (so the daemon that starved it dies too), stays down while it resets
        and runs its firmware (RESET_OFF_SECONDS), then boots as from a power-on."""
        h.watchdog_fired += 1
        self._power_loss(h)
        epoch = h.epoch

        def power_on() -> None:
            if h.epoch == epoch and not h.powered:
                self._schedule_boot(h)

        self.after(RESET_OFF_SECONDS, power_on)

    def _schedule_boot(self, h: HostState) -> None:
        h.powered = True
        h.boots += 1
        dom0 = self._dom0.get(h.ref)
        if dom0 is not None:
            self.add_domain(dom0[0], dom0[1], h)
        epoch = h.epoch

        def up() -> None:
            if h.epoch == epoch and h.powered:
                self._start_xapi(h)

        self.after(self.spec.boot_seconds, up)

    def _resync_local(self, h: HostState, db: Db) -> None:
        # xapi_xenops.ml resync on xapi start: the database follows the domains the host
        # really runs, halting VMs that it says are resident here but have no domain.
        for ref, rec in db.tables["VM"].items():
            if rec["is_control_domain"]:
                continue
            has = self.has_domain(rec["uuid"], h)
            if rec["resident_on"] == h.ref and not has:
                db.set(ref, "power_state", "Halted")
                db.set(ref, "resident_on", NULL_REF)
                db.set(ref, "domid", -1)
            elif has and rec["resident_on"] != h.ref:
                db.set(ref, "power_state", "Running")
                db.set(ref, "resident_on", h.ref)

    def _start_xapi(self, h: HostState) -> None:
        """xapi (re)starts on a powered host, as master or slave per its pool.conf (xapi.ml)."""
        h.epoch += 1
        h.xapi = "up"
        h.role_master = h.conf_master
        h.local_sessions.clear()
        h.emergency = False
        if self.server is not None:
            self.server.open(h)
        if h.is_master:
            # A master starts on its own copy of the database (a former slave's copy may be
            # up to pool_db_sync_interval stale) and a fresh heartbeat table: db_gc.ml gives
            # every host a full host_assumed_dead_interval before marking it dead.
            h.db = h.db.copy()
            h.heartbeats = {}
            h.shutting_down = set()
            h.db.set(self.pool_ref_in(h.db), "master", h.ref)
            h.db.set(h.metrics_ref, "live", True)
            self._resync_local(h, h.db)
            # dbsync_master.ml: Cancel_tasks.cancel_tasks_on_host ~host_opt:None, "tasks
            # that were running on the master": every task in the database is cancelled,
            # and the operations they held on VMs with them.
            self._cancel_operations(h.db, None)
            # A new master enables itself like any host at start-up (a host promoted while
            # disabled since its last hello stayed disabled for ever, and no VM could be
            # restarted on it: self-fence soak seed 2612007944), and its slaves ask again
            # for their own (xapi.ml on_master_restart: consider_enabling_host_request).
            self._consider_enabling_later(h)
            for slave in self.hosts:
                if slave is not h and slave.powered and slave.xapi == "up" \
                        and self.master_of(slave) is h:
                    self._consider_enabling_later(slave)
            self.changed.notify_all()
            return
        self._hello(h)

    def _cancel_operations(self, db: Db, host_ref: str | None) -> None:
        """Cancel_tasks.cancel_tasks_on_host: the VM operations of tasks that died with a
        xapi (all of them, or those of one host: a start is the task of its target host)."""
        for ref, rec in db.tables["VM"].items():
            if not rec["current_operations"]:
                continue
            if host_ref is None or rec.get("scheduled_to_be_resident_on") == host_ref:
                db.set(ref, "current_operations", {})
                db.set(ref, "scheduled_to_be_resident_on", NULL_REF)

    def pool_ref_in(self, db: Db) -> str:
        return db.pool_ref()

    def _hello(self, h: HostState) -> None:
        """A slave's xapi start: Pool.hello to its master (xapi_pool.ml hello)."""
        m = self.master_of(h)
        if m is None or not m.is_master or self.route(h, m) != Route.OK or m.xapi != "up":
            h.emergency = True
            epoch = h.epoch

            def retry() -> None:
                if h.epoch == epoch and h.powered and h.xapi != "down" and h.emergency:
                    self._hello(h)

            self.after(self.spec.host_heartbeat_interval, retry)
            return
        h.emergency = False
        db = m.db
        db.set(h.ref, "enabled", False)
        if not db.pool()["ha_enabled"]:
            db.set(h.metrics_ref, "live", True)
        m.shutting_down.discard(h.ref)
        m.heartbeats[h.ref] = self.now()
        self._resync_local(h, db)
        # xapi_pool.ml hello: "cancelling tasks on behalf of slave".
        self._cancel_operations(db, h.ref)
        h.db = db.copy()
        self._consider_enabling_later(h)

    def _consider_enabling_later(self, h: HostState) -> None:
        """xapi_host_helpers.ml consider_enabling_host, called at the end of every xapi's
        start-up once its storage is plugged (storage_access.ml plug_all_pbds), a master's
        as a slave's: the host enables itself unless the operator disabled it with
        auto_enable=false. A slave's call is a write to its master's database: made once
        the master answers it."""
        epoch = h.epoch

        def consider_enabling() -> None:
            if h.epoch == epoch and h.powered and h.xapi == "hung":
                # A hung xapi is one process stalled, not restarted: its start-up carries
                # on where it stood once it answers again. Dropped, the host stayed
                # disabled for good after a hang over its boot, and a VM on its local SR
                # could run nowhere (virtual chaos seed 1000222).
                self.after(self.spec.enable_after_boot_seconds, consider_enabling)
                return
            if h.epoch != epoch or not h.powered or h.xapi != "up" or not h.auto_enable:
                return
            mm = h if h.is_master else self.master_of(h)
            if mm is None or not mm.is_master:
                return  # its xapi restarts into emergency mode; its hello enables it
            if mm.xapi == "up" and (mm is h or self.route(h, mm) == Route.OK):
                mm.db.set(h.ref, "enabled", True)
                return
            # A slave's database write to a master that does not answer (hung, or cut
            # from it) blocks and is retried until it gets through (master_connection.ml),
            # or xapi restarts and its hello enables it: either way the host ends enabled.
            # Dropped, a host booted behind a one-way cut stayed disabled for good, and its
            # local-SR VM ran nowhere (virtual chaos seed 3000060).
            self.after(self.spec.enable_after_boot_seconds, consider_enabling)

        self.after(self.spec.enable_after_boot_seconds, consider_enabling)

    def _heartbeat_round(self) -> None:
        # db_gc.ml send_one_heartbeat / tickle_heartbeat: every slave whose xapi runs tells
        # the master it believes in that it is alive.
        now = self.now()
        for h in self.hosts:
            if h.is_master or not h.powered or h.xapi != "up" or h.emergency:
                continue
            m = self.master_of(h)
            if m is not None and m.is_master and m.xapi == "up" and self.route(h, m) == Route.OK:
                m.heartbeats[h.ref] = now

    def _gc_round(self) -> None:
        # db_gc.ml check_host_liveness, run by each master's db_gc thread.
        now = self.now()
        dead_after = self.spec.host_assumed_dead_interval
        for m in self.hosts:
            if not m.is_master or not m.powered or m.xapi != "up":
                continue
            db = m.db
            if db.pool()["ha_enabled"]:
                continue
            for ref, host in db.tables["host"].items():
                if ref == m.ref:
                    continue
                last = m.heartbeats.setdefault(ref, now)
                live = db.tables["host_metrics"][host["metrics"]]["live"]
                if now - last < dead_after:
                    if not live and ref not in m.shutting_down:
                        db.set(host["metrics"], "live", True)
                elif live:
                    db.set(host["metrics"], "live", False)

    def _sync_round(self) -> None:
        for m in self.hosts:
            if m.is_master and m.powered and m.xapi == "up":
                self.sync_database_from(m)

    def sync_database_from(self, m: HostState) -> list[HostState]:
        """pool_db_backup.ml: the master pushes its database to every slave it reaches."""
        snapshot = m.db.copy()
        reached = []
        for h in self.hosts:
            if h is m or self.master_of(h) is not m:
                continue
            if h.xapi == "up" and self.route(m, h) == Route.OK:
                h.db = snapshot
                reached.append(h)
        return reached

    def become_master(self, h: HostState) -> None:
        h.conf_master = h.address
        self._restart_xapi(h)

    def reset_master(self, h: HostState, address: str, delay: float) -> None:
        """pool.emergency_reset_master: rewrite pool.conf, then restart xapi as a slave."""
        h.conf_master = address
        epoch = h.epoch

        def restart() -> None:
            if h.epoch == epoch and h.powered:
                self._restart_xapi(h)

        self.after(delay, restart)

    def _restart_xapi(self, h: HostState) -> None:
        if h.powered:
            self._start_xapi(h)

    # ---- fault injection (public) ----------------------------------------------------

    def crash(self, host: str) -> None:
        """Power the host off at once: its domains are gone, its listeners closed."""
        with self.lock:
            h = self.host(host)
            if h.powered:
                self._power_loss(h)

    def restart_xapi(self, host: str, down_seconds: float = 1.0) -> None:
        """xe-toolstack-restart: xapi exits (its connections closed, calls in flight lost,
        tasks cancelled at the next master start) and starts again `down_seconds` later;
        domains keep running."""
        with self.lock:
            h = self.host(host)
            if not h.powered or h.xapi == "down":
                return
            h.xapi = "down"
            h.epoch += 1
            h.local_sessions.clear()
            epoch = h.epoch
            if self.server is not None:
                self.server.close_host(h)

            def start() -> None:
                if h.epoch == epoch and h.powered:
                    self._start_xapi(h)

            self.after(down_seconds, start)
            self.changed.notify_all()

    def hang(self, host: str) -> None:
        """xapi stops answering (requests are held, never answered); domains keep running."""
        with self.lock:
            h = self.host(host)
            if not h.powered:
                raise SimError(f"hang: {h.name} is powered off; boot it first")
            if h.xapi == "up":
                h.xapi = "hung"

    def unhang(self, host: str) -> None:
        with self.lock:
            h = self.host(host)
            if h.xapi == "hung":
                h.xapi = "up"

    def shutdown(self, host: str) -> None:
        """A clean shutdown: its VMs halted, and the master marks it not live at once
        (db_gc.ml tickle_heartbeat with shutting_down -> mark_host_as_dead). dom0 shuts its
        VMs down through the API on the way (xapi-domains), which clears ha_always_run."""
        with self.lock:
            h = self.host(host)
            if not h.powered:
                return
            m = h if h.is_master else self.master_of(h)
            if m is not None and m.is_master and m.xapi != "down" and (
                    m is h or self.route(h, m) == Route.OK):
                db = m.db
                for ref, rec in db.tables["VM"].items():
                    if rec["resident_on"] == h.ref and not rec["is_control_domain"]:
                        db.set(ref, "power_state", "Halted")
                        db.set(ref, "resident_on", NULL_REF)
                        db.set(ref, "domid", -1)
                        db.set(ref, "ha_always_run", False)
                if m is not h:
                    m.shutting_down.add(h.ref)
                    db.set(h.metrics_ref, "live", False)
            self._power_loss(h)

    def boot(self, host: str) -> None:
        """Power on: xapi is back after boot_seconds (sim); no domains run on it."""
        with self.lock:
            h = self.host(host)
            if h.powered:
                raise SimError(f"boot: {h.name} is already powered on")
            self._schedule_boot(h)

    def partition(self, groups: list[list[str]]) -> None:
        with self.lock:
            if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
                raise SimError('partition: give groups as a list of lists of hosts')
            seen: set[str] = set()
            uuids: list[list[str]] = []
            for g in groups:
                uu = []
                for name in g:
                    h = self.host(str(name))
                    if h.uuid in seen:
                        raise SimError(f"partition: {h.name} is in two groups")
                    seen.add(h.uuid)
                    uu.append(h.uuid)
                uuids.append(uu)
            self.network.partition(uuids)

    def cut(self, src: str, dst: str) -> None:
        """One way: requests opened by src to dst are black-holed; dst -> src still works."""
        with self.lock:
            self.network.cut(self.host(src).uuid, self.host(dst).uuid)

    def heal(self) -> None:
        with self.lock:
            self.network.heal()

    def set_latency(self, host: str, seconds: float, method: str | None = None) -> None:
        """Every answer of the host (or only to `method`) is delayed by `seconds` (real)."""
        with self.lock:
            if seconds < 0:
                raise SimError("latency: seconds must be >= 0")
            h = self.host(host)
            key = method or "*"
            if seconds == 0:
                h.latency.pop(key, None)
            else:
                h.latency[key] = float(seconds)

    def inject_error(self, host: str, method: str, code: str,
                     params: list[str] | None = None, count: int = 1) -> None:
        """The next `count` calls of `method` on the host fail with [code, *params]
        (count < 0: every call)."""
        with self.lock:
            if not method or not code:
                raise SimError("error: give a method and an error code")
            self.host(host).errors.append(
                InjectedError(method, code, [str(p) for p in (params or [])], int(count)))

    def clear_faults(self) -> None:
        """Heal the network, unhang every host, drop latencies and injected errors."""
        with self.lock:
            self.network.heal()
            for h in self.hosts:
                if h.xapi == "hung":
                    h.xapi = "up"
                h.latency.clear()
                h.errors.clear()

    def watchdog_arm(self, host: str, timeout_s: float) -> None:
        with self.lock:
            if timeout_s <= 0:
                raise SimError("watchdog: timeout must be > 0")
            h = self.host(host)
            if not h.powered:
                raise SimError(f"watchdog: {h.name} is powered off")
            h.watchdog_timeout = float(timeout_s)
            h.watchdog_deadline = self.clock.now() + timeout_s
            self._due(h.watchdog_deadline)

    def watchdog_keepalive(self, host: str, decided_monotonic: float | None = None) -> None:
        """Restart the countdown from the feed: from `decided_monotonic` (this machine's
        CLOCK_MONOTONIC, which the daemons read too) if given, the moment the daemon decided
        to feed. A real watchdog is fed by an ioctl on the spot; the HTTP request that
        stands for it here may be slow, and counting from its arrival would let a feed
        outlast the decision behind it (kinder than hardware)."""
        with self.lock:
            h = self.host(host)
            if h.watchdog_deadline is None:
                raise SimError(f"watchdog: not armed on {h.name}")
            now = self.clock.now()
            fed = now
            if decided_monotonic is not None:
                ago = max(0.0, time.monotonic() - decided_monotonic)
                fed = now - ago * self.clock.time_scale
            # Two feeds in flight may arrive out of order: the later decision counts.
            h.watchdog_deadline = max(h.watchdog_deadline, fed + h.watchdog_timeout)
            self._due(h.watchdog_deadline)

    def watchdog_disarm(self, host: str) -> None:
        with self.lock:
            self.host(host).watchdog_deadline = None

    # ---- observation -----------------------------------------------------------------

    def double_runs(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r) for r in self._double_runs]

    def count_call(self, served: HostState, method: str) -> None:
        """One XAPI call that `served`'s xapi answered itself (a slave's database call is
        counted on the master it is forwarded to). For the cost-at-rest benchmark."""
        key = (served.name, method)
        self.calls[key] = self.calls.get(key, 0) + 1

    def call_counts(self) -> dict[str, dict[str, int]]:
        """Host name -> method -> calls its xapi served since the pool started."""
        with self.lock:
            out: dict[str, dict[str, int]] = {}
            for (host, method), n in sorted(self.calls.items()):
                out.setdefault(host, {})[method] = n
            return out

    def truth(self) -> dict[str, Any]:
        with self.lock:
            names = {h.uuid: h.name for h in self.hosts}
            master_db = self.master_db()
            vms: list[dict[str, Any]] = []
            seen: set[str] = set()
            for rec in master_db.tables["VM"].values():
                if rec["is_a_template"] or rec["is_a_snapshot"]:
                    continue
                where = self.domains.get(rec["uuid"], set())
                seen.add(rec["uuid"])
                vms.append({"uuid": rec["uuid"], "name": rec["name_label"],
                            "control_domain": rec["is_control_domain"],
                            "running_on": sorted(where),
                            "hosts": sorted(names[u] for u in where)})
            for vm_uuid, where in sorted(self.domains.items()):
                if vm_uuid not in seen:
                    vms.append({"uuid": vm_uuid, "name": "", "control_domain": False,
                                "running_on": sorted(where),
                                "hosts": sorted(names[u] for u in where)})
            return {
                "sim_time": self.clock.now(),
                "hosts": {h.name: {
                    "uuid": h.uuid, "powered": h.powered, "xapi": h.xapi,
                    "emergency": h.emergency,
                    "believes_master": (self.master_of(h).name  # type: ignore[union-attr]
                                        if self.master_of(h) else h.conf_master),
                    "is_master": h.is_master,
                    "watchdog_deadline": h.watchdog_deadline,
                    "boots": h.boots, "watchdog_fired": h.watchdog_fired,
                    "power_losses": list(h.power_losses),
                } for h in self.hosts},
                "vms": vms,
                "network": self.network.describe(names),
                "double_runs": [dict(r) for r in self._double_runs],
            }

    def master_db(self) -> Db:
        """The database of the original master if it still is one, else of any master."""
        for h in self.hosts:
            if h.is_master and h.powered:
                return h.db
        return self.hosts[0].db

    def current_master(self) -> HostState:
        for h in self.hosts:
            if h.is_master and h.powered and h.xapi != "down":
                return h
        return self.hosts[0]

    def info(self) -> dict[str, Any]:
        with self.lock:
            return {
                "pool": self.pool_uuid,
                "master": self.current_master().uuid,
                "root_password": self.spec.root_password,
                "control_url": self.control_url,
                "base_dir": self.base_dir,
                "time_scale": self.spec.time_scale,
                "hosts": [{"uuid": h.uuid, "name": h.name, "address": h.address,
                           "url": f"{self.scheme}://{h.address}:{h.port}/",
                           "socket": h.socket_path} for h in self.hosts],
            }

    def url(self, host: str) -> str:
        h = self.host(host)
        return f"{self.scheme}://{h.address}:{h.port}/"

    @property
    def scheme(self) -> str:
        return "https" if self.spec.tls_cert is not None else "http"

    def connections_accepted(self, host: str) -> int:
        """TCP connections the host's xapi has accepted since the pool started (what a
        client that keeps its connections alive saves shows here)."""
        h = self.host(host)
        return int(self.server.accepted.get(h.uuid, 0)) if self.server is not None else 0

    def connections_open(self, host: str) -> int:
        """Connections the host's xapi is serving now, TCP and local socket (one a client
        closed is gone once its thread has seen the end)."""
        h = self.host(host)
        return self.server.open_connections(h) if self.server is not None else 0
