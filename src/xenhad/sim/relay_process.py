"""The heartbeat relay's forwarding loop, run as a process of its own (see relay.py).

`HeartbeatRelay` starts it with the UDP sockets it bound, one per host address, passed as
inherited descriptors (`--socket ADDRESS=FD`). A datagram received on host M's socket
from source address N goes to (M, --listen-port), if the simulator's last word allows N to
reach M. Its stdin carries one JSON line per message from the simulator:

  {"op": "reach", "powered": [address, ...], "partition": [[address, ...], ...],
   "cuts": [[src, dst], ...]}     who may reach whom from now on (Network's semantics)
  {"op": "stats"}                 answer {"delivered": n, "dropped": n} in a line on stdout
  {"op": "replay", "to": address, "from": [address, ...], "every": seconds,
   "since": monotonic, "order": "sent" | "ends"}
                                  re-send to `to`, one every `every` seconds and whatever the
                                  reach, the datagrams last sent to it from `from` (up to
                                  HISTORY per pair, as of this message, delivered or dropped;
                                  only those received at or after CLOCK_MONOTONIC `since`, if
                                  given), over and over; "ends" takes them oldest, newest,
                                  second oldest, ... (old and new mixed: two boots of a sender
                                  that restarted); every <= 0 stops replaying to `to`

EOF on stdin (the simulator closed it, or died) ends the process after it writes its
final counts, so it never outlives the simulator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from xenhad.sim.network import Network

MAX_DATAGRAM = 65535

HISTORY = 64
"""Datagrams kept per (source, target) for a replay: 32 s of heartbeats at 0.5 s. What a
cut dropped is kept too: a network that buffers delivers what a partition held back."""


class Reach:
    """Which source address may reach which target address, as the simulator said last."""

    def __init__(self) -> None:
        # Nothing is powered until the first message: better drop than leak across a cut.
        self._powered: frozenset[str] = frozenset()
        self._network = Network()

    def update(self, message: Mapping[str, Any]) -> None:
        # Network is keyed by whatever names its caller uses; here they are addresses.
        network = Network()
        network.partition([[str(a) for a in group] for group in message["partition"]])
        for src, dst in message["cuts"]:
            network.cut(str(src), str(dst))
        self._powered = frozenset(str(a) for a in message["powered"])
        self._network = network

    def allows(self, source: str, target: str) -> bool:
        # The network alone decides (a hung xapi does not stop its dom0's daemon).
        return (source in self._powered and target in self._powered
                and not self._network.blocked(source, target))


class Forwarder:
    def __init__(self, listen_port: int, reach: Reach) -> None:
        self._listen_port = listen_port
        self._reach = reach
        self.delivered = 0
        self.dropped = 0
        self.history: dict[tuple[str, str], deque[tuple[float, bytes]]] = {}
        """(source, target) -> the last HISTORY datagrams sent and when they came, whether
        forwarded or dropped: what a buffering network, or someone on the wire, could
        deliver (again)."""

    def drain(self, sock: socket.socket, target: str) -> None:
        """Forward everything queued on `target`'s socket, so no backlog waits a round."""
        while True:
            try:
                data, (source, _) = sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except ConnectionError:
                continue  # a pending ICMP error, consumed by this call; the queue remains
            self.history.setdefault((source, target), deque(maxlen=HISTORY)).append(
                (time.monotonic(), data))
            if not self._reach.allows(source, target):
                self.dropped += 1
                continue
            try:
                sock.sendto(data, (target, self._listen_port))
                self.delivered += 1
            except OSError:
                self.dropped += 1

    def replay(self, sock: socket.socket, target: str, data: bytes) -> None:
        """Deliver an old datagram again, as a network that held it would: no reach
        applies (it was already in flight), and it is counted as neither."""
        with contextlib.suppress(OSError):
            sock.sendto(data, (target, self._listen_port))

    def counts(self) -> bytes:
        return json.dumps({"delivered": self.delivered, "dropped": self.dropped}).encode() + b"\n"


class Replay:
    """Old datagrams re-sent to one target, one every `every` seconds, in a loop."""

    def __init__(self, datagrams: Sequence[bytes], every: float, now: float) -> None:
        self.datagrams = list(datagrams)
        self.every = every
        self.due = now + every
        self._next = 0

    def take(self, now: float) -> bytes | None:
        if not self.datagrams or now < self.due:
            return None
        self.due = now + self.every
        data = self.datagrams[self._next % len(self.datagrams)]
        self._next += 1
        return data


def replay_for(forwarder: Forwarder, message: Mapping[str, Any], now: float) -> Replay:
    target = str(message["to"])
    since = float(message.get("since") or 0.0)
    held: list[tuple[float, bytes]] = []
    for source in message.get("from", []):
        held.extend(e for e in forwarder.history.get((str(source), target), ()) if e[0] >= since)
    kept = [data for _, data in sorted(held, key=lambda e: e[0])]
    if message.get("order") == "ends":
        mixed: list[bytes] = []
        while kept:
            mixed.append(kept.pop(0))
            if kept:
                mixed.append(kept.pop())
        kept = mixed
    return Replay(kept, float(message["every"]), now)


def serve(control: int, answer: int, socks: Mapping[str, socket.socket],
          listen_port: int) -> None:
    reach = Reach()
    forwarder = Forwarder(listen_port, reach)
    replays: dict[str, Replay] = {}
    sel = selectors.DefaultSelector()
    sel.register(control, selectors.EVENT_READ, None)
    for address, sock in socks.items():
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, address)
    pending = b""
    while True:
        # The control pipe first: a datagram is judged by the reachability of the moment
        # it is forwarded, as on a real network.
        now = time.monotonic()
        for target, replay in replays.items():
            data = replay.take(now)
            if data is not None:
                forwarder.replay(socks[target], target, data)
        wait = min((r.due for r in replays.values()), default=None)
        timeout = None if wait is None else max(0.0, wait - time.monotonic())
        events = sorted(sel.select(timeout), key=lambda e: e[0].data is not None)
        for key, _ in events:
            if key.data is None:
                chunk = os.read(control, MAX_DATAGRAM)
                if not chunk:
                    with contextlib.suppress(BrokenPipeError):  # the simulator died
                        os.write(answer, forwarder.counts())
                    return
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if message["op"] == "reach":
                        reach.update(message)
                    elif message["op"] == "stats":
                        os.write(answer, forwarder.counts())
                    elif message["op"] == "replay":
                        if float(message["every"]) > 0:
                            replays[str(message["to"])] = replay_for(
                                forwarder, message, time.monotonic())
                        else:
                            replays.pop(str(message["to"]), None)
            else:
                forwarder.drain(socks[key.data], key.data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--socket", action="append", default=[], metavar="ADDRESS=FD")
    args = parser.parse_args()
    # A Ctrl-C reaches the whole process group; the simulator decides when we stop (it
    # closes our stdin, or dies and so closes it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    socks: dict[str, socket.socket] = {}
    for item in args.socket:
        address, fd = item.rsplit("=", 1)
        socks[address] = socket.socket(fileno=int(fd))
    serve(sys.stdin.fileno(), sys.stdout.fileno(), socks, args.listen_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
