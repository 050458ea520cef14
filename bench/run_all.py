"""`make bench`: every benchmark in turn, numbers only (see bench/RESULTS.md)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

BENCHES = ["sim_startup.py", "placement_plan.py", "pool_read.py", "footprint.py", "rest_cost.py",
           "recovery_time.py"]

for name in BENCHES:
    print(f"== {name}", flush=True)
    sys.argv = [name]
    runpy.run_path(str(Path(__file__).with_name(name)), run_name="__main__")
