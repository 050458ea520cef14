"""The pure part of `xenhad plan`: a hand-made pool where not everything fits."""

from __future__ import annotations

import pytest

from xenhad.model import HostView, PoolView, PowerState, Protection, VmView
from xenhad.monitor import ProtectionWarning
from xenhad.placement import MIB
from xenhad.tools.plan import UnknownHost, candidate_targets, find_host, what_if
from xenhad.tools.plan_cmd import render

GIB = 1024 * MIB


def host(n: int, *, live: bool = True, enabled: bool = True, name: str = "") -> HostView:
    return HostView(uuid=f"h{n}", ref=f"OpaqueRef:h{n}", name=name or f"host{n}",
                    address=f"10.0.0.{n}", enabled=enabled, live=live)


def vm(name: str, memory_gib: int, protection: Protection, *, order: int = 0,
       on: str = "h1", state: PowerState = PowerState.RUNNING) -> VmView:
    return VmView(uuid=f"u-{name}", ref=f"OpaqueRef:{name}", name=name, power_state=state,
                  resident_on=on if state is PowerState.RUNNING else None, affinity=None,
                  memory=memory_gib * GIB, protection=protection, order=order)


def pool(*hosts: HostView, vms: list[VmView], master: str = "h1") -> PoolView:
    return PoolView(pool_ref="OpaqueRef:pool", master=master,
                    ha_enabled=False, hosts={h.uuid: h for h in hosts},
                    vms={v.uuid: v for v in vms})


def test_what_fits_restarts_in_order_and_the_rest_says_why() -> None:
    view = pool(
        host(1), host(2), host(3, live=False), host(4, enabled=False),
        vms=[
            vm("db", 6, Protection.RESTART, order=0),
            vm("app", 3, Protection.RESTART, order=1),
            vm("batch", 2, Protection.BEST_EFFORT),
            vm("big", 16, Protection.RESTART, order=1),
            vm("tmp", 1, Protection.OFF),
            vm("odd", 1, Protection.OFF),
            vm("halted", 1, Protection.RESTART, state=PowerState.HALTED),
            vm("elsewhere", 1, Protection.RESTART, on="h2"),
        ],
    )
    dead = find_host(view, "host1")
    targets = candidate_targets(view, dead)
    assert [h.name for h in targets] == ["host2"]
    warning = ProtectionWarning("u-odd", "odd", "other_config:xenhad", "yes please")
    w = what_if(view, dead, {"h2": 12 * GIB}, [warning])
    assert [(r.name, r.wave, r.host_name) for r in w.restarts] == [
        ("db", 1, "host2"), ("app", 2, "host2"), ("batch", 3, "host2"),
    ]
    assert [(n.name, n.reason) for n in w.not_placed] == [
        ("big", "needs 16384 MiB, largest free 6144 MiB"),
    ]
    assert [(u.name, u.why) for u in w.unprotected] == [
        ("odd", warning.message), ("tmp", "protection off"),
    ]
    assert [(t.name, t.free_after) for t in w.targets] == [("host2", 1 * GIB)]
    assert w.is_master
    assert w.notes == (
        "host1 is the pool master: the survivors first promote a new master (failover), "
        "which then restarts these VMs",
        "host3 receives nothing: not live",
        "host4 receives nothing: disabled",
    )
    text = render(w)
    assert "would not fit (1):\n    big (restart): needs 16384 MiB, largest free 6144 MiB" in text
    assert "    wave 2 (restart, order 1):\n      app" in text


def test_a_disabled_host_would_not_be_recovered_and_the_plan_says_so() -> None:
    view = pool(host(1), host(2, enabled=False), vms=[vm("db", 1, Protection.RESTART, on="h2")])
    w = what_if(view, find_host(view, "h2"), {"h1": None})
    assert w.notes[0].startswith("host2 is disabled: xenhad never confirms a disabled host")
    assert "host1 receives nothing: its free memory could not be read" in w.notes
    assert [n.reason for n in w.not_placed] == [
        "needs 1024 MiB, no live, enabled host to receive it"]
    assert "targets: none" in render(w)


def test_host_names_must_be_unambiguous() -> None:
    view = pool(host(1, name="twin"), host(2, name="twin"), vms=[])
    with pytest.raises(UnknownHost, match=r"2 hosts are named 'twin' .*: give the uuid"):
        find_host(view, "twin")
    assert find_host(view, "H2").uuid == "h2"
    with pytest.raises(UnknownHost, match=r"known hosts: twin, twin$"):
        find_host(view, "nope")
