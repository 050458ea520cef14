"""Heartbeat datagrams between the hosts of a World, under the simulator's reach rules.

`HeartbeatNetwork.socket()` makes what peers/link.py uses of a UDP socket (setblocking,
setsockopt, getsockopt, bind, sendto, recvfrom raising BlockingIOError when empty, close),
so the heartbeat link runs unchanged once it is handed a socket factory (see
docs/virtual-time.md). A datagram goes from the host whose address the socket is bound to
(the daemon binds xapi.source_address) to the host at the destination address, and:

- is lost when the sender or the receiver has no power, when the network cuts that way
  (sim/network.py: a partition puts the two in different groups, or a one-way cut
  (src, dst)), or when the receiver's buffer is full, as the kernel drops it;
- arrives after a delay drawn from the seed, which reorders datagrams whose delays
  cross; with `Weather.reorder` some are held back longer still, with `duplicate` some
  arrive twice (each copy with its own delay), with `loss` some never arrive;
- is read by whoever holds the port at the receiver when it arrives: a daemon that died
  with its host's power (or closed its socket) never reads what was meant for it.
"""

from __future__ import annotations

import random
import socket as socketlib
from collections import deque
from dataclasses import dataclass, field

from xenhad.sim.pool import HostState
from xenhad.virtual.world import World

RECEIVE_BUFFER = 1 << 20
"""Bytes a socket holds unread at most (peers/link.py asks the kernel for as much)."""


@dataclass(frozen=True)
class Weather:
    """What the network does to each datagram; every draw comes from the network's Random."""

    delay: tuple[float, float] = (0.0002, 0.002)
    """Seconds in flight, uniform in [low, high]: a LAN between dom0s."""
    loss: float = 0.0
    duplicate: float = 0.0
    """Probability that a datagram arrives twice."""
    reorder: float = 0.0
    """Probability that a datagram is held back `reorder_delay` more than drawn."""
    reorder_delay: float = 0.5


@dataclass
class Stats:
    sent: int = 0
    delivered: int = 0
    lost_power: int = 0
    lost_cut: int = 0
    lost_weather: int = 0
    lost_buffer: int = 0
    lost_unread: int = 0
    """Arrived where no socket held the port."""
    duplicated: int = 0
    reordered: int = 0


class VirtualDatagramSocket:
    def __init__(self, net: HeartbeatNetwork) -> None:
        self._net = net
        self.address: tuple[str, int] | None = None
        self._queue: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._queued = 0
        self.closed = False

    # What peers/link.py calls on a socket.socket.
    def setblocking(self, flag: bool) -> None:
        if flag:
            raise OSError("a virtual datagram socket never blocks")

    def setsockopt(self, level: int, option: int, value: int) -> None:
        return None

    def getsockopt(self, level: int, option: int) -> int:
        if option == socketlib.SO_RCVBUF:
            return RECEIVE_BUFFER
        return 0

    def bind(self, address: tuple[str, int]) -> None:
        self._net._bind(self, (address[0], int(address[1])))
        self.address = (address[0], int(address[1]))

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        if self.closed or self.address is None:
            raise OSError(9, "Bad file descriptor")
        self._net._send(self, bytes(data), (address[0], int(address[1])))
        return len(data)

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        if not self._queue:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        data, source = self._queue.popleft()
        self._queued -= len(data)
        return data[:size], source

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._net._unbind(self)

    def _arrive(self, data: bytes, source: tuple[str, int]) -> bool:
        if self._queued + len(data) > RECEIVE_BUFFER:
            return False
        self._queue.append((data, source))
        self._queued += len(data)
        return True


@dataclass
class HeartbeatNetwork:
    world: World
    rng: random.Random
    weather: Weather = field(default_factory=Weather)
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self._bound: dict[tuple[str, int], VirtualDatagramSocket] = {}

    def socket(self, family: int = socketlib.AF_INET, kind: int = socketlib.SOCK_DGRAM
               ) -> VirtualDatagramSocket:
        """A socket factory for HeartbeatLink(socket_factory=...)."""
        if kind != socketlib.SOCK_DGRAM:
            raise OSError("the heartbeat network carries datagrams only")
        return VirtualDatagramSocket(self)

    def _bind(self, sock: VirtualDatagramSocket, address: tuple[str, int]) -> None:
        held = self._bound.get(address)
        if held is not None and not held.closed:
            raise OSError(98, "Address already in use")
        self._bound[address] = sock

    def _unbind(self, sock: VirtualDatagramSocket) -> None:
        if sock.address is not None and self._bound.get(sock.address) is sock:
            del self._bound[sock.address]

    def _send(self, sock: VirtualDatagramSocket, data: bytes, to: tuple[str, int]) -> None:
        assert sock.address is not None
        self.stats.sent += 1
        src = self.world.host_at(sock.address[0])
        dst = self.world.host_at(to[0])
        if src is None or dst is None or not src.powered or not dst.powered:
            self.stats.lost_power += 1
            return
        if self.world.pool.network.blocked(src.uuid, dst.uuid):
            self.stats.lost_cut += 1
            return
        w = self.weather
        if w.loss and self.rng.random() < w.loss:
            self.stats.lost_weather += 1
            return
        copies = 2 if w.duplicate and self.rng.random() < w.duplicate else 1
        self.stats.duplicated += copies - 1
        for _ in range(copies):
            delay = self.rng.uniform(*w.delay)
            if w.reorder and self.rng.random() < w.reorder:
                delay += w.reorder_delay
                self.stats.reordered += 1
            # In flight on the wire: arrives whatever becomes of its sender.
            self.world.loop.call_later(delay, self._deliver, data, sock.address, dst, to,
                                       context=self.world.context)

    def _deliver(self, data: bytes, source: tuple[str, int], dst: HostState,
                 to: tuple[str, int]) -> None:
        if not dst.powered:
            self.stats.lost_power += 1
            return
        sock = self._bound.get(to) or self._bound.get(("0.0.0.0", to[1]))
        if sock is None or sock.closed:
            self.stats.lost_unread += 1
            return
        if not sock._arrive(data, source):
            self.stats.lost_buffer += 1
            return
        self.stats.delivered += 1
