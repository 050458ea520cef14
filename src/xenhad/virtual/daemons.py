"""Every host's daemon core in one process, on the virtual loop, living and dying with its
host (issue 21, item 3).

A daemon lives in its host's dom0. Each life of one is an `Incarnation`: every task and
callback it makes runs in a context naming it (`OWNER`), and the loop (`OwnedLoop`) runs
them only while it lives. When its host loses power (a crash, its BMC's ForceOff, its
watchdog's reset) or it is killed, the incarnation dies at that instant: nothing of it runs
again, not a `finally`, as with SIGKILL or a power cut (its tasks are kept, never resumed,
until the run ends). When the host is powered with its xapi up, a new incarnation starts,
as systemd would start `xenhad run` at boot: a new Daemon on the host's journal (its disk
survives), its clock (the hardware clock keeps its offset), and the rest fresh. A paused
incarnation (SIGSTOP) runs nothing until it is resumed; its timers fire late.

The daemons' log events are captured in process: each host's as `LogLine`s (what
chaos/checks.py reads from a real daemon's log) and all of them as one trace of lines, the
run's record, the same bytes for the same seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import json
from collections.abc import Callable, Coroutine, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import structlog

from xenhad import config as configuration
from xenhad.config import Config
from xenhad.daemon import Daemon
from xenhad.environment import Environment
from xenhad.log import LogLine
from xenhad.sim.bmc import BmcModel
from xenhad.sim.pool import HostState
from xenhad.virtual.disk import MemoryDisk
from xenhad.virtual.env import HostParts, SharedLease, host_environment
from xenhad.virtual.loop import Soon, Timer, VirtualClock, VirtualLoop
from xenhad.virtual.net import HeartbeatNetwork, VirtualDatagramSocket
from xenhad.virtual.world import World


@dataclass(eq=False)
class Incarnation:
    """One life of one host's daemon."""

    host: str
    number: int
    alive: bool = True
    paused_until: float = float("-inf")
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    parked: list[tuple[Callable[..., Any], Any, contextvars.Context | None]] = field(
        default_factory=list)
    """What it would have run after its death: run only when the run ends (`Pool.end`),
    so that its coroutines end there, not at a moment of the garbage collector's choosing."""
    sockets: list[VirtualDatagramSocket] = field(default_factory=list)
    daemon: Daemon | None = None
    main: asyncio.Task[int] | None = None

    @property
    def name(self) -> str:
        return f"{self.host}#{self.number}"


OWNER: contextvars.ContextVar[Incarnation | None] = contextvars.ContextVar(
    "xenhad_virtual_owner", default=None)
"""The incarnation the running code belongs to (None: the world, the harness)."""


class OwnedLoop(VirtualLoop):
    """A VirtualLoop that runs an incarnation's callbacks only while it lives, and defers
    them while it is paused."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start)
        self.set_task_factory(self._new_task)  # type: ignore[arg-type]

    def _new_task(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                  context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
        owner = OWNER.get() if context is None else context.get(OWNER)
        if owner is not None:
            # Kept: a task that never runs again must not be collected mid-run (its
            # coroutine's `finally` would run at a moment of the collector's choosing).
            owner.tasks.append(task)
        return task

    def _call_soon(self, callback: Callable[..., Any], args: Any,
                   context: contextvars.Context | None) -> asyncio.Handle:
        owner = OWNER.get() if context is None else context.get(OWNER)
        if owner is not None:
            if not owner.alive:
                owner.parked.append((callback, args, context))
                return Soon(callback, args, self, context)
            if self._paused(owner):
                return self.call_at(owner.paused_until, callback, *args, context=context)
        return super()._call_soon(callback, args, context)

    def _paused(self, owner: Incarnation) -> bool:
        # Within the clock's resolution a timer is due at once: a pause that ends that
        # close is over, or its deferred callbacks would be deferred again for ever.
        resolution: float = self._clock_resolution  # type: ignore[attr-defined]
        return owner.paused_until - self.time() > resolution

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any,  # type: ignore[override]
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        owner = OWNER.get() if context is None else context.get(OWNER)
        if owner is None:
            return super().call_at(when, callback, *args, context=context)
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()  # type: ignore[attr-defined]
        return self._schedule(_OwnedTimer(when, callback, args, self, context, owner))


class _OwnedTimer(Timer):
    """An incarnation's timer: when due, run only while its owner lives (else parked), and
    deferred to the end of its owner's pause (by a new timer, as a paused process's timer
    fires late; the handle its caller holds is spent)."""

    __slots__ = ("_given", "_owner")

    def __init__(self, when: float, callback: Callable[..., Any], args: Any, loop: OwnedLoop,
                 context: contextvars.Context | None, owner: Incarnation) -> None:
        super().__init__(when, callback, args, loop, context)
        self._owner = owner
        self._given = context  # what its caller named (None: its own, copied above)

    def _run(self) -> None:
        owner, loop = self._owner, cast(OwnedLoop, self._loop)
        if not owner.alive:
            owner.parked.append((self._callback, self._args, self._given))
        elif loop._paused(owner):
            # From within the owner's context, as its callback would have been: a deferred
            # callback's new timer copies that context, as one made by the callback would.
            self._context.run(loop.call_at, owner.paused_until, self._callback, *self._args,
                              context=self._given)
        else:
            super()._run()


@dataclass
class VirtualHost:
    """What of a host outlives its daemon: its config, its disk, its hardware clock, its
    BMC; and the daemon's lives."""

    state: HostState
    config: Config
    disk: MemoryDisk
    clock: VirtualClock
    bmc: BmcModel
    lives: list[Incarnation] = field(default_factory=list)
    wanted: bool = True
    """Its daemon should run whenever the host is up (systemd would start it)."""
    boots: int = 0
    """The host's boot count when its daemon last started: a daemon outlives no reboot."""

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def current(self) -> Incarnation | None:
        return self.lives[-1] if self.lives and self.lives[-1].alive else None


class Pool:
    """A World, its heartbeat network, and one daemon core per host."""

    def __init__(self, world: World, net: HeartbeatNetwork, configs: Mapping[str, Config],
                 *, lease: SharedLease | None = None) -> None:
        self.world = world
        self.net = net
        self.lease = lease or SharedLease()
        self.hosts: dict[str, VirtualHost] = {}
        for h in world.pool.hosts:
            self.hosts[h.name] = VirtualHost(
                h, configs[h.name], MemoryDisk(), VirtualClock(world.loop),
                BmcModel(world.pool, h.name, stamp=world.clock.monotonic))
        self.trace: list[str] = []
        self.logs: dict[str, list[LogLine]] = {name: [] for name in self.hosts}
        self.ended = False
        self.crashes: list[str] = []
        """Daemons that raised (a bug), one line each."""

    # -- lives ----------------------------------------------------------------------------

    def environment(self, host: VirtualHost, life: Incarnation) -> Environment:
        def guard() -> None:
            if not life.alive:
                raise asyncio.CancelledError(f"{life.name} is dead")

        return host_environment(
            self.world, self.net, self.lease, HostParts(
                uuid=host.state.uuid, name=host.name, config=host.config, disk=host.disk,
                clock=host.clock, sockets=life.sockets),
            bmcs={name: h.bmc for name, h in self.hosts.items()}, guard=guard)

    def start(self, name: str) -> Incarnation:
        host = self.hosts[name]
        life = Incarnation(name, len(host.lives) + 1)
        host.lives.append(life)
        host.boots = host.state.boots
        daemon = Daemon(Path(f"/virtual/{name}/xenhad.toml"), host.config,
                        env=self.environment(host, life))
        life.daemon = daemon
        context = contextvars.copy_context()
        context.run(OWNER.set, life)
        context.run(_log.info, "daemon.starting", config=f"/virtual/{name}/xenhad.toml")
        life.main = self.world.loop.create_task(self._live(life, daemon), context=context)
        return life

    async def _live(self, life: Incarnation, daemon: Daemon) -> int:
        try:
            return await daemon.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # `xenhad run` logs an operator's error in one line and exits 2; a bug, exit 1.
            self.crashes.append(f"{life.name}: the daemon raised {type(exc).__name__}: {exc}")
            _log.critical("daemon.crashed", error=f"{type(exc).__name__}: {exc}")
            return 1

    def kill(self, name: str, *, respawn: bool = True) -> None:
        """SIGKILL, or the power gone: the daemon ends at this instant, with nothing more
        run of it."""
        host = self.hosts[name]
        host.wanted = respawn
        life = host.current
        if life is None:
            return
        life.alive = False
        for sock in life.sockets:
            sock.close()

    def pause(self, name: str, seconds: float) -> None:
        life = self.hosts[name].current
        if life is not None:
            life.paused_until = max(life.paused_until, self.world.loop.time() + seconds)

    def supervise(self) -> None:
        """What systemd and the dom0 do: end a daemon whose host lost power or rebooted,
        start one on a host that is up with its xapi."""
        for host in self.hosts.values():
            state = host.state
            life = host.current
            if life is not None and life.main is not None and life.main.done():
                life.alive = False  # it exited (an error at start): systemd starts it again
                life = None
            if life is not None and (not state.powered or state.boots != host.boots):
                self.kill(host.name, respawn=host.wanted)
                life = None
            if (life is None and host.wanted and state.powered and state.xapi == "up"):
                self.start(host.name)

    def alive(self, name: str) -> bool:
        return self.hosts[name].current is not None

    def running(self, name: str) -> bool:
        """Alive and not paused: its heartbeats go out."""
        life = self.hosts[name].current
        return life is not None and life.paused_until <= self.world.loop.time()

    def end(self) -> None:
        """At the run's end, once its record is taken: every life's tasks, the dead ones'
        too, are cancelled and run to their end, saying nothing, so that none is left for
        the garbage collector to end later."""
        self.ended = True
        loop = self.world.loop
        for host in self.hosts.values():
            for life in host.lives:
                life.alive = True
                life.paused_until = float("-inf")
                for callback, args, context in life.parked:
                    loop.call_soon(callback, *args, context=context)
                life.parked.clear()
        # The lives' tasks and the world's (calls its xapis were performing).
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.wait(tasks, timeout=3600.0))
        for task in tasks:
            task._log_destroy_pending = False  # type: ignore[attr-defined]

    # -- the record -----------------------------------------------------------------------

    def capture(self, logger: Any, method: str,
                event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        """A structlog processor: each event of a live daemon into its host's log and the
        trace; nothing else is written anywhere."""
        life = OWNER.get()
        if life is not None and life.alive and not self.ended:
            now = self.world.clock.wall()
            name = str(event.pop("event", ""))
            event.pop("component", None)
            level = "warning" if method == "warn" else method
            if level == "exception":
                level = "error"
            if event.pop("exc_info", None):
                self.crashes.append(f"{life.name}: {name} logged an exception")
            stamp = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ")
            self.logs[life.host].append(LogLine(name, level, dict(event), None, stamp))
            facts = " ".join(f"{k}={_render(v)}" for k, v in event.items())
            self.trace.append(f"{self.world.loop.time():10.4f} {life.name} {level} {name} "
                              f"{facts}".rstrip())
        raise structlog.DropEvent


def _render(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if text and " " not in text else json.dumps(text)


_log = structlog.get_logger("xenhad.virtual")


class Capture:
    """structlog set to `pool.capture` for the life of a run, then as it was."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> Capture:
        self._saved = structlog.get_config()
        structlog.configure(processors=[structlog.contextvars.merge_contextvars,
                                        self._pool.capture],
                            wrapper_class=structlog.make_filtering_bound_logger(20),
                            cache_logger_on_first_use=False)
        return self

    def __exit__(self, *exc: object) -> None:
        structlog.configure(**self._saved)


def host_config(text: str) -> Config:
    return configuration.parse(text, source="<virtual>", check_files=False)


__all__ = ["OWNER", "Capture", "Incarnation", "OwnedLoop", "Pool", "VirtualHost",
           "host_config"]
