"""Connections to a host's xapi persist as on a real host: until the client asks to close,
stunnel's idle timeout passes, or the xapi restarts (rpc.py's docstring cites the sources).
"""

from __future__ import annotations

import http.client
import ssl
import time
import xmlrpc.client
from pathlib import Path

import pytest

from self_signed import self_signed_cert
from xenhad.sim import PoolSpec, SimPool

from .clients import unix_session

pytestmark = pytest.mark.timeout(60)

LOGIN = xmlrpc.client.dumps(("", "", "1.0", "tests"), "session.login_with_password").encode()


def ask(conn: http.client.HTTPConnection, **headers: str) -> http.client.HTTPResponse:
    conn.request("POST", "/", LOGIN, {"Content-Type": "text/xml", **headers})
    response = conn.getresponse()
    response.read()
    return response


def connection(pool: SimPool, host: str) -> http.client.HTTPConnection:
    h = pool.host(host)
    if pool.scheme == "https":
        return http.client.HTTPSConnection(h.address, h.port, timeout=5,
                                           context=ssl._create_unverified_context())
    return http.client.HTTPConnection(h.address, h.port, timeout=5)


def test_a_connection_carries_requests_until_the_client_asks_to_close(pool: SimPool) -> None:
    conn = connection(pool, "host2")
    for _ in range(3):
        answer = ask(conn)
        assert answer.status == 200 and answer.getheader("Connection") == "keep-alive"
    assert pool.connections_accepted("host2") == 1

    last = ask(conn, Connection="close")
    assert last.getheader("Connection") == "close"
    assert conn.sock is None  # http.client closed it, as the answer said
    # HTTP/1.0 closes unless it asks for keep-alive (http_svr.ml read_request_exn).
    conn = connection(pool, "host2")
    conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"  # type: ignore[attr-defined]
    assert ask(conn).getheader("Connection") == "close"
    assert pool.connections_accepted("host2") == 2


def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    with SimPool(PoolSpec(hosts=2, vms=0, idle_close_seconds=0.3)) as pool:
        conn = connection(pool, "host2")
        ask(conn)
        time.sleep(0.2)
        ask(conn)  # not idle long enough
        time.sleep(0.6)
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            ask(conn)
        assert pool.connections_accepted("host2") == 1


def test_a_restarted_xapi_takes_its_connections_with_it() -> None:
    spec = PoolSpec(hosts=3, vms=0, xapi_restart_seconds=1.0)
    with SimPool(spec) as pool:
        conn = connection(pool, "host2")
        ask(conn)
        local = unix_session(pool, "host2")
        local.slave_local_login_with_password("root", "")
        local.xenapi.pool.emergency_reset_master(pool.host("host1").address)
        pool.advance(spec.xapi_restart_seconds + 1)
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            ask(conn)
        assert ask(connection(pool, "host2")).status == 200


def test_over_tls_as_stunnel_serves_it(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path, common_name="127.0.0.1")
    with SimPool(PoolSpec(hosts=2, vms=0, tls_cert=str(cert), tls_key=str(key))) as pool:
        assert pool.url("host2").startswith("https://")
        conn = connection(pool, "host2")
        for _ in range(2):
            assert ask(conn).getheader("Connection") == "keep-alive"
        assert pool.connections_accepted("host2") == 1
        pool.crash("host2")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
            ask(conn)
