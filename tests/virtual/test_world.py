"""The in-process heartbeat network, watchdogs and BMCs, and a whole world replayed."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from xenhad.fencing.base import FenceOutcome
from xenhad.peers.link import HeartbeatLink, Peer
from xenhad.peers.table import PeerTable
from xenhad.sim import PoolSpec
from xenhad.virtual.fencing import InProcessRedfish, InProcessWatchdogDevice
from xenhad.virtual.loop import VirtualLoop, run
from xenhad.virtual.net import HeartbeatNetwork, VirtualDatagramSocket, Weather
from xenhad.virtual.world import World
from xenhad.virtual.xapi import InProcessXapi, prober

T = TypeVar("T")
PORT = 5405


def in_world(scenario: Callable[[World], Awaitable[T]], spec: PoolSpec | None = None,
             seed: int = 1) -> T:
    async def main(loop: VirtualLoop) -> T:
        world = World(loop, spec or PoolSpec(hosts=3, vms=4, seed=3), random.Random(seed))
        try:
            return await scenario(world)
        finally:
            world.close()

    return run(main)


def bound(net: HeartbeatNetwork, host: str) -> VirtualDatagramSocket:
    sock = net.socket()
    sock.setblocking(False)
    sock.bind((net.world.pool.host(host).address, PORT))
    return sock


def drain(sock: VirtualDatagramSocket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recvfrom(65536)[0])
        except BlockingIOError:
            return out


def arrivals(seed: int, weather: Weather) -> list[bytes]:
    async def scenario(world: World) -> list[bytes]:
        net = HeartbeatNetwork(world, world.fork(), weather)
        a, b = bound(net, "host1"), bound(net, "host2")
        for i in range(200):
            a.sendto(b"%d" % i, (world.pool.host("host2").address, PORT))
            await world.clock.sleep(0.01)
        await world.clock.sleep(5)
        return drain(b)

    return in_world(scenario, seed=seed)


def test_delay_duplication_and_reordering_come_from_the_seed() -> None:
    calm = arrivals(1, Weather())
    assert calm == [b"%d" % i for i in range(200)]  # delays below the send spacing
    stormy = Weather(duplicate=0.2, reorder=0.2, reorder_delay=0.05, loss=0.05)
    got = arrivals(1, stormy)
    assert got == arrivals(1, stormy)
    assert got != arrivals(2, stormy)
    numbers = [int(d) for d in got]
    assert len(numbers) != len(set(numbers))  # duplicated
    assert numbers != sorted(numbers)  # reordered
    assert len(set(numbers)) < 200  # lost


def test_partitions_cuts_and_power_stop_datagrams() -> None:
    async def scenario(world: World) -> None:
        pool = world.pool
        net = HeartbeatNetwork(world, world.fork())
        s1, s2, s3 = (bound(net, h) for h in ("host1", "host2", "host3"))
        to = {h: (pool.host(h).address, PORT) for h in ("host1", "host2", "host3")}

        async def exchange() -> tuple[int, int, int]:
            s1.sendto(b"1", to["host2"])
            s2.sendto(b"2", to["host1"])
            s1.sendto(b"1", to["host3"])
            await world.clock.sleep(1)
            return len(drain(s1)), len(drain(s2)), len(drain(s3))

        assert await exchange() == (1, 1, 1)
        pool.cut("host1", "host2")  # one way
        assert await exchange() == (1, 0, 1)
        pool.heal()
        pool.partition([["host1"], ["host2", "host3"]])
        assert await exchange() == (0, 0, 0)
        pool.heal()
        pool.crash("host3")
        assert await exchange() == (1, 1, 0)
        assert net.stats.lost_cut == 4 and net.stats.lost_power == 1

    in_world(scenario)


def test_watchdog_resets_a_starved_host_and_not_a_fed_one() -> None:
    async def scenario(world: World) -> None:
        pool = world.pool
        fed = InProcessWatchdogDevice(world, "host2", timeout=10)
        starved = InProcessWatchdogDevice(world, "host3", timeout=10)
        fed.open()
        starved.open()
        for _ in range(30):
            await world.clock.sleep(1)
            fed.keepalive()
        truth = pool.truth()["hosts"]
        assert truth["host2"]["watchdog_fired"] == 0 and truth["host2"]["powered"]
        # Reset at its deadline (virtual time 10), off RESET_OFF_SECONDS, then booting.
        assert truth["host3"]["watchdog_fired"] == 1
        assert truth["host3"]["power_losses"] == [pytest.approx(world.clock.wall() - 20)]

    in_world(scenario)


def test_redfish_in_process_fences_and_its_faults() -> None:
    async def scenario(world: World) -> None:
        ok = await InProcessRedfish(world, "host2").power_off()
        assert ok.outcome is FenceOutcome.OFF and not world.pool.host("host2").powered
        ignoring = InProcessRedfish(world, "host3", off_timeout=3.0)
        ignoring.model.mode = "ignore-off"
        result = await ignoring.power_off()
        assert result.outcome is FenceOutcome.NOT_CONFIRMED
        assert result.elapsed == pytest.approx(3.0) and world.pool.host("host3").powered
        hung = InProcessRedfish(world, "host3", operation_timeout=20.0)
        hung.model.mode = "hang"
        assert (await hung.power_off()).outcome is FenceOutcome.NOT_CONFIRMED
        down = InProcessRedfish(world, "host3")
        down.model.mode = "down"
        assert (await down.power_off()).outcome is FenceOutcome.UNREACHABLE

    in_world(scenario)


def world_trace(seed: int) -> str:
    """Three hosts' real heartbeat links over a stormy network, the master's reads and
    probes at production rates, a crash and a VM start: every line stamped in virtual time."""

    async def scenario(world: World) -> str:
        pool = world.pool
        lines: list[str] = []
        net = HeartbeatNetwork(world, world.fork(),
                               Weather(duplicate=0.1, reorder=0.1, loss=0.02))
        peers = [Peer(h.uuid, h.address) for h in pool.hosts]
        links = []
        for h in pool.hosts:
            table = PeerTable(h.uuid, pool.pool_uuid, window=4.0)
            link = HeartbeatLink(me=h.uuid, pool=pool.pool_uuid, secret=b"s" * 32, table=table,
                                 clock=world.clock, peer_port=PORT, batch=0.25,
                                 socket_factory=net.socket, rng=world.fork())
            await link.open(h.address, PORT)
            links.append((h, table, link))

        async def beat() -> None:
            while True:
                for h, _table, link in links:
                    if h.powered:
                        link.send(peers, master=pool.hosts[0].uuid, quorate=True)
                await world.clock.sleep(1.0)

        xapi = InProcessXapi(world, f"http://{pool.hosts[0].address}/",
                             password=pool.spec.root_password, timeout=5.0)
        probe = prober(world)
        beats = asyncio.ensure_future(beat())
        token = ""
        for tick in range(40):
            now = world.clock.monotonic()
            reply = await xapi.event_from(["vm", "host"], token, 0.0)
            token = reply["token"]
            answers = [await probe(h.address, timeout=1.5) for h in pool.hosts[1:]]
            heard = sorted(pool.host(u).name for u in links[0][1].heard(now))
            lines.append(f"{now:.6f} tick={tick} events={len(reply['events'])} "
                         f"probes={[a.answered for a in answers]} heard={heard} "
                         f"received={[link.received for _, _, link in links]}")
            if tick == 10:
                pool.crash("host3")
            if tick == 20:
                vms = await xapi.get_all_records("VM")
                halted = sorted(r for r, v in vms.items() if v["power_state"] == "Halted"
                                and not v["is_a_template"])
                if halted:
                    await xapi.vm_start(halted[0])
                    lines.append(f"{world.clock.monotonic():.6f} started {halted[0]}")
            await world.clock.sleep(2.0)
        beats.cancel()
        lines.append(repr(net.stats))
        return "\n".join(lines)

    return in_world(scenario, PoolSpec(hosts=3, vms=6, seed=3), seed=seed)


def test_the_same_seed_gives_the_same_trace_byte_for_byte() -> None:
    first = world_trace(7)
    assert first.encode() == world_trace(7).encode()
    assert first != world_trace(8)
    assert "host3" in first.splitlines()[5] and "host3" not in first.splitlines()[-2]
