"""How long a large simulated pool takes to start and to answer its first big reads.

Run: .venv/bin/python bench/sim_startup.py [--hosts 64] [--vms 1000]
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import XenAPI

from xenhad.sim import PoolSpec, SimPool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--vms", type=int, default=1000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    pool = SimPool(PoolSpec(hosts=args.hosts, vms=args.vms))
    t_build = time.perf_counter() - t0
    pool.start()
    t_ready = time.perf_counter() - t0
    try:
        info = pool.info()
        s = XenAPI.Session(info["hosts"][0]["url"])
        t1 = time.perf_counter()
        s.login_with_password("root", info["root_password"])
        vms = s.xenapi.VM.get_all_records()
        t_vms = time.perf_counter() - t1
        t1 = time.perf_counter()
        hosts = s.xenapi.host.get_all_records()
        s.xenapi.host_metrics.get_all_records()
        t_hosts = time.perf_counter() - t1
        t1 = time.perf_counter()
        for h in info["hosts"][1:]:
            with contextlib.suppress(XenAPI.Failure):
                XenAPI.Session(h["url"]).login_with_password("", "")
        t_probe = time.perf_counter() - t1
        t1 = time.perf_counter()
        with pool.lock:
            pool.sync_database_from(pool.hosts[0])
        t_sync = time.perf_counter() - t1
        t1 = time.perf_counter()
        pool.advance(600)
        t_adv = time.perf_counter() - t1
    finally:
        t1 = time.perf_counter()
        pool.stop()
        t_stop = time.perf_counter() - t1
    print(f"pool: {args.hosts} hosts, {len(vms)} VM records, {len(hosts)} host records")
    print(f"build database           {t_build:8.3f} s")
    print(f"ready (servers up)       {t_ready:8.3f} s")
    print(f"login + VM.get_all_records {t_vms:6.3f} s")
    print(f"host + host_metrics records {t_hosts:5.3f} s")
    print(f"probe every slave (HOST_IS_SLAVE) {t_probe:.3f} s")
    print(f"pool.sync_database copy  {t_sync:8.3f} s")
    print(f"advance 600 s of timers  {t_adv:8.3f} s")
    print(f"stop                     {t_stop:8.3f} s")


if __name__ == "__main__":
    main()
