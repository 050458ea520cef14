"""How long placement takes to choose hosts for many VMs (goal: 1,000 VMs in under 100 ms).

Two pools: memory alone, and with storage, networks and groups (every host sees two shared
SRs and its own local SR; 10% of the VMs have their disk on some host's local SR, 10% a VIF
on a network only a quarter of the hosts have, 2% a disk on the SR of the host that died
(stranded); 200 VMs form 100 anti-affinity pairs, with members of 50 more pairs running on
the survivors already).

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
    measure("memory only", vms, hosts, {}, args.runs)
    shared, net = ("sr-shared-1", "sr-shared-2"), ("net-eth0", "net-eth1")
    few = frozenset(h.uuid for h in hosts[: max(1, args.hosts // 4)])
    hosts = [HostCapacity(h.uuid, h.free_memory, frozenset({*shared, f"sr-local-{h.uuid}"}),
                          frozenset({*net, *(("net-eth2",) if h.uuid in few else ())}))
             for h in hosts]
    rich = []
    for i, c in enumerate(vms):
        draw = rng.random()
        srs = {rng.choice(shared)}
        nets = {rng.choice(net)}
        if draw < 0.02:
            srs = {"sr-local-dead"}
        elif draw < 0.12:
            srs.add(f"sr-local-{rng.choice(hosts).uuid}")
        elif draw < 0.22:
            nets.add("net-eth2")
        group = f"g{i // 2:03d}" if i < 200 else None
        rich.append(Candidate(c.uuid, c.memory, c.affinity, c.order, c.protection,
                              frozenset(srs), frozenset(nets), "", group))
    grouped = {f"g{g:03d}": {hosts[rng.randrange(args.hosts)].uuid: 1} for g in range(150)}
    measure("SRs, networks, groups", rich, hosts, grouped, args.runs)


def measure(what: str, vms: list[Candidate], hosts: list[HostCapacity],
            grouped: dict[str, dict[str, int]], runs: int) -> None:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = plan(vms, hosts, grouped=grouped)
        times.append(time.perf_counter() - t0)
    placed = len(result.placements)
    best, median = min(times) * 1000, statistics.median(times) * 1000
    print(f"placement ({what}): {len(vms)} VMs onto {len(hosts)} hosts: best {best:.2f} ms, "
          f"median {median:.2f} ms over {runs} runs; {placed} placed, "
          f"{len(result.unplaced)} unplaced, {len(result.stranded)} stranded; "
          f"goal 100 ms, ratio {median / 100:.3f}")


if __name__ == "__main__":
    main()
