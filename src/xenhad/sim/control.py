"""The control HTTP API: JSON in and out on a loopback URL, mirroring SimPool's methods.

POST /crash /hang /unhang /shutdown /boot {"host"}; /partition {"groups"}; /cut {"src",
"dst"}; /heal; /latency {"host", "seconds", "method"?}; /error {"host", "method", "code",
"params"?, "count"?}; /clear; /watchdog {"host", "op": arm|keepalive|disarm, "timeout"?,
"decided_monotonic"?};
/advance {"seconds"}; GET /truth, /info, /double_runs. Bad requests: 400 {"error": "..."}.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable
from typing import Any

from xenhad.sim.pool import SimError, SimPool


class BadRequest(Exception):
    pass


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...],
           default: Any = ...) -> Any:
    if name not in body:
        if default is ...:
            raise BadRequest(f"missing field {name!r}")
        return default
    value = body[name]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise BadRequest(f"field {name!r} has the wrong type")
    return value


def _post_routes(pool: SimPool) -> dict[str, Callable[[dict[str, Any]], Any]]:
    num = (int, float)

    def watchdog(b: dict[str, Any]) -> None:
        op = _field(b, "op", str)
        host = _field(b, "host", str)
        if op == "arm":
            pool.watchdog_arm(host, float(_field(b, "timeout", num)))
        elif op == "keepalive":
            pool.watchdog_keepalive(
                host, _field(b, "decided_monotonic", (int, float, type(None)), None))
        elif op == "disarm":
            pool.watchdog_disarm(host)
        else:
            raise BadRequest(f"watchdog: op {op!r} is not arm, keepalive or disarm")

    return {
        "/crash": lambda b: pool.crash(_field(b, "host", str)),
        "/hang": lambda b: pool.hang(_field(b, "host", str)),
        "/unhang": lambda b: pool.unhang(_field(b, "host", str)),
        "/shutdown": lambda b: pool.shutdown(_field(b, "host", str)),
        "/boot": lambda b: pool.boot(_field(b, "host", str)),
        "/partition": lambda b: pool.partition(_field(b, "groups", list)),
        "/cut": lambda b: pool.cut(_field(b, "src", str), _field(b, "dst", str)),
        "/heal": lambda b: pool.heal(),
        "/latency": lambda b: pool.set_latency(_field(b, "host", str),
                                               float(_field(b, "seconds", num)),
                                               _field(b, "method", (str, type(None)), None)),
        "/error": lambda b: pool.inject_error(
            _field(b, "host", str), _field(b, "method", str), _field(b, "code", str),
            [str(p) for p in _field(b, "params", list, [])], _field(b, "count", int, 1)),
        "/clear": lambda b: pool.clear_faults(),
        "/watchdog": watchdog,
        "/advance": lambda b: pool.advance(float(_field(b, "seconds", num))),
    }


class ControlServer:
    def __init__(self, pool: SimPool, host: str = "127.0.0.1") -> None:
        routes = _post_routes(pool)
        gets: dict[str, Callable[[], Any]] = {
            "/truth": pool.truth, "/info": pool.info, "/double_runs": pool.double_runs,
            "/calls": pool.call_counts}

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, obj: Any) -> None:
                data = (json.dumps(obj) + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                fn = gets.get(self.path.split("?", 1)[0])
                if fn is None:
                    self._send(404, {"error": f"no such endpoint GET {self.path}; "
                                     f"use one of {sorted(gets)}"})
                    return
                self._send(200, fn())

            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    raw = self.rfile.read(length) if 0 < length < 1_000_000 else b""
                    path = self.path.split("?", 1)[0]
                    fn = routes.get(path)
                    if fn is None:
                        self._send(404, {"error": f"no such endpoint POST {path}; "
                                         f"use one of {sorted(routes)}"})
                        return
                    body = json.loads(raw) if raw.strip() else {}
                    if not isinstance(body, dict):
                        raise BadRequest("the body must be a JSON object")
                    fn(body)
                except (BadRequest, SimError, ValueError, TypeError) as e:
                    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                    self._send(400, {"error": msg})
                    return
                self._send(200, {"ok": True})

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="sim-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
