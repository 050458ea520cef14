"""The heartbeat link: UDP datagrams to every peer, authenticated ones handed to the table.

I/O only: what a heartbeat says and what it means live in heartbeat.py and table.py.

Received heartbeats are read in batches: every `batch` seconds, every datagram waiting in
the socket is read. In a 64-host pool 63 heartbeats arrive each second, spread over it;
read one per event-loop turn (what an asyncio datagram endpoint does), the turns cost about
as much as the heartbeats themselves (bench/footprint.py). A heartbeat read late is stamped
late, which places the sender's contact later than it was: self-fence deadlines move later
(the safe direction), and a dead sender is doubted at most `batch` seconds later. Contact
itself is proven by echoes of our own sequence numbers (table.py), timed by when we sent
them, so no delay in the network or in a batch can make it look fresher than it is.

A boot's sequence numbers start at a random number: an echo of an earlier boot's number,
from a peer that has not heard this boot yet, must not pass for an echo of this one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from xenhad.clock import Clock
from xenhad.model import HostId
from xenhad.peers import wire
from xenhad.peers.heartbeat import MAX_SIZE, Heartbeat, HeartbeatError
from xenhad.peers.table import PeerTable

log = structlog.get_logger("xenhad.peers")

_COMPLAIN_EVERY = 60.0
"""Seconds between two log lines about bad datagrams from one source address."""

_COMPLAIN_SOURCES = 10
"""Log lines about bad datagrams per _COMPLAIN_EVERY at most, whatever the number of sources:
2,000 spoofed source addresses must not make 2,000 lines. What is not logged is counted
(`HeartbeatLink.unlogged`) and said in the next line."""

_SEQ_START = 1 << 52
"""A boot's first sequence number is drawn below this (see the module's docstring)."""

RECEIVE_BUFFER = 1 << 20
"""Bytes of socket buffer asked for (the kernel grants up to net.core.rmem_max): a batch of
a 64-host pool's heartbeats (about 2.6 kB each in version 3, 9 kB in version 2) must wait
in it without one being dropped."""

_BATCH_LIMIT = 1000
"""Datagrams read in one go at most; a flood must not hold the event loop."""


@dataclass(frozen=True)
class Peer:
    uuid: HostId
    address: str


def batch_seconds(interval: float) -> float:
    """How long received heartbeats may wait to be read together: a quarter of the heartbeat
    interval, at most 0.25 s."""
    return min(0.25, interval / 4)


class HeartbeatLink:
    def __init__(
        self,
        *,
        me: HostId,
        pool: str,
        secret: bytes,
        table: PeerTable,
        clock: Clock,
        peer_port: int,
        batch: float,
        vouch_within: float | None = None,
        socket_factory: Callable[[int, int], Any] = socket.socket,
        rng: random.Random | None = None,
    ) -> None:
        """`socket_factory` and `rng` replace the UDP socket and the boot's random numbers
        for a pool run in one process on virtual time (xenhad.virtual.net)."""
        if batch <= 0:
            raise ValueError(f"batch = {batch}: expected seconds > 0")
        self._me = me
        self._pool = pool
        self._secret = secret
        self._table = table
        self._clock = clock
        self._peer_port = peer_port
        self._socket_factory = socket_factory
        self._boot = secrets.token_hex(8) if rng is None else f"{rng.getrandbits(64):016x}"
        self._boot_started = clock.wall()
        self._seq = secrets.randbelow(_SEQ_START) if rng is None else rng.randrange(_SEQ_START)
        self._batch = batch
        self._vouch_within = table.window if vouch_within is None else vouch_within
        """How recent proven contact must be for our heartbeats to vouch for a peer."""
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume: asyncio.Handle | None = None
        self._reader = wire.Reader()
        self._complained: dict[str, float] = {}
        self._complaints: list[float] = []
        self.sent = 0
        self.received = 0
        self.bad = 0
        """Datagrams refused (not a heartbeat of ours, or refused by the table)."""
        self.unlogged = 0
        """Bad datagrams not logged (past the bound of log lines)."""
        self.armed: set[HostId] = set()
        """Peers whose latest heartbeat says they hold a running watchdog."""

    async def open(self, bind_address: str, listen_port: int) -> None:
        address = bind_address or "0.0.0.0"
        family = socket.AF_INET6 if ":" in address else socket.AF_INET  # xapi.source_address
        sock = self._socket_factory(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # a smaller buffer only risks lost datagrams
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((address, listen_port))
        except OSError as exc:
            sock.close()
            from xenhad.errors import XenhadError

            raise XenhadError(
                f"cannot listen for peer heartbeats on {address}:{listen_port}: "
                f"{exc.strerror}; free the port or change peers.listen_port"
            ) from None
        self._sock, self._loop = sock, asyncio.get_running_loop()
        self._resume = self._loop.call_soon(self._read_batch)
        log.info("peers.listening", address=address, port=listen_port,
                 receive_buffer=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._sock is not None:
            self._sock.close()
        self._sock = None

    def _read_batch(self) -> None:
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            return
        emptied = self._read_all(sock)
        # A timer, not a reader: one event-loop turn per batch, however many arrived. After
        # a flood that filled a whole batch, the socket is read again at once.
        self._resume = loop.call_later(self._batch if emptied else 0.0, self._read_batch)

    def _read_all(self, sock: socket.socket) -> bool:
        # The whole batch is stamped as read now: no heartbeat of it is stamped before it
        # was read (see the module's docstring).
        now, wall = self._clock.monotonic(), self._clock.wall()
        for _ in range(_BATCH_LIMIT):
            try:
                data, addr = sock.recvfrom(MAX_SIZE + 1)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:  # an ICMP error queued on the socket: read on next batch
                log.debug("peers.socket_error", error=exc.strerror or str(exc))
                return True
            self._handle(data, addr, now, wall)
        return False

    def send(
        self,
        peers: Iterable[Peer],
        *,
        master: HostId,
        quorate: bool,
        armed: bool = False,
        priority: int = 0,
        vote: tuple[HostId, HostId] | None = None,
        epoch: int = 0,
        promoting: bool = False,
    ) -> None:
        """One heartbeat to every peer: who we hear, who we think is master, our quorum."""
        sock = self._sock
        if sock is None:
            return
        self._seq += 1
        now = self._clock.monotonic()
        self._table.sending(self._seq, now)
        hb = Heartbeat(
            pool=self._pool,
            sender=self._me,
            boot=self._boot,
            seq=self._seq,
            sent_at=self._clock.wall(),
            master=master,
            heard=tuple(sorted(self._table.heard(now))),
            last_heard=self._table.ages(now),
            quorate=quorate,
            armed=armed,
            priority=priority,
            vote=vote,
            epoch=epoch,
            promoting=promoting,
            echo=self._table.echoes(),
            boot_started=self._boot_started,
            proven=self._table.proven_ages(now, self._vouch_within),
            reads=wire.READS,
        )
        # Each peer gets the newest version its latest heartbeat says it reads (wire.py);
        # each version is encoded once, when a peer first needs it.
        encoded: dict[int, bytes] = {}
        for peer in peers:
            if peer.uuid == self._me or not peer.address:
                continue
            version = min(wire.READS, self._table.reads(peer.uuid))
            data = encoded.get(version)
            if data is None:
                data = encoded[version] = wire.encode(hb, self._secret, version)
            try:
                sock.sendto(data, (peer.address, self._peer_port))
                self.sent += 1
            except BlockingIOError:
                # Our send buffer is full: this heartbeat to this peer is lost, as one lost
                # on the wire would be (peers.window outlasts two intervals).
                log.debug("peers.send_dropped", peer=peer.address)
            except OSError as exc:  # an unroutable peer must not stop the others
                self._complain(peer.address, f"send failed: {exc.strerror}")

    def _handle(self, data: bytes, addr: tuple[str, int], now: float, wall: float) -> None:
        try:
            hb = self._reader.decode(data, self._secret)
        except HeartbeatError as exc:
            self.bad += 1
            self._complain(addr[0], str(exc))
            return
        verdict = self._table.receive(hb, now, wall)
        if verdict.accepted:
            self.received += 1
            if hb.armed:
                self.armed.add(hb.sender)
            else:
                # Disarmed (a clean stop): its silence no longer proves it reset itself.
                self.armed.discard(hb.sender)
        elif verdict.worth_logging:
            self.bad += 1
            self._complain(addr[0], f"heartbeat from {hb.sender[:64]} refused: {verdict.value}")

    def _complain(self, source: str, why: str) -> None:
        now = self._clock.monotonic()
        if now - self._complained.get(source, -_COMPLAIN_EVERY) < _COMPLAIN_EVERY:
            return
        self._complaints = [t for t in self._complaints if now - t < _COMPLAIN_EVERY]
        if len(self._complaints) >= _COMPLAIN_SOURCES:
            self.unlogged += 1
            return
        self._complaints.append(now)
        self._complained[source] = now
        if len(self._complained) > 4 * _COMPLAIN_SOURCES:
            # Forget sources not heard of for a while: spoofed addresses must not grow it.
            self._complained = {s: t for s, t in self._complained.items()
                                if now - t < _COMPLAIN_EVERY}
        log.warning("peers.bad_datagram", source=source, why=why, unlogged=self.unlogged,
                    fix="every host needs the same pool secret (peers.secret_file)")


def peers_of(hosts: Iterable[tuple[HostId, str]]) -> list[Peer]:
    return [Peer(uuid, address) for uuid, address in hosts]


PeerSource = Callable[[], list[Peer]]
