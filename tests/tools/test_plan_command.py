"""`xenhad plan HOST` against the XAPI simulator: the plan matches the pool's truth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import XenAPI
from tool_runs import one_line_error, xenhad

from xenhad.sim import PoolSpec, SimPool

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pool() -> Iterator[SimPool]:
    with SimPool(PoolSpec(hosts=3, vms=12, seed=3)) as p:
        yield p


def socket_config(pool: SimPool, workdir: Path, host: str = "host2") -> Path:
    """A daemon config for `host`, talking to its local socket as on a dom0."""
    h = next(h for h in pool.info()["hosts"] if h["name"] == host)
    config = workdir / "xenhad.toml"
    config.write_text(
        f'[host]\nuuid = "{h["uuid"]}"\n[xapi]\nsocket = "{h["socket"]}"\ntimeout = 2.0\n'
        f'[daemon]\nstate_dir = "{workdir / "state"}"\n'
    )
    return config


class Truth:
    """What the master's database says, read with a plain XenAPI session."""

    def __init__(self, pool: SimPool) -> None:
        info = pool.info()
        master = next(h for h in info["hosts"] if h["uuid"] == info["master"])
        session = XenAPI.Session(master["url"])
        session.xenapi.login_with_password("root", info["root_password"], "1.0", "test")
        try:
            x = session.xenapi
            self.hosts = x.host.get_all_records()
            self.name = {ref: rec["name_label"] for ref, rec in self.hosts.items()}
            self.free = {rec["name_label"]: int(x.host.compute_free_memory(ref))
                         for ref, rec in self.hosts.items()}
            self.vms = [rec for rec in x.VM.get_all_records().values()
                        if not (rec["is_control_domain"] or rec["is_a_template"]
                                or rec["is_a_snapshot"])]
        finally:
            session.xenapi.session.logout()

    def running_on(self, host: str) -> dict[str, dict[str, Any]]:
        return {vm["name_label"]: vm for vm in self.vms
                if vm["power_state"] == "Running" and self.name.get(vm["resident_on"]) == host}

    @staticmethod
    def protection(vm: dict[str, Any]) -> str:
        return str(vm["other_config"].get("xenhad") or vm["ha_restart_priority"] or "off")


def plan_json(config: Path, host: str) -> dict[str, Any]:
    result = xenhad("plan", host, "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


@pytest.mark.parametrize("host", ["host1", "host2", "host3"])
def test_the_plan_covers_every_vm_of_the_host(pool: SimPool, workdir: Path, host: str) -> None:
    truth = Truth(pool)
    plan = plan_json(socket_config(pool, workdir), host)
    on_host = truth.running_on(host)
    protected = {n for n, vm in on_host.items() if truth.protection(vm) != "off"}
    assert protected, f"the seed should put protected VMs on {host}"
    placed = {r["vm"] for r in plan["restarts"]}
    assert placed | {n["vm"] for n in plan["not_placed"]} == protected
    assert {u["vm"] for u in plan["unprotected"]} == set(on_host) - protected
    # Targets are the other hosts; each receives no more than it has free.
    assert {t["name"] for t in plan["targets"]} == {"host1", "host2", "host3"} - {host}
    taken: dict[str, int] = {}
    for r in plan["restarts"]:
        assert r["host"] != host
        # What VM.start counts (memory_check.ml): dynamic_min plus the VM's overhead.
        record = on_host[r["vm"]]
        assert r["memory"] == int(record["memory_dynamic_min"]) + int(record["memory_overhead"])
        assert r["protection"] == truth.protection(on_host[r["vm"]])
        taken[r["host"]] = taken.get(r["host"], 0) + r["memory"]
    for t in plan["targets"]:
        assert t["free_memory"] == truth.free[t["name"]]
        assert taken.get(t["name"], 0) <= t["free_memory"]
        assert t["free_after"] == t["free_memory"] - taken.get(t["name"], 0)
    # Restart order: every restart VM before every best-effort one, then by `order`.
    ranks = [(r["protection"] != "restart", r["wave"]) for r in plan["restarts"]]
    assert ranks == sorted(ranks)
    for earlier, later in zip(plan["restarts"], plan["restarts"][1:]):
        if earlier["protection"] == later["protection"] and earlier["wave"] < later["wave"]:
            assert earlier["order"] < later["order"] or later["order"] < 0
    assert plan["host"]["master"] == (host == "host1")


def test_text_names_each_vm_and_its_target(pool: SimPool, workdir: Path) -> None:
    config = socket_config(pool, workdir)
    plan = plan_json(config, "host2")
    result = xenhad("plan", "host2", "--config", str(config))
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("if host2 (") and "slave) died now:" in lines[0]
    for r in plan["restarts"]:
        assert any(line.split()[:1] == [r["vm"]] and line.endswith(f"-> {r['host']}")
                   for line in lines), r
    unprotected = lines.index(f"  not protected, left alone ({len(plan['unprotected'])}):")
    assert {line.strip() for line in lines[unprotected + 1:]} >= {
        u["vm"] for u in plan["unprotected"]}


def test_a_host_may_be_named_by_uuid(pool: SimPool, workdir: Path) -> None:
    config = socket_config(pool, workdir)
    uuid = next(h["uuid"] for h in pool.info()["hosts"] if h["name"] == "host3")
    assert plan_json(config, uuid) == plan_json(config, "host3")


def test_over_tcp_with_a_password_file(pool: SimPool, workdir: Path) -> None:
    info = pool.info()
    password = workdir / "xapi-password"
    password.write_text(info["root_password"] + "\n")
    password.chmod(0o600)
    config = workdir / "tcp.toml"
    config.write_text(
        f'[xapi]\nurl = "{info["hosts"][1]["url"]}"\nallow_insecure_http = true\n'
        f'username = "root"\npassword_file = "{password}"\ntimeout = 2.0\n'
    )
    # host2 is a slave: the login follows HOST_IS_SLAVE to the master, as the daemon's does.
    assert plan_json(config, "host2") == plan_json(socket_config(pool, workdir), "host2")


def test_planning_changes_nothing(pool: SimPool, workdir: Path) -> None:
    before = Truth(pool)
    config = socket_config(pool, workdir)
    for host in ("host1", "host2", "host3"):
        plan_json(config, host)
    after = Truth(pool)
    assert after.vms == before.vms and after.hosts == before.hosts
    assert not (workdir / "state").exists()


def test_an_unknown_host_lists_the_known_ones(pool: SimPool, workdir: Path) -> None:
    line = one_line_error(xenhad("plan", "host9", "--config", str(socket_config(pool, workdir))))
    assert line == ("xenhad: no host 'host9' in the pool: give a name_label or uuid; "
                    "known hosts: host1, host2, host3")


def test_an_unreachable_xapi_is_one_line(workdir: Path) -> None:
    config = workdir / "xenhad.toml"
    config.write_text(f'[xapi]\nsocket = "{workdir / "no-xapi.sock"}"\ntimeout = 1.0\n')
    line = one_line_error(xenhad("plan", "host2", "--config", str(config)))
    assert "unreachable" in line and "check [xapi] url/socket" in line


def test_a_bad_config_or_missing_host_argument_is_one_line(workdir: Path) -> None:
    config = workdir / "xenhad.toml"
    config.write_text("[xapi]\ntimeout = -1\n")
    assert "xapi.timeout" in one_line_error(xenhad("plan", "host2", "--config", str(config)))
    missing = xenhad("plan", "--config", str(config))
    assert missing.returncode == 2 and "HOST" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_plan_names_what_no_other_host_can_run(workdir: Path) -> None:
    with SimPool(PoolSpec(hosts=3, vms=3, seed=4, local_vms=1, groups=1,
                          base_address="127.0.0.12")) as storage_pool:
        plan = plan_json(socket_config(storage_pool, workdir), "host2")
        assert [(n["vm"], n["reason"]) for n in plan["cannot_run"]] == [
            ("local001", "its disk is on SR Local storage on host2, which no other host sees")]
        # The pair on host2 goes to two different hosts.
        pair = {r["vm"]: r["host"] for r in plan["restarts"] if r["vm"].startswith("aa01")}
        assert len(pair) == 2 and len(set(pair.values())) == 2
        assert [s["vm"] for s in plan["pool_cannot_restart_elsewhere"]] == ["local001"]
