"""The heartbeat link on real loopback sockets: heartbeats are read in batches, none lost,
a bad datagram does not hold up the good ones of its batch."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from xenhad.clock import SystemClock
from xenhad.peers.heartbeat import Heartbeat, encode
from xenhad.peers.link import HeartbeatLink, batch_seconds
from xenhad.peers.table import PeerTable

SECRET = b"0123456789abcdef0123456789abcdef"


def beat(sender: str, seq: int) -> bytes:
    hb = Heartbeat("pool", sender, "boot", seq, time.time(), "m", ("me",), True)
    return encode(hb, SECRET)


async def until(condition: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within 5 s"
        await asyncio.sleep(0.01)


async def linked(batch: float) -> tuple[HeartbeatLink, socket.socket, tuple[str, int]]:
    table = PeerTable("me", "pool", window=60.0)
    link = HeartbeatLink(me="me", pool="pool", secret=SECRET, table=table,
                         clock=SystemClock(), peer_port=0, batch=batch)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    await link.open("127.0.0.1", port)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return link, sender, ("127.0.0.1", port)


def test_heartbeats_arriving_between_two_batches_are_read_together_with_the_next() -> None:
    async def scenario() -> None:
        link, sender, to = await linked(batch=1.0)
        try:
            sender.sendto(beat("a", 1), to)
            await until(lambda: link.received == 1)  # a batch was read just now
            for seq in range(2, 12):
                sender.sendto(beat("a", seq), to)
            await asyncio.sleep(0.2)
            assert link.received == 1  # waiting in the socket buffer for the batch
            await until(lambda: link.received == 11)
        finally:
            link.close()
            link.close()  # twice is harmless (the daemon's stop may race a reload)
            sender.close()

    asyncio.run(scenario())


def test_a_bad_datagram_does_not_hold_up_the_good_ones_of_its_batch() -> None:
    async def scenario() -> None:
        link, sender, to = await linked(batch=0.5)
        try:
            sender.sendto(beat("a", 1), to)
            await until(lambda: link.received == 1)
            sender.sendto(b"XHB1" + b"\0" * 40, to)  # wrong MAC
            sender.sendto(b"not a heartbeat", to)
            sender.sendto(beat("b", 1), to)
            await until(lambda: link.received == 2)
        finally:
            link.close()
            sender.close()

    asyncio.run(scenario())


def test_the_batch_is_a_quarter_interval_and_never_more_than_a_quarter_second() -> None:
    assert batch_seconds(0.5) == 0.125
    assert batch_seconds(1.0) == 0.25
    assert batch_seconds(5.0) == 0.25
    with pytest.raises(ValueError, match="batch"):
        HeartbeatLink(me="me", pool="pool", secret=SECRET, table=PeerTable("me", "pool",
                      window=1.0), clock=SystemClock(), peer_port=0, batch=0.0)


def test_an_ipv6_source_address_listens_on_ipv6() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def scenario() -> None:
        table = PeerTable("me", "pool", window=60.0)
        link = HeartbeatLink(me="me", pool="pool", secret=SECRET, table=table,
                             clock=SystemClock(), peer_port=0, batch=0.1)
        await link.open("::1", 0)
        link.close()

    asyncio.run(scenario())
