"""Between ticks, a slave's daemon wakes when its master falls silent: the master's first
miss counts from its silence, not from a tick up to an interval later."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from xenhad.clock import ManualClock
from xenhad.config import parse
from xenhad.daemon import Daemon
from xenhad.detector import DetectorSettings
from xenhad.failover.actions import FailoverActions
from xenhad.failover.coordinator import Failover, FailoverSettings
from xenhad.model import HostView, PoolView
from xenhad.peers.heartbeat import Heartbeat
from xenhad.peers.table import PeerTable

ME = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
MASTER = "0a1b2c3d-4e5f-4061-8a7b-9c0d1e2f3a4c"


def slave_daemon(tmp_path: Path, clock: ManualClock) -> tuple[Daemon, PeerTable]:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = parse(f'[daemon]\nstate_dir = "{state}"\n[host]\nuuid = "{ME}"\n',
                   source="t", env={})
    daemon = Daemon(tmp_path / "xenhad.toml", config, clock=clock)
    hosts = {u: HostView(u, f"ref-{u}", u[:4], "127.0.0.1", True, True) for u in (ME, MASTER)}
    daemon._view = PoolView("pool-ref", MASTER, False, hosts, {}, pool_uuid="pool")
    daemon._peers = PeerTable(ME, "pool", window=4.0)
    daemon._failover = Failover(ME, FailoverSettings(), DetectorSettings(),
                                FailoverActions(config), wall=clock.wall)
    return daemon, daemon._peers


def heartbeat_from_master(table: PeerTable, clock: ManualClock, seq: int) -> None:
    hb = Heartbeat("pool", MASTER, "boot", seq, clock.wall(), MASTER, (ME,), True, True)
    table.receive(hb, clock.monotonic(), clock.wall())


def test_the_pause_ends_when_the_master_falls_silent(tmp_path: Path) -> None:
    clock = ManualClock()
    daemon, table = slave_daemon(tmp_path, clock)
    heartbeat_from_master(table, clock, 1)
    # Heard 2.05 s ago: silent (two intervals and 0.1 s, peers.interval 1 s) in 0.05 s.
    clock.advance(2.05)
    asyncio.run(asyncio.wait_for(daemon._pause(60.0), timeout=10.0))


def test_a_heartbeat_in_time_keeps_the_pause_going(tmp_path: Path) -> None:
    clock = ManualClock()
    daemon, table = slave_daemon(tmp_path, clock)
    heartbeat_from_master(table, clock, 1)
    clock.advance(2.05)

    async def main() -> float:
        async def beat() -> None:
            await asyncio.sleep(0.01)  # before the silence at 0.05 s
            heartbeat_from_master(table, clock, 2)
        task = asyncio.create_task(beat())
        started = time.monotonic()
        await daemon._pause(0.5)
        await task
        return time.monotonic() - started

    # Woken at the would-be silence, it found the master heard since and slept on.
    assert asyncio.run(main()) >= 0.45


def test_a_master_already_silent_leaves_the_pause_to_the_interval(tmp_path: Path) -> None:
    clock = ManualClock()
    daemon, table = slave_daemon(tmp_path, clock)
    heartbeat_from_master(table, clock, 1)
    clock.advance(30.0)  # in doubt already: the urgent ticks watch it, not the pause

    async def main() -> float:
        started = time.monotonic()
        await daemon._pause(0.3)
        return time.monotonic() - started

    assert asyncio.run(main()) >= 0.25
