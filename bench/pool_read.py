"""What the daemon's full read of a 64-host, 1,000-VM pool costs with and without the
classes that say where a VM can run (issue 20): one event.from with an empty token, as
pool_cache.py sends it, then build_snapshot over the kept fields.

Run: .venv/bin/python bench/pool_read.py [--hosts 64] [--vms 1000] [--runs 5]
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import XenAPI

from xenhad.monitor import FIELDS, STORAGE, build_snapshot
from xenhad.sim import PoolSpec, SimPool

BASE = ("pool", "host", "host_metrics", "VM")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    spec = PoolSpec(hosts=args.hosts, vms=args.vms, seed=1, local_vms=args.hosts // 4,
                    groups=args.hosts // 4)
    with SimPool(spec) as pool:
        s = XenAPI.Session(pool.url("host1"))
        s.xenapi.login_with_password("root", spec.root_password, "1.0", "bench")
        for classes in (BASE, (*BASE, *STORAGE)):
            reads, builds, sizes = [], [], []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                reply: dict[str, Any] = getattr(s.xenapi.event, "from")(list(classes), "", 0.0)
                reads.append(time.perf_counter() - t0)
                sizes.append(len(json.dumps(reply, default=str)))
                records: dict[str, dict[str, dict[str, Any]]] = {}
                for e in reply["events"]:
                    keep = FIELDS.get(e["class"])
                    records.setdefault(e["class"], {})[e["ref"]] = {
                        k: v for k, v in e["snapshot"].items() if keep is None or k in keep}
                t1 = time.perf_counter()
                storage = {c.lower(): records.get(c.lower(), {}) for c in STORAGE} \
                    if len(classes) > len(BASE) else None
                build_snapshot(records["pool"], records["host"], records["host_metrics"],
                               records["vm"], protection_key="xenhad", now=0.0,
                               storage=storage)
                builds.append(time.perf_counter() - t1)
            objects = sum(len(t) for c, t in pool.master_db().tables.items() if c in classes)
            print(f"{'with storage' if storage else 'without':>12}: {len(classes)} classes, "
                  f"{objects} objects, event.from {statistics.median(reads):.3f} s "
                  f"(~{statistics.median(sizes) / 1e6:.1f} MB as JSON), build_snapshot "
                  f"{statistics.median(builds) * 1000:.0f} ms (medians of {args.runs})")


if __name__ == "__main__":
    main()
