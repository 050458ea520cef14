from __future__ import annotations

import sys

from xenhad.sim.cli import main

sys.exit(main())
