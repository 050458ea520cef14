"""What an administrator sees when things go wrong: the run behind README's "What an
administrator sees".

A 3-host simulated pool with 32 GiB hosts and a real daemon per host; a real Prometheus
(Debian's `prometheus`) scrapes host1's daemon with packaging/prometheus/xenhad-rules.yml,
plus a target where no daemon answers. The pool is filled (vm006, 16 GiB, protected,
started on host1) until host1's failure cannot be absorbed, then host2 is cut off with a
BMC that accepts power-off and leaves it on, so its incident waits for a fence. After
`--wait` seconds it prints `xenhad status`, the alerts Prometheus has, and the messages the
pool holds as Xen Orchestra lists them.

    .venv/bin/python scripts/admin-view.py [--wait 135] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from xenhad.demo import _list_messages, _Printer
from xenhad.sim import PoolSpec
from xenhad.status import query, render, socket_path
from xenhad.testbed import Testbed

RULES = Path(__file__).resolve().parents[1] / "packaging" / "prometheus" / "xenhad-rules.yml"


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wait", type=float, default=135.0)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    if shutil.which("prometheus") is None:
        print("admin-view: needs Debian's prometheus (scripts/install-test-deps)")
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="xenhad-admin-view-"))
    port, prom_port = free_port(), free_port()

    class Bed(Testbed):
        def config_for(self, name: str) -> dict[str, Any]:
            doc = super().config_for(name)
            if name == "host1":  # metrics on host1's own address (daemon.metrics_address)
                doc["daemon"].update(metrics_port=port,
                                     metrics_address=self.host(name)["address"])
            return doc

    spec = PoolSpec(hosts=3, vms=12, seed=3, vm_start_seconds=0.5, host_memory=32 * 1024**3)
    with Bed(spec, work, overrides={"recovery": {"admission_interval": 2.0}}) as bed:
        bed.wait_for(lambda: bool(bed.events_named("pool.can_absorb", "host1")), 60,
                     what="the first admission check")
        prom_dir = work / "prometheus"
        prom_dir.mkdir(exist_ok=True)
        targets = [f"{bed.host('host1')['address']}:{port}", "127.0.0.1:1"]
        (prom_dir / "prometheus.yml").write_text(
            "global: {scrape_interval: 2s, evaluation_interval: 2s}\n"
            f"rule_files: [{RULES}]\n"
            "scrape_configs:\n"
            f"  - {{job_name: xenhad, static_configs: [{{targets: {json.dumps(targets)}}}]}}\n")
        with open(prom_dir / "log", "w") as log:
            prom = subprocess.Popen(
                ["prometheus", f"--config.file={prom_dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={prom_dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            session = bed.xapi()
            x = session.xenapi
            x.VM.start_on(x.VM.get_by_name_label("vm006")[0],
                          x.host.get_by_name_label("host1")[0], False, False)
            session.xenapi.session.logout()
            time.sleep(3)
            bed.bmc_mode("host2", "ignore-off")
            bed.pool.partition([["host1", "host3"], ["host2"]])
            bed.wait_for(lambda: bool(bed.events_named("incident.waiting_fence", "host1")), 60,
                         what="host2's incident to wait for a fence")
            time.sleep(args.wait)
            print("$ xenhad status          # on host1, the master")
            print(render(query(socket_path(work / "host1" / "state"))))
            url = f"http://127.0.0.1:{prom_port}/api/v1/alerts"
            with urllib.request.urlopen(url, timeout=10) as r:
                alerts = json.load(r)["data"]["alerts"]
            print(f"\nPrometheus, {args.wait:.0f} s into the incident "
                  f"(GET /api/v1/alerts):")
            for a in sorted(alerts, key=lambda a: (a["state"], a["labels"]["alertname"])):
                labels = ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items())
                                   if k not in ("alertname", "job"))
                print(f"  {a['state']:<8} {a['labels']['alertname']:<30} {labels}")
                print(f"           {a['annotations']['summary']}")
            print()
            _list_messages(bed, _Printer(sys.stdout))
        finally:
            prom.terminate()
            prom.wait()
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
