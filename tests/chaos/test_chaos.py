"""The chaos harness in CI: a few fixed seeds must pass, and a broken fence must be caught.

The long soak is `xenhad chaos --schedules 500 --budget-minutes 600` (README).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from xenhad.chaos.run import run_one
from xenhad.chaos.schedule import Fault, generate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CUT_OFF_HOST2 = [Fault(2.0, "partition", groups=(("host1", "host3"), ("host2",))),
                 Fault(20.0, "sighup", ("host1",))]


def test_schedules_replay_exactly() -> None:
    hosts = ["host1", "host2", "host3"]
    assert generate(42, hosts) == generate(42, hosts)
    assert generate(42, hosts) != generate(43, hosts)


def test_fixed_seeds_hold_every_invariant() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xenhad", "chaos", "--schedules", "2", "--seed", "7",
         "--jobs", "2"],
        capture_output=True, text=True, timeout=540,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "| 2 |" in result.stdout and "VIOLATION" not in result.stdout


# Seeds the soak once failed, each for its own reason: a master acting on its database from
# before it was powered off (a VM ran twice); two masters recovering each other into a pool
# without one; a master fencing its rival's followers; the sweep of halted VMs held back by
# a host already fenced off; two masters, neither with a majority, both waiting; a master
# that had just stepped down recovering its rival as its slave; a master back from the dead
# recovering the host the survivors were promoting in its place; a master waiting on a
# promotion whose call its hung xapi never took.
ONCE_FAILED = ["11000035", "11000037", "1000034", "1000052", "1000086", "1000219",
               "1000187", "1000011"]


def test_seeds_that_once_failed_hold_every_invariant() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xenhad", "chaos", "--replay", *ONCE_FAILED,
         "--jobs", str(len(ONCE_FAILED))],
        capture_output=True, text=True, timeout=540,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"| {len(ONCE_FAILED)} |" in result.stdout and "VIOLATION" not in result.stdout


def test_a_cut_off_host_is_fenced_for_real_and_nothing_runs_twice() -> None:
    outcome = run_one(101, hosts=3, bmc="ok", keep=None, faults=CUT_OFF_HOST2)
    assert outcome.violations == [], "\n".join(outcome.violations + outcome.timeline)


def test_a_host_fenced_while_off_rejoins_when_it_boots_into_the_old_masters_pool() -> None:
    # host1 is cut off; host2 and host3 elect host3, and host2 dies before host3 recovers
    # it. host3 fences host2 (already off) and restarts its VMs; host2 then boots still
    # following host1, which has stepped down meanwhile: host3 must recover it.
    faults = [Fault(2.0, "partition", groups=(("host1",), ("host2", "host3"))),
              Fault(7.0, "crash", ("host2",)), Fault(12.0, "heal"),
              Fault(24.0, "sighup", ("host3",))]
    outcome = run_one(1000055, hosts=3, bmc="ok", keep=None, faults=faults)
    assert outcome.violations == [], "\n".join(outcome.violations + outcome.timeline)


def test_a_lying_fence_is_caught_as_a_double_run() -> None:
    # Every BMC answers "Off" and does nothing: the master restarts host2's VMs while host2
    # still runs them. The harness must see it.
    outcome = run_one(101, hosts=3, bmc="lie", keep=None, faults=CUT_OFF_HOST2)
    assert any("runs on" in v for v in outcome.violations), outcome.timeline


def test_fixed_seeds_with_self_fencing_hold_every_invariant() -> None:
    # Issue 18: the soak never turned self-fencing on, so no schedule exercised a watchdog
    # as the only proof of power-off (a dead BMC) where a VM once ran twice.
    result = subprocess.run(
        [sys.executable, "-m", "xenhad", "chaos", "--schedules", "2", "--seed", "18",
         "--self-fence", "--jobs", "2"],
        capture_output=True, text=True, timeout=540,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "| 2 |" in result.stdout and "VIOLATION" not in result.stdout


# Self-fencing seeds the soak once failed: a healthy host cut off one way fenced (its peers'
# word came too late), a start in flight when its master died left its VM busy for ever, a
# host promoted while disabled never enabled (its local-SR VM never ran again), a master
# reset by its watchdog after the heal and held to the heal's bound, a VM a clean shutdown
# halted on purpose expected to run again (resident there in the database only), an old
# master quorate again recovering the new one before it heard it (docs/virtual-time.md 7).
ONCE_FAILED_SELF_FENCE = ["1824005500", "1824005512", "1824005545", "2612007944",
                          "2612007945", "2612008014", "2712008230", "3112009426"]


def test_self_fencing_seeds_that_once_failed_hold_every_invariant() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xenhad", "chaos", "--replay", *ONCE_FAILED_SELF_FENCE,
         "--self-fence", "--jobs", str(len(ONCE_FAILED_SELF_FENCE))],
        capture_output=True, text=True, timeout=540,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"| {len(ONCE_FAILED_SELF_FENCE)} |" in result.stdout
    assert "VIOLATION" not in result.stdout
