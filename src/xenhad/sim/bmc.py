"""A Redfish BMC for every simulated host, wired to the simulator's physical truth.

Real BMCs sit on an out-of-band network: a partition of the management network leaves
them reachable, while a total power loss takes the BMC down with its host. This module
serves the part of the DMTF Redfish schema a fencer uses (ServiceRoot, the Systems
collection, one ComputerSystem with PowerState and the ComputerSystem.Reset action, HTTP
basic auth), so xenhad's own Redfish backend, and fence_redfish from fence-agents, can
fence simulated hosts end to end. The backend itself is also tested against sushy-tools'
emulator, an independent implementation of the same schema.

Faults per BMC: "ok"; "down" (nothing listens: connection refused); "hang" (accepts and
never answers); "ignore-off" (accepts ForceOff and does nothing, the BMC bug that makes
"command accepted" worthless without a PowerState read); "lie" (accepts ForceOff, does
nothing, and reads the power back as Off: no fencer can catch that one, and the chaos
harness uses it to show that its checks catch the double run that follows).
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from xenhad.sim.pool import SimPool

MODES = ("ok", "down", "hang", "ignore-off", "lie")
SYSTEM = "/redfish/v1/Systems/1"
RESET = SYSTEM + "/Actions/ComputerSystem.Reset"


class BmcModel:
    """What one host's BMC does, whoever asks: its fault mode, the power state it reads and
    the resets it performs on the simulator's truth. `Bmc` serves it over Redfish;
    xenhad.virtual calls it in process. `stamp` times each reset (real monotonic seconds
    for the served one)."""

    def __init__(self, pool: SimPool, host: str, stamp: Callable[[], float] = time.monotonic
                 ) -> None:
        self.pool = pool
        self.host = host
        self.mode = "ok"
        self.resets: list[tuple[float, str]] = []
        self._stamp = stamp

    def power_state(self) -> str:
        if self.mode == "lie":
            return "Off"
        return "On" if self.pool.host(self.host).powered else "Off"

    def reset(self, kind: str) -> None:
        self.resets.append((self._stamp(), kind))
        if self.mode in ("ignore-off", "lie") and kind in ("ForceOff", "GracefulShutdown"):
            return
        powered = self.pool.host(self.host).powered
        if kind in ("ForceOff", "GracefulShutdown", "PushPowerButton") and powered:
            self.pool.crash(self.host)
        elif kind == "On" and not powered:
            self.pool.boot(self.host)
        elif kind in ("ForceRestart", "PowerCycle"):
            if powered:
                self.pool.crash(self.host)
            self.pool.boot(self.host)


class Bmc(BmcModel):
    """One host's BMC: its own HTTP listener on the host's address, its own fault mode."""

    def __init__(self, pool: SimPool, host: str, username: str, password: str) -> None:
        super().__init__(pool, host)
        self._auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        address = pool.host(host).address
        self._server = _Server((address, 0), _Handler)
        self._server.bmc = self
        self.url = f"http://{address}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"bmc-{host}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def authorised(self, header: str | None) -> bool:
        return header == self._auth


class BmcFarm:
    """Every host's BMC, with one set of credentials (as a lab would have)."""

    def __init__(self, pool: SimPool, username: str = "admin", password: str = "bmc-secret"):
        self.username = username
        self.password = password
        self.bmcs = {h.name: Bmc(pool, h.name, username, password) for h in pool.hosts}

    def __enter__(self) -> BmcFarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for bmc in self.bmcs.values():
            bmc.close()

    def set_mode(self, host: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"bmc mode {mode!r}: choose one of {', '.join(MODES)}")
        self.bmcs[host].mode = mode

    def url(self, host: str) -> str:
        return self.bmcs[host].url


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    bmc: Bmc


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _gate(self) -> bool:
        mode = self.server.bmc.mode
        if mode == "down":
            # Nothing listens on a dead BMC: drop the connection without a word (RST).
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            return False
        if mode == "hang":
            time.sleep(120)
            self.close_connection = True
            return False
        if not self.server.bmc.authorised(self.headers.get("Authorization")):
            self._reply(401, {"error": {"code": "Base.1.0.GeneralError",
                                        "message": "authentication required"}})
            return False
        return True

    def do_GET(self) -> None:
        if not self._gate():
            return
        path = self.path.rstrip("/")
        if path == "/redfish/v1":
            self._reply(200, {"@odata.id": "/redfish/v1", "Id": "RootService",
                              "RedfishVersion": "1.6.0",
                              "Systems": {"@odata.id": "/redfish/v1/Systems"}})
        elif path == "/redfish/v1/Systems":
            self._reply(200, {"@odata.id": "/redfish/v1/Systems",
                              "Members": [{"@odata.id": SYSTEM}], "Members@odata.count": 1})
        elif path == SYSTEM:
            self._reply(200, {
                "@odata.id": SYSTEM, "Id": "1", "Name": self.server.bmc.host,
                "PowerState": self.server.bmc.power_state(),
                "Actions": {"#ComputerSystem.Reset": {
                    "target": RESET,
                    "ResetType@Redfish.AllowableValues": [
                        "On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle"],
                }},
            })
        else:
            self._reply(404, {"error": {"code": "Base.1.0.ResourceMissingAtURI",
                                        "message": f"{path} not found"}})

    def do_POST(self) -> None:
        if not self._gate():
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") != RESET:
            self._reply(404, {"error": {"code": "Base.1.0.ResourceMissingAtURI",
                                        "message": f"{self.path} not found"}})
            return
        try:
            kind = json.loads(raw or b"{}").get("ResetType", "")
        except (ValueError, AttributeError):
            kind = ""
        if kind not in ("On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle",
                        "PushPowerButton"):
            self._reply(400, {"error": {"code": "Base.1.0.ActionParameterNotSupported",
                                        "message": f"ResetType {kind!r} not supported"}})
            return
        try:
            self.server.bmc.reset(kind)
        except Exception as exc:  # the simulator refused (already booting...): say so
            self._reply(409, {"error": {"code": "Base.1.0.GeneralError", "message": str(exc)}})
            return
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("OData-Version", "4.0")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="xenhad-sim-bmc"')
        self.end_headers()
        self.wfile.write(data)
