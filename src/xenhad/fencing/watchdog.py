"""Self-fencing: a hardware watchdog this node feeds only while it is healthy and quorate.

A host cut off from its peers cannot be fenced by them through a BMC they cannot reach; if
it stops feeding its watchdog when it loses quorum, the watchdog resets it, and peers may
restart its VMs once `self_fence_deadline_passed` says the reset must have happened.

Shaped like Patroni's watchdog package (patroni/watchdog/base.py and linux.py): a small
device abstraction (open, close, keepalive, get/set timeout) with a Linux implementation,
a null one and one for testing chosen by configuration (here: the XAPI simulator's per-host
watchdog, so integration tests run the real code path), and a facade owning the modes
required / automatic / off. The facade refuses to arm a watchdog whose timeout leaves no
slack over the loop interval: an error in required mode, never a silent downgrade.
"""

from __future__ import annotations

import abc
import asyncio
import ctypes
import fcntl
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from xenhad.clock import Clock
from xenhad.errors import XenhadError
from xenhad.fencing.config import SelfFenceSettings, WatchdogMode

log = structlog.get_logger("xenhad.watchdog")
T = TypeVar("T")


class WatchdogError(XenhadError):
    """The watchdog cannot be used as configured; the message says why and what to do."""


def self_fence_deadline_passed(
    last_heartbeat: float, now: float, watchdog_timeout: float, margin: float
) -> bool:
    """Whether a silent peer must have been reset by its own watchdog by `now`.

    The peer feeds its watchdog only while it is healthy and quorate, and a heartbeat we saw
    at `last_heartbeat` is the latest moment it may have fed it; so its watchdog fires at the
    latest at last_heartbeat + watchdog_timeout. `margin` covers clock skew between our
    reading of its heartbeat and its feeding, and the time a reset takes to stop the VMs.
    All times are monotonic seconds on our clock.
    """
    if watchdog_timeout <= 0 or margin < 0:
        raise ValueError("watchdog_timeout must be > 0 and margin >= 0")
    return now - last_heartbeat > watchdog_timeout + margin


# -- devices ----------------------------------------------------------------------------


class WatchdogDevice(abc.ABC):
    """One watchdog. Once opened, keepalive must be called within the timeout, or the node is
    reset. Every method raises WatchdogError on failure."""

    is_null = False

    @property
    @abc.abstractmethod
    def is_running(self) -> bool:
        """Opened and counting down."""

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Disarm (where the device allows it) and release."""

    @abc.abstractmethod
    def keepalive(self, decided_at: float | None = None) -> None:
        """Restart the countdown. `decided_at` (time.monotonic()) is when the caller decided
        to feed: a device that cannot feed at once (the simulator's, over HTTP) counts from
        then, as a real one fed on the spot would."""

    blocks = False
    """Whether its calls may wait on I/O (run them in a thread); a real watchdog's ioctls
    return at once and are made on the spot, so a feed happens when it was decided."""

    @abc.abstractmethod
    def get_timeout(self) -> int: ...

    def has_set_timeout(self) -> bool:
        return False

    def set_timeout(self, timeout: int) -> None:
        raise WatchdogError(f"{self.describe()} cannot change its timeout")

    @property
    def can_be_disabled(self) -> bool:
        """False when close() leaves the countdown running (no magic close)."""
        return True

    def describe(self) -> str:
        return type(self).__name__


class NullWatchdogDevice(WatchdogDevice):
    """No watchdog: used in mode off, and in automatic mode when none can be armed."""

    is_null = True

    @property
    def is_running(self) -> bool:
        return False

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def keepalive(self, decided_at: float | None = None) -> None:
        return None

    def get_timeout(self) -> int:
        return 0

    def describe(self) -> str:
        return "no watchdog"


# linux/watchdog.h and asm-generic/ioctl.h: _IOR('W', nr, size) and _IOWR('W', nr, size) on
# the architectures dom0s run (x86_64, aarch64).
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("W") << 8) | nr


class _WatchdogInfo(ctypes.Structure):
    _fields_ = [
        ("options", ctypes.c_uint32),
        ("firmware_version", ctypes.c_uint32),
        ("identity", ctypes.c_uint8 * 32),
    ]


_INT = ctypes.sizeof(ctypes.c_int)
WDIOC_GETSUPPORT = _ioc(_IOC_READ, 0, ctypes.sizeof(_WatchdogInfo))
WDIOC_KEEPALIVE = _ioc(_IOC_READ, 5, _INT)
WDIOC_SETTIMEOUT = _ioc(_IOC_READ | _IOC_WRITE, 6, _INT)
WDIOC_GETTIMEOUT = _ioc(_IOC_READ, 7, _INT)
WDIOF_SETTIMEOUT = 0x0080
WDIOF_MAGICCLOSE = 0x0100


class LinuxWatchdogDevice(WatchdogDevice):
    """/dev/watchdog through the kernel's watchdog API (Documentation/watchdog/watchdog-api).

    On a dom0 the device is xen_wdt (Xen's domain watchdog: when it expires Xen reboots
    the whole host, as native HA's xhad relies on), checked against linux
    drivers/watchdog/xen_wdt.c: both its misc-device form and its watchdog-core form
    (Linux 4.15+, so dom0's 4.19) answer WDIOC_GETSUPPORT with WDIOF_SETTIMEOUT and
    WDIOF_MAGICCLOSE, WDIOC_KEEPALIVE, WDIOC_SETTIMEOUT (whole seconds, 0 refused) and
    WDIOC_GETTIMEOUT, and stop the timer on the magic 'V' before close unless the module
    was loaded with nowayout=1. ipmi_watchdog, the alternative (linux
    drivers/char/ipmi/ipmi_watchdog.c), handles the same ioctls and the magic close but
    reports neither flag (its options are 0): its timeout then stays the module's
    `timeout=` (10 s by default; load it with the configured one) and close() warns.
    """

    def __init__(self, path: str = "/dev/watchdog") -> None:
        self.path = path
        self._fd: int | None = None
        self._options: int | None = None

    @property
    def is_running(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise WatchdogError(
                f"cannot open watchdog {self.path} ({e.strerror}): on a dom0 run "
                "`modprobe xen_wdt` (Xen's watchdog; the xenhad package loads it at boot "
                "through /usr/lib/modules-load.d/xenhad.conf), or `modprobe ipmi_watchdog` "
                "for the BMC's; dom0 kernels have no softdog. xenhad must run as root"
            ) from None

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            # The magic close character: without it a driver with nowayout keeps counting.
            os.write(self._fd, b"V")
            os.close(self._fd)
        except OSError as e:
            raise WatchdogError(f"cannot close watchdog {self.path}: {e.strerror}") from None
        finally:
            self._fd = None

    def keepalive(self, decided_at: float | None = None) -> None:
        self._ioctl(WDIOC_KEEPALIVE, ctypes.c_int(0), "keepalive")

    def get_timeout(self) -> int:
        value = ctypes.c_int(0)
        self._ioctl(WDIOC_GETTIMEOUT, value, "read the timeout")
        return int(value.value)

    def has_set_timeout(self) -> bool:
        return bool(self._support() & WDIOF_SETTIMEOUT)

    def set_timeout(self, timeout: int) -> None:
        if not 0 < timeout < 0xFFFF:
            raise WatchdogError(f"watchdog timeout {timeout} is out of range 1..65534")
        self._ioctl(WDIOC_SETTIMEOUT, ctypes.c_int(int(timeout)), "set the timeout")

    @property
    def can_be_disabled(self) -> bool:
        return bool(self._support() & WDIOF_MAGICCLOSE)

    def describe(self) -> str:
        return f"Linux watchdog {self.path}"

    def _support(self) -> int:
        if self._options is None:
            info = _WatchdogInfo()
            self._ioctl(WDIOC_GETSUPPORT, info, "read its capabilities")
            self._options = int(info.options)
        return self._options

    def _ioctl(self, request: int, arg: ctypes._CData, what: str) -> None:
        if self._fd is None:
            raise WatchdogError(f"watchdog {self.path} is not open")
        try:
            fcntl.ioctl(self._fd, request, arg, True)
        except OSError as e:
            raise WatchdogError(f"watchdog {self.path}: cannot {what}: {e.strerror}") from None


class SimWatchdogDevice(WatchdogDevice):
    """The XAPI simulator's per-host hardware watchdog, driven over its control API
    (`POST {control_url}/watchdog {"host", "op": arm|keepalive|disarm, "timeout"}`).
    When it fires, the simulator cuts the host's power and boots it again, as a real one."""

    blocks = True

    def __init__(self, control_url: str, host: str, timeout: int = 60, http_timeout: float = 2.0):
        self.control_url = control_url.rstrip("/")
        self.host = host
        self._timeout = timeout
        self._http_timeout = http_timeout
        self._armed = False

    @property
    def is_running(self) -> bool:
        return self._armed

    def open(self) -> None:
        self._post("arm", self._timeout)
        self._armed = True

    def close(self) -> None:
        if self._armed:
            self._post("disarm")
            self._armed = False

    def keepalive(self, decided_at: float | None = None) -> None:
        # The simulator runs on this machine and reads the same CLOCK_MONOTONIC: it restarts
        # the countdown from the decision, not from when the request reached it, which
        # would let a slow simulator stretch a feed past what the decision allowed.
        self._post("keepalive", decided_at=decided_at)

    def get_timeout(self) -> int:
        return self._timeout

    def has_set_timeout(self) -> bool:
        return True

    def set_timeout(self, timeout: int) -> None:
        self._timeout = int(timeout)
        if self._armed:
            self._post("arm", self._timeout)  # re-arming restarts the countdown at the new value

    def describe(self) -> str:
        return f"simulator watchdog of {self.host}"

    def _post(self, op: str, timeout: int | None = None,
              decided_at: float | None = None) -> None:
        body: dict[str, object] = {"host": self.host, "op": op}
        if timeout is not None:
            body["timeout"] = timeout
        if decided_at is not None:
            body["decided_monotonic"] = decided_at
        request = urllib.request.Request(
            f"{self.control_url}/watchdog",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._http_timeout) as response:
                response.read()
        except urllib.error.HTTPError as e:
            detail = e.read(500).decode(errors="replace")
            raise WatchdogError(
                f"{self.describe()}: {op} refused: HTTP {e.code} {detail}"
            ) from None
        except OSError as e:
            raise WatchdogError(f"{self.describe()}: {op} failed: {e}") from None


def device_for(settings: SelfFenceSettings, *, host: str) -> WatchdogDevice:
    """The device a [fencing.self_fence] table names; `host` is this node's name (sim only)."""
    if settings.mode is WatchdogMode.OFF or settings.watchdog == "none":
        return NullWatchdogDevice()
    if settings.watchdog == "sim":
        return SimWatchdogDevice(settings.sim_control_url, host, settings.timeout)
    return LinuxWatchdogDevice(settings.watchdog)


# -- facade -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchdogPlan:
    mode: WatchdogMode
    timeout: int
    """Seconds the device counts down from each keepalive."""
    loop_interval: float
    """Seconds between two of the daemon's ticks, each of which may feed the watchdog."""

    @property
    def slack(self) -> float:
        """What a late tick may use before the node is reset: timeout minus one interval."""
        return self.timeout - self.loop_interval

    def problem(self) -> str | None:
        # One whole interval of slack: a single slow tick (a long XAPI call) must not reset a
        # healthy node; Patroni refuses likewise when ttl leaves no slack over loop_wait.
        if self.slack < self.loop_interval:
            return (
                f"watchdog timeout {self.timeout}s leaves {self.slack:g}s of slack over the "
                f"{self.loop_interval:g}s loop interval: set fencing.self_fence.timeout to at "
                f"least {2 * self.loop_interval:g}"
            )
        return None


class Watchdog:
    """Owns the device and the mode. `activate` at start (raises WatchdogError in required
    mode when a safe watchdog cannot be armed), `keepalive(healthy=, quorate=)` every tick,
    `disable` on a clean stop. A device that `blocks` (the simulator's, over HTTP) is called
    in a worker thread; any other is called on the spot, on the loop (an ioctl, or the
    in-process device of xenhad.virtual, which must not leave the virtual loop).
    """

    def __init__(self, device: WatchdogDevice, plan: WatchdogPlan, *,
                 clock: Clock | None = None) -> None:
        """`clock` dates each feed's decision (the daemon's; the system's by default)."""
        self.device: WatchdogDevice = (
            NullWatchdogDevice() if plan.mode is WatchdogMode.OFF else device
        )
        self.plan = plan
        self._monotonic = clock.monotonic if clock is not None else time.monotonic
        self._pending_timeout: int | None = None
        self._starving = False

    @property
    def is_running(self) -> bool:
        return self.device.is_running

    async def activate(self) -> bool:
        """Arm the watchdog. True when it is running with a safe timeout."""
        plan = self.plan
        if plan.mode is WatchdogMode.OFF:
            log.info("watchdog.off")
            return False
        problem = plan.problem()
        if problem is not None:
            return self._refuse(problem)
        if self.device.is_null:
            return self._refuse("no watchdog device is configured")
        try:
            await self._call(self.device.open)
            if self.device.has_set_timeout():
                await self._call(self.device.set_timeout, plan.timeout)
            actual = await self._call(self.device.get_timeout)
        except WatchdogError as e:
            await self._close_quietly()
            return self._refuse(str(e))
        if actual > plan.timeout or actual - plan.loop_interval < plan.loop_interval:
            await self._close_quietly()
            return self._refuse(
                f"{self.device.describe()} runs with a {actual}s timeout, not the configured "
                f"{plan.timeout}s: choose a timeout the device supports"
            )
        if not self.device.can_be_disabled:
            log.warning("watchdog.no_magic_close", device=self.device.describe())
        log.info(
            "watchdog.armed", device=self.device.describe(), timeout_s=actual, slack_s=plan.slack
        )
        return True

    async def keepalive(self, *, healthy: bool, quorate: bool) -> bool:
        """Feed the watchdog when this node is healthy and quorate; return whether it was fed.

        A node that is not both stops feeding, so it is reset within the timeout unless it
        recovers first: that is what lets peers restart its VMs after the deadline. The
        caller decides on quorum as of this call (no await between its reading of the peer
        table and this call): the self-fence proof (peers/table.py, latest_feed) bounds each
        feed by the contact that allowed it, so a verdict older than the feed would break it.
        A real device is fed on the spot, before this coroutine first yields; one that
        blocks (the simulator's) is told when the feed was decided.
        """
        decided_at = self._monotonic()
        if not self.device.is_running:
            return False
        if not (healthy and quorate):
            if not self._starving:
                log.warning(
                    "watchdog.starving",
                    healthy=healthy,
                    quorate=quorate,
                    timeout_s=self.plan.timeout,
                )
                self._starving = True
            return False
        if self._starving:
            log.info("watchdog.fed_again")
            self._starving = False
        try:
            if self.device.blocks:
                await asyncio.to_thread(self.device.keepalive, decided_at)
            else:
                self.device.keepalive(decided_at)
            if self._pending_timeout is not None:
                # Applied at a keepalive, the safe moment (as Patroni does): the countdown
                # has just restarted, so the new timeout is measured from a known point.
                await self._call(self.device.set_timeout, self._pending_timeout)
                self.plan = WatchdogPlan(
                    self.plan.mode, self._pending_timeout, self.plan.loop_interval
                )
                self._pending_timeout = None
        except WatchdogError as e:
            log.error("watchdog.keepalive_failed", device=self.device.describe(), error=str(e))
            return False
        return True

    def change_timeout(self, timeout: int) -> None:
        """Take a new timeout (config reload) at the next keepalive. Raises WatchdogError when
        it would leave too little slack, whatever the mode: the old one stays."""
        problem = WatchdogPlan(self.plan.mode, timeout, self.plan.loop_interval).problem()
        if problem is not None:
            raise WatchdogError(problem)
        self._pending_timeout = timeout

    async def disable(self) -> None:
        if not self.device.is_running:
            return
        try:
            if not self.device.can_be_disabled:
                log.warning(
                    "watchdog.cannot_disable",
                    device=self.device.describe(),
                    reset_in_s=self.plan.timeout,
                )
            await self._call(self.device.close)
            log.info("watchdog.disarmed", device=self.device.describe())
        except WatchdogError as e:
            log.error("watchdog.disarm_failed", device=self.device.describe(), error=str(e))

    async def _call(self, op: Callable[..., T], *args: Any) -> T:
        """A device call: in a worker thread if the device blocks, else here and now."""
        if self.device.blocks:
            return await asyncio.to_thread(op, *args)
        return op(*args)

    def _refuse(self, reason: str) -> bool:
        if self.plan.mode is WatchdogMode.REQUIRED:
            raise WatchdogError(f"self-fencing is required but {reason}")
        log.warning("watchdog.unavailable", reason=reason, mode=self.plan.mode.value)
        self.device = NullWatchdogDevice()
        return False

    async def _close_quietly(self) -> None:
        try:
            await self._call(self.device.close)
        except WatchdogError as e:
            log.error("watchdog.disarm_failed", device=self.device.describe(), error=str(e))
