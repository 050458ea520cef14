"""Simulated time: real time times a scale factor, plus jumps for tests."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class SimTime(Protocol):
    """What the simulator reads of its clock: SimClock, or a virtual loop's (xenhad.virtual)."""

    time_scale: float

    def now(self) -> float: ...

    def wall(self) -> float: ...

    def advance(self, seconds: float) -> None: ...

    def real_seconds(self, sim_seconds: float) -> float: ...


class SimClock:
    """Sim seconds = real seconds x `time_scale` + every `advance`.

    Everything time-based in the simulator (liveness timers, VM start duration, fuses,
    boot times, watchdogs) reads this clock, so a test can let 600 s pass in a few real
    seconds (time_scale) or at once (advance).
    """

    def __init__(self, time_scale: float = 1.0, start: float = 0.0) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale!r}")
        self.time_scale = time_scale
        self._real0 = time.monotonic()
        self._wall0 = time.time()
        self._start = start
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._start + (time.monotonic() - self._real0) * self.time_scale + self._offset

    def wall(self) -> float:
        """A wall-clock timestamp that moves with sim time (for records and events)."""
        return self._wall0 + (self.now() - self._start)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        with self._lock:
            self._offset += seconds

    def real_seconds(self, sim_seconds: float) -> float:
        return max(0.0, sim_seconds) / self.time_scale
