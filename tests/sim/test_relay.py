"""The heartbeat relay as the daemons meet it: real UDP datagrams between host addresses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenhad.sim import PoolSpec, SimPool
from xenhad.sim.relay import POLL_SECONDS, HeartbeatRelay

pytestmark = pytest.mark.timeout(120)

SETTLE = POLL_SECONDS * 5
"""Longer than a reachability change takes to reach the relay process."""


def bind_same_port(addresses: list[str]) -> dict[str, socket.socket]:
    """One receiving socket per address, all on one port, as the daemons listen."""
    for _ in range(50):
        socks: dict[str, socket.socket] = {}
        try:
            port = 0
            for address in addresses:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks[address] = sock
                sock.bind((address, port))
                port = sock.getsockname()[1]
            return socks
        except OSError:
            for sock in socks.values():
                sock.close()
    raise RuntimeError("no UDP port is free on every host address")


class Daemons:
    """Stands for each host's daemon: sends from its address, listens on the listen port."""

    def __init__(self, pool: SimPool) -> None:
        self.addresses = {h.name: h.address for h in pool.hosts}
        self.inbox = bind_same_port(list(self.addresses.values()))
        self.listen_port = int(next(iter(self.inbox.values())).getsockname()[1])
        self.outbox: dict[str, socket.socket] = {}
        for name, address in self.addresses.items():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((address, 0))
            self.outbox[name] = sock

    def send(self, relay: HeartbeatRelay, src: str, dst: str, payload: bytes) -> None:
        self.outbox[src].sendto(payload, (self.addresses[dst], relay.port))

    def receive(self, dst: str, timeout: float) -> bytes | None:
        sock = self.inbox[self.addresses[dst]]
        sock.settimeout(timeout)
        try:
            return sock.recv(65535)
        except socket.timeout:
            return None

    def close(self) -> None:
        for sock in [*self.inbox.values(), *self.outbox.values()]:
            sock.close()


@pytest.fixture
def net(pool: SimPool) -> Iterator[tuple[SimPool, Daemons, HeartbeatRelay]]:
    daemons = Daemons(pool)
    relay = HeartbeatRelay(pool, listen_port=daemons.listen_port)
    try:
        yield pool, daemons, relay
    finally:
        relay.close()
        daemons.close()


def dropped(relay: HeartbeatRelay, daemons: Daemons, src: str, dst: str) -> bool:
    """Send src -> dst; True once the relay counted it dropped, False if dst got it."""
    before = relay.stats["dropped"]
    daemons.send(relay, src, dst, f"{src}->{dst}".encode())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if relay.stats["dropped"] > before:
            assert daemons.receive(dst, 0.05) is None
            return True
        if daemons.receive(dst, 0.02) == f"{src}->{dst}".encode():
            return False
    raise AssertionError(f"{src}->{dst}: neither delivered nor dropped within 5 s")


def delivered(relay: HeartbeatRelay, daemons: Daemons, src: str, dst: str) -> bool:
    return not dropped(relay, daemons, src, dst)


def gone(pid: int) -> bool:
    """No such process, or only a zombie nobody can reap any more (reparented)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_powered_hosts_reach_each_other_at_the_listen_port(net: tuple[
        SimPool, Daemons, HeartbeatRelay]) -> None:
    _, daemons, relay = net
    daemons.send(relay, "host1", "host2", b"beat")
    assert daemons.receive("host2", 5) == b"beat"
    assert delivered(relay, daemons, "host2", "host1")
    assert relay.stats == {"delivered": 2, "dropped": 0}


def test_a_powered_off_host_neither_hears_nor_is_heard_until_it_boots(net: tuple[
        SimPool, Daemons, HeartbeatRelay]) -> None:
    pool, daemons, relay = net
    pool.crash("host3")
    time.sleep(SETTLE)
    assert dropped(relay, daemons, "host1", "host3")
    assert dropped(relay, daemons, "host3", "host1")
    assert delivered(relay, daemons, "host1", "host2")
    pool.boot("host3")  # powered at once; its xapi comes later, its daemon beats already
    time.sleep(SETTLE)
    assert delivered(relay, daemons, "host1", "host3")
    assert delivered(relay, daemons, "host3", "host1")


def test_a_partition_splits_the_heartbeats_until_healed(net: tuple[
        SimPool, Daemons, HeartbeatRelay]) -> None:
    pool, daemons, relay = net
    pool.partition([["host1", "host2"], ["host3"]])
    time.sleep(SETTLE)
    assert dropped(relay, daemons, "host2", "host3")
    assert dropped(relay, daemons, "host3", "host1")
    assert delivered(relay, daemons, "host1", "host2")
    pool.heal()
    time.sleep(SETTLE)
    assert delivered(relay, daemons, "host2", "host3")
    assert delivered(relay, daemons, "host3", "host1")


def test_a_one_way_cut_drops_one_direction_only(net: tuple[
        SimPool, Daemons, HeartbeatRelay]) -> None:
    pool, daemons, relay = net
    pool.cut("host2", "host3")
    time.sleep(SETTLE)
    assert dropped(relay, daemons, "host2", "host3")
    assert delivered(relay, daemons, "host3", "host2")
    pool.heal()
    time.sleep(SETTLE)
    assert delivered(relay, daemons, "host2", "host3")


def test_close_ends_the_relay_process_and_frees_the_port(net: tuple[
        SimPool, Daemons, HeartbeatRelay]) -> None:
    pool, daemons, relay = net
    assert delivered(relay, daemons, "host1", "host2")
    assert not gone(relay.pid)
    started = time.monotonic()
    relay.close()
    assert time.monotonic() - started < 2
    assert gone(relay.pid)
    assert relay.stats == {"delivered": 1, "dropped": 0}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((pool.hosts[0].address, relay.port))


PARENT = """
import sys, time
from xenhad.sim import PoolSpec, SimPool
from xenhad.sim.relay import HeartbeatRelay
relay = HeartbeatRelay(SimPool(PoolSpec(hosts=2, vms=0, base_dir=sys.argv[1])),
                       listen_port=9)
print(relay.pid, flush=True)
time.sleep(600)
"""


def test_the_relay_process_does_not_outlive_a_killed_simulator(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)],
                              stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not gone(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)


LOAD = """
import json, selectors, socket, sys, time
addresses, relay_port, listen_port, rate = json.loads(sys.argv[1])
inbox, outbox = {}, {}
for a in addresses:
    inbox[a] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbox[a].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)  # as the daemons do
    inbox[a].bind((a, listen_port))
    inbox[a].setblocking(False)
    outbox[a] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outbox[a].bind((a, 0))
sel = selectors.DefaultSelector()
for s in inbox.values():
    sel.register(s, selectors.EVENT_READ)
sends = [(src, dst) for src in addresses for dst in addresses if dst != src]
latencies = []
start = time.monotonic()
deadline = start + 20
i = 0
def drain(timeout):
    for key, _ in sel.select(timeout):
        while True:
            try:
                data = key.fileobj.recv(65535)
            except BlockingIOError:
                break
            latencies.append(time.monotonic() - float(data))
while len(latencies) < len(sends) and time.monotonic() < deadline:
    # Paced at `rate` datagrams a second, as the daemons' beats are spread in time.
    due = min(len(sends), int((time.monotonic() - start) * rate) + 1)
    while i < due:
        src, dst = sends[i]
        # As big as a real heartbeat (about 5.6 kB in a 64-host pool).
        outbox[src].sendto(repr(time.monotonic()).encode().ljust(5600), (dst, relay_port))
        i += 1
    drain(0.001)
latencies.sort()
print(json.dumps({"sent": i, "received": len(latencies), "seconds": time.monotonic() - start,
                  "p50": latencies[len(latencies) // 2] if latencies else None,
                  "p99": latencies[int(len(latencies) * 0.99)] if latencies else None,
                  "max": latencies[-1] if latencies else None}))
"""


def test_64_hosts_beats_are_forwarded_while_the_simulator_is_busy(tmp_path: Path) -> None:
    pool = SimPool(PoolSpec(hosts=64, vms=0, base_dir=str(tmp_path)))
    addresses = [h.address for h in pool.hosts]
    probe = bind_same_port(addresses)
    listen_port = int(probe[addresses[0]].getsockname()[1])
    for sock in probe.values():
        sock.close()  # the load below listens there, as the daemons would
    relay = HeartbeatRelay(pool, listen_port=listen_port)
    stop = threading.Event()

    def busy() -> None:
        # The simulator's XML-RPC threads, CPU-bound and holding the GIL.
        while not stop.is_set():
            with pool.lock:
                sum(range(2000))

    threads = [threading.Thread(target=busy, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        # The daemons are other processes: the load runs in one, not under our GIL.
        args = json.dumps([addresses, relay.port, listen_port, 4000])
        out = subprocess.run([sys.executable, "-c", LOAD, args], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    finally:
        stop.set()
        for t in threads:
            t.join()
        relay.close()
    result = json.loads(out)
    print(f"\n{result}")
    assert result["sent"] == 64 * 63
    assert result["received"] == 64 * 63
    print(f"64 hosts, {result['sent']} datagrams paced at 4000/s, simulator busy: "
          f"all forwarded in {result['seconds']:.2f} s; latency p50 "
          f"{result['p50'] * 1000:.2f} ms, p99 {result['p99'] * 1000:.2f} ms, "
          f"max {result['max'] * 1000:.2f} ms")
    assert relay.stats == {"delivered": 64 * 63, "dropped": 0}
    assert gone(relay.pid)


def test_a_replay_redelivers_old_datagrams_across_a_partition_until_stopped(net: tuple[
        SimPool, Daemons, HeartbeatRelay]) -> None:
    pool, daemons, relay = net
    for n in range(3):
        daemons.send(relay, "host1", "host3", f"old-{n}".encode())
        assert daemons.receive("host3", 5) == f"old-{n}".encode()
    daemons.send(relay, "host2", "host1", b"not-for-host3")
    assert daemons.receive("host1", 5) == b"not-for-host3"
    pool.partition([["host1", "host2"], ["host3"]])
    time.sleep(SETTLE)
    assert dropped(relay, daemons, "host1", "host3")  # the cut drops them...
    relay.replay("host3", ["host1", "host2"], every=0.1)
    # ...but the network held them: they come, after the old ones, one at a time, in the
    # order sent, over and over.
    got = [daemons.receive("host3", 2) for _ in range(5)]
    assert got == [b"old-0", b"old-1", b"old-2", b"host1->host3", b"old-0"]
    relay.stop_replay("host3")
    time.sleep(0.3)
    while daemons.receive("host3", 0.05) is not None:  # those already on their way
        pass
    assert daemons.receive("host3", 0.5) is None


def test_a_replay_from_both_ends_mixes_old_and_new(net: tuple[
        SimPool, Daemons, HeartbeatRelay]) -> None:
    _, daemons, relay = net
    for n in range(4):
        daemons.send(relay, "host2", "host1", f"b{n}".encode())
        assert daemons.receive("host1", 5) == f"b{n}".encode()
    relay.replay("host1", ["host2"], every=0.05, order="ends")
    got = [daemons.receive("host1", 2) for _ in range(4)]
    assert got == [b"b0", b"b3", b"b1", b"b2"]
    relay.stop_replay("host1")


def test_a_replay_since_a_moment_takes_only_what_was_sent_after_it(net: tuple[
        SimPool, Daemons, HeartbeatRelay]) -> None:
    pool, daemons, relay = net
    daemons.send(relay, "host1", "host3", b"before")
    assert daemons.receive("host3", 5) == b"before"
    cut_at = time.monotonic()
    pool.partition([["host1", "host2"], ["host3"]])
    time.sleep(SETTLE)
    assert dropped(relay, daemons, "host1", "host3")
    relay.replay("host3", ["host1"], every=0.1, since=cut_at)
    assert [daemons.receive("host3", 2) for _ in range(2)] == [b"host1->host3"] * 2
    relay.stop_replay("host3")
