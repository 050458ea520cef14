"""How fast a pool runs on virtual time: virtual seconds simulated per real second.

Run: .venv/bin/python bench/virtual_speed.py [--hosts 7] [--minutes 60] [--seed 1]
One process, one VirtualLoop, the simulator's pool in process (xenhad.virtual), and at
production rates (config.py defaults) what every host's daemon core asks of it:
- heartbeats: every host's real HeartbeatLink and PeerTable, one heartbeat a second
  (peers.interval) to every peer over the in-process network (seeded delay, 5% duplicated,
  5% held back), read in batches of 0.25 s;
- the master, each detector.interval (2 s): one event.from on its pool cache's token, and a
  probe of every slave (an upper bound: a slave whose daemon beats is not probed);
  pool.sync_database every failover.sync_interval (60 s);
- every slave, each tick: a probe of its master; every slave_interval (120 s) a full read
  (host, VM and host_metrics records) through its own facade, which follows HOST_IS_SLAVE;
- every host: its watchdog fed each tick.
Then the same with a slave crashed a tenth of the way in (its probes time out at 1.5 s).
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from dataclasses import dataclass

import structlog

from xenhad.peers.link import HeartbeatLink, Peer, batch_seconds
from xenhad.peers.table import PeerTable
from xenhad.sim import PoolSpec
from xenhad.sim.pool import HostState
from xenhad.virtual.fencing import InProcessWatchdogDevice
from xenhad.virtual.loop import VirtualLoop, run
from xenhad.virtual.net import HeartbeatNetwork, Weather
from xenhad.virtual.world import World
from xenhad.virtual.xapi import InProcessXapi, prober
from xenhad.xapi.errors import XapiException

PORT = 5405
TICK = 2.0
BEAT = 1.0
SYNC = 60.0
SLAVE_READ = 120.0


@dataclass
class Counts:
    calls: int = 0
    probes: int = 0
    heartbeats: int = 0
    delivered: int = 0


async def pool_for(world: World, seconds: float, crash_at: float | None) -> Counts:
    pool = world.pool
    counts = Counts()
    net = HeartbeatNetwork(world, world.fork(), Weather(duplicate=0.05, reorder=0.05))
    peers = [Peer(h.uuid, h.address) for h in pool.hosts]
    probe = prober(world)
    end = world.clock.monotonic() + seconds

    async def host(h: HostState) -> None:
        table = PeerTable(h.uuid, pool.pool_uuid, window=4.0)
        link = HeartbeatLink(me=h.uuid, pool=pool.pool_uuid, secret=b"k" * 32, table=table,
                             clock=world.clock, peer_port=PORT, batch=batch_seconds(BEAT),
                             socket_factory=net.socket, rng=world.fork())
        await link.open(h.address, PORT)
        watchdog = InProcessWatchdogDevice(world, h.name, timeout=60)
        watchdog.open()
        xapi = InProcessXapi(world, f"https://{pool.hosts[0].address}/",
                             password=pool.spec.root_password, source_address=h.address,
                             timeout=5.0)
        master = h is pool.hosts[0]
        token = ""
        next_tick = next_sync = next_read = world.clock.monotonic()
        while world.clock.monotonic() < end and h.powered:
            now = world.clock.monotonic()
            link.send(peers, master=pool.hosts[0].uuid, quorate=True)
            counts.heartbeats += len(peers) - 1
            if now >= next_tick:
                next_tick += TICK
                watchdog.keepalive()
                try:
                    if master:
                        reply = await xapi.event_from(["host", "host_metrics", "vm"], token, 0.0)
                        token = reply["token"]
                        counts.calls += 1
                        for other in pool.hosts[1:]:
                            await probe(f"https://{other.address}/", source_address=h.address,
                                        timeout=1.5)
                            counts.probes += 1
                        if now >= next_sync:
                            next_sync += SYNC
                            await xapi.pool_sync_database()
                            counts.calls += 1
                    else:
                        await probe(f"https://{pool.hosts[0].address}/",
                                    source_address=h.address, timeout=1.5)
                        counts.probes += 1
                        if now >= next_read:
                            next_read += SLAVE_READ
                            for cls in ("host", "VM", "host_metrics"):
                                await xapi.get_all_records(cls)  # type: ignore[arg-type]
                                counts.calls += 1
                except XapiException:
                    pass
            await world.clock.sleep(max(0.0, now + BEAT - world.clock.monotonic()))
        link.close()

    async def crash() -> None:
        assert crash_at is not None
        await world.clock.sleep(crash_at)
        pool.crash(pool.hosts[-1].name)

    tasks = [asyncio.ensure_future(host(h)) for h in pool.hosts]
    if crash_at is not None:
        tasks.append(asyncio.ensure_future(crash()))
    await asyncio.gather(*tasks)
    counts.delivered = net.stats.delivered
    return counts


def measure(hosts: int, vms: int, seconds: float, seed: int, crash: bool) -> None:
    async def main(loop: VirtualLoop) -> tuple[Counts, int]:
        world = World(loop, PoolSpec(hosts=hosts, vms=vms, seed=seed), random.Random(seed))
        counts = await pool_for(world, seconds, seconds / 10 if crash else None)
        world.close()
        return counts, loop.jumps

    cpu, real = time.process_time(), time.perf_counter()
    counts, jumps = run(main)
    real = time.perf_counter() - real
    cpu = time.process_time() - cpu
    what = "a slave crashed at 1/10" if crash else "at rest"
    print(f"{hosts} hosts, {vms} VMs, {what}: {seconds:.0f} virtual s in {real:.2f} real s "
          f"({cpu:.2f} CPU s): {seconds / real:,.0f} virtual s per real s; "
          f"{counts.calls} xapi calls, {counts.probes} probes, {counts.heartbeats} heartbeats "
          f"sent, {counts.delivered} delivered, {jumps} clock jumps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=7)
    parser.add_argument("--vms", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    for crash in (False, True):
        measure(args.hosts, args.vms, args.minutes * 60, args.seed, crash)


if __name__ == "__main__":
    main()
