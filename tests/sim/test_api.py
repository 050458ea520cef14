"""The simulator answers the unmodified XenAPI.Session as a real pool's xapi would."""

from __future__ import annotations

import json
import urllib.request

import pytest
import XenAPI

from xenhad.sim import SimPool

from .clients import failure, login, tcp_session, unix_session

pytestmark = pytest.mark.timeout(60)


def vm_by_name(x: object, name: str) -> str:
    refs = x.VM.get_by_name_label(name)  # type: ignore[attr-defined]
    assert len(refs) == 1
    return str(refs[0])


def test_master_answers_reads_with_xapi_record_shapes(pool: SimPool) -> None:
    s = login(pool)
    x = s.xenapi
    [pool_ref] = x.pool.get_all()
    master = x.pool.get_master(pool_ref)
    assert master.startswith("OpaqueRef:")
    assert x.host.get_name_label(master) == "host1"
    assert x.pool.get_ha_enabled(pool_ref) is False
    hosts = x.host.get_all_records()
    assert sorted(h["name_label"] for h in hosts.values()) == ["host1", "host2", "host3"]
    h1 = hosts[master]
    assert h1["address"] == pool.host("host1").address and h1["enabled"] is True
    metrics = x.host_metrics.get_record(h1["metrics"])
    assert metrics["live"] is True
    assert int(metrics["memory_total"]) == pool.spec.host_memory  # int64: a decimal string
    assert isinstance(metrics["memory_total"], str)
    vms = x.VM.get_all_records()
    dom0s = [v for v in vms.values() if v["is_control_domain"]]
    assert sorted(x.host.get_name_label(v["resident_on"]) for v in dom0s) == [
        "host1", "host2", "host3"]
    guests = [v for v in vms.values()
              if not v["is_control_domain"] and not v["is_a_template"]]
    assert len(guests) == 8
    assert {v["ha_restart_priority"] for v in guests} <= {"restart", "best-effort", ""}
    assert sum(v["is_a_template"] for v in vms.values()) == 2
    vm = vm_by_name(x, "vm001")
    assert x.VM.get_uuid(vm) == vms[vm]["uuid"]
    assert x.VM.get_by_uuid(vms[vm]["uuid"]) == vm
    free = int(x.host.compute_free_memory(master))
    # memory_check.ml vm_compute_used_memory: dynamic_min plus the VM's memory_overhead.
    used = sum(int(v["memory_dynamic_min"]) + int(v["memory_overhead"])
               for v in vms.values() if v["resident_on"] == master)
    assert free == pool.spec.host_memory - pool.spec.host_memory_overhead - used


def test_sessions_auth_slave_and_invalid(pool: SimPool) -> None:
    with pytest.raises(XenAPI.Failure) as e:
        tcp_session(pool, "host1").login_with_password("root", "wrong")
    assert failure(e) == ["SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure"]
    # A slave says where the master is before it looks at the credentials.
    with pytest.raises(XenAPI.Failure) as e:
        tcp_session(pool, "host2").login_with_password("", "")
    assert failure(e) == ["HOST_IS_SLAVE", pool.host("host1").address]
    s = login(pool)
    ref = s._session
    s.xenapi.session.logout()
    raw = XenAPI.Session(pool.url("host1"))
    reply = raw.VM.get_all(ref)
    assert reply["ErrorDescription"] == ["SESSION_INVALID", ref]
    local = tcp_session(pool, "host2")
    local.slave_local_login_with_password("root", pool.spec.root_password)
    local.xenapi.session.local_logout()


def test_unknown_method_and_parameter_count(pool: SimPool) -> None:
    s = login(pool)
    raw = XenAPI.Session(pool.url("host1"))
    assert raw.VM.frobnicate(s._session)["ErrorDescription"] == [
        "MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    assert raw.VM.get_record(s._session)["ErrorDescription"] == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_record", "1", "0"]
    req = urllib.request.Request(pool.url("host1"), data=b"<not xml", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert b"XMLRPC_UNMARSHAL_FAILURE" in r.read()
    with pytest.raises(XenAPI.Failure) as e:
        s.xenapi.VM.get_record("OpaqueRef:nope")
    assert failure(e) == ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]


def test_unix_socket_is_preauthenticated_and_forwards_to_the_master(pool: SimPool) -> None:
    s = unix_session(pool, "host2")
    s.login_with_password("anyone", "anything")
    assert len(s.xenapi.host.get_all()) == 3
    s.xenapi.session.logout()


def test_vm_start_placement_and_errors(pool: SimPool) -> None:
    x = login(pool).xenapi
    vms = x.VM.get_all_records()
    running = next(r for r, v in vms.items() if v["power_state"] == "Running"
                   and not v["is_control_domain"])
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.start(running, False, False)
    assert failure(e) == ["VM_BAD_POWER_STATE", running, "halted", "running"]
    template = next(r for r, v in vms.items() if v["is_a_template"])
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.start(template, False, False)
    assert failure(e) == ["VM_IS_TEMPLATE", template, "start"]
    x.VM.hard_shutdown(running)
    assert x.VM.get_power_state(running) == "Halted"
    host3 = x.host.get_by_name_label("host3")[0]
    x.host.disable(host3)
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.start_on(running, host3, False, False)
    assert failure(e) == ["HOST_DISABLED", host3]
    x.host.enable(host3)
    x.VM.start_on(running, host3, False, False)
    assert x.VM.get_resident_on(running) == host3
    assert x.VM.get_power_state(running) == "Running"
    assert pool.double_runs() == []


def test_start_memory_and_no_hosts(pool: SimPool) -> None:
    x = login(pool).xenapi
    vms = x.VM.get_all_records()
    halted = next(r for r, v in vms.items() if v["power_state"] == "Running"
                  and not v["is_control_domain"])
    x.VM.hard_shutdown(halted)
    big = 10 * pool.spec.host_memory
    with pool.lock:  # the sim has no setters: write the master's database directly
        for f in ("memory_static_max", "memory_dynamic_max", "memory_dynamic_min"):
            pool.hosts[0].db.set(halted, f, big)
    host1 = x.host.get_by_name_label("host1")[0]
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.start_on(halted, host1, False, False)
    assert failure(e)[0] == "HOST_NOT_ENOUGH_FREE_MEMORY"
    # memory_check.ml: VM.start needs dynamic_min plus the overhead (shadow included).
    overhead = int(x.VM.compute_memory_overhead(halted))
    assert overhead > 0
    assert failure(e)[1] == str(big + overhead)
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.start(halted, False, False)
    assert failure(e) == ["NO_HOSTS_AVAILABLE"]


def test_other_operation_in_progress_during_start(pool: SimPool) -> None:
    import threading

    x = login(pool).xenapi
    vms = x.VM.get_all_records()
    vm = next(r for r, v in vms.items() if v["power_state"] == "Running"
              and not v["is_control_domain"])
    x.VM.hard_shutdown(vm)
    with pool.lock:
        pool.hosts[0].db.set(vm, "start_delay", 2)
    t = threading.Thread(target=lambda: login(pool).xenapi.VM.start(vm, False, False))
    t.start()
    try:
        for _ in range(100):
            if x.VM.get_current_operations(vm):
                break
            pool.changed.acquire()
            pool.changed.wait(0.02)
            pool.changed.release()
        with pytest.raises(XenAPI.Failure) as e:
            x.VM.hard_shutdown(vm) if x.VM.get_power_state(vm) == "Running" else \
                x.VM.start(vm, False, False)
        assert failure(e)[0] in ("OTHER_OPERATION_IN_PROGRESS",)
        assert failure(e)[1:3] == ["VM", vm]
    finally:
        t.join(10)
    assert x.VM.get_current_operations(vm) == {}


def test_other_config_map_duplicate_key_is_a_compare_and_set(pool: SimPool) -> None:
    x = login(pool).xenapi
    [p] = x.pool.get_all()
    x.pool.add_to_other_config(p, "xenhad-lock", "host1")
    with pytest.raises(XenAPI.Failure) as e:
        x.pool.add_to_other_config(p, "xenhad-lock", "host2")
    assert failure(e) == ["MAP_DUPLICATE_KEY", "pool", "other_config", p, "xenhad-lock"]
    assert x.pool.get_other_config(p) == {"xenhad-lock": "host1"}
    x.pool.remove_from_other_config(p, "xenhad-lock")
    assert x.pool.get_other_config(p) == {}


def test_event_from_tokens_and_shape(pool: SimPool) -> None:
    x = login(pool).xenapi
    ev = getattr(x.event, "from")
    first = ev(["vm"], "", 0.0)
    assert set(first) == {"events", "valid_ref_counts", "token"}
    assert all(e["operation"] == "add" and e["class"] == "vm" for e in first["events"])
    assert int(first["valid_ref_counts"]["vm"]) == len(first["events"])
    [p] = x.pool.get_all()
    quiet = ev(["vm"], first["token"], 0.1)
    assert quiet["events"] == []
    x.pool.add_to_other_config(p, "k", "v")
    again = ev(["pool"], first["token"], 1.0)
    assert [(e["class"], e["operation"], e["ref"]) for e in again["events"]] == [
        ("pool", "mod", p)]
    assert again["events"][0]["snapshot"]["other_config"] == {"k": "v"}
    with pytest.raises(XenAPI.Failure) as e:
        ev(["vm"], "garbage", 0.0)
    assert failure(e) == ["EVENT_FROM_TOKEN_PARSE_FAILURE", "garbage"]


def test_jsonrpc_v1_and_v2(pool: SimPool) -> None:
    def post(body: dict[str, object]) -> dict[str, object]:
        req = urllib.request.Request(pool.url("host1") + "jsonrpc",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    s = post({"jsonrpc": "2.0", "method": "session.login_with_password",
              "params": ["root", pool.spec.root_password], "id": 1})
    assert s["jsonrpc"] == "2.0" and str(s["result"]).startswith("OpaqueRef:")
    hm = post({"jsonrpc": "2.0", "method": "host_metrics.get_all_records",
               "params": [s["result"]], "id": 2})
    assert all(isinstance(r["memory_total"], int)  # type: ignore[union-attr]
               for r in hm["result"].values())  # type: ignore[union-attr]
    bad = post({"jsonrpc": "2.0", "method": "VM.get_all", "params": ["OpaqueRef:x"], "id": 3})
    assert bad["error"] == {"code": 1, "message": "SESSION_INVALID", "data": ["OpaqueRef:x"]}
    v1 = post({"method": "VM.get_all", "params": ["OpaqueRef:x"], "id": 4})
    assert v1 == {"result": None, "error": ["SESSION_INVALID", "OpaqueRef:x"], "id": 4}
    v1ok = post({"method": "pool.get_all", "params": [s["result"]], "id": 5})
    assert v1ok["error"] is None and len(v1ok["result"]) == 1  # type: ignore[arg-type]
