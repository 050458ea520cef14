"""The simulated network for xenhad's peer heartbeats.

All daemons of a simulated pool run on one machine, so the kernel would hand their UDP
datagrams over directly and no partition would apply. The relay stands for the network: it
listens on one port of every host's address; a datagram a daemon on host N (its source
address) sends to host M's address reaches M's daemon, listening on `listen_port`, only if
both hosts are powered and the simulator's network lets N reach M (partitions, one-way cuts).

The forwarding runs in a process of its own (relay_process.py), with its own GIL. A 64-host
pool beats about 4,000 datagrams a second; as one thread of the simulator, whose XML-RPC
threads keep the GIL busy, the relay won the GIL back after every recvfrom and sendto so
rarely that heartbeats arrived more than 30 s late, were refused as stale, and the pool
never reached quorum. This process binds the sockets (so `port` is known at once), hands
them to the child, and tells it whenever who-reaches-whom changes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import subprocess
import sys
import threading
from typing import IO

from xenhad.sim.pool import SimPool

POLL_SECONDS = 0.02
"""How often the pool's powered hosts and network are compared with what the relay process
was last told. A crash, partition or heal takes effect within about this long, as a
datagram already in flight on a real network would still arrive."""

RECEIVE_BUFFER = 1 << 20
"""Per host address. A round of heartbeats to one host is 63 datagrams of about 5.6 kB in a
64-host pool, more than the default buffer holds while the relay process waits for a CPU."""


class HeartbeatRelay:
    def __init__(self, pool: SimPool, *, listen_port: int) -> None:
        self._pool = pool
        self._names = {h.uuid: h.address for h in pool.hosts}
        self._socks = _bind_all([h.address for h in pool.hosts])
        self.port = int(self._socks[0][1].getsockname()[1])
        self._lock = threading.Lock()
        """One conversation with the relay process at a time (reach updates, stats)."""
        self._final: dict[str, int] | None = None
        self._told = ""
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        argv = [sys.executable, "-m", "xenhad.sim.relay_process",
                "--listen-port", str(listen_port)]
        argv += [f"--socket={address}={sock.fileno()}" for address, sock in self._socks]
        # A fresh interpreter, not a fork: this process runs many threads.
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      pass_fds=[sock.fileno() for _, sock in self._socks])
        self.pid = self._proc.pid
        """The forwarding process (for ps, and for tests that it ends with close())."""
        try:
            # Told before any datagram is forwarded: until then the child drops everything.
            self._tell(self._reach_line())
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._watch, name="sim-relay", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> dict[str, int]:
        """Datagrams delivered and dropped so far, asked of the relay process (exact as of
        the moment it answers); after close(), its final counts."""
        with self._lock:
            if self._final is not None:
                return dict(self._final)
            try:
                self._write(b'{"op": "stats"}\n')
                line = self._stdout().readline()
            except OSError:
                line = b""
        if not line:
            raise RuntimeError(f"the heartbeat relay process exited ({self._proc.poll()})")
        return _counts(line)

    def replay(self, to: str, senders: list[str], every: float, *,
               since: float | None = None, order: str = "sent") -> None:
        """Deliver to host `to`'s daemon, one every `every` seconds and whatever the
        partition, the heartbeats last sent to it from `senders` (host names; up to
        relay_process.HISTORY each, as of now, delivered or dropped; only those sent at or
        after time.monotonic() `since` if given), over and over: a network that holds and
        delivers datagrams late, or someone replaying them from the wire. order "ends" mixes
        the oldest and newest (oldest, newest, second oldest, ...)."""
        addresses = {h.name: h.address for h in self._pool.hosts}
        message = {"op": "replay", "to": addresses[to], "every": every, "order": order,
                   "since": since, "from": [addresses[s] for s in senders]}
        with self._lock:
            self._write(json.dumps(message).encode() + b"\n")

    def stop_replay(self, to: str) -> None:
        addresses = {h.name: h.address for h in self._pool.hosts}
        with self._lock:
            self._write(json.dumps({"op": "replay", "to": addresses[to],
                                    "every": 0}).encode() + b"\n")

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            if self._final is None:
                # Closing its stdin is the child's signal to report and exit.
                try:
                    out, _ = self._proc.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    out, _ = self._proc.communicate()
                lines = out.splitlines()
                self._final = _counts(lines[-1]) if lines else {"delivered": 0, "dropped": 0}
        for _, sock in self._socks:
            sock.close()

    # -- telling the relay process who reaches whom ------------------------------------

    def _watch(self) -> None:
        while not self._closing.wait(POLL_SECONDS):
            line = self._reach_line()
            with self._lock:
                if self._final is not None:
                    return
                with contextlib.suppress(OSError):  # the process is gone: said below
                    self._tell(line)
                code = self._proc.poll()
            if code is not None:
                sys.stderr.write(f"xenhad sim: the heartbeat relay process exited ({code});"
                                 " peer heartbeats are no longer forwarded\n")
                return

    def _reach_line(self) -> str:
        with self._pool.lock:
            powered = sorted(h.address for h in self._pool.hosts if h.powered)
            # Groups and cuts named by address: the relay process rebuilds a Network of them.
            network = self._pool.network.describe(self._names)
        return json.dumps({"op": "reach", "powered": powered, **network})

    def _tell(self, line: str) -> None:
        """Send the reachability if it changed since last told (caller holds _lock)."""
        if line != self._told:
            self._write(line.encode() + b"\n")
            self._told = line

    def _write(self, data: bytes) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        stdin.write(data)
        stdin.flush()

    def _stdout(self) -> IO[bytes]:
        assert self._proc.stdout is not None
        return self._proc.stdout


def _counts(line: bytes) -> dict[str, int]:
    doc = json.loads(line)
    return {"delivered": int(doc["delivered"]), "dropped": int(doc["dropped"])}


def _bind_all(addresses: list[str]) -> list[tuple[str, socket.socket]]:
    """One UDP socket per address, all on the same port."""
    for _ in range(50):
        socks: list[tuple[str, socket.socket]] = []
        try:
            port = 0
            for address in addresses:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append((address, sock))
                with contextlib.suppress(OSError):  # a smaller buffer only risks drops
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
                sock.bind((address, port))
                port = sock.getsockname()[1]
            return socks
        except OSError as exc:
            for _, sock in socks:
                sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
    raise RuntimeError("no UDP port is free on every host address")
