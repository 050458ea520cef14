"""Storage, networks and VM groups in the simulator: what xapi refuses and where it places."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import XenAPI

from xenhad.sim import PoolSpec, SimPool

from .clients import login


@pytest.fixture
def pool() -> Iterator[SimPool]:
    with SimPool(PoolSpec(hosts=3, vms=3, seed=5, vm_start_seconds=0.2, local_vms=2,
                          groups=1)) as p:
        yield p


def failure(e: pytest.ExceptionInfo[XenAPI.Failure]) -> list[str]:
    return list(e.value.details)


def named(x: Any, name: str) -> str:
    refs: list[str] = x.VM.get_by_name_label(name)
    return refs[0]


def host(x: Any, name: str) -> str:
    refs: list[str] = x.host.get_by_name_label(name)
    return refs[0]


def test_seeded_storage_and_networks(pool: SimPool) -> None:
    x = login(pool).xenapi
    srs = x.SR.get_all_records()
    assert sorted(sr["name_label"] for sr in srs.values()) == [
        "Local storage on host1", "Local storage on host2", "Local storage on host3",
        "Shared NFS"]
    shared = next(r for r, sr in srs.items() if sr["shared"])
    assert len(srs[shared]["PBDs"]) == 3
    nets = {n["name_label"]: n for n in x.network.get_all_records().values()}
    assert len(nets["eth1 on host1"]["PIFs"]) == 1
    local = named(x, "local001")
    vbd = x.VM.get_VBDs(local)[0]
    sr = x.VDI.get_SR(x.VBD.get_VDI(vbd))
    assert srs[sr]["name_label"] == "Local storage on host2"
    assert x.VM.get_resident_on(local) == host(x, "host2")
    group = x.VM.get_groups(named(x, "aa01a"))[0]
    assert x.VM_group.get_placement(group) == "anti_affinity"
    assert sorted(x.VM_group.get_VMs(group)) == sorted([named(x, "aa01a"), named(x, "aa01b")])
    counts = getattr(x.event, "from")(["*"], "", 0.0)["valid_ref_counts"]
    assert {"sr", "pbd", "vdi", "vbd", "network", "pif", "vif", "vm_group"} <= set(counts)


def test_start_on_a_host_that_cannot_see_the_sr(pool: SimPool) -> None:
    x = login(pool).xenapi
    local = named(x, "local001")
    x.VM.hard_shutdown(local)
    host3 = host(x, "host3")
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.start_on(local, host3, False, False)
    sr = x.VDI.get_SR(x.VBD.get_VDI(x.VM.get_VBDs(local)[0]))
    assert failure(e) == ["VM_REQUIRES_SR", local, sr]
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.assert_can_boot_here(local, host3)
    assert failure(e)[0] == "VM_REQUIRES_SR"
    assert x.VM.get_possible_hosts(local) == [host(x, "host2")]
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.assert_agile(local)
    assert failure(e) == ["HA_CONSTRAINT_VIOLATION_SR_NOT_SHARED", sr]
    x.VM.assert_agile(named(x, "aa01a"))
    x.VM.start(local, False, False)  # xapi chooses the one host that sees its SR
    assert x.VM.get_resident_on(local) == host(x, "host2")


def test_start_on_a_host_without_the_network(pool: SimPool) -> None:
    x = login(pool).xenapi
    vm = named(x, "aa01a")
    x.VM.hard_shutdown(vm)
    eth1 = next(r for r, n in x.network.get_all_records().items()
                if n["name_label"] == "eth1 on host1")
    with pool.lock:  # the sim has no VIF.create: move its VIF onto eth1 in the database
        db = pool.hosts[0].db
        vif = db.tables["VM"][vm]["VIFs"][0]
        db.tables["VIF"][vif]["network"] = eth1
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.start_on(vm, host(x, "host3"), False, False)
    assert failure(e) == ["VM_REQUIRES_NETWORK", vm, eth1]
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.assert_agile(vm)
    assert failure(e) == ["HA_CONSTRAINT_VIOLATION_NETWORK_NOT_SHARED", eth1]
    x.VM.start_on(vm, host(x, "host1"), False, False)


def test_anti_affinity_spreads_a_pair(pool: SimPool) -> None:
    x = login(pool).xenapi
    a, b = named(x, "aa01a"), named(x, "aa01b")
    host2 = host(x, "host2")
    assert x.VM.get_resident_on(a) == x.VM.get_resident_on(b) == host2
    x.VM.hard_shutdown(a)
    x.VM.start(a, False, False)  # xapi_vm_helpers.ml rank_hosts_by_placement: away from b
    assert x.VM.get_resident_on(a) != host2


def test_memory_overhead_is_counted(pool: SimPool) -> None:
    x = login(pool).xenapi
    vm = named(x, "aa01a")
    rec = x.VM.get_record(vm)
    overhead = int(x.VM.compute_memory_overhead(vm))
    assert overhead == int(rec["memory_overhead"])
    # memory.ml HVM: 2 MiB extra, shadow (256 pages a vCPU + 2 pages a MiB), 38 pages a vCPU
    mib = 1024 * 1024
    static_mib = int(rec["memory_static_max"]) // mib
    shadow = -(-(256 * 2 + 2 * static_mib) // 256)
    assert overhead == (2 + shadow + 1) * mib


def test_liveness_is_checked_before_enabled(pool: SimPool) -> None:
    x = login(pool).xenapi
    vm = named(x, "aa01a")
    x.VM.hard_shutdown(vm)
    host3 = host(x, "host3")
    x.host.disable(host3)
    pool.crash("host3")
    with pool.lock:
        db = pool.hosts[0].db
        db.set(db.tables["host"][host3]["metrics"], "live", False)
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.start_on(vm, host3, False, False)
    assert failure(e) == ["HOST_NOT_LIVE"]


def test_disable_of_a_host_whose_xapi_is_gone(pool: SimPool) -> None:
    x = login(pool).xenapi
    host3 = host(x, "host3")
    pool.crash("host3")
    # message_forwarding.ml do_op_on: still live in the database, the forwarded call is
    # refused...
    with pytest.raises(XenAPI.Failure) as e:
        x.host.disable(host3)
    assert failure(e) == ["CANNOT_CONTACT_HOST", host3]
    with pool.lock:
        db = pool.hosts[0].db
        db.set(db.tables["host"][host3]["metrics"], "live", False)
    # ...and once marked dead, check_live refuses it first.
    with pytest.raises(XenAPI.Failure) as e:
        x.host.disable(host3)
    assert failure(e) == ["HOST_OFFLINE", host3]


def test_declare_dead_trusts_live_false(pool: SimPool) -> None:
    x = login(pool).xenapi
    host3 = host(x, "host3")
    with pool.lock:
        db = pool.hosts[0].db
        db.set(db.tables["host"][host3]["metrics"], "live", False)
    # xapi_host.ml is_host_alive: marked not live is definitive, the host is not asked, so
    # a host that still runs is declared dead (the caller must have fenced it).
    x.host.declare_dead(host3)
    assert not x.host.get_enabled(host3)
