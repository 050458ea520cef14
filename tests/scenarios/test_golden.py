"""Golden scenarios: each directory here is a pool, a list of timed faults and the event log
expected of it on virtual time (xenhad.chaos.scenarios). A mismatch shows the unified diff.

A missing expected.log is written and the test fails, so a new golden log is read before
it is trusted; XENHAD_GOLDEN_UPDATE=1 (or `xenhad scenarios --update`) rewrites them all
on purpose. A scenario that declares an open defect is reported as xfail while its log
still matches; once the defect no longer shows, it fails until its golden log is updated.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xenhad.chaos import scenarios
from xenhad.chaos.scenarios import Verdict

HERE = Path(__file__).parent
UPDATE = os.environ.get("XENHAD_GOLDEN_UPDATE") == "1"


@pytest.mark.parametrize("directory", scenarios.discover(HERE), ids=lambda d: d.name)
def test_golden_scenario(directory: Path) -> None:
    result = scenarios.check(directory, update=UPDATE)
    if result.verdict is Verdict.WRITTEN:
        pytest.fail(f"{directory.name}/expected.log was missing and has been written: read "
                    "it, and commit it if it shows what should happen", pytrace=False)
    if result.verdict is Verdict.MISMATCH:
        pytest.fail(f"the run differs from its golden log (XENHAD_GOLDEN_UPDATE=1 rewrites "
                    f"it once the change is meant):\n{result.diff}", pytrace=False)
    if result.verdict is Verdict.DEFECT_GONE:
        pytest.fail(f"{directory.name} declares an open defect that no longer shows: "
                    "remove [expect] defect from scenario.toml and update expected.log",
                    pytrace=False)
    if result.verdict is Verdict.NOT_CAUGHT:
        pytest.fail(f"{directory.name} must show a violation (a check of the harness) and "
                    "showed none: the checks went blind", pytrace=False)
    if result.verdict is Verdict.CAUGHT:
        return
    if result.verdict is Verdict.DEFECT:
        pytest.xfail(scenarios.load(directory).defect)
    assert result.violations == [], result.violations


# Every transition of failover/roles.py a 3-host virtual pool was seen to make, and the
# scenario whose golden log shows it (a role-* scenario where one was written for it; else
# the seed or case that first showed it). Transitions not listed, and why none of these
# scenarios reaches them, are in README.md.
TRANSITIONS = {
    ("start", "held"): "role-held-reconciling-acting",
    ("start", "following"): "role-held-reconciling-acting",
    ("start", "doubting"): "seed-2712008230-clean-shutdown-halts",
    ("start", "stepping_down"): "seed-3112009426-quorate-again-recovers-new-master",
    ("held", "reconciling"): "role-held-reconciling-acting",
    ("reconciling", "acting"): "role-held-reconciling-acting",
    ("following", "doubting"): "role-following-doubting-following",
    ("doubting", "following"): "role-following-doubting-following",
    ("doubting", "electing"): "role-doubting-electing-promoting-promoted",
    ("electing", "promoting"): "role-doubting-electing-promoting-promoted",
    ("electing", "following"): "role-doubting-electing-promoting-promoted",
    ("promoting", "promoted"): "role-doubting-electing-promoting-promoted",
    ("promoted", "reconciling"): "role-doubting-electing-promoting-promoted",
    ("held", "stepping_down"): "role-doubting-electing-promoting-promoted",
    ("stepping_down", "following"): "role-doubting-electing-promoting-promoted",
    ("acting", "reconciling"): "role-doubting-electing-promoting-promoted",
    ("promoting", "electing"): "role-promoting-electing",
    ("promoted", "waiting_lock"): "role-promoted-waiting-lock",
    ("waiting_lock", "reconciling"): "role-promoted-waiting-lock",
    ("acting", "held"): "role-acting-held-stepping-down",
    ("doubting", "promoting"): "seed-1000219-stepped-down-recovers-rival",
    ("electing", "doubting"): "safety-18-2-one-way-cut-from-master",
    ("held", "following"): "safety-18-1-slow-master-cut-off",
    ("held", "waiting_lock"): "seed-7400023200013-masters-tell-each-other",
    ("promoted", "held"): "chaos-fenced-while-off-rejoins",
    ("reconciling", "held"): "seed-1000055-fenced-while-off-rejoins",
}


def role_changes(log: str) -> set[tuple[str, str]]:
    """(from, to) of each role change a golden log shows, per daemon life."""
    last: dict[str, str] = {}
    changes = set()
    for line in log.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "failover.decision":
            role = parts[3].removeprefix("role=")
            changes.add((last.get(parts[1], "start"), role))
            last[parts[1]] = role
    return changes


def test_each_role_transition_is_shown_by_its_scenario() -> None:
    missing = [f"{a} -> {b}: not in {name}/expected.log"
               for (a, b), name in TRANSITIONS.items()
               if (a, b) not in role_changes((HERE / name / "expected.log").read_text())]
    assert missing == []


def test_no_golden_log_shows_a_transition_the_table_does_not_name() -> None:
    seen = set().union(*(role_changes((d / "expected.log").read_text())
                         for d in scenarios.discover(HERE) if (d / "expected.log").exists()))
    assert seen - set(TRANSITIONS) == set(), "name it in TRANSITIONS (and README.md)"
