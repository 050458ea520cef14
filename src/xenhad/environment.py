"""Everything the daemon core touches outside itself, behind one object (issue 21, item 2).

pve-ha-manager runs the same CRM/LRM code against a real cluster (`Env/PVE2.pm`) or a
simulator (`Sim/TestEnv.pm`) through one environment (`Env.pm`): locks, quorum, watchdog,
fence, time, log. `Environment` is ours: `Daemon` reaches the world only through it, so a
daemon core runs unchanged in `xenhad run` (`real_environment`, the functions and threads
it always used) or, with every host of a pool, in one process on virtual time
(`xenhad.virtual.env`). Each part is one small interface; a part that does nothing here (a
null alert, no metrics server) is an object that does nothing, never an `if x is None`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import random
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from xenhad import config as configuration
from xenhad import heap
from xenhad import log as logsetup
from xenhad import status as status_socket
from xenhad.alerts import Alerts
from xenhad.clock import Clock, SystemClock
from xenhad.config import AlertsConfig, Config
from xenhad.errors import XenhadError
from xenhad.failover.witness import Witness
from xenhad.fencer import ChainBuilder, default_chain
from xenhad.fencing.config import SelfFenceSettings
from xenhad.fencing.watchdog import WatchdogDevice, device_for
from xenhad.journal import Journal
from xenhad.notify import Notifier
from xenhad.peers.roster import RosterFile
from xenhad.unit import RestartDelay, restart_delay
from xenhad.xapi.client import Xapi
from xenhad.xapi.connect import open_xapi
from xenhad.xapi.probe import ProbeConnections, ProbeResult, probe

if TYPE_CHECKING:
    from xenhad.metrics import Metrics

T = TypeVar("T")


class XapiConnector(Protocol):
    """A logged-in facade for `config`: to the pool (through this host's xapi), or `local`
    (slave_local_login: answered by this host's xapi alone, see failover/actions.py)."""

    async def __call__(self, config: Config, *, local: bool = False) -> Xapi: ...


class Prober(Protocol):
    """xapi/probe.py `probe`'s signature: one bounded request to a host's xapi."""

    async def __call__(self, address_or_url: str, *, source_address: str | None = None,
                       timeout: float, verify_tls: bool = False, ca_file: str | None = None,
                       connections: ProbeConnections | None = None) -> ProbeResult: ...


class StatusServer(Protocol):
    def close(self) -> None: ...


@dataclass
class Heartbeats:
    """What the heartbeat link is built on (peers/link.py): its socket, and the Random of a
    boot's numbers (None: the OS's secrets)."""

    socket_factory: Callable[[int, int], Any] = socket.socket
    rng: Callable[[], random.Random | None] = lambda: None


class StateDir:
    """This host's state directory: the lock that keeps a second daemon off it, the
    journal of incidents and the peers' roster in it. Real files, fsynced (journal.py)."""

    def __init__(self) -> None:
        self._lock_fd = -1

    def journal(self, path: Path) -> Journal:
        return Journal(path)

    def roster(self, path: Path) -> RosterFile:
        """Whom the heartbeat link beats to before the pool is read (peers/roster.py)."""
        return RosterFile(path)

    def lock(self, state_dir: Path) -> None:
        """Hold the directory for this daemon's life; XenhadError when it cannot be used or
        another daemon holds it. Two daemons sharing one journal would each resume the
        other's incidents."""
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise XenhadError(
                f"cannot use daemon.state_dir {state_dir}: {exc.strerror or exc} "
                f"({exc.filename or state_dir}); xenhad keeps its journal of incidents there: "
                "make it a writable directory (remount its disk read-write, free space), "
                "or point daemon.state_dir at one"
            ) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            raise XenhadError(
                f"another xenhad (pid {holder}) holds {state_dir}/lock: stop it first, or give "
                "this one its own daemon.state_dir"
            ) from None
        # The pid is for the operator only (the flock is the lock): a full disk may refuse it.
        with contextlib.suppress(OSError):
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)


class Identity:
    """Who this host is and the secrets it holds, read from the host (inventory, files,
    systemd credentials, the unit)."""

    def host_uuid(self, config: Config) -> str:
        return configuration.resolve_host_uuid(config)

    def peer_secret(self, config: Config) -> bytes:
        return configuration.read_peer_secret(config).encode()

    def restart_delay(self) -> RestartDelay | None:
        return restart_delay()


class ConfigSource:
    """Where a reload (SIGHUP) reads the configuration from, and how logging follows it."""

    def load(self, path: Path) -> Config:
        return configuration.load(path)

    def configure_logs(self, config: Config) -> None:
        logsetup.configure(fmt=config.daemon.log_format, level=config.daemon.log_level)


class Signals:
    """SIGTERM and SIGINT stop, SIGHUP reloads (the loop's own handlers)."""

    def install(self, stop: Callable[[], None], reload: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop)
        loop.add_signal_handler(signal.SIGINT, stop)
        loop.add_signal_handler(signal.SIGHUP, reload)


class Servers:
    """The status socket (`xenhad status`) and the metrics port (Prometheus)."""

    async def status(self, config: Config, produce: Callable[[], Any]) -> StatusServer:
        path = status_socket.socket_path(Path(config.daemon.state_dir))
        return await status_socket.serve(path, produce)

    def metrics(self, config: Config) -> Metrics | None:
        if not config.daemon.metrics_port:
            return None
        # Imported here: prometheus_client costs memory a daemon without metrics saves.
        from xenhad.metrics import Metrics, serve

        metrics = Metrics()
        serve(metrics, config.daemon.metrics_port, config.daemon.metrics_address)
        return metrics


class Offload:
    """CPU-bound work kept off the loop (admission.can_absorb: 0.8 s for 64 hosts), and the
    heap given back after it (heap.py)."""

    def run(self, name: str, work: Callable[[], T]) -> Awaitable[T]:
        return _in_daemon_thread(name, work)

    def release_memory(self) -> None:
        heap.release()


def _witness(directory: Path, me: str, *, ttl: float, skew: float, settle: float,
             timeout: float) -> Witness:
    return Witness(directory, me, ttl=ttl, skew=skew, settle=settle, timeout=timeout)


def _alerts(cfg: AlertsConfig, sent_by: str | None) -> Alerts:
    return Alerts.from_config(cfg, sent_by=sent_by)


def _watchdog(settings: SelfFenceSettings, host: str) -> WatchdogDevice:
    return device_for(settings, host=host)


async def _connect(config: Config, *, local: bool = False) -> Xapi:
    return await open_xapi(config, local=local)


@dataclass
class Environment:
    """The world of one daemon core. `real_environment()` is `xenhad run`'s."""

    clock: Clock = field(default_factory=SystemClock)
    rng: random.Random = field(default_factory=random.Random)
    """The daemon's own draws (read spread, read backoff): unseeded in a real daemon."""
    notifier: Notifier = field(default_factory=Notifier)
    connect: XapiConnector = _connect
    probe: Prober = probe
    heartbeats: Heartbeats = field(default_factory=Heartbeats)
    watchdog_device: Callable[[SelfFenceSettings, str], WatchdogDevice] = _watchdog
    fence_chain: ChainBuilder = default_chain
    witness: Callable[..., Witness] = _witness
    """`(directory, me, *, ttl, skew, settle, timeout) -> Witness`."""
    state: StateDir = field(default_factory=StateDir)
    alerts: Callable[[AlertsConfig, str | None], Alerts] = _alerts
    servers: Servers = field(default_factory=Servers)
    offload: Offload = field(default_factory=Offload)
    identity: Identity = field(default_factory=Identity)
    config_source: ConfigSource = field(default_factory=ConfigSource)
    signals: Signals = field(default_factory=Signals)


def real_environment(*, clock: Clock | None = None,
                     notifier: Notifier | None = None) -> Environment:
    """What `xenhad run` gives its daemon: the host's XAPI, sockets, files and threads."""
    env = Environment()
    if clock is not None:
        env.clock = clock
    if notifier is not None:
        env.notifier = notifier
    return env


def _in_daemon_thread(name: str, work: Callable[[], T]) -> asyncio.Future[T]:
    """`work()` in a daemon thread of its own, as a future of this loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # the tick that waited may have been cancelled
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting tick, which logs it
            loop.call_soon_threadsafe(settle, functools.partial(future.set_exception, exc))
        else:
            loop.call_soon_threadsafe(settle, functools.partial(future.set_result, result))

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
