"""Peer heartbeats and watchdog self-fencing, with real daemons against the simulator.

Every daemon holds its host's (simulated) hardware watchdog and feeds it only while it is
in mutual heartbeat contact with a majority of the pool. When no BMC can prove a host off,
the survivors wait until its watchdog must have reset it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pool_checks import protected_on, running_again, wait_all_logged

from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def wait_ready(bed: Testbed) -> None:
    wait_all_logged(bed, "watchdog.armed")
    wait_all_logged(bed, "quorum.gained", 30)


def test_total_power_loss_recovers_after_the_self_fence_deadline(workdir: Path) -> None:
    spec = PoolSpec(hosts=3, vms=12, seed=3, vm_start_seconds=0.5)
    with Testbed(spec, workdir, self_fence=True) as bed:
        wait_ready(bed)
        protected = protected_on(bed, "host2")
        assert protected
        lost_at = time.monotonic()
        bed.power_loss("host2")  # the BMC dies with its host: no backend can answer
        bed.wait_for(lambda: bed.events_named("incident.waiting_fence"), 30,
                     what="the incident to wait for proof")
        bed.wait_for(lambda: running_again(bed, protected, "host2"), 60,
                     what="protected VMs running again after the deadline")
        waited = time.monotonic() - lost_at
        assert waited >= bed.watchdog_timeout, "restarted before the watchdog could fire"
        assert bed.pool.double_runs() == []
        bed.wait_for(lambda: bed.events_named("incident.closed", "host1"), 30,
                     what="the incident to close")
        (_, closed), = bed.events_named("incident.closed", "host1")
        assert closed.fields["fenced_by"] == "self-fence"


def test_a_cut_off_host_with_a_dead_bmc_resets_itself_before_its_vms_move(
    workdir: Path,
) -> None:
    spec = PoolSpec(hosts=3, vms=12, seed=3, vm_start_seconds=0.5)
    with Testbed(spec, workdir, self_fence=True) as bed:
        wait_ready(bed)
        protected = protected_on(bed, "host2")
        bed.bmc_mode("host2", "down")
        bed.pool.partition([["host1", "host3"], ["host2"]])
        # Powered and running its VMs, host2 is in contact with nobody: it stops feeding
        # its watchdog, which resets it; only then may its VMs start elsewhere.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not running_again(bed, protected, "host2"):
            assert bed.pool.double_runs() == []
            time.sleep(0.2)
        assert running_again(bed, protected, "host2")
        assert bed.events_named("watchdog.starving", "host2"), "host2 kept feeding"
        bed.wait_for(lambda: bed.events_named("incident.closed", "host1"), 30,
                     what="the incident to close")
        (_, closed), = bed.events_named("incident.closed", "host1")
        assert closed.fields["fenced_by"] == "self-fence"
        assert bed.pool.double_runs() == []


def test_a_hung_xapi_whose_daemon_still_beats_is_not_dead(workdir: Path) -> None:
    with Testbed(PoolSpec(hosts=3, vms=6, seed=3), workdir, self_fence=True) as bed:
        wait_ready(bed)
        bed.pool.hang("host2")  # xapi wedged; dom0 and VMs fine
        time.sleep(6)  # three times the confirmation threshold
        assert not bed.events_named("host.down")
        assert not bed.events_named("incident.opened")
        assert bed.truth()["hosts"]["host2"]["powered"]
