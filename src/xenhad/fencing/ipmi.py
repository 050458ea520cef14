"""IPMI 2.0 (lanplus) fencing: chassis power off, then chassis power status until off.

Client: pyghmi (OpenStack's IPMI library, pure Python). Chosen over running ipmitool because
(1) nothing has to be installed on the dom0 beyond the wheel, (2) the password stays in our
process instead of on a command line or in an environment another root process can read, and
(3) it gives typed answers ("Incorrect password provided", "Unauthorized name") instead of
text to scrape. ipmitool is still reachable through the agent backend (fence_ipmilan drives
it), so a site can chain both. pyghmi is blocking, so each call runs in a worker thread under
`asyncio.wait_for`; pyghmi's own login gives up by itself after a few seconds, so a thread
abandoned at our timeout does not live on for long.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Callable, TypeVar

from xenhad.clock import Clock
from xenhad.errors import CredentialError
from xenhad.fencing.base import (
    FenceBackend,
    FenceFailure,
    FenceOutcome,
    PowerStatus,
    confirm_off,
)
from xenhad.fencing.config import IpmiSettings

T = TypeVar("T")

# pyghmi's messages for a refused login (pyghmi/ipmi/private/session.py and the RMCP+ status
# codes in pyghmi/ipmi/private/constants.py).
_AUTH_WORDS = ("password", "unauthorized name", "unauthorized role", "invalid role", "privilege")


class IpmiBackend(FenceBackend):
    name = "ipmi"

    def __init__(self, settings: IpmiSettings, *, host: str, clock: Clock) -> None:
        budget = 3 * settings.request_timeout + settings.off_timeout + 1.0
        bmc = f"{settings.address}:{settings.port}"
        super().__init__(host=host, bmc=bmc, clock=clock, operation_timeout=budget)
        self.settings = settings

    async def _power_off(self) -> str:
        command = await self._call("login", self._login)
        try:
            status = await self._call("chassis power status", lambda: _status(command))
            if status is PowerStatus.OFF:
                return "confirmed off (chassis was already off; no power-off sent)"
            # wait=False: pyghmi's own wait would block its thread for up to 300 s; we poll
            # instead, under our deadline and clock.
            await self._call("chassis power off", lambda: command.set_power("off", wait=False))

            async def read() -> PowerStatus:
                return await self._call("chassis power status", lambda: _status(command))

            reads = await confirm_off(
                read,
                clock=self.clock,
                deadline=self.settings.off_timeout,
                interval=self.settings.poll_interval,
            )
            return f"chassis power off accepted, status off confirmed after {reads} read(s)"
        finally:
            await self._logout(command)

    async def _read_status(self) -> PowerStatus:
        command = await self._call("login", self._login)
        try:
            return await self._call("chassis power status", lambda: _status(command))
        finally:
            await self._logout(command)

    def _login(self) -> Any:
        try:
            password = self.settings.password.read()
        except CredentialError as exc:
            raise FenceFailure(FenceOutcome.AUTH_FAILED, str(exc)) from None
        from pyghmi.ipmi import command as ipmi_command  # imported late: it starts no thread

        # Credentials as bytes: pyghmi 1.6 files a session being set up under the
        # credentials as given but removes it under their encoded form, so with str ones a
        # later login with the same credentials is handed the stale, logged-out session
        # (session.py, `initting_sessions`).
        return ipmi_command.Command(
            bmc=self.settings.address,
            userid=self.settings.username.encode(),
            password=password.encode(),
            port=self.settings.port,
        )

    async def _logout(self, command: Any) -> None:
        # A failed logout changes nothing: the session times out on the BMC anyway.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.to_thread(command.ipmi_session.logout), self.settings.request_timeout
            )

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        timeout = self.settings.request_timeout
        try:
            return await asyncio.wait_for(asyncio.to_thread(_classified, what, fn), timeout)
        except asyncio.TimeoutError:
            raise FenceFailure(
                FenceOutcome.UNREACHABLE, f"{what}: no answer within {timeout:g}s"
            ) from None


def _status(command: Any) -> PowerStatus:
    state = command.get_power().get("powerstate")
    if state == "off":
        return PowerStatus.OFF
    if state == "on":
        return PowerStatus.ON
    return PowerStatus.UNKNOWN


def _classified(what: str, fn: Callable[[], T]) -> T:
    """Run a pyghmi call, turning its exceptions into FenceFailures."""
    from pyghmi import exceptions as ipmi_exceptions

    try:
        return fn()
    except FenceFailure:
        raise
    except ipmi_exceptions.IpmiException as exc:
        text = str(exc.args[0]) if exc.args and exc.args[0] is not None else ""
        lowered = text.lower()
        if any(word in lowered for word in _AUTH_WORDS):
            raise FenceFailure(
                FenceOutcome.AUTH_FAILED,
                f"{what}: {text}: check ipmi.username and the password file",
            ) from None
        if not text or "timeout" in lowered or "timed out" in lowered:
            # pyghmi raises IpmiException(None) when its login retries ran out unanswered.
            raise FenceFailure(
                FenceOutcome.UNREACHABLE, f"{what}: no answer from the BMC"
            ) from None
        raise FenceFailure(FenceOutcome.ERROR, f"{what}: {text}") from None
    except OSError as exc:
        raise FenceFailure(FenceOutcome.UNREACHABLE, f"{what}: {exc.strerror or exc}") from None
