"""Chaos schedules per hour: the whole pool on virtual time (`xenhad chaos --virtual`)
against one real daemon process per host (`xenhad chaos`), for the same schedule mix.

Run: PYTHONHASHSEED=0 .venv/bin/python bench/virtual_chaos_speed.py [--virtual 100]
     [--process 2] [--seed 1] [--hosts 3]
The virtual side runs `--virtual` schedules (seeds chaos.run.schedule_seed(seed, i)) twice:
with the process chaos's fault kinds (schedule.KINDS: the same schedules as the process
side, fault for fault) and with schedule.VIRTUAL_KINDS (those and the kinds only a virtual
pool can inject). The process side runs `--process` schedules of the same seeds, about 45 s
each: a couple are enough for a rate, 0 skips it. Both sides draw a schedule of
about 24 s of faults, heal, and settle for up to 60 s, so one schedule is the same amount of
pool time on either side. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

from xenhad.chaos import run as process_chaos
from xenhad.chaos.run import schedule_seed
from xenhad.chaos.schedule import KINDS, VIRTUAL_KINDS
from xenhad.chaos.virtual_run import run_one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--virtual", type=int, default=100)
    parser.add_argument("--process", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args()

    seeds = [schedule_seed(args.seed, i) for i in range(max(args.virtual, args.process))]
    for mix, kinds in (("KINDS", KINDS), ("VIRTUAL_KINDS", VIRTUAL_KINDS)):
        spent, virtual_seconds, violations = [], 0.0, 0
        started = time.perf_counter()
        for seed in seeds[:args.virtual]:
            outcome = run_one(seed, hosts=args.hosts, kinds=kinds)
            spent.append(outcome.real_seconds)
            virtual_seconds += outcome.virtual_seconds
            violations += bool(outcome.violations)
        wall = time.perf_counter() - started
        if spent:
            print(f"virtual, {mix}: {len(spent)} schedules in {wall:.1f} s real "
                  f"({virtual_seconds:.0f} s of pool time, {virtual_seconds / wall:.0f} "
                  f"virtual s per real s); per schedule median "
                  f"{statistics.median(spent):.2f} s, slowest {max(spent):.2f} s; "
                  f"{3600 * len(spent) / wall:.0f} schedules per hour; {violations} with "
                  "violations", flush=True)

    if args.process:
        started = time.perf_counter()
        ran = 0
        for seed in seeds[:args.process]:
            outcome = process_chaos.run_one(seed, hosts=args.hosts, bmc="ok", keep=None)
            ran += 1
            print(f"process: seed {seed}: {len(outcome.faults)} faults, "
                  f"{len(outcome.violations)} violations", flush=True)
        wall = time.perf_counter() - started
        print(f"process: {ran} schedules in {wall:.1f} s; "
              f"{3600 * ran / wall:.0f} schedules per hour")


if __name__ == "__main__":
    main()
