"""`xenhad preflight` against a simulated pool: a host ready for xenhad passes every item;
a pool with native HA on, a dead BMC, a wrong BMC password, an unknown host and nobody
beating fails, each with its fix, and the command exits non-zero."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed, to_toml
from xenhad.tools.preflight import run_preflight

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def preflight(bed: Testbed, host: str, *, edit: dict[str, object] | None = None,
              sys_root: Path | None = None) -> tuple[int, str]:
    doc = bed.config_for(host)
    for key, value in (edit or {}).items():
        section, name = key.split(".")
        doc.setdefault(section, {})[name] = value
    config = bed.workdir / f"{host}-preflight.toml"
    config.write_text(to_toml(doc))
    out = io.StringIO()
    code = run_preflight(config, listen=3.0, out=out, sys_root=sys_root or bed.workdir)
    return code, out.getvalue()


def lines(text: str, verdict: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(verdict)]


def test_a_ready_host_passes_every_item(workdir: Path) -> None:
    # host1 runs no daemon yet (the operator checks before enabling it); its peers do, and
    # their heartbeats reach host1's port through the simulator's relay.
    spec = PoolSpec(hosts=3, vms=9, seed=3)
    with Testbed(spec, workdir, daemon_hosts=("host2", "host3"), self_fence=True) as bed:
        bed.wait_for(lambda: len({n for n, _ in bed.events_named("daemon.ready")}) == 2, 30,
                     what="host2's and host3's daemons")
        code, text = preflight(bed, "host1")
    assert code == 0, text
    assert lines(text, "FAIL") == []
    items = {line.split()[1] for line in lines(text, "OK")}
    assert {"config", "watchdog", "xapi", "native", "placement", "peers", "bmc"} <= items, text
    assert "heartbeats heard from every other host (2)" in text
    assert text.count("answers: power on") == 3


def test_each_problem_is_one_fail_line_with_its_fix(workdir: Path) -> None:
    spec = PoolSpec(hosts=3, vms=9, seed=3, ha_enabled=True)
    with Testbed(spec, workdir, daemon_hosts=()) as bed:
        bed.bmc_mode("host3", "down")
        wrong = workdir / "wrong-password"
        wrong.write_text("not-the-password\n")
        wrong.chmod(0o600)
        doc_hosts = bed.config_for("host1")["fencing"]["hosts"]
        doc_hosts[1]["redfish"] = {**doc_hosts[1]["redfish"], "password_file": str(wrong),
                                   "request_timeout": 1.0}
        doc_hosts[2]["redfish"] = {**doc_hosts[2]["redfish"], "request_timeout": 1.0}
        sysfs = workdir / "sys"
        (sysfs / "module" / "xen_wdt").mkdir(parents=True)
        code, text = preflight(bed, "host1", sys_root=sysfs, edit={
            "fencing.hosts": doc_hosts,
            "fencing.self_fence": {"watchdog": str(workdir / "no-watchdog"), "timeout": 60},
        })
    assert code == 1
    failed = "\n".join(lines(text, "FAIL"))
    assert "native HA" in failed and "xe pool-ha-disable" in text
    assert "bmc host2 redfish" in failed and "password_file" in text
    assert "bmc host3 redfish" in failed
    assert "peers" in failed and "no heartbeat from host2, host3" in failed
    assert "watchdog" in failed and "modprobe xen_wdt" in text
    assert lines(text, "OK") and "bmc host1 redfish" in "\n".join(lines(text, "OK"))
    assert text.rstrip().endswith("FAIL")
    assert not os.path.exists(workdir / "no-watchdog"), "preflight must create nothing"
