"""Each host's hardware watchdog and Redfish BMC, in process, over a World's pool.

`InProcessWatchdogDevice` is fencing/watchdog.py's SimWatchdogDevice without the HTTP: it
arms, feeds and disarms the simulator's per-host watchdog directly, so a feed counts from
the instant it was decided (a real device is fed on the spot by an ioctl). When it expires
the simulator resets the host (sim/pool.py _watchdog_reset: a reset is a reboot, dom0 and
its daemon included, RESET_OFF_SECONDS off, then a boot). It does not block, so the real
`Watchdog` facade (fencing/watchdog.py) calls it on the spot, on the loop, with the
daemon's clock: one facade for every device.

`InProcessRedfish` is a FenceBackend over sim/bmc.py's BmcModel, the same fault modes as
the served BMC: "down" refuses at once, "hang" never answers (the backend's operation
timeout ends it), "ignore-off" accepts ForceOff and does nothing, "lie" reads Off whatever
the truth. It follows fencing/redfish.py's steps: read the power state, ForceOff unless
already off, then confirm with status reads (fencing/base.py confirm_off). A BMC sits on
its own network: partitions of the hosts' network never reach it (sim/bmc.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from xenhad.fencing.base import (
    FenceBackend,
    FenceFailure,
    FenceOutcome,
    PowerStatus,
    confirm_off,
)
from xenhad.fencing.watchdog import WatchdogDevice, WatchdogError
from xenhad.sim.bmc import BmcModel
from xenhad.sim.pool import SimError
from xenhad.virtual.world import World


class InProcessWatchdogDevice(WatchdogDevice):
    blocks = False

    def __init__(self, world: World, host: str, timeout: int = 60,
                 guard: Callable[[], None] | None = None) -> None:
        self._pool = world.pool
        self.host = host
        self._timeout = timeout
        self._armed = False
        self._guard = guard

    @property
    def is_running(self) -> bool:
        return self._armed

    def open(self) -> None:
        self._do(lambda: self._pool.watchdog_arm(self.host, self._timeout))
        self._armed = True

    def close(self) -> None:
        if self._armed:
            self._do(lambda: self._pool.watchdog_disarm(self.host))
            self._armed = False

    def keepalive(self, decided_at: float | None = None) -> None:
        # Fed now, on the loop, in the same virtual instant as the decision.
        self._do(lambda: self._pool.watchdog_keepalive(self.host))

    def get_timeout(self) -> int:
        return self._timeout

    def has_set_timeout(self) -> bool:
        return True

    def set_timeout(self, timeout: int) -> None:
        self._timeout = int(timeout)
        if self._armed:
            self._do(lambda: self._pool.watchdog_arm(self.host, self._timeout))

    def describe(self) -> str:
        return f"in-process watchdog of {self.host}"

    def _do(self, op: Callable[[], None]) -> None:
        if self._guard is not None:
            self._guard()
        try:
            op()
        except SimError as e:
            raise WatchdogError(f"{self.describe()}: {e}") from None


class InProcessRedfish(FenceBackend):
    name = "redfish"

    def __init__(self, world: World, host: str, *, operation_timeout: float = 30.0,
                 off_timeout: float = 5.0, poll_interval: float = 0.25,
                 model: BmcModel | None = None,
                 guard: Callable[[], None] | None = None) -> None:
        """`model`: the host's BMC, shared by every daemon that fences it (its fault mode,
        its resets); one of its own by default. `guard` is called before each request (see
        xenhad.virtual.xapi InProcessXapi)."""
        self.model = model or BmcModel(world.pool, host, stamp=world.clock.monotonic)
        self._guard = guard
        super().__init__(host=host, bmc=f"in-process BMC of {host}", clock=world.clock,
                         operation_timeout=operation_timeout)
        self.off_timeout = off_timeout
        self.poll_interval = poll_interval

    async def _answer(self) -> None:
        if self._guard is not None:
            self._guard()
        mode = self.model.mode
        if mode == "down":
            raise FenceFailure(FenceOutcome.UNREACHABLE, "Connection refused")
        if mode == "hang":
            await asyncio.Event().wait()  # never answered; operation_timeout ends it

    async def _read_status(self) -> PowerStatus:
        await self._answer()
        return PowerStatus.OFF if self.model.power_state() == "Off" else PowerStatus.ON

    async def _power_off(self) -> str:
        if await self._read_status() is PowerStatus.OFF:
            return "confirmed off (it was already off; no reset sent)"
        await self._answer()
        self.model.reset("ForceOff")
        reads = await confirm_off(self._read_status, clock=self.clock,
                                  deadline=self.off_timeout, interval=self.poll_interval)
        return f"ForceOff accepted, PowerState Off confirmed after {reads} status read(s)"
