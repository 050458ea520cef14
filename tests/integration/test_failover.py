"""Master failover with one real daemon per simulated host.

The simulator's xapi restarts after emergency_transition_to_master like xapi does (after
Xapi_fuse), on the promoted host's own database copy; recover_slaves and Pool.hello
resync each slave's VMs into the new master's database (sim/api.py, sim/pool.py).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from pool_checks import never_twice_until as watch
from pool_checks import protected_on, running_again, wait_all_logged

from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# Xapi_fuse waits 10 s before the promoted xapi restarts; 3 s keeps the suite short and
# changes nothing the daemons rely on; so does a 5 s boot.
SPEC = PoolSpec(hosts=3, vms=12, seed=3, vm_start_seconds=0.5, fuse_seconds=3.0,
                boot_seconds=5.0)


def promotions(bed: Testbed) -> list[str]:
    """Hosts that called emergency_transition_to_master, in the order they did."""
    found = bed.events_named("failover.promoting")
    return [n for n, e in sorted(found, key=lambda ne: ne[1].timestamp or "")]


def masters(bed: Testbed) -> dict[str, str]:
    """Powered host -> the master its xapi follows (physical truth)."""
    return {name: h["believes_master"] for name, h in bed.truth()["hosts"].items()
            if h["powered"]}


def follows_one(bed: Testbed, master: str) -> bool:
    return all(m == master for m in masters(bed).values())


def test_master_crash_promotes_exactly_one_and_its_vms_come_back_once(workdir: Path) -> None:
    with Testbed(SPEC, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        protected = protected_on(bed, "host1")
        assert protected
        bed.crash("host1")
        watch(bed, lambda: len(promotions(bed)) == 1, 60, "a promotion")
        (new_master,) = promotions(bed)
        watch(bed, lambda: follows_one(bed, new_master), 60, f"every host to follow {new_master}")
        watch(bed, lambda: running_again(bed, protected, "host1"), 90,
              f"{protected} running again")
        assert promotions(bed) == [new_master], "promoted twice"
        # The timeline of the failover, logged by the new master.
        (_, reconciled), = bed.events_named("failover.reconciled", new_master)
        timeline = reconciled.fields["timeline"]
        assert list(timeline) == ["detected", "confirmed", "agreed", "promoting", "promoted",
                                  "slaves_recovered", "reconciled"][:len(timeline)]
        # A slave that has just rejoined is disabled until its xapi has started: the VMs
        # were placed from a view read after the rejoin, so none was sent there.
        refused = [e.fields for _, e in bed.events_named("vm.retry", new_master)
                   if "HOST_DISABLED" in str(e.fields.get("why"))]
        assert not refused, refused
        # The old master comes back: it boots as a master (its pool.conf says so) and its
        # daemon steps down to the new one.
        bed.boot("host1")
        watch(bed, lambda: follows_one(bed, new_master) and "host1" in masters(bed), 120,
              "the old master to rejoin")
        assert bed.events_named("failover.stepping_down", "host1")
        time.sleep(2)
        assert bed.pool.double_runs() == []
        assert promotions(bed) == [new_master]


def test_a_cut_off_master_is_replaced_by_the_majority_and_fenced(workdir: Path) -> None:
    with Testbed(SPEC, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        protected = protected_on(bed, "host1")
        bed.pool.partition([["host1"], ["host2", "host3"]])
        watch(bed, lambda: promotions(bed), 60, "a promotion")
        watch(bed, lambda: running_again(bed, protected, "host1"), 90,
              f"{protected} running again")
        (new_master,) = promotions(bed)
        assert new_master != "host1"
        assert not bed.truth()["hosts"]["host1"]["powered"], "restarted without a fence"
        # The minority did nothing at all.
        for event in ("failover.promoting", "incident.opened", "failover.voted"):
            assert not bed.events_named(event, "host1"), event


def test_the_candidate_dying_mid_promotion_leaves_it_to_the_next(workdir: Path) -> None:
    spec = dataclasses.replace(SPEC, hosts=5, vms=15, fuse_seconds=4.0)
    with Testbed(spec, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        protected = protected_on(bed, "host1")
        bed.crash("host1")
        watch(bed, lambda: promotions(bed), 60, "a first promotion")
        (first,) = promotions(bed)
        bed.crash(first)  # before its xapi restarts as master
        watch(bed, lambda: len(promotions(bed)) == 2, 90, "a second promotion")
        second = promotions(bed)[1]
        assert second not in ("host1", first)
        watch(bed, lambda: follows_one(bed, second), 60, f"every host to follow {second}")
        watch(bed, lambda: running_again(bed, protected, "host1"), 90,
              f"{protected} running again")


def test_two_of_five_down_at_once_master_among_them(workdir: Path) -> None:
    spec = dataclasses.replace(SPEC, hosts=5, vms=15)
    with Testbed(spec, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        lost = protected_on(bed, "host1") + protected_on(bed, "host4")
        bed.crash("host1")
        bed.crash("host4")
        watch(bed, lambda: len(promotions(bed)) == 1, 60, "a promotion")
        watch(bed, lambda: running_again(bed, lost, "host1")
              and running_again(bed, lost, "host4"), 120, f"{lost} running again")
        assert len(promotions(bed)) == 1


def test_a_two_host_pool_without_a_witness_does_nothing(workdir: Path) -> None:
    spec = dataclasses.replace(SPEC, hosts=2, vms=6)
    with Testbed(spec, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        bed.crash("host1")
        bed.wait_for(lambda: bed.events_named("quorum.lost", "host2"), 30,
                     what="host2 to lose quorum")
        time.sleep(8)
        assert not promotions(bed)
        assert not bed.events_named("failover.voted")


def test_a_two_host_pool_with_a_witness_fails_over(workdir: Path) -> None:
    spec = dataclasses.replace(SPEC, hosts=2, vms=6)
    shared = workdir / "shared-sr"  # what both dom0s would mount
    shared.mkdir(parents=True)
    with Testbed(spec, workdir, overrides={"failover": {"witness": str(shared)}}) as bed:
        wait_all_logged(bed, "quorum.gained")
        protected = protected_on(bed, "host1")
        bed.crash("host1")
        watch(bed, lambda: promotions(bed) == ["host2"], 90, "host2 to take over")
        watch(bed, lambda: running_again(bed, protected, "host1"), 90,
              f"{protected} running again")
        assert bed.events_named("witness.held", "host2")


@pytest.mark.parametrize("direction", ["from-master", "to-master"])
def test_one_way_cuts_around_the_master_never_make_two_masters(
    workdir: Path, direction: str
) -> None:
    with Testbed(SPEC, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        for slave in ("host2", "host3"):
            src, dst = ("host1", slave) if direction == "from-master" else (slave, "host1")
            bed.pool.cut(src, dst)
        # Each side still hears the other one way: the master is alive, so nobody may
        # replace it without fencing it; whatever happens, never two of anything.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert bed.pool.double_runs() == []
            assert len(promotions(bed)) <= 1
            time.sleep(0.3)
        bed.pool.heal()
        settled = lambda: len(set(masters(bed).values())) == 1  # noqa: E731
        watch(bed, settled, 60, "the pool to settle on one master")
        assert bed.pool.double_runs() == []
        for name in promotions(bed):
            assert bed.events_named("quorum.gained", name)
