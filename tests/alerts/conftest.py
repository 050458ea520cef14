"""Real receivers for the alert tests: an HTTP(S) server on 127.0.0.1 in a thread that
records what it is sent and answers as scripted, and a capture of xenhad's log lines."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from self_signed import self_signed_cert
from xenhad import log as xlog
from xenhad.alerts import Alerts


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver. `answers` are the statuses of the first requests, in order (200
    after them); with `hang`, it reads each request and never answers."""

    answers: list[int] = field(default_factory=list)
    hang: bool = False
    received: list[Received] = field(default_factory=list)
    url: str = ""
    _released: threading.Event = field(default_factory=threading.Event)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.received)


def _handler(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.received.append(Received(self.path, dict(self.headers.items()), body))
            if receiver.hang:
                receiver._released.wait(30)
                return
            status = receiver.answers.pop(0) if receiver.answers else 200
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest's output for failures

    return Handler


@pytest.fixture
def serve() -> Iterator[Any]:
    """serve(answers=[503], hang=False, tls=None) -> a running Receiver."""
    servers: list[tuple[http.server.ThreadingHTTPServer, Receiver]] = []

    def start(
        answers: list[int] | None = None, *, hang: bool = False, tls: ssl.SSLContext | None = None
    ) -> Receiver:
        receiver = Receiver(answers=list(answers or []), hang=hang)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
        server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
            scheme = "https"
        receiver.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/hook"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, receiver))
        return receiver

    yield start
    for server, receiver in servers:
        receiver._released.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Logged:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.text.splitlines():
            parsed = xlog.parse_line(line)
            if parsed is not None and parsed.event == name:
                found.append({"level": parsed.level, **parsed.fields})
        return found


@pytest.fixture
def logged() -> Iterator[Logged]:
    stream = io.StringIO()
    xlog.configure("json", "debug", stream, journald=False)
    yield Logged(stream)
    xlog.configure("kv", "info", io.StringIO(), journald=False)


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    ca_file: Path


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A self-signed certificate for 127.0.0.1 (skipped without `cryptography`)."""
    pytest.importorskip("cryptography")
    cert_file, key_file = self_signed_cert(tmp_path_factory.mktemp("tls"),
                                           common_name="xenhad-test-receiver")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return Tls(context, cert_file)


def deliver(alerts: Alerts, *payloads: dict[str, Any], drain: float = 20.0) -> float:
    """send() each payload from a running loop, then drain; the longest send() in seconds."""

    async def scenario() -> float:
        longest = 0.0
        for payload in payloads:
            started = time.monotonic()
            alerts.send(payload)
            longest = max(longest, time.monotonic() - started)
        await alerts.drain(drain)
        return longest

    return asyncio.run(scenario())
