"""A CI-sized virtual chaos run: seeded schedules of the whole pool on virtual time, every
invariant of the process chaos checked, within a budget of real time.

XENHAD_VIRTUAL_SCHEDULES sets how many (default 250: about 3 minutes on a 2-core machine
under load, at 0.6 s a schedule; a quiet machine does it in about 2). The budget stops
starting new schedules, never cuts one short; reaching it is a failure only if too few ran
to mean anything."""

from __future__ import annotations

import os
import time

from xenhad.chaos.run import schedule_seed
from xenhad.chaos.virtual_run import run_one

SCHEDULES = int(os.environ.get("XENHAD_VIRTUAL_SCHEDULES", "250"))
BUDGET_SECONDS = float(os.environ.get("XENHAD_VIRTUAL_BUDGET", "240"))
SEED = 1


def test_virtual_chaos_schedules_keep_every_invariant() -> None:
    started = time.monotonic()
    ran, failed = 0, []
    for index in range(SCHEDULES):
        if time.monotonic() - started > BUDGET_SECONDS:
            break
        seed = schedule_seed(SEED, index)
        outcome = run_one(seed)
        ran += 1
        if outcome.violations:
            failed.append(f"seed {seed}: {outcome.violations}\n  " + "\n  ".join(
                outcome.timeline))
    assert not failed, "\n".join(failed)
    assert ran >= min(SCHEDULES, 50), f"only {ran} schedules in {BUDGET_SECONDS:g} s"
