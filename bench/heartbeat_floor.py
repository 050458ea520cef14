"""The floor of heartbeat handling at rest in CPython, layer by layer (issue 23).

A 64-host pool's daemon receives 63 heartbeats a second and sends one to 63 peers. This
measures a process that does only that, with the daemon's own pieces, each layer adding one:

  io      an asyncio loop reading the socket in batches (link.batch_seconds(1.0)), nothing more
  mac     + the MAC of each datagram checked (hmac.digest, SHA-256, as compact.Decoder does)
  decode  + each decoded by wire.Reader (version 3)
  table   + each given to PeerTable.receive
  send    + one heartbeat encoded and sent to 63 addresses each second (link.send's work)

The feeder is another process: 63 senders, each a heartbeat a second (version 3, rising
sequence numbers, echoing the receiver), spread over the second as a pool's are. The
receiver's CPU (time.process_time) is read over `--seconds`, after 5 s of warming up.

What it shows: how much of a core the heartbeats cost before the daemon does anything of its
own (its tick, the pool's read, the detector). The daemon at rest is measured by footprint.py.

Run: .venv/bin/python bench/heartbeat_floor.py [--seconds 30] [--rounds 3] [--layers io,mac,...]
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hmac
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import time
import uuid

from xenhad.peers import wire
from xenhad.peers.heartbeat import Heartbeat
from xenhad.peers.link import batch_seconds
from xenhad.peers.table import PeerTable

SECRET = bytes(range(32))
HOSTS = 64
INTERVAL = 1.0
LAYERS = ("io", "mac", "decode", "table", "send")


def names() -> list[str]:
    rng = random.Random(23)
    return sorted(str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(HOSTS))


def beat(sender: str, everyone: list[str], seq: int, pool: str, master: str) -> Heartbeat:
    others = [h for h in everyone if h != sender]
    return Heartbeat(
        pool=pool, sender=sender, boot="b" * 16, seq=seq, sent_at=time.time(), master=master,
        heard=tuple(others), quorate=True, armed=True, last_heard=dict.fromkeys(others, 0.5),
        epoch=4, echo=dict.fromkeys(others, 1), boot_started=time.time() - 3600,
        proven=dict.fromkeys(others, 0.5), reads=wire.READS,
    )


def feed(port: int, stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    everyone = names()
    me, pool = everyone[0], "pool"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seq = 1 << 40
    while not stop.is_set():
        seq += 1
        started = time.monotonic()
        for i, sender in enumerate(everyone[1:]):
            data = wire.encode(beat(sender, everyone, seq, pool, me), SECRET, wire.READS)
            sock.sendto(data, ("127.0.0.1", port))
            pause = started + (i + 1) * INTERVAL / (HOSTS - 1) - time.monotonic()
            if pause > 0:
                time.sleep(pause)


def receive(layer: str, sock: socket.socket, seconds: float) -> float:
    """The receiver's share of a core (percent) over `seconds`."""
    depth = LAYERS.index(layer)
    everyone = names()
    me = everyone[0]
    reader = wire.Reader()
    table = PeerTable(me, "pool", window=4.0)
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(HOSTS - 1)]
    for s in sinks:
        s.bind(("127.0.0.1", 0))
    addresses = [s.getsockname() for s in sinks]
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)
    batch = batch_seconds(INTERVAL)

    async def run() -> float:
        loop = asyncio.get_running_loop()

        def read() -> None:
            now, wall = time.monotonic(), time.time()
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                if depth == 1:
                    hmac.compare_digest(data[4:36], hmac.digest(SECRET, data[:4] + data[36:],
                                                                "sha256"))
                elif depth >= 2:
                    hb = reader.decode(data, SECRET)
                    if depth >= 3:
                        table.receive(hb, now, wall)
            loop.call_later(batch, read)

        async def send() -> None:
            seq = 1 << 40
            while True:
                await asyncio.sleep(INTERVAL)
                seq += 1
                now = time.monotonic()
                table.sending(seq, now)
                hb = beat(me, everyone, seq, "pool", me)
                hb = dataclasses.replace(hb, heard=tuple(sorted(table.heard(now))),
                                         last_heard=table.ages(now), echo=table.echoes(),
                                         proven=table.proven_ages(now, 4.0))
                data = wire.encode(hb, SECRET, wire.READS)
                for address in addresses:
                    out.sendto(data, address)

        loop.call_soon(read)
        sender = loop.create_task(send()) if depth >= 4 else None
        await asyncio.sleep(5)
        c0, t0 = cpu_seconds(), time.monotonic()
        await asyncio.sleep(seconds)
        share = (cpu_seconds() - c0) / (time.monotonic() - t0) * 100
        if sender is not None:
            sender.cancel()
        return share

    return asyncio.run(run())


def cpu_seconds() -> float:
    # In nanoseconds, all threads: /proc's clock ticks (10 ms) are too coarse for 0.1%.
    return time.process_time()


def one(layer: str, seconds: float) -> float:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    feeder = ctx.Process(target=feed, args=(sock.getsockname()[1], stop))
    feeder.start()
    try:
        return receive(layer, sock, seconds)
    finally:
        stop.set()
        feeder.join()
        sock.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--one", choices=LAYERS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a fresh process for each measurement: nothing left over from the last
        print(one(args.one, args.seconds))
        return
    layers = args.layers.split(",")
    results: dict[str, list[float]] = {layer: [] for layer in layers}
    for _ in range(args.rounds):
        for layer in layers:  # interleaved: the machine's drift falls on every layer alike
            out = subprocess.run([sys.executable, __file__, "--one", layer, "--seconds",
                                  str(args.seconds)], check=True, capture_output=True, text=True)
            results[layer].append(float(out.stdout))
    print(f"load average {os.getloadavg()[0]:.2f}")
    print("| layer | CPU at rest, % of a core (each round) |")
    print("|---|---|")
    for layer in layers:
        print(f"| {layer} | " + ", ".join(f"{v:.3f}" for v in results[layer]) + " |")


if __name__ == "__main__":
    main()
