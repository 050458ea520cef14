"""XAPI calls per second on the pool master at rest, for the whole pool (goal: at most 1/s
whatever the pool size), against the naive design where every daemon reads every tick.

Run: .venv/bin/python bench/rest_cost.py [--hosts 3 16] [--seconds 30] [--contact-seconds 120]
         [--no-naive]
One real daemon per simulated host, production settings (detector.interval 2 s, peers
every 1 s, xapi.timeout 10 s). The simulator counts each call on the xapi that answers it
(a slave's database call on its master). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

PRODUCTION = {
    "detector": {"interval": 2.0, "confirm_misses": 3, "confirm_seconds": 10.0,
                 "probe_timeout": 1.5},
    "peers": {"interval": 1.0, "window": 4.0},
    "xapi": {"timeout": 10.0},
}


def master_calls(bed: Testbed) -> dict[str, int]:
    master = next(h["name"] for h in bed.info["hosts"] if h["uuid"] == bed.info["master"])
    return dict(bed.pool.call_counts().get(master, {}))


def measure(hosts: int, seconds: float, slave_interval: float,
            contact_seconds: float) -> tuple[float, dict[str, int]]:
    overrides = {**PRODUCTION, "detector": {**PRODUCTION["detector"],
                                             "slave_interval": slave_interval}}
    workdir = Path(tempfile.mkdtemp(prefix="xh-bench-"))
    spec = PoolSpec(hosts=hosts, vms=hosts * 10, seed=1)
    with Testbed(spec, workdir, overrides=overrides) as bed:
        bed.wait_for(lambda: len({n for n, _ in bed.events_named("quorum.gained")})
                     == hosts, contact_seconds, what="every daemon in contact")
        time.sleep(5)  # past start-up reads
        before = master_calls(bed)
        time.sleep(seconds)
        after = master_calls(bed)
    delta = {m: after.get(m, 0) - before.get(m, 0) for m in after}
    delta = {m: n for m, n in delta.items() if n}
    return sum(delta.values()) / seconds, delta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, nargs="+", default=[3, 16])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--contact-seconds", type=float, default=120.0,
                    help="how long the daemons may take to be all in contact")
    ap.add_argument("--no-naive", action="store_true",
                    help="skip the naive design's run (64 daemons reading every tick)")
    args = ap.parse_args()
    print("| hosts | xenhad calls/s | naive (every daemon reads each tick) calls/s | "
          "ratio | xenhad's calls by method |")
    print("|---|---|---|---|---|")
    for n in args.hosts:
        try:
            ours, methods = measure(n, args.seconds, 120.0, args.contact_seconds)
            naive = (float("nan") if args.no_naive
                     else measure(n, args.seconds, 0.0, args.contact_seconds)[0])
        except TimeoutError as exc:
            raise SystemExit(f"rest_cost: {n} hosts: {exc}; give them longer with "
                             "--contact-seconds, or run fewer hosts") from None
        top = ", ".join(f"{m} {c / args.seconds:.2f}" for m, c in
                        sorted(methods.items(), key=lambda kv: -kv[1])[:5])
        print(f"| {n} | {ours:.2f} | {naive:.2f} | {ours / naive:.2f} | {top} |", flush=True)


if __name__ == "__main__":
    main()
