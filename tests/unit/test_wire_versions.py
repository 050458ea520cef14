"""Wire version 3 (compact.py) next to version 2: it says the same, it is refused as version
2 is when it is not ours, and old and new daemons stay in contact through a rolling upgrade
and a rollback (the old daemon here is the codec it ran, frozen: wire_v2_daemon.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import time
import uuid

import pytest
import wire_v2_daemon as old
from test_heartbeat_link import until

from xenhad.clock import SystemClock
from xenhad.peers import compact, heartbeat, wire
from xenhad.peers.heartbeat import Heartbeat, HeartbeatError
from xenhad.peers.link import HeartbeatLink, Peer
from xenhad.peers.table import PeerTable

SECRET = b"0123456789abcdef0123456789abcdef"
HOSTS = sorted([*(str(uuid.uuid4()) for _ in range(6)), "host-7", "h\u00e9te-8"])


def full(sender: str = HOSTS[0], **changes: object) -> Heartbeat:
    others = [h for h in HOSTS if h != sender]
    hb = Heartbeat(
        pool=str(uuid.uuid4()), sender=sender, boot="0f" * 8, seq=(1 << 52) + 7,
        sent_at=1_765_000_000.25, master=others[0], heard=tuple(others[:5]), quorate=True,
        armed=True, priority=-3, vote=(others[0], others[1]),
        last_heard={h: 0.5 * i + 0.123 for i, h in enumerate(others)}, epoch=12,
        promoting=True, echo={h: (1 << 51) + i for i, h in enumerate(others)},
        boot_started=1_764_999_000.5, proven={h: 0.01 * i for i, h in enumerate(others[:4])},
        reads=3,
    )
    return dataclasses.replace(hb, **changes)  # type: ignore[arg-type]


def test_version_3_says_what_version_2_says() -> None:
    for beat in (full(), full(vote=None, quorate=False, armed=False, promoting=False),
                 full(proven={}, heard=()), full(sender="host-7")):
        v2 = wire.encode(beat, SECRET, 2)
        v3 = wire.encode(beat, SECRET, 3)
        assert v2[:4] == b"XHB1" and v3[:4] == b"XHB3"
        as2, as3 = wire.Reader().decode(v2, SECRET), wire.Reader().decode(v3, SECRET)
        assert as3 == as2
        for host in HOSTS:
            assert as3.heard_ago(host) == as2.heard_ago(host)
            assert as3.echo_of(host) == as2.echo_of(host)
            assert as3.proven_ago(host) == as2.proven_ago(host)
        assert len(v3) < len(v2) / 2


def test_a_64_host_heartbeat_is_a_fifth_of_version_2() -> None:
    hosts = sorted(str(uuid.uuid4()) for _ in range(64))
    others = hosts[1:]
    beat = full(sender=hosts[0], master=hosts[1], heard=tuple(others), vote=None,
                last_heard=dict.fromkeys(others, 0.48), echo=dict.fromkeys(others, 1 << 51),
                proven=dict.fromkeys(others, 1.37))
    v2, v3 = wire.encode(beat, SECRET, 2), wire.encode(beat, SECRET, 3)
    assert len(v3) * 4 < len(v2), (len(v3), len(v2))


def test_ages_are_floored_to_hundredths_and_huge_ones_sent_smaller() -> None:
    beat = full(last_heard={h: 0.29 for h in HOSTS[1:]} | {HOSTS[1]: 1e12},
                proven={HOSTS[2]: 0.0999})
    back = wire.Reader().decode(wire.encode(beat, SECRET, 3), SECRET)
    assert back.heard_ago(HOSTS[2]) == 0.29  # 0.29 * 100 is 28.999...: not 0.28
    assert back.heard_ago(HOSTS[1]) == compact.MAX_CENTIS / 100  # smaller: the safe way
    assert back.proven_ago(HOSTS[2]) == 0.09


def test_what_version_3_cannot_carry_goes_as_version_2() -> None:
    for beat in (full(echo=None), full(last_heard=None), full(boot_started=None),
                 full(proven={"stranger": 1.0}), full(epoch=1 << 70),
                 full(last_heard={h: float("nan") for h in HOSTS[1:]})):
        assert wire.encode(beat, SECRET, 3)[:4] == b"XHB1"


def test_a_version_3_datagram_not_ours_is_refused_with_a_reason() -> None:
    reader = wire.Reader()
    good = wire.encode(full(), SECRET, 3)
    for bad, why in [
        (good[:30], "truncated"),
        (good[:-1] + bytes([good[-1] ^ 1]), "bad MAC"),
        (wire.encode(full(), b"another pool's secret, 32 bytes", 3), "bad MAC"),
        # A version 2 payload under the version 3 magic: the MAC covers the magic.
        (b"XHB3" + heartbeat.encode(full(), SECRET)[4:], "bad MAC"),
    ]:
        with pytest.raises(HeartbeatError, match=why):
            reader.decode(bad, SECRET)


def test_an_authenticated_but_malformed_payload_is_refused_not_crashed_on() -> None:
    reader = wire.Reader()
    good = wire.encode(full(), SECRET, 3)
    payload = good[36:]

    def signed(body: bytes) -> bytes:
        import hmac
        return b"XHB3" + hmac.digest(SECRET, b"XHB3" + body, "sha256") + body

    header = struct.calcsize("<QddqhBB")
    for body in (payload[:-3], payload + b"\0", payload[:header],
                 payload[:header - 2] + b"\xff" + payload[header - 1:],  # unknown flag
                 struct.pack("<Q", 1 << 62) + payload[8:]):  # sequence number out of range
        with pytest.raises(HeartbeatError):
            reader.decode(signed(body), SECRET)


def test_an_echo_out_of_range_anywhere_refuses_the_heartbeat() -> None:
    # The echoes are read on demand, but their range is checked for all at decoding: an
    # authenticated heartbeat with one echo at or over MAX_SEQ is refused whole.
    reader = wire.Reader()
    beat = full()
    payload = wire.encode(beat, SECRET, 3)[36:]

    def signed(body: bytes) -> bytes:
        import hmac
        return b"XHB3" + hmac.digest(SECRET, b"XHB3" + body, "sha256") + body

    assert beat.echo is not None
    for value in sorted(beat.echo.values())[::len(beat.echo) - 1]:  # the first and the last
        at = payload.index(struct.pack("<Q", value))
        for wrong in (1 << 62, (1 << 64) - 1, 1 << 63):
            with pytest.raises(HeartbeatError, match="echo out of range"):
                reader.decode(signed(payload[:at] + struct.pack("<Q", wrong)
                                     + payload[at + 8:]), SECRET)
        edge = reader.decode(signed(payload[:at] + struct.pack("<Q", (1 << 62) - 1)
                                    + payload[at + 8:]), SECRET)
        assert edge.echo is not None and (1 << 62) - 1 in edge.echo.values()


def test_a_roster_is_decoded_once_per_sender_and_not_again_at_rest() -> None:
    reader = wire.Reader()
    first = reader.decode(wire.encode(full(seq=10), SECRET, 3), SECRET)
    rosters = dict(reader._compact._rosters)
    again = reader.decode(wire.encode(full(seq=11), SECRET, 3), SECRET)
    assert reader._compact._rosters == rosters and len(rosters) == 1
    assert again.echo == first.echo


# -- a rolling upgrade, on real sockets --------------------------------------------------


class OldDaemon:
    """A peer running the daemon of before version 3: its codec, its own socket."""

    def __init__(self, name: str, address: str, port: int) -> None:
        self.name, self.seq = name, 100
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.setblocking(False)
        self.refused: list[str] = []

    def beat(self, to: tuple[str, int], echo: dict[str, int], rd: int | None = None) -> None:
        self.seq += 1
        hb = old.Heartbeat(pool="pool", sender=self.name, boot="old", seq=self.seq,
                           sent_at=time.time(), master="me", heard=("me",), quorate=True,
                           last_heard=(("me", 0.1),), echo=tuple(sorted(echo.items())),
                           boot_started=1000.0)
        data = old.encode(hb, SECRET)
        if rd is not None:  # a daemon of version 3, speaking JSON: as the new one writes it
            data = wire.encode(dataclasses.replace(_new(hb), reads=rd), SECRET, 2)
        self.sock.sendto(data, to)

    def read(self) -> list[old.Heartbeat]:
        got = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return got
            try:
                got.append(old.decode(data, SECRET))
            except old.HeartbeatError as e:
                self.refused.append(str(e))


def _new(hb: old.Heartbeat) -> Heartbeat:
    return Heartbeat(**{f.name: getattr(hb, f.name) for f in dataclasses.fields(old.Heartbeat)})


def test_old_and_new_daemons_stay_in_contact_through_an_upgrade_and_a_rollback() -> None:
    async def scenario() -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        table = PeerTable("me", "pool", window=60.0)
        link = HeartbeatLink(me="me", pool="pool", secret=SECRET, table=table,
                             clock=SystemClock(), peer_port=port, batch=0.05)
        await link.open("127.0.0.1", port)
        peer = OldDaemon("a", "127.0.0.2", port)
        peers = [Peer("a", "127.0.0.2")]
        me = ("127.0.0.1", port)
        try:
            # Before the peer says anything, it gets version 2, which the old codec reads.
            link.send(peers, master="me", quorate=True)
            await until(lambda: len(got := peer.read()) == 1 and got[0].echo is not None)
            # The old daemon beats, echoing our number: contact, both ways.
            ours = link._seq
            peer.beat(me, {"me": ours})
            await until(lambda: table.contact_at("a") is not None)
            link.send(peers, master="me", quorate=True)
            await until(lambda: bool(seen := peer.read()) and seen[0].echo_of("a") == 101)
            # Upgraded: its next heartbeat says it reads version 3; ours to it are then
            # version 3 (the old codec refuses them: this peer no longer runs it).
            peer.beat(me, {"me": link._seq}, rd=3)
            await until(lambda: table.reads("a") == 3)
            link.send(peers, master="me", quorate=True)
            await until(lambda: not peer.read() and bool(peer.refused))
            assert "bad magic" in peer.refused[0]
            # Rolled back: a heartbeat without "rd", and ours are version 2 again at once.
            peer.refused.clear()
            peer.beat(me, {"me": link._seq})
            await until(lambda: table.reads("a") == 2)
            link.send(peers, master="me", quorate=True)
            await until(lambda: len(peer.read()) == 1)
            assert not peer.refused and link.bad == 0
        finally:
            link.close()
            peer.sock.close()

    asyncio.run(scenario())
