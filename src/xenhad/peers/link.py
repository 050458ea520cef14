"""The heartbeat link: UDP datagrams to every peer, authenticated ones handed to the table.

I/O only: what a heartbeat says and what it means live in heartbeat.py and table.py.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from xenhad.clock import Clock
from xenhad.model import HostId
from xenhad.peers.heartbeat import Heartbeat, HeartbeatError, decode, encode
from xenhad.peers.table import PeerTable

log = structlog.get_logger("xenhad.peers")

_COMPLAIN_EVERY = 60.0
"""Seconds between two log lines about bad datagrams from one source address."""


@dataclass(frozen=True)
class Peer:
    uuid: HostId
    address: str


class HeartbeatLink(asyncio.DatagramProtocol):
    def __init__(
        self,
        *,
        me: HostId,
        pool: str,
        secret: bytes,
        table: PeerTable,
        clock: Clock,
        peer_port: int,
    ) -> None:
        self._me = me
        self._pool = pool
        self._secret = secret
        self._table = table
        self._clock = clock
        self._peer_port = peer_port
        self._boot = secrets.token_hex(8)
        self._seq = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._complained: dict[str, float] = {}
        self.sent = 0
        self.received = 0
        self.armed: set[HostId] = set()
        """Peers whose latest heartbeat says they hold a running watchdog."""

    async def open(self, bind_address: str, listen_port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=(bind_address or "0.0.0.0", listen_port)
            )
        except OSError as exc:
            from xenhad.errors import XenhadError

            raise XenhadError(
                f"cannot listen for peer heartbeats on {bind_address or '0.0.0.0'}:"
                f"{listen_port}: {exc.strerror}; free the port or change peers.listen_port"
            ) from None
        self._transport = transport
        log.info("peers.listening", address=bind_address or "0.0.0.0", port=listen_port)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

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
        if self._transport is None:
            return
        self._seq += 1
        now = self._clock.monotonic()
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
        )
        data = encode(hb, self._secret)
        for peer in peers:
            if peer.uuid == self._me or not peer.address:
                continue
            try:
                self._transport.sendto(data, (peer.address, self._peer_port))
                self.sent += 1
            except OSError as exc:  # an unroutable peer must not stop the others
                self._complain(peer.address, f"send failed: {exc.strerror}")

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            hb = decode(data, self._secret)
        except HeartbeatError as exc:
            self._complain(addr[0], str(exc))
            return
        verdict = self._table.receive(hb, self._clock.monotonic(), self._clock.wall())
        if verdict.accepted:
            self.received += 1
            if hb.armed:
                self.armed.add(hb.sender)
            else:
                # Disarmed (a clean stop): its silence no longer proves it reset itself.
                self.armed.discard(hb.sender)
        elif verdict.worth_logging:
            self._complain(addr[0], f"heartbeat from {hb.sender} refused: {verdict.value}")

    def error_received(self, exc: Exception) -> None:
        log.debug("peers.socket_error", error=str(exc))

    def _complain(self, source: str, why: str) -> None:
        now = self._clock.monotonic()
        if now - self._complained.get(source, -_COMPLAIN_EVERY) >= _COMPLAIN_EVERY:
            self._complained[source] = now
            log.warning("peers.bad_datagram", source=source, why=why,
                        fix="every host needs the same pool secret (peers.secret_file)")


def peers_of(hosts: Iterable[tuple[HostId, str]]) -> list[Peer]:
    return [Peer(uuid, address) for uuid, address in hosts]


PeerSource = Callable[[], list[Peer]]
