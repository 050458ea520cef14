"""How long placement takes to choose hosts for many VMs (goal: 1,000 VMs in under 100 ms).

Run: .venv/bin/python bench/placement_plan.py [--vms 1000] [--hosts 64]
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from xenhad.model import Protection
from xenhad.placement import Candidate, HostCapacity, plan

GiB = 1024**3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    rng = random.Random(1)
    hosts = [HostCapacity(f"h{i:03d}", rng.randint(64, 256) * GiB) for i in range(args.hosts)]
    vms = [
        Candidate(
            uuid=f"vm{i:05d}",
            memory=rng.choice([1, 2, 4, 8, 16]) * GiB,
            affinity=rng.choice([None, None, hosts[rng.randrange(args.hosts)].uuid]),
            order=rng.choice([0, 0, 1, 2, -1]),
            protection=rng.choice([Protection.RESTART, Protection.BEST_EFFORT]),
        )
        for i in range(args.vms)
    ]
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        result = plan(vms, hosts)
        times.append(time.perf_counter() - t0)
    placed = len(result.placements)
    best, median = min(times) * 1000, statistics.median(times) * 1000
    print(f"placement: {args.vms} VMs onto {args.hosts} hosts: best {best:.2f} ms, "
          f"median {median:.2f} ms over {args.runs} runs; {placed} placed, "
          f"{len(result.unplaced)} unplaced; goal 100 ms, ratio {median / 100:.3f}")


if __name__ == "__main__":
    main()
