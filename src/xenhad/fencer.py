"""How the recovery machine gets its proof that a host is off, per fencing config."""

from __future__ import annotations

from xenhad.clock import Clock
from xenhad.config import Config
from xenhad.model import HostView
from xenhad.recovery.events import FenceDone
from xenhad.recovery.executor import Fencer


class NoFencing:
    """No backend can prove this host off: the incident waits, touching nothing."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def fence(self, host: HostView) -> FenceDone:
        return FenceDone(
            self._clock.wall(),
            False,
            "none",
            f"no fencing backend is configured for {host.name}; add one under "
            "[[fencing.hosts]], or accept the risk with fencing.mode = \"trust-liveness\"",
        )


def build_fencer(config: Config, *, clock: Clock) -> Fencer:
    return NoFencing(clock)
