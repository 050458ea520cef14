"""What an administrator sees, with real daemons and the simulator: the XAPI messages the
pool holds (as Xen Orchestra lists them), admission control, and the metrics."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pool_checks import protected_on, running_again, wait_all_logged

from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SPEC = PoolSpec(hosts=3, vms=12, seed=3, vm_start_seconds=0.5)
GIB = 1024**3


def messages(bed: Testbed) -> list[dict[str, Any]]:
    """The current master's messages, oldest first (message.get_all_records)."""
    session = bed.xapi()
    try:
        records = list(session.xenapi.message.get_all_records().values())
    finally:
        session.xenapi.session.logout()
    return sorted(records, key=lambda r: (str(r["timestamp"]), r["name"]))


def named(bed: Testbed, name: str) -> list[dict[str, Any]]:
    return [m for m in messages(bed) if m["name"] == name]


def vm_uuids(bed: Testbed) -> dict[str, str]:
    session = bed.xapi()
    try:
        return {rec["name_label"]: rec["uuid"]
                for rec in session.xenapi.VM.get_all_records().values()}
    finally:
        session.xenapi.session.logout()


def test_a_slave_crash_leaves_messages_on_the_host_and_each_vm(workdir: Path) -> None:
    with Testbed(SPEC, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        protected = protected_on(bed, "host2")
        assert protected
        host2 = bed.host("host2")["uuid"]
        bed.crash("host2")
        bed.wait_for(lambda: running_again(bed, protected, "host2"), 60,
                     what=f"{protected} running again")
        bed.wait_for(lambda: bool(named(bed, "XENHAD_INCIDENT_CLOSED")), 20,
                     what="the incident's summary message")
        failed, = named(bed, "XENHAD_HOST_FAILED")
        assert (failed["cls"], failed["obj_uuid"], failed["priority"]) == ("Host", host2, "3")
        assert failed["body"].startswith("host2 confirmed down by xenhad on host1 (")
        fenced, = named(bed, "XENHAD_HOST_FENCED")
        assert (fenced["cls"], fenced["obj_uuid"]) == ("Host", host2)
        assert "fenced by redfish" in fenced["body"]
        uuids = vm_uuids(bed)
        restarted = named(bed, "XENHAD_VM_RESTARTED")
        assert sorted(m["obj_uuid"] for m in restarted) == sorted(uuids[vm] for vm in protected)
        for m in restarted:
            assert m["cls"] == "VM" and m["priority"] == "4"
            assert "after host2 failed" in m["body"] and "\n" not in m["body"]
        closed, = named(bed, "XENHAD_INCIDENT_CLOSED")
        assert (closed["cls"], closed["obj_uuid"], closed["priority"]) == ("Host", host2, "4")
        assert f"{len(protected)} restarted" in closed["body"]
        assert all(m["name"].startswith("XENHAD_") for m in messages(bed))
        # "Why did host2 go down?": the journal keeps the evidence the master acted on.
        text = subprocess.run(
            [sys.executable, "-m", "xenhad", "history", "--config",
             str(bed.daemons["host1"].config), "--host", "host2"],
            capture_output=True, text=True, timeout=60, check=True).stdout
        why = next(line for line in text.splitlines() if line.startswith("  why down"))
        assert "missed ticks over" in why and "its daemon last heard" in why
        assert "quorum: host1, host3 in contact (2 of 3)" in why
        assert "fenced: redfish proved the power off" in text


def test_a_fence_that_never_succeeds_raises_a_bounded_number_of_messages(
    workdir: Path,
) -> None:
    # alerts.message_repeat at its default (900 s): every retry of the 20 s below fails.
    with Testbed(SPEC, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        bed.bmc_mode("host2", "ignore-off")  # accepts ForceOff, and the host stays on
        bed.pool.partition([["host1", "host3"], ["host2"]])
        bed.wait_for(lambda: bed.events_named("incident.waiting_fence", "host1"), 60,
                     what="the incident to wait for a fence")
        status = bed_status(bed)
        assert "phase waiting-fence" in status and "  why down: " in status
        started = time.monotonic()
        time.sleep(20)
        held = time.monotonic() - started
        attempts = len(bed.events_named("fence.not_confirmed", "host1"))
        waiting = named(bed, "XENHAD_HOST_FENCE_FAILED")
        # Every retry failed, and said so in the log; the administrator got one message
        # (the next one after message_repeat, tests/unit/test_messages.py).
        assert attempts >= 3 and len(waiting) == 1, (attempts, len(waiting))
        assert all(m["cls"] == "Host" and m["priority"] == "2" for m in waiting)
        assert "could not be fenced" in waiting[0]["body"]
        assert not named(bed, "XENHAD_VM_RESTARTED")
        print(f"fence attempts {attempts}, messages {len(waiting)} over {held:.0f} s")


def test_a_pool_filled_past_one_failure_is_said_once_and_cleared_when_room_returns(
    workdir: Path,
) -> None:
    # 33 GiB hosts (seed 3): host1 has 17 GiB free, host2 6, host3 7; vm006 (16 GiB, 16517
    # MiB with its overhead, protected) is halted. Started on host1, the failure of host1
    # would strand it.
    spec = PoolSpec(hosts=3, vms=12, seed=3, vm_start_seconds=0.5, host_memory=33 * GIB)
    overrides = {"recovery": {"tolerate": 1, "admission_interval": 1.0}}
    with Testbed(spec, workdir, overrides=overrides) as bed:
        bed.wait_for(lambda: bool(bed.events_named("pool.can_absorb", "host1")), 60,
                     what="the first admission check")
        assert not named(bed, "XENHAD_POOL_OVERCOMMITTED")
        session = bed.xapi()
        try:
            x = session.xenapi
            vm = x.VM.get_by_name_label("vm006")[0]
            x.VM.start_on(vm, x.host.get_by_name_label("host1")[0], False, False)
            bed.wait_for(lambda: bool(named(bed, "XENHAD_POOL_OVERCOMMITTED")), 30,
                         what="the overcommit message")
            time.sleep(4)  # several more checks, with the same answer
            over, = named(bed, "XENHAD_POOL_OVERCOMMITTED")
            [pool] = x.pool.get_all()
            assert (over["cls"], over["obj_uuid"], over["priority"]) == (
                "Pool", x.pool.get_uuid(pool), "3")
            assert over["body"].startswith("the pool can no longer absorb the failure of 1 "
                                           "host: if host1 failed, 1 protected VM would find "
                                           "no room: vm006 (needs 16517 MiB, largest free")
            assert "OVERCOMMITTED" in bed_status(bed)
            x.VM.hard_shutdown(vm)
            bed.wait_for(lambda: bool(named(bed, "XENHAD_POOL_OVERCOMMIT_CLEARED")), 30,
                         what="the message saying room returned")
            time.sleep(3)
        finally:
            session.xenapi.session.logout()
        assert len(named(bed, "XENHAD_POOL_OVERCOMMITTED")) == 1
        cleared, = named(bed, "XENHAD_POOL_OVERCOMMIT_CLEARED")
        assert cleared["priority"] == "4"
        assert len(bed.events_named("pool.overcommitted", "host1")) == 1


def bed_status(bed: Testbed) -> str:
    from xenhad.status import query, render, socket_path

    return render(query(socket_path(bed.workdir / "host1" / "state")))


def test_a_scrape_during_an_incident_shows_the_new_series(workdir: Path) -> None:
    import socket
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class MetricsBed(Testbed):
        def config_for(self, name: str) -> dict[str, Any]:
            # host1's daemon serves metrics on host1's own address (daemon.metrics_address).
            doc = super().config_for(name)
            if name == "host1":
                doc["daemon"].update(metrics_port=port,
                                     metrics_address=self.host(name)["address"])
            return doc

    with MetricsBed(SPEC, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        address = bed.host("host1")["address"]

        def scrape_text() -> str:
            url = f"http://{address}:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())

        def scrape() -> dict[str, list[Any]]:
            text = scrape_text()
            samples: dict[str, list[Any]] = {}  # by sample name (a counter's ends in _total)
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    samples.setdefault(sample.name, []).append(sample)
            return samples

        def value(families: dict[str, list[Any]], name: str, **labels: str) -> float:
            found = [s.value for s in families.get(name, [])
                     if all(s.labels.get(k) == v for k, v in labels.items())]
            assert len(found) == 1, (name, labels, families.get(name))
            return float(found[0])

        before = scrape()
        assert value(before, "xenhad_incidents_open", phase="waiting-fence") == 0
        assert value(before, "xenhad_build_info", version=__import__("xenhad").__version__) == 1
        host1 = bed.host("host1")["uuid"]
        assert value(before, "xenhad_local_host", host="host1", uuid=host1) == 1
        assert value(before, "xenhad_host_state", host="host1", uuid=host1, state="up") == 1
        assert value(before, "xenhad_heartbeats_received_total") > 0
        # host2's BMC ignores power-off and host2 is cut off: its incident waits.
        bed.bmc_mode("host2", "ignore-off")
        bed.pool.partition([["host1", "host3"], ["host2"]])
        bed.wait_for(lambda: value(scrape(), "xenhad_incidents_open",
                                   phase="waiting-fence") == 1, 30,
                     what="the incident waiting for its fence in the metrics")
        during = scrape()
        host2 = bed.host("host2")["uuid"]
        assert value(during, "xenhad_host_state", host="host2", uuid=host2, state="down") == 1
        assert value(during, "xenhad_incident_waiting_fence", host="host2") == 1
        assert value(during, "xenhad_fences_total", backend="redfish", result="failed") >= 1
        assert value(during, "xenhad_detection_seconds_count") == 1
        assert 0 < value(during, "xenhad_detection_seconds_sum") < 10
        assert value(during, "xenhad_xapi_messages_total", result="posted") >= 1
        promtool = shutil.which("promtool")
        if promtool is not None:  # the exposition's lint (names, units, types)
            lint = subprocess.run([promtool, "check", "metrics"], input=scrape_text(),
                                  capture_output=True, text=True, timeout=30, check=False)
            assert lint.returncode == 0, lint.stdout + lint.stderr
        bed.bmc_mode("host2", "ok")  # repaired: the next retry fences
        bed.wait_for(lambda: value(scrape(), "xenhad_incidents_closed_total", phase="done")
                     == 1, 60, what="the incident to close")
        after = scrape()
        assert value(after, "xenhad_fencing_seconds_count") == 1
        assert value(after, "xenhad_recovery_seconds_count") == 1
        assert value(after, "xenhad_vm_restarts_total", result="restarted") >= 1
        assert value(after, "xenhad_incidents_open", phase="waiting-fence") == 0


def test_a_promotion_is_said_on_the_new_master_which_also_tells_of_the_old(
    workdir: Path,
) -> None:
    with Testbed(SPEC, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        host1 = bed.host("host1")["uuid"]
        bed.crash("host1")
        bed.wait_for(lambda: bool(bed.events_named("failover.promoted")), 60,
                     what="a promotion")
        (new_master, _), = bed.events_named("failover.promoted")
        bed.wait_for(lambda: bool(bed.events_named("incident.closed", new_master)), 90,
                     what="the old master's incident to close")
        bed.wait_for(lambda: bool(named(bed, "XENHAD_INCIDENT_CLOSED")), 20,
                     what="its summary message")
        promoted, = named(bed, "XENHAD_MASTER_PROMOTED")
        assert (promoted["cls"], promoted["obj_uuid"]) == ("Host", bed.host(new_master)["uuid"])
        assert promoted["body"].startswith(f"{new_master} is the pool master now")
        assert "master host1 down" in promoted["body"]
        failed, = named(bed, "XENHAD_HOST_FAILED")
        assert failed["obj_uuid"] == host1 and "voted to replace it" in failed["body"]


def test_each_host_says_its_self_fencing_is_armed(workdir: Path) -> None:
    with Testbed(SPEC, workdir, self_fence=True) as bed:
        wait_all_logged(bed, "watchdog.armed")
        uuids = {bed.host(n)["uuid"] for n in ("host1", "host2", "host3")}
        bed.wait_for(lambda: len(named(bed, "XENHAD_SELF_FENCE_ARMED")) == 3, 20,
                     what="three armed messages")
        armed = named(bed, "XENHAD_SELF_FENCE_ARMED")
        # A slave's call is forwarded to the master: all three are in the master's list.
        assert {m["obj_uuid"] for m in armed} == uuids
        assert all(m["cls"] == "Host" and m["priority"] == "5" for m in armed)
        assert all("self-fencing armed (6 s watchdog)" in m["body"] for m in armed)
