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
