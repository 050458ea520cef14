"""The simulated network for xenhad's peer heartbeats.

All daemons of a simulated pool run on one machine, so the kernel would hand their UDP
datagrams over directly and no partition would apply. The relay stands for the network: it
listens on one port of every host's address; a datagram a daemon on host N (its source
address) sends to host M's address reaches M's daemon, listening on `listen_port`, only if
both hosts are powered and the simulator's network lets N reach M (partitions, one-way cuts).
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading

from xenhad.sim.pool import SimPool


class HeartbeatRelay:
    def __init__(self, pool: SimPool, *, listen_port: int) -> None:
        self._pool = pool
        self._listen_port = listen_port
        self.stats = {"delivered": 0, "dropped": 0}
        self._sel = selectors.DefaultSelector()
        self._socks = self._bind_all()
        self.port = int(self._socks[0][1].getsockname()[1])
        for address, sock in self._socks:
            self._sel.register(sock, selectors.EVENT_READ, address)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sim-relay", daemon=True)
        self._thread.start()

    def _bind_all(self) -> list[tuple[str, socket.socket]]:
        addresses = [h.address for h in self._pool.hosts]
        for _ in range(50):
            socks: list[tuple[str, socket.socket]] = []
            try:
                port = 0
                for address in addresses:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    socks.append((address, sock))
                    sock.bind((address, port))
                    port = sock.getsockname()[1]
                for _, sock in socks:
                    sock.setblocking(False)
                return socks
            except OSError as exc:
                for _, sock in socks:
                    sock.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise RuntimeError("no UDP port is free on every host address")

    def _run(self) -> None:
        while not self._closed:
            for key, _ in self._sel.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data, (source, _) = sock.recvfrom(65535)
                except OSError:
                    continue
                self._forward(data, source, str(key.data), sock)

    def _forward(self, data: bytes, source: str, target: str, sock: socket.socket) -> None:
        with self._pool.lock:
            src = self._pool.host_by_address(source)
            dst = self._pool.host_by_address(target)
            # The network alone decides (a hung xapi does not stop its dom0's daemon).
            ok = (src is not None and dst is not None and src.powered and dst.powered
                  and not self._pool.network.blocked(src.uuid, dst.uuid))
        if not ok:
            self.stats["dropped"] += 1
            return
        try:
            sock.sendto(data, (target, self._listen_port))
            self.stats["delivered"] += 1
        except OSError:
            self.stats["dropped"] += 1

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=2)
        for _, sock in self._socks:
            self._sel.unregister(sock)
            sock.close()
        self._sel.close()
