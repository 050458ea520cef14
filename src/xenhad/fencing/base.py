"""The one interface every fencing backend implements, and the chain that tries them in turn.

A backend proves a host is off: `power_off` ends only after a status read says OFF, or
reports why it could not say so. The HA loop never knows which backend it talks to (the
shape of Patroni's dcs/ package: one abstract class, one module per backend).

Backends never raise out of `power_off`: every failure is a `FenceResult` whose outcome is
not OFF, with a one-line detail naming the host and the BMC and never a secret.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Callable

import structlog

from xenhad.clock import Clock

log = structlog.get_logger("xenhad.fencing")


class PowerStatus(enum.Enum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class FenceOutcome(enum.Enum):
    OFF = "off"
    """A status read after the power-off said the host is off."""
    NOT_CONFIRMED = "not-confirmed"
    """The command was sent (or its fate is unknown) but no status read said off in time."""
    UNREACHABLE = "unreachable"
    """The BMC did not answer: nothing listening, black-holed, or timed out."""
    AUTH_FAILED = "auth-failed"
    """The BMC answered and refused our credentials."""
    ERROR = "error"
    """Anything else: a protocol error, a bad certificate, an agent's generic failure."""


# The log event for each outcome: stable names an operator can grep and alert on.
_EVENTS = {
    FenceOutcome.OFF: "fence.off",
    FenceOutcome.NOT_CONFIRMED: "fence.not_confirmed",
    FenceOutcome.UNREACHABLE: "fence.unreachable",
    FenceOutcome.AUTH_FAILED: "fence.auth_failed",
    FenceOutcome.ERROR: "fence.error",
}


@dataclass(frozen=True)
class FenceResult:
    outcome: FenceOutcome
    backend: str
    detail: str
    """One line naming the host and the BMC; never a secret."""
    elapsed: float

    @property
    def confirmed_off(self) -> bool:
        return self.outcome is FenceOutcome.OFF


class FenceFailure(Exception):
    """Raised inside a backend to end an operation with `outcome`; never escapes `power_off`."""

    def __init__(self, outcome: FenceOutcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


class FenceBackend(abc.ABC):
    """One way of switching one host off and reading its power state.

    Subclasses implement `_power_off` (send the off command, then confirm it with status
    reads) and `_read_status` (one bounded status read that raises FenceFailure when it cannot
    tell). This class turns both into the public, never-raising, logged operations.
    """

    name: str = "backend"

    def __init__(self, *, host: str, bmc: str, clock: Clock, operation_timeout: float) -> None:
        self.host = host
        """The host this backend fences (name_label or uuid, as configured)."""
        self.bmc = bmc
        """How the BMC is named in messages: an address or URL, never with credentials."""
        self.clock = clock
        self.operation_timeout = operation_timeout
        """Upper bound on one whole power_off, whatever the backend's own timeouts do."""

    @abc.abstractmethod
    async def _power_off(self) -> str:
        """Switch the host off and confirm it; return a short note on how (e.g. "was already
        off"). Raise FenceFailure for every other ending."""

    @abc.abstractmethod
    async def _read_status(self) -> PowerStatus:
        """One bounded status read. Raise FenceFailure when the BMC cannot tell us."""

    def describe(self, reason: str) -> str:
        return f"host {self.host}: {self.name} BMC {self.bmc}: {reason}"

    async def power_off(self) -> FenceResult:
        started = self.clock.monotonic()
        try:
            note = await asyncio.wait_for(self._power_off(), self.operation_timeout)
            outcome, reason = FenceOutcome.OFF, note or "confirmed off"
        except FenceFailure as failure:
            outcome, reason = failure.outcome, failure.reason
        except asyncio.TimeoutError:
            outcome = FenceOutcome.NOT_CONFIRMED
            reason = f"no confirmation within {self.operation_timeout:g}s; power state unknown"
        except Exception as exc:  # a bug or an unforeseen library error must not stop HA
            outcome, reason = FenceOutcome.ERROR, f"unexpected {type(exc).__name__}: {exc}"
        result = FenceResult(
            outcome, self.name, _one_line(self.describe(reason)), self.clock.monotonic() - started
        )
        level = log.info if result.confirmed_off else log.error
        level(
            _EVENTS[outcome],
            host=self.host,
            backend=self.name,
            bmc=self.bmc,
            detail=result.detail,
            elapsed_s=round(result.elapsed, 3),
        )
        return result

    async def check_status(self) -> PowerStatus:
        """One status read that says why it failed (FenceFailure): `xenhad preflight`'s proof
        that the BMC is reachable with valid credentials, switching nothing."""
        try:
            return await asyncio.wait_for(self._read_status(), self.operation_timeout)
        except asyncio.TimeoutError:
            raise FenceFailure(FenceOutcome.UNREACHABLE,
                               f"no answer within {self.operation_timeout:g}s") from None

    async def power_status(self) -> PowerStatus:
        try:
            return await asyncio.wait_for(self._read_status(), self.operation_timeout)
        except FenceFailure as failure:
            log.warning(
                "fence.status_unknown",
                host=self.host,
                backend=self.name,
                bmc=self.bmc,
                detail=_one_line(self.describe(failure.reason)),
            )
        except asyncio.TimeoutError:
            log.warning(
                "fence.status_unknown",
                host=self.host,
                backend=self.name,
                bmc=self.bmc,
                detail=self.describe(f"no answer within {self.operation_timeout:g}s"),
            )
        return PowerStatus.UNKNOWN


async def confirm_off(
    read: Callable[[], Awaitable[PowerStatus]],
    *,
    clock: Clock,
    deadline: float,
    interval: float,
) -> int:
    """Read the power state every `interval` seconds until it says OFF; return the number of
    reads it took. After `deadline` seconds without OFF, raise FenceFailure(NOT_CONFIRMED).

    A failed read while waiting is not the end: a BMC may drop a request while it switches
    power, so only the deadline ends the wait, and the last failure goes into the message.
    """
    started = clock.monotonic()
    reads = 0
    last = "no status read"
    while True:
        reads += 1
        try:
            status = await read()
        except FenceFailure as failure:
            last = f"last status read failed: {failure.reason}"
        else:
            if status is PowerStatus.OFF:
                return reads
            last = f"power state still {status.value}"
        waited = clock.monotonic() - started
        if waited >= deadline:
            raise FenceFailure(
                FenceOutcome.NOT_CONFIRMED,
                f"power-off accepted but not confirmed after {waited:.1f}s "
                f"({reads} status reads): {last}",
            )
        await clock.sleep(min(interval, deadline - waited))


class FenceChain:
    """A host's backends in order of preference: the first that confirms OFF ends the chain.

    Each backend is tried once per `power_off`; a backend that cannot prove the host off
    (unreachable, refused, not confirmed) hands over to the next. The results of every
    backend tried are returned, for the incident's log and journal.
    """

    def __init__(self, host: str, backends: Sequence[FenceBackend]) -> None:
        if not backends:
            raise ValueError(f"fence chain for {host} has no backend")
        self.host = host
        self.backends = tuple(backends)

    async def power_off(self) -> list[FenceResult]:
        results: list[FenceResult] = []
        for backend in self.backends:
            result = await backend.power_off()
            results.append(result)
            if result.confirmed_off:
                break
        if not results[-1].confirmed_off:
            log.error(
                "fence.chain_failed",
                host=self.host,
                tried=[f"{r.backend}:{r.outcome.value}" for r in results],
            )
        return results

    async def power_status(self) -> PowerStatus:
        """The first definite answer (ON or OFF) from the chain's backends, in order."""
        for backend in self.backends:
            status = await backend.power_status()
            if status is not PowerStatus.UNKNOWN:
                return status
        return PowerStatus.UNKNOWN


def chain_confirmed_off(results: Sequence[FenceResult]) -> bool:
    return bool(results) and results[-1].confirmed_off


def chain_summary(results: Sequence[FenceResult]) -> str:
    """One line for an incident: each backend tried and how it ended."""
    return "; ".join(f"{r.backend}: {r.outcome.value}: {r.detail}" for r in results)


def _one_line(text: str) -> str:
    return " ".join(text.split())
