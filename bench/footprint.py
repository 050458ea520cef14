"""One daemon watching a big pool: resident memory (goal < 40 MB) and CPU at rest (goal
< 0.5% of a core), read from /proc.

Run: .venv/bin/python bench/footprint.py [--hosts 64] [--vms 1000] [--seconds 30]
The master's daemon (the one that reads the whole pool every tick) runs alone against the
simulator, at production intervals. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    overrides = {"detector": {"interval": 2.0, "confirm_misses": 3, "confirm_seconds": 10.0,
                              "probe_timeout": 1.5}}
    workdir = Path(tempfile.mkdtemp(prefix="xh-bench-"))
    spec = PoolSpec(hosts=args.hosts, vms=args.vms, seed=1)
    with Testbed(spec, workdir, overrides=overrides, daemon_hosts=("host1",),
                 peers=False) as bed:
        bed.wait_for(lambda: bed.events_named("daemon.ready"), 60, what="the daemon")
        time.sleep(10)
        proc = bed.daemons["host1"].proc
        assert proc is not None
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        rss = rss_mib(proc.pid)
    share = (cpu1 - cpu0) / (t1 - t0) * 100
    print(f"| pool | resident memory | CPU at rest |\n|---|---|---|\n"
          f"| {args.hosts} hosts, {args.vms} VMs | {rss:.1f} MiB ({rss / 40:.2f}x the 40 MB goal)"
          f" | {share:.2f}% of a core ({share / 0.5:.2f}x the 0.5% goal) |")


if __name__ == "__main__":
    main()
