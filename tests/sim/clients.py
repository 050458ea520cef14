"""Test-only transports for the unmodified XenAPI.Session, and pool fixtures.

`TcpTransport` can bind a source address (to be "on" a host) and has a timeout;
`UnixTransport` speaks HTTP over a UNIX socket at any path.
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from typing import Any

import pytest
import XenAPI

from xenhad.sim import SimPool


class _TcpConnection(http.client.HTTPConnection):
    def __init__(self, host: str, source: str | None, timeout: float) -> None:
        super().__init__(host, timeout=timeout,
                         source_address=(source, 0) if source else None)


class TcpTransport(xmlrpc.client.Transport):
    def __init__(self, source: str | None = None, timeout: float = 5.0) -> None:
        super().__init__()
        self.source = source
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _TcpConnection(host, self.source, self.timeout)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float = 5.0) -> None:
        super().__init__()
        self.path = path
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixConnection(self.path, self.timeout)


def tcp_session(pool: SimPool, host: str, *, on: str | None = None,
                timeout: float = 5.0) -> XenAPI.Session:
    """A session to `host`'s TCP endpoint, from the outside or "on" host `on`."""
    source = pool.host(on).address if on else None
    return XenAPI.Session(pool.url(host), transport=TcpTransport(source, timeout))


def login(pool: SimPool, host: str = "host1", **kw: Any) -> XenAPI.Session:
    s = tcp_session(pool, host, **kw)
    s.login_with_password("root", pool.spec.root_password, "1.0", "tests")
    return s


def unix_session(pool: SimPool, host: str, timeout: float = 5.0) -> XenAPI.Session:
    return XenAPI.Session("http://localhost/",
                          transport=UnixTransport(pool.host(host).socket_path, timeout))


def failure(exc: pytest.ExceptionInfo[XenAPI.Failure]) -> list[str]:
    return list(exc.value.details)
