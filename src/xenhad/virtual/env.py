"""One host's Environment (environment.py) in process, over a World: what its daemon core
touches, each part the in-process twin of the real one.

| part | in process |
|---|---|
| XAPI, probes | virtual/xapi.py over the World (the simulator's own api.py) |
| heartbeats | virtual/net.py datagram sockets, the boot's numbers from the seed |
| watchdog, fencing | virtual/fencing.py: the simulator's watchdog, the host's BMC model |
| witness | a lease in memory every host shares (`SharedLease`) |
| journal | journal.py on the host's in-memory disk (virtual/disk.py), no state-dir lock |
| alerts, status, metrics, systemd, signals | nothing (objects that do nothing) |
| admission's thread | the work done on the loop |
| host uuid, secrets, restart delay, reload | values given, the same config again |

Every part that acts on the world calls `guard` first: it raises CancelledError once the
daemon is dead (xenhad.virtual.daemons), so nothing of a dead daemon reaches the world.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xenhad.alerts import Alerts
from xenhad.clock import Clock
from xenhad.config import AlertsConfig, Config
from xenhad.environment import (
    ConfigSource,
    Environment,
    Heartbeats,
    Identity,
    Offload,
    Servers,
    Signals,
    StateDir,
    StatusServer,
    T,
)
from xenhad.failover.witness import Decide, Lease, Witness
from xenhad.fencing import FenceChain
from xenhad.fencing.config import HostFencing, SelfFenceSettings
from xenhad.fencing.watchdog import WatchdogDevice
from xenhad.journal import Journal
from xenhad.notify import Notifier
from xenhad.peers.roster import RosterFile
from xenhad.sim.bmc import BmcModel
from xenhad.unit import RestartDelay
from xenhad.virtual.disk import MemoryDisk
from xenhad.virtual.fencing import InProcessRedfish, InProcessWatchdogDevice
from xenhad.virtual.loop import VirtualClock
from xenhad.virtual.net import HeartbeatNetwork, VirtualDatagramSocket
from xenhad.virtual.world import World
from xenhad.virtual.xapi import InProcessXapi, prober
from xenhad.xapi.client import Xapi
from xenhad.xapi.connect import log_in, xapi_from_config

if TYPE_CHECKING:
    from xenhad.metrics import Metrics

PEER_SECRET = b"in-process pool secret, the same on every host"


@dataclass
class HostParts:
    """What of a host its environment is made of: who it is, its config, its disk and its
    hardware clock (which outlive a daemon), and where its sockets are kept."""

    uuid: str
    name: str
    config: Config
    disk: MemoryDisk
    clock: VirtualClock
    sockets: list[VirtualDatagramSocket]


def host_environment(world: World, net: HeartbeatNetwork, lease: SharedLease,
                     host: HostParts, *, bmcs: Mapping[str, BmcModel],
                     guard: Callable[[], None]) -> Environment:
    """The environment of one life of `host`'s daemon."""
    name = host.name

    async def connect(config: Config, *, local: bool = False) -> Xapi:
        make = _in_process_xapi(world, guard)
        return await log_in(xapi_from_config(config, clock=host.clock, make=make,
                                             password=""), local=local)

    def socket(family: int, kind: int) -> VirtualDatagramSocket:
        sock = net.socket(family, kind)
        host.sockets.append(sock)
        return sock

    def watchdog(settings: SelfFenceSettings, me: str) -> WatchdogDevice:
        return InProcessWatchdogDevice(world, name, settings.timeout, guard=guard)

    def chain(entry: HostFencing, clock: Clock) -> FenceChain:
        # The budget of fencing/redfish.py's: two requests to find the system, one to
        # reset it, and the confirmation wait.
        backends = [InProcessRedfish(
            world, entry.host, operation_timeout=4 * s.request_timeout + s.off_timeout + 1,
            off_timeout=s.off_timeout, poll_interval=s.poll_interval, model=bmcs[entry.host],
            guard=guard) for s in entry.chain if hasattr(s, "request_timeout")]
        return FenceChain(entry.host, backends)

    def witness(directory: Path, me: str, **kwargs: Any) -> Witness:
        return Witness(directory, me, store=lease.store(me), **kwargs)

    def alerts(cfg: AlertsConfig, sent_by: str | None) -> Alerts:
        return Alerts([])

    return Environment(
        clock=host.clock, rng=world.fork(), notifier=_NullNotifier(), connect=connect,
        probe=prober(world), heartbeats=Heartbeats(socket, world.fork),
        watchdog_device=watchdog, fence_chain=chain, witness=witness,
        state=_MemoryState(host.disk), alerts=alerts, servers=_NoServers(),
        offload=_Inline(), identity=_HostIdentity(host.uuid),
        config_source=_SameConfig(host.config), signals=_NoSignals())


def _in_process_xapi(world: World, guard: Callable[[], None]) -> Callable[..., Xapi]:
    def make(endpoint: str, **kwargs: Any) -> Xapi:
        return InProcessXapi(world, endpoint, guard=guard, **kwargs)

    return make


class _NullNotifier(Notifier):
    """No systemd: nothing to notify."""

    def __init__(self) -> None:
        self._env: Mapping[str, str] = {}
        self._status = ""


class _NoServer:
    def close(self) -> None:
        return None


class _NoServers(Servers):
    async def status(self, config: Config, produce: Callable[[], Any]) -> StatusServer:
        return _NoServer()

    def metrics(self, config: Config) -> Metrics | None:
        return None


class _Inline(Offload):
    """Admission's work done on the loop: there is no thread, and virtual time does not
    pass while it computes (so it holds up no heartbeat)."""

    def run(self, name: str, work: Callable[[], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(work())
        except Exception as exc:
            future.set_exception(exc)
        return future

    def release_memory(self) -> None:
        return None


class _NoSignals(Signals):
    def install(self, stop: Callable[[], None], reload: Callable[[], None]) -> None:
        return None  # the harness calls stop() or sets off a reload itself


@dataclass
class _MemoryState(StateDir):
    disk: MemoryDisk

    def __post_init__(self) -> None:
        super().__init__()

    def journal(self, path: Path) -> Journal:
        return Journal(path, disk=self.disk)

    def roster(self, path: Path) -> RosterFile:
        return RosterFile(path, disk=self.disk)

    def lock(self, state_dir: Path) -> None:
        return None  # one daemon per host by construction


@dataclass
class _HostIdentity(Identity):
    uuid: str

    def host_uuid(self, config: Config) -> str:
        return self.uuid

    def peer_secret(self, config: Config) -> bytes:
        return PEER_SECRET

    def restart_delay(self) -> RestartDelay | None:
        return None


@dataclass
class _SameConfig(ConfigSource):
    """A reload reads the configuration the host was given (no file)."""

    config: Config

    def load(self, path: Path) -> Config:
        return self.config

    def configure_logs(self, config: Config) -> None:
        return None  # the run's capture stays


class SharedLease:
    """The witness's lease on storage every host mounts, in memory. `fail` makes it
    unusable (an unreachable mount); `hang` makes it never answer."""

    where = "in-process witness"

    def __init__(self) -> None:
        self.lease: Lease | None = None
        self.failing = False
        self.hanging = False

    def store(self, me: str) -> _LeaseView:
        return _LeaseView(self, me)


@dataclass
class _LeaseView:
    shared: SharedLease
    me: str
    where: str = "in-process witness"

    async def exchange(self, decide: Decide, *, me: str, held: bool, settle: float) -> bool:
        s = self.shared
        if s.hanging:
            await asyncio.Event().wait()  # the witness's timeout ends it
        if s.failing:
            raise OSError(5, "Input/output error")
        wanted = decide(s.lease)
        if wanted is None:
            return False
        s.lease = wanted
        if held:
            return True
        await asyncio.sleep(settle)
        return s.lease is not None and s.lease.holder == self.me


