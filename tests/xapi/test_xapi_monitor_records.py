"""Records xenhad cannot read fail the snapshot with one line naming the object and the
field; odd protection values are reported, never silently honoured.

These records are built by hand because no healthy xapi (or simulator) sends them; the
snapshot of a real pool is tested against the simulator in test_xapi_sim.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from xenhad.model import PowerState, Protection
from xenhad.monitor import build_snapshot
from xenhad.xapi import XapiReplyError

KEY = "xenhad-protection"


def pool() -> dict[str, dict[str, Any]]:
    return {
        "OpaqueRef:pool": {
            "uuid": "p-1",
            "master": "OpaqueRef:h1",
            "ha_enabled": False,
            "other_config": {"k": "v"},
        }
    }


def hosts() -> dict[str, dict[str, Any]]:
    return {
        "OpaqueRef:h1": {
            "uuid": "H-1",
            "name_label": "one",
            "address": "10.0.0.1",
            "enabled": True,
            "metrics": "OpaqueRef:m1",
        },
        "OpaqueRef:h2": {
            "uuid": "h-2",
            "name_label": "two",
            "address": "10.0.0.2",
            "enabled": False,
            "metrics": "OpaqueRef:NULL",
        },
    }


def metrics() -> dict[str, dict[str, Any]]:
    return {
        "OpaqueRef:m1": {
            "uuid": "m-1",
            "live": True,
            "memory_total": "1000",
            "memory_free": "400",
        }
    }


def vm(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "uuid": "v-1",
        "name_label": "web",
        "power_state": "Running",
        "resident_on": "OpaqueRef:h1",
        "affinity": "OpaqueRef:gone",
        "memory_static_max": "2147483648",
        "is_control_domain": False,
        "is_a_template": False,
        "is_a_snapshot": False,
        "ha_restart_priority": "restart",
        "order": "2",
        "start_delay": "5",
        "other_config": {},
        "current_operations": {"OpaqueRef:task": "start"},
    }
    record.update(fields)
    return record


def build(vms: dict[str, dict[str, Any]]) -> Any:
    return build_snapshot(pool(), hosts(), metrics(), vms, protection_key=KEY, now=12.5)


def test_a_well_formed_pool_reads_with_ints_from_strings_and_uuids_lowercased() -> None:
    snap = build({"OpaqueRef:v1": vm()})
    view = snap.view
    assert view.master == "h-1"
    assert view.taken_at == 12.5
    assert view.other_config == {"k": "v"}
    assert view.hosts["h-1"].live and view.hosts["h-1"].memory_free == 400
    # No metrics object: not live (the detector still needs the host's xapi to be silent).
    assert not view.hosts["h-2"].live and not view.hosts["h-2"].enabled
    v = view.vms["v-1"]
    assert v.power_state is PowerState.RUNNING
    assert v.resident_on == "h-1" and v.affinity is None
    # Start memory as VM.start counts it: 2 GiB plus the overhead of an HVM guest with one
    # vCPU (memory.ml: 2 MiB extra, 17 MiB shadow, 1 MiB for the vCPU's 38 pages).
    assert (v.memory, v.order, v.start_delay, v.busy) == (2 * 1024**3 + 20 * 1024**2, 2, 5,
                                                          True)
    assert v.protection is Protection.RESTART
    assert snap.warnings == ()


@pytest.mark.parametrize(
    ("fields", "expected", "warned"),
    [
        ({"other_config": {KEY: "off"}}, Protection.OFF, False),
        (
            {"other_config": {KEY: "best-effort"}, "ha_restart_priority": ""},
            Protection.BEST_EFFORT,
            False,
        ),
        ({"other_config": {KEY: "Restart "}, "ha_restart_priority": ""}, Protection.RESTART, False),
        ({"other_config": {KEY: "always"}}, Protection.OFF, True),
        ({"ha_restart_priority": "best-effort"}, Protection.BEST_EFFORT, False),
        ({"ha_restart_priority": ""}, Protection.OFF, False),
        ({"ha_restart_priority": "3"}, Protection.OFF, True),
    ],
)
def test_protection_comes_from_our_key_then_from_ha_restart_priority(
    fields: dict[str, Any], expected: Protection, warned: bool
) -> None:
    snap = build({"OpaqueRef:v1": vm(**fields)})
    assert snap.view.vms["v-1"].protection is expected
    assert bool(snap.warnings) is warned
    if warned:
        message = snap.warnings[0].message
        assert "NOT protected" in message and "'web'" in message and "\n" not in message


def test_control_domains_templates_and_snapshots_are_not_guests() -> None:
    snap = build(
        {
            "OpaqueRef:d0": vm(uuid="dom0", is_control_domain=True),
            "OpaqueRef:t": vm(uuid="tpl", is_a_template=True, memory_static_max="junk"),
            "OpaqueRef:s": vm(uuid="snap", is_a_snapshot=True),
            "OpaqueRef:v1": vm(),
        }
    )
    assert list(snap.view.vms) == ["v-1"]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"memory_static_max": "lots"}, ["VM v-1 (OpaqueRef:v1)", "memory_static_max", "integer"]),
        ({"power_state": "Exploded"}, ["VM v-1", "power_state", "power state"]),
        ({"resident_on": "OpaqueRef:h9"}, ["VM v-1", "resident_on", "not a host"]),
        ({"resident_on": 7}, ["VM v-1", "resident_on", "not a string"]),
        ({"is_a_template": "maybe"}, ["VM v-1", "is_a_template", "boolean"]),
        ({"uuid": ""}, ["VM OpaqueRef:v1", "uuid", "empty"]),
        ({"other_config": ["x"]}, ["VM v-1", "other_config", "not a map"]),
    ],
)
def test_a_malformed_vm_record_is_one_line_naming_object_and_field(
    fields: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(XapiReplyError) as caught:
        build({"OpaqueRef:v1": vm(**fields)})
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_a_missing_field_is_named() -> None:
    record = vm()
    del record["power_state"]
    with pytest.raises(
        XapiReplyError, match=r"VM v-1 \(OpaqueRef:v1\): field power_state is missing"
    ):
        build({"OpaqueRef:v1": record})


def test_malformed_host_metrics_and_pool_are_named() -> None:
    m = metrics()
    m["OpaqueRef:m1"]["memory_free"] = None
    with pytest.raises(XapiReplyError, match=r"host_metrics m-1 .* of host H-1 .*memory_free"):
        build_snapshot(pool(), hosts(), m, {}, protection_key=KEY, now=0)
    p = pool()
    p["OpaqueRef:pool"]["master"] = "OpaqueRef:nobody"
    with pytest.raises(XapiReplyError, match=r"pool p-1 .*master"):
        build_snapshot(p, hosts(), metrics(), {}, protection_key=KEY, now=0)
    with pytest.raises(XapiReplyError, match="2 pools"):
        build_snapshot(
            {**pool(), "OpaqueRef:x": {}}, hosts(), metrics(), {}, protection_key=KEY, now=0
        )


def _deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        # str() of this raised RecursionError out of the daemon's loop (issue 24).
        ({"other_config": {KEY: _deep(100_000)}}, ["other_config", "not a map of strings"]),
        ({"current_operations": {"t": {"nested": "map"}}}, ["current_operations", "strings"]),
        ({"memory_static_max": "1_000"}, ["memory_static_max", "64-bit integer"]),
        ({"memory_static_max": "٣"}, ["memory_static_max", "64-bit integer"]),
        ({"memory_static_max": 2**64}, ["memory_static_max", "64-bit integer"]),
        ({"order": "9" * 5000}, ["order", "64-bit integer"]),
        ({"uuid": "u" * 1_000_000}, ["uuid", "is not a uuid"]),
        ({"power_state": "x" * 1_000_000}, ["power_state", "is not a VM power state"]),
    ],
)
def test_a_hostile_field_is_one_short_line_naming_it(
    fields: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(XapiReplyError) as caught:
        build({"OpaqueRef:v1": vm(**fields)})
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300, message[:300]
    for word in words:
        assert word in message


def test_an_unknown_protection_value_is_warned_about_in_a_short_line() -> None:
    snap = build({"OpaqueRef:v1": vm(name_label="n" * 100_000,
                                      other_config={KEY: "s" * 1_000_000})})
    assert snap.view.vms["v-1"].protection is Protection.OFF
    assert len(snap.warnings[0].message) < 400
