"""`xenhad history` on the journal a real daemon wrote, while it runs and after it stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tool_runs import xenhad

from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def protected_on(bed: Testbed, host: str) -> set[str]:
    hosts, records = bed.vm_hosts(), bed.vm_records()
    return {vm for vm, rec in records.items()
            if hosts.get(vm) == [host] and rec["protection"] != "off"}


def history(config: Path, *args: str) -> dict[str, Any]:
    result = xenhad("history", "--config", str(config), "--json", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "a journal the daemon wrote has no problem lines"
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_history_shows_the_incident_while_the_daemon_runs_and_after(workdir: Path) -> None:
    spec = PoolSpec(hosts=3, vms=12, seed=3, vm_start_seconds=0.5)
    with Testbed(spec, workdir) as bed:
        bed.wait_for(lambda: {n for n, _ in bed.events_named("daemon.ready")} >= set(bed.daemons),
                     60, what="every daemon ready")
        config = bed.daemons["host1"].config  # the master's daemon acts and journals
        journal = workdir / "host1" / "state" / "journal.jsonl"
        assert history(config)["incidents"] == []
        protected = protected_on(bed, "host2")
        assert protected, "the seed should put protected VMs on host2"
        bed.crash("host2")
        bed.wait_for(lambda: bool(bed.events_named("incident.closed")), 60, what="incident closed")
        (_, closed), = bed.events_named("incident.closed")

        before = journal.read_bytes()
        live = history(config)
        assert bed.daemon_alive("host1"), "history did not disturb the running daemon"
        assert journal.read_bytes().startswith(before), "the journal was only appended to"
        (incident,) = live["incidents"]
        assert incident["id"] == closed.fields["incident"]
        assert (incident["host"], incident["phase"], incident["open"]) == ("host2", "done", False)
        assert incident["fenced_by"] == "redfish"
        assert {r["vm"] for r in incident["restarted"]} == protected
        assert {r["host"] for r in incident["restarted"]} <= {"host1", "host3"} | {
            bed.host(n)["uuid"] for n in ("host1", "host3")}
        assert incident["failed"] == [] and incident["not_placed"] == []
        steps = [s["what"] for s in incident["timeline"]]
        assert steps[0].startswith("opened:") and "fenced: redfish proved the power off" in steps
        assert incident["closed"] >= incident["opened"]

        text = xenhad("history", "--config", str(config), "--host", "host2")
        assert text.returncode == 0
        assert text.stdout.startswith(f"incident {incident['id']}\n")
        assert "fenced by   redfish" in text.stdout
        for vm in protected:
            assert f"\n    {vm} on " in text.stdout

        bed.stop_daemon("host1")
        assert history(config)["incidents"] == live["incidents"]
