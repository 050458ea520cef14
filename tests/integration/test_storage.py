"""Real daemons and a pool with storage, networks and groups: xenhad restarts only what can
run elsewhere, where it can, and says beforehand what cannot."""

from __future__ import annotations

from pathlib import Path

import pytest
from pool_checks import never_twice_until, protected_on, running_again, wait_all_logged

from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SPEC = PoolSpec(hosts=3, vms=9, seed=3, vm_start_seconds=0.5, local_vms=1, groups=1)


def test_a_dead_hosts_local_sr_vm_is_named_and_the_rest_come_back_where_they_can_run(
        workdir: Path) -> None:
    with Testbed(SPEC, workdir) as bed:
        wait_all_logged(bed, "daemon.ready")
        victim = "host2"
        protected = protected_on(bed, victim)
        assert {"local001", "aa01a", "aa01b"} <= set(protected)
        agile = [vm for vm in protected if vm != "local001"]
        # Said before the day, once, by the master's daemon.
        bed.wait_for(lambda: bed.events_named("vm.protected_in_name_only", "host1"), 30,
                     what="the local-SR VM to be named")
        (_, said), = bed.events_named("vm.protected_in_name_only", "host1")
        assert said.fields["vm"] == "local001"
        assert "Local storage on host2" in said.fields["why"]

        bed.crash(victim)
        never_twice_until(bed, lambda: running_again(bed, agile, victim), 60,
                          what=f"{agile} running again")
        bed.wait_for(lambda: bed.events_named("incident.closed"), 30, what="incident closed")
        hosts = bed.vm_hosts()
        # The pair is on two hosts: both survivors had room.
        assert hosts["aa01a"] != hosts["aa01b"]
        assert {hosts["aa01a"][0], hosts["aa01b"][0]} == {"host1", "host3"}
        # The local-SR VM was not attempted, and the summary says why.
        assert hosts["local001"] == []
        assert not [e for _, e in bed.events_named("vm.starting")
                    if e.fields.get("vm") == "local001"]
        (_, closed), = bed.events_named("incident.closed")
        assert closed.fields["phase"] == "done"
        assert set(closed.fields["restarted"]) == set(agile)
        assert closed.fields["cannot_run_elsewhere"] == {
            "local001": "its disk is on SR Local storage on host2, which no other host sees"}
        assert len(bed.events_named("vm.protected_in_name_only", "host1")) == 1
        assert bed.pool.double_runs() == []


def test_a_vm_its_first_target_refuses_runs_on_another_host(workdir: Path) -> None:
    spec = PoolSpec(hosts=3, vms=9, seed=3, vm_start_seconds=0.5, groups=1)
    with Testbed(spec, workdir) as bed:
        wait_all_logged(bed, "daemon.ready")
        victim = "host2"
        protected = protected_on(bed, victim)
        # host3 has one pCPU: every VM (2 vCPUs) is refused there with HOST_NOT_ENOUGH_PCPUS
        # (xapi_vm_helpers.ml assert_enough_pcpus), which xenhad cannot know beforehand.
        with bed.pool.lock:
            db = bed.pool.hosts[0].db
            db.tables["host"][bed.pool.host("host3").ref]["cpu_info"]["cpu_count"] = "1"
        bed.crash(victim)
        never_twice_until(bed, lambda: running_again(bed, protected, victim), 60,
                          what=f"{protected} running again")
        bed.wait_for(lambda: bed.events_named("incident.closed"), 30, what="incident closed")
        refused = [e.fields["vm"] for _, e in bed.events_named("vm.retry")
                   if "HOST_NOT_ENOUGH_PCPUS" in str(e.fields.get("why"))]
        # One of the pair is placed on host3 first (its partner went to host1), refused, and
        # then started on host1 all the same: no room elsewhere is better than not running.
        assert refused, "host3 was tried and refused something"
        hosts = bed.vm_hosts()
        for vm in protected:
            assert hosts[vm] == ["host1"]
        (_, closed), = bed.events_named("incident.closed")
        assert closed.fields["phase"] == "done"
        assert closed.fields["failed"] == {}
        assert bed.pool.double_runs() == []
