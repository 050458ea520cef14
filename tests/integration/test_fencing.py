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
