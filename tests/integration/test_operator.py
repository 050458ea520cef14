"""The operator's commands, run as processes against running daemons and the simulator."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pool_checks import protected_on, wait_all_logged

from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def xenhad(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xenhad", *args], capture_output=True,
                          text=True, timeout=30)


def test_status_shows_the_pool_and_an_incident_in_progress(workdir: Path) -> None:
    with Testbed(PoolSpec(hosts=3, vms=6, seed=3), workdir, fencing="none") as bed:
        wait_all_logged(bed, "quorum.gained")
        config = str(bed.daemons["host1"].config)
        table = xenhad("status", "--config", config)
        assert table.returncode == 0, table.stderr
        assert "host host1 (master), pool master host1" in table.stdout
        assert "quorum: yes (in contact with 3 of 3)" in table.stdout
        assert "no incident in progress" in table.stdout
        bed.crash("host2")  # no fencing backend: the incident waits, visibly
        bed.wait_for(lambda: bed.events_named("incident.waiting_fence"), 30,
                     what="the incident to wait")
        doc = json.loads(xenhad("status", "--json", "--config", config).stdout)
        assert doc["role"] == "master" and doc["quorate"]
        assert [h["name"] for h in doc["hosts"]] == ["host1", "host2", "host3"]
        (incident,) = doc["incidents"]
        assert incident["host"] == "host2" and incident["phase"] == "waiting-fence"
        slave = json.loads(xenhad("status", "--json", "--config",
                                  str(bed.daemons["host3"].config)).stdout)
        assert slave["role"] == "slave" and slave["master"] == "host1"


def test_status_without_a_daemon_is_one_line(workdir: Path) -> None:
    config = workdir / "xenhad.toml"
    config.write_text(f'[daemon]\nstate_dir = "{workdir / "state"}"\n')
    result = xenhad("status", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is xenhad running" in result.stderr


def test_a_host_under_maintenance_is_never_recovered(workdir: Path) -> None:
    spec = PoolSpec(hosts=3, vms=9, seed=3, boot_seconds=3.0, enable_after_boot_seconds=1.0)
    with Testbed(spec, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        config = str(bed.daemons["host1"].config)
        on = xenhad("maintenance", "on", "host2", "--config", config)
        assert on.returncode == 0, on.stderr
        assert "host2: under maintenance" in on.stdout
        protected = protected_on(bed, "host2")
        bed.crash("host2")
        time.sleep(6)  # three times the confirmation threshold
        assert not bed.events_named("incident.opened")
        # It reboots, and xapi would enable it by itself; the mark still holds.
        bed.boot("host2")
        bed.wait_for(lambda: bed.truth()["hosts"]["host2"]["xapi"] == "up", 30,
                     what="host2's xapi")
        time.sleep(3)
        assert not bed.events_named("incident.opened")
        assert all(bed.vm_hosts()[vm] == [] for vm in protected)
        off = xenhad("maintenance", "off", "host2", "--config", config)
        assert off.returncode == 0, off.stderr
        assert "host2: back in service" in off.stdout

        def host2_in_service() -> bool:
            doc = json.loads(xenhad("status", "--json", "--config", config).stdout)
            host2 = next(h for h in doc["hosts"] if h["name"] == "host2")
            return bool(host2["enabled"]) and not host2["maintenance"]

        bed.wait_for(host2_in_service, 10, what="the daemon to see host2 back in service")


def test_maintenance_of_an_unknown_host_names_the_known_ones(workdir: Path) -> None:
    with Testbed(PoolSpec(hosts=2, vms=2, seed=3), workdir, peers=False) as bed:
        wait_all_logged(bed, "daemon.ready")
        result = xenhad("maintenance", "on", "host9", "--config",
                        str(bed.daemons["host1"].config))
        assert result.returncode == 2
        assert "no host is called 'host9'" in result.stderr and "host1, host2" in result.stderr


def test_prometheus_metrics_on_localhost(workdir: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = PoolSpec(hosts=3, vms=6, seed=3)
    overrides = {"daemon": {"metrics_port": port}}
    with Testbed(spec, workdir, peers=False, daemon_hosts=("host1",),
                 overrides=overrides, fencing="none") as bed:
        wait_all_logged(bed, "daemon.ready")
        bed.crash("host2")
        bed.wait_for(lambda: bed.events_named("incident.waiting_fence"), 30,
                     what="an incident")

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        bed.wait_for(lambda: 'xenhad_incidents_open{phase="waiting-fence"} 1.0' in scrape(),
                     10, what="the open incident in the metrics")
        text = scrape()
        assert "xenhad_master 1.0" in text
        uuid = bed.host("host2")["uuid"]
        assert f'xenhad_host_state{{host="host2",state="down",uuid="{uuid}"}} 1.0' in text
        assert "xenhad_incidents_opened_total 1.0" in text


def test_every_incident_transition_reaches_the_exec_hook(workdir: Path) -> None:
    received = workdir / "alerts.jsonl"
    hook = workdir / "hook.sh"
    hook.write_text(f'#!/bin/sh\n{{ cat; echo; }} >> "{received}"\n')
    hook.chmod(0o755)
    spec = PoolSpec(hosts=3, vms=12, seed=3, vm_start_seconds=0.5)
    with Testbed(spec, workdir, overrides={"alerts": {"exec": str(hook)}}) as bed:
        wait_all_logged(bed, "quorum.gained")
        bed.crash("host2")
        bed.wait_for(lambda: bed.events_named("incident.closed"), 60, what="the incident")
        bed.wait_for(lambda: received.exists() and '"incident.closed"' in received.read_text(),
                     10, what="the closing alert")
    alerts = [json.loads(line) for line in received.read_text().splitlines() if line]
    events = [a["event"] for a in alerts]
    assert events[0] == "incident.opened" and events[-1] == "incident.closed"
    assert {a["host"] for a in alerts} == {"host2"}
    assert len({a["incident"] for a in alerts}) == 1
    phases = [a["phase"] for a in alerts if a["event"] == "incident.step"]
    assert phases == sorted(phases, key=["fencing", "resetting", "restarting"].index)
    assert alerts[-1]["restarted"], "the closing alert says what came back"
