"""What one heartbeat of a 64-host pool costs, in each wire version: its size, the CPU to
write it, and the CPU to read it: check and decode it, then the table's receive (echo
lookup, boot and order checks), as a daemon does 63 times a second.

Run: .venv/bin/python bench/heartbeat_cost.py [--hosts 64] [--rounds 5]
Each number is the best of `rounds` runs of 2,000 (the machine's noise only adds).
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import time
import timeit
import uuid

from xenhad.peers import wire
from xenhad.peers.heartbeat import Heartbeat
from xenhad.peers.table import PeerTable

SECRET = bytes(range(32))
N = 2000


def sample(hosts: int) -> tuple[Heartbeat, str]:
    """The heartbeat host 2 sends the master at rest: it heard, echoes and vouches for all."""
    rng = random.Random(23)
    names = sorted(str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(hosts))
    sender, me = names[1], names[0]
    others = [h for h in names if h != sender]
    return Heartbeat(
        pool=str(uuid.UUID(int=rng.getrandbits(128), version=4)), sender=sender,
        boot=rng.randbytes(8).hex(), seq=rng.randrange(1 << 52), sent_at=time.time(),
        master=me, heard=tuple(others), quorate=True, armed=True,
        last_heard={h: rng.uniform(0, 1) for h in others}, epoch=4,
        echo={h: rng.randrange(1 << 52) for h in others}, boot_started=time.time() - 3600,
        proven={h: rng.uniform(0, 2) for h in others}, reads=wire.READS,
    ), me


def best(rounds: int, fn: object) -> float:
    """Microseconds per call, best of `rounds`."""
    return min(timeit.repeat(fn, number=N, repeat=rounds)) / N * 1e6  # type: ignore[arg-type]


def measure(hb: Heartbeat, me: str, version: int, rounds: int) -> tuple[int, float, float, float]:
    data = wire.encode(hb, SECRET, version)
    reader = wire.Reader()
    reader.decode(data, SECRET)  # a sender's roster is read once, then remembered
    table = PeerTable(me, hb.pool, window=4.0)
    seqs = iter(range(hb.seq + 1, hb.seq + 10**9))

    def receive() -> None:
        beat = reader.decode(data, SECRET)
        # Each one newer than the last, as at rest (a replay is refused early).
        object.__setattr__(beat, "seq", next(seqs))
        table.receive(beat, 1.0, hb.sent_at)

    return (len(data), best(rounds, lambda: wire.encode(hb, SECRET, version)),
            best(rounds, lambda: reader.decode(data, SECRET)), best(rounds, receive))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    hb, me = sample(args.hosts)
    print(f"| wire version ({args.hosts} hosts) | bytes | write (us) | read (us) | "
          "read + table.receive (us) |\n|---|---|---|---|---|")
    rows = {version: measure(hb, me, version, args.rounds) for version in (2, wire.READS)}
    for version, (size, write, read, received) in rows.items():
        print(f"| {version} | {size} | {write:.1f} | {read:.1f} | {received:.1f} |")
    old, new = rows[2], rows[wire.READS]
    print(f"\nversion {wire.READS} / version 2: size {new[0] / old[0]:.2f}x, write "
          f"{new[1] / old[1]:.2f}x, read {new[2] / old[2]:.2f}x, read + receive "
          f"{new[3] / old[3]:.2f}x; at 63 a second, read + receive is "
          f"{old[3] * 63 / 1e4:.3f}% of a core in version 2, {new[3] * 63 / 1e4:.3f}% in "
          f"{wire.READS}")


if __name__ == "__main__":
    main()
