"""Time to recover, by phase, against the floor configuration and physics allow.

Run: .venv/bin/python bench/recovery_time.py [--pools 3x10 16x200] [--vm-start 2.0]
One real daemon per simulated host (the testbed's settings: interval 0.5 s, a host is
confirmed down after 3 misses spanning 2 s), Redfish fencing through each host's simulated
BMC, a modelled VM start time. A slave crash and a master crash per pool size.

Floor = confirmation threshold + fence time + the slowest single VM start (the modelled
start plus the VM's own start_delay, which VM.start sleeps), plus, for a master crash,
xapi's own restart after emergency_transition_to_master (Xapi_fuse). The "waves" floor is
what the VMs' configuration allows on top: restart-priority VMs before best-effort ones,
each `order` after the last (xapi_ha_vm_failover.ml), at most recovery.concurrency
starts at a time. Phases are seconds after the crash, read from the daemons' own log
lines. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import math
import tempfile
import time
from pathlib import Path

from xenhad.sim import PoolSpec
from xenhad.testbed import DEFAULT_DAEMON, Testbed

CONFIRM = float(DEFAULT_DAEMON["detector"]["confirm_seconds"])
CONCURRENCY = int(DEFAULT_DAEMON["recovery"]["concurrency"])
FUSE = 3.0


def at(stamp: str | None) -> float:
    assert stamp is not None
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def first(bed: Testbed, event: str) -> float | None:
    found = [at(e.timestamp) for _, e in bed.events_named(event)]
    return min(found) if found else None


def run(hosts: int, vms: int, vm_start: float, victim: str) -> dict[str, float | None]:
    spec = PoolSpec(hosts=hosts, vms=vms, seed=4, vm_start_seconds=vm_start,
                    fuse_seconds=FUSE, boot_seconds=600.0)
    workdir = Path(tempfile.mkdtemp(prefix="xh-bench-"))
    with Testbed(spec, workdir) as bed:
        bed.wait_for(lambda: len({n for n, _ in bed.events_named("quorum.gained")}) == hosts,
                     180, what="every daemon in contact")
        time.sleep(2)
        hosts_of = bed.vm_hosts()
        records = bed.vm_records()
        lost = [vm for vm, rec in records.items()
                if hosts_of.get(vm) == [victim] and rec["protection"] != "off"]
        db = {r["name_label"]: r for r in bed.pool.master_db().tables["VM"].values()}
        starts = {vm: vm_start + int(db[vm].get("start_delay", 0) or 0) for vm in lost}
        waves: dict[tuple[int, int], list[float]] = {}
        for vm in lost:
            rank = 0 if records[vm]["protection"] == "restart" else 1
            waves.setdefault((rank, int(db[vm].get("order", 0) or 0)), []).append(starts[vm])
        crashed = time.time()
        bed.crash(victim)

        def back() -> bool:
            now = bed.vm_hosts()
            return all(now.get(vm) and victim not in now[vm] for vm in lost)

        bed.wait_for(back, 300, what="every protected VM back", step=0.1)
        done = time.time()
        bed.wait_for(lambda: bool(bed.events_named("incident.closed")), 60,
                     what="incident closed")
        fenced = [at(e.timestamp) for _, e in bed.events_named("incident.step")
                  if e.fields.get("phase") == "resetting"]
        phases: dict[str, float | None] = {
            "detected": first(bed, "failover.master_suspect" if victim == "host1"
                              else "host.suspect"),
            "confirmed": first(bed, "failover.master_down" if victim == "host1"
                               else "host.down"),
            "promoted": first(bed, "failover.promoted"),
            "slaves recovered": first(bed, "failover.slaves_recovered"),
            "fenced": min(fenced) if fenced else None,
            "last VM running": done,
        }
        result = {k: (None if v is None else round(v - crashed, 2)) for k, v in phases.items()}
        result["VMs"] = float(len(lost))
        result["slowest start"] = max(starts.values(), default=0.0)
        result["waves"] = sum(math.ceil(len(w) / CONCURRENCY) * max(w) for w in waves.values())
        return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pools", nargs="+", default=["3x10", "16x200"],
                    help="HOSTSxVMS, e.g. 64x1000")
    ap.add_argument("--vm-start", type=float, default=2.0)
    args = ap.parse_args()
    cols = ["detected", "confirmed", "promoted", "slaves recovered", "fenced",
            "last VM running"]
    print("| crash | pool | protected VMs | " + " | ".join(cols)
          + " | floor | ratio | waves floor | ratio |")
    print("|---" * (len(cols) + 7) + "|")
    for pool in args.pools:
        hosts, vms = (int(x) for x in pool.split("x"))
        for victim, kind in (("host2", "slave"), ("host1", "master")):
            r = run(hosts, vms, args.vm_start, victim)
            fixed = CONFIRM + (FUSE if kind == "master" else 0.0)
            floor = fixed + (r["slowest start"] or 0.0)
            waves = fixed + (r["waves"] or 0.0)
            total = r["last VM running"] or float("nan")
            cells = " | ".join("-" if r[c] is None else f"{r[c]:.1f}" for c in cols)
            print(f"| {kind} | {hosts} hosts, {vms} VMs | {int(r['VMs'] or 0)} | {cells} | "
                  f"{floor:.1f} | {total / floor:.2f}x | {waves:.1f} | {total / waves:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
