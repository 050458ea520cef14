"""Redfish fencing: ComputerSystem.Reset ForceOff, then PowerState reads until "Off".

The standard library's urllib does it: four JSON requests with HTTP basic auth, a timeout and
an SSL context are all we need, and a fencing daemon on a dom0 is better off without a
dependency tree (sushy pulls in requests, stevedore, pbr...). Each request runs in a worker
thread bounded by `request_timeout`, so a black-holed BMC never blocks the event loop.

Protocol facts (DMTF DSP0266, Redfish specification; DSP8010 ComputerSystem schema):
- /redfish/v1/Systems is a collection whose "Members" are {"@odata.id": path} links.
- A ComputerSystem has "PowerState" (On, Off, PoweringOn, PoweringOff, Paused) and an action
  "#ComputerSystem.Reset" whose "target" is the URI to POST {"ResetType": "ForceOff"} to.
- A BMC answers a bad credential with 401 (403 for a user without the privilege).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any

from xenhad.clock import Clock
from xenhad.errors import CredentialError
from xenhad.fencing.base import (
    FenceBackend,
    FenceFailure,
    FenceOutcome,
    PowerStatus,
    confirm_off,
)
from xenhad.fencing.config import RedfishSettings

_ACCEPTED = (200, 202, 204)
_OFF_STATES = frozenset({"off"})
_ON_STATES = frozenset({"on", "poweringon", "poweringoff", "paused"})


class RedfishBackend(FenceBackend):
    name = "redfish"

    def __init__(self, settings: RedfishSettings, *, host: str, clock: Clock) -> None:
        # Two requests to find the system, one to reset it, and the confirmation wait.
        budget = 4 * settings.request_timeout + settings.off_timeout + 1.0
        super().__init__(host=host, bmc=settings.url, clock=clock, operation_timeout=budget)
        self.settings = settings
        self._ssl = _ssl_context(settings) if settings.url.startswith("https:") else None
        self._system_path: str | None = None

    async def _power_off(self) -> str:
        auth = self._auth()
        system = await self._system(auth)
        state, reset_target = _power_state(system), _reset_target(system, self._system_path)
        if state is PowerStatus.OFF:
            return "confirmed off (it was already off; no reset sent)"
        await self._request("POST", reset_target, auth, {"ResetType": "ForceOff"})

        async def read() -> PowerStatus:
            return _power_state(await self._system(auth))

        reads = await confirm_off(
            read,
            clock=self.clock,
            deadline=self.settings.off_timeout,
            interval=self.settings.poll_interval,
        )
        return f"ForceOff accepted, PowerState Off confirmed after {reads} status read(s)"

    async def _read_status(self) -> PowerStatus:
        return _power_state(await self._system(self._auth()))

    def _auth(self) -> str:
        try:
            password = self.settings.password.read()
        except CredentialError as exc:
            raise FenceFailure(FenceOutcome.AUTH_FAILED, str(exc)) from None
        token = f"{self.settings.username}:{password}".encode()
        return "Basic " + base64.b64encode(token).decode("ascii")

    async def _system(self, auth: str) -> dict[str, Any]:
        if self._system_path is None:
            self._system_path = await self._find_system(auth)
        return await self._request("GET", self._system_path, auth)

    async def _find_system(self, auth: str) -> str:
        configured = self.settings.system
        if configured:
            return configured if configured.startswith("/") else f"/redfish/v1/Systems/{configured}"
        collection = await self._request("GET", "/redfish/v1/Systems", auth)
        members = [
            m.get("@odata.id")
            for m in collection.get("Members", [])
            if isinstance(m, dict) and isinstance(m.get("@odata.id"), str)
        ]
        if len(members) != 1:
            raise FenceFailure(
                FenceOutcome.ERROR,
                f"/redfish/v1/Systems lists {len(members)} systems "
                f"({', '.join(str(m) for m in members[:4])}): set redfish.system to the one "
                "of this host",
            )
        return str(members[0])

    async def _request(
        self, method: str, path: str, auth: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        timeout = self.settings.request_timeout
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._blocking_request, method, path, auth, body),
                timeout + 1.0,
            )
        except asyncio.TimeoutError:
            raise FenceFailure(
                FenceOutcome.UNREACHABLE, f"{method} {path}: no answer within {timeout:g}s"
            ) from None

    def _blocking_request(
        self, method: str, path: str, auth: str, body: dict[str, Any] | None
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.settings.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": auth,
                "Accept": "application/json",
                "Content-Type": "application/json",
                "OData-Version": "4.0",
            },
        )
        where = f"{method} {path}"
        try:
            with urllib.request.urlopen(
                request, timeout=self.settings.request_timeout, context=self._ssl
            ) as response:
                status = response.status
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise _http_failure(where, exc) from None
        except urllib.error.URLError as exc:
            raise _connect_failure(where, exc.reason) from None
        except (TimeoutError, socket.timeout) as exc:
            raise _connect_failure(where, exc) from None
        except (ConnectionError, OSError) as exc:
            raise _connect_failure(where, exc) from None
        if status not in _ACCEPTED:
            raise FenceFailure(FenceOutcome.ERROR, f"{where}: unexpected HTTP {status}")
        if not payload.strip():
            return {}
        try:
            decoded = json.loads(payload)
        except ValueError:
            raise FenceFailure(FenceOutcome.ERROR, f"{where}: the answer is not JSON") from None
        if not isinstance(decoded, dict):
            raise FenceFailure(FenceOutcome.ERROR, f"{where}: the answer is not a JSON object")
        return decoded


def _ssl_context(settings: RedfishSettings) -> ssl.SSLContext:
    if not settings.verify_tls:
        # The operator wrote verify_tls = false: a BMC with a self-signed certificate and no
        # CA to trust. Anyone on the path could then answer "Off" for the BMC.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = str(settings.ca_file) if settings.ca_file is not None else None
    return ssl.create_default_context(cafile=cafile)


def _power_state(system: dict[str, Any]) -> PowerStatus:
    state = system.get("PowerState")
    if not isinstance(state, str):
        return PowerStatus.UNKNOWN
    if state.lower() in _OFF_STATES:
        return PowerStatus.OFF
    if state.lower() in _ON_STATES:
        return PowerStatus.ON
    return PowerStatus.UNKNOWN


def _reset_target(system: dict[str, Any], system_path: str | None) -> str:
    action = system.get("Actions", {}).get("#ComputerSystem.Reset", {})
    target = action.get("target") if isinstance(action, dict) else None
    if isinstance(target, str) and target.startswith("/"):
        return target
    return f"{system_path}/Actions/ComputerSystem.Reset"


def _http_failure(where: str, exc: urllib.error.HTTPError) -> FenceFailure:
    if exc.code in (401, 403):
        why = "credentials refused" if exc.code == 401 else "user lacks the privilege"
        return FenceFailure(
            FenceOutcome.AUTH_FAILED,
            f"{where}: HTTP {exc.code}, {why}: check redfish.username and the password file",
        )
    message = _redfish_message(exc)
    return FenceFailure(
        FenceOutcome.ERROR, f"{where}: HTTP {exc.code}{': ' + message if message else ''}"
    )


def _redfish_message(exc: urllib.error.HTTPError) -> str:
    """The BMC's own words from a Redfish error body ({"error": {"message": ...}})."""
    try:
        body = json.loads(exc.read(4096) or b"{}")
    except (ValueError, OSError):
        return ""
    error = body.get("error", {}) if isinstance(body, dict) else {}
    if not isinstance(error, dict):
        return ""
    message = error.get("message", "")
    extended = error.get("@Message.ExtendedInfo", [])
    if isinstance(extended, list) and extended and isinstance(extended[0], dict):
        message = extended[0].get("Message", message)
    return str(message)[:200]


def _connect_failure(where: str, reason: object) -> FenceFailure:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return FenceFailure(
            FenceOutcome.ERROR,
            f"{where}: TLS certificate not trusted ({reason.verify_message}): give the BMC's "
            "CA in redfish.ca_file (or verify_tls = false, which lets anyone answer for it)",
        )
    if isinstance(reason, ssl.SSLError):
        return FenceFailure(FenceOutcome.ERROR, f"{where}: TLS error: {reason}")
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return FenceFailure(FenceOutcome.UNREACHABLE, f"{where}: timed out: {reason}")
    if isinstance(reason, OSError):
        text = reason.strerror or str(reason)
        return FenceFailure(FenceOutcome.UNREACHABLE, f"{where}: {text}")
    return FenceFailure(FenceOutcome.UNREACHABLE, f"{where}: {reason}")
