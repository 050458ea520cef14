"""A host cut off from the pool but still powered, running its VMs: the case fencing exists
for. Real daemons, the simulator, and each fencing backend against a BMC that switches the
simulator's power: xenhad's Redfish backend against the simulated Redfish BMCs, its IPMI
backend and Debian's fence_ipmilan against pyghmi-based IPMI BMCs (xenhad.sim.ipmi_bmc).

At every poll, the physical truth must show no VM domain on two hosts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pool_checks import never_twice_until, protected_on, running_again, wait_all_logged

from xenhad.fencing.agent import find_agent
from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SPEC = PoolSpec(hosts=3, vms=12, seed=3, vm_start_seconds=0.5)


def closed_incident(bed: Testbed) -> dict[str, object]:
    bed.wait_for(lambda: bed.events_named("incident.closed", "host1"), 30,
                 what="the incident to close")
    (_, closed), = bed.events_named("incident.closed", "host1")
    return closed.fields


@pytest.mark.parametrize("backend", [
    "redfish",
    "ipmi",
    pytest.param("agent", marks=pytest.mark.skipif(
        find_agent("fence_ipmilan") is None,
        reason="fence_ipmilan is missing: run scripts/install-test-deps")),
])
def test_a_cut_off_host_is_powered_off_before_its_vms_move(
    workdir: Path, backend: str
) -> None:
    with Testbed(SPEC, workdir, fencing=backend) as bed:
        wait_all_logged(bed, "quorum.gained")
        protected = protected_on(bed, "host2")
        assert protected
        bed.pool.partition([["host1", "host3"], ["host2"]])
        # host2 is powered and its VMs run on; the management network no longer reaches it,
        # its BMC still does.
        never_twice_until(bed, lambda: running_again(bed, protected, "host2"), 60,
                          what=f"{protected} running again")
        assert not bed.truth()["hosts"]["host2"]["powered"], "restarted without a fence"
        assert bed.pool.double_runs() == []
        closed = closed_incident(bed)
        assert closed["fenced_by"] == backend
        assert set(closed["restarted"]) == set(protected)  # type: ignore[call-overload]
        # The minority did nothing: host2's daemon had no quorum.
        assert not bed.events_named("incident.opened", "host2")


def test_a_bmc_that_ignores_power_off_holds_the_incident_until_it_works(
    workdir: Path,
) -> None:
    with Testbed(SPEC, workdir, fencing="redfish") as bed:
        wait_all_logged(bed, "quorum.gained")
        protected = protected_on(bed, "host2")
        bed.bmc_mode("host2", "ignore-off")  # accepts ForceOff, and the host stays on
        bed.pool.partition([["host1", "host3"], ["host2"]])
        bed.wait_for(lambda: bed.events_named("incident.waiting_fence", "host1"), 60,
                     what="the incident to wait for a confirmed fence")
        held_until = time.monotonic() + 6
        while time.monotonic() < held_until:
            assert bed.pool.double_runs() == []
            assert bed.vm_hosts()[protected[0]] == ["host2"]
            time.sleep(0.3)
        assert not bed.events_named("vm.restarted")
        (_, waiting), = bed.events_named("incident.waiting_fence", "host1")[:1]
        assert "power state still on" in str(waiting.fields["why"]).lower()
        assert bed.events_named("fence.not_confirmed", "host1")
        records = bed.vm_records()
        assert all(records[vm]["power_state"] == "Running" for vm in protected), \
            "a VM was reset before its host was proven off"
        bed.bmc_mode("host2", "ok")  # the BMC is repaired: the next retry fences
        never_twice_until(bed, lambda: running_again(bed, protected, "host2"), 60,
                          what=f"{protected} running again")
        assert closed_incident(bed)["fenced_by"] == "redfish"


def test_a_host_that_reboots_before_its_fence_gets_its_vms_back(workdir: Path) -> None:
    # host2 crashes and its BMC is unreachable, so its incident waits for a fence; then it
    # boots again. The incident aborts (the host is back), and xapi has resynced host2's
    # VMs Halted on boot, with ha_always_run still set: nobody shut them down, and nobody
    # would start them. Once every host is up and joined, they are started again, once.
    spec = PoolSpec(hosts=3, vms=12, seed=3, vm_start_seconds=0.5, boot_seconds=3.0)
    with Testbed(spec, workdir, fencing="redfish") as bed:
        wait_all_logged(bed, "quorum.gained")
        protected = [vm for vm in protected_on(bed, "host2")
                     if bed.vm_records()[vm]["protection"] == "restart"]
        assert protected
        bed.bmc_mode("host2", "down")
        bed.crash("host2")
        bed.wait_for(lambda: bed.events_named("incident.waiting_fence", "host1"), 60,
                     what="the incident to wait for a fence")
        bed.boot("host2")
        # Anywhere, host2 included: it is back, and empty.
        never_twice_until(bed, lambda: all(bed.vm_hosts()[vm] for vm in protected), 60,
                          what=f"{protected} running again")
        (_, found), = bed.events_named("vms.found_halted", "host1")
        assert set(protected) <= set(found.fields["vms"])  # type: ignore[arg-type]
        bed.wait_for(lambda: len(bed.events_named("incident.closed", "host1")) == 2, 30,
                     what="both incidents to close")
        first, second = (e.fields for _, e in bed.events_named("incident.closed", "host1"))
        assert first["phase"] == "aborted" and second["phase"] == "done"
        assert set(protected) <= set(second["restarted"])  # type: ignore[call-overload]
