"""build_snapshot offered the last build's VM views: taken only when rebuilding them would
give the same, and never a way around a check that fails the tick."""

from __future__ import annotations

from typing import Any

import pytest

from xenhad.model import Protection
from xenhad.monitor import ReusableVms, Snapshot, build_snapshot
from xenhad.xapi import XapiReplyError

KEY = "xenhad"
NULL = "OpaqueRef:NULL"


def pool(**other_config: str) -> dict[str, dict[str, Any]]:
    return {"OpaqueRef:pool": {"uuid": "p-1", "master": "OpaqueRef:h1", "ha_enabled": False,
                               "other_config": other_config}}


def host(n: int) -> dict[str, Any]:
    return {"uuid": f"h-{n}", "name_label": f"host{n}", "address": f"10.0.0.{n}",
            "enabled": True, "metrics": NULL, "other_config": {}}


def vm(n: int, resident_on: str = NULL, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "uuid": f"v-{n}", "name_label": f"vm{n}",
        "power_state": "Halted" if resident_on == NULL else "Running",
        "resident_on": resident_on, "affinity": NULL, "memory_static_max": "1024",
        "ha_restart_priority": "restart", "other_config": {}, "is_control_domain": False,
        "is_a_template": False, "is_a_snapshot": False,
    }
    record.update(fields)
    return record


HOSTS = {"OpaqueRef:h1": host(1), "OpaqueRef:h2": host(2)}
VMS = {
    "OpaqueRef:v1": vm(1, "OpaqueRef:h2"),
    "OpaqueRef:v2": vm(2, affinity="OpaqueRef:h2", other_config={KEY: "sometimes"}),
}


def build(hosts: dict[str, dict[str, Any]], *, key: str = KEY,
          reuse: ReusableVms | None = None, **other_config: str) -> Snapshot:
    return build_snapshot(pool(**other_config), hosts, {}, VMS, protection_key=key, now=1.0,
                          reuse=reuse)


def test_the_same_hosts_and_key_keep_the_vm_views_and_warnings_and_read_the_pool_anew() -> None:
    first = build(HOSTS)
    again = build(HOSTS, reuse=ReusableVms(first, KEY), lock="host1")
    assert again.view.other_config == {"lock": "host1"}
    assert again.view.vms is first.view.vms and again.warnings is first.warnings
    assert again == build(HOSTS, lock="host1")


def test_a_host_gone_under_a_running_vm_still_fails_the_tick() -> None:
    first = build(HOSTS)
    with pytest.raises(XapiReplyError, match=r"v-1 .*resident_on = 'OpaqueRef:h2' is not a host"):
        build({"OpaqueRef:h1": host(1)}, reuse=ReusableVms(first, KEY))


def test_a_host_with_another_uuid_behind_the_same_ref_is_resolved_anew() -> None:
    first = build(HOSTS)
    hosts = {**HOSTS, "OpaqueRef:h2": host(3)}
    again = build(hosts, reuse=ReusableVms(first, KEY))
    assert again.view.vms["v-1"].resident_on == "h-3"
    assert again.view.vms["v-2"].affinity == "h-3"


def test_another_protection_key_reads_every_protection_again() -> None:
    first = build(HOSTS)
    again = build(HOSTS, key="other", reuse=ReusableVms(first, KEY))
    assert again.view.vms["v-2"].protection is Protection.RESTART
    assert again.warnings == ()
