"""Probes on kept-alive connections (probe.py, ProbeConnections), against the simulator over
http and over TLS: a probe at rest reuses its host's connection, and reuse never turns a
silent or dead host into one that answers.

Host 1 is the master, hosts 2 and 3 are slaves. The simulator counts the TCP connections
each host accepted; servers whose answers the simulator never gives (xapi always sends a
Content-Length and keeps the connection) are a small loopback server in this file.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl
import time
import xmlrpc.client
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from self_signed import self_signed_cert
from xenhad.config import parse
from xenhad.daemon import Daemon
from xenhad.model import HostView
from xenhad.sim import PoolSpec, SimPool
from xenhad.xapi import ProbeConnections, probe
from xenhad.xapi.probe import MASTER_HOLDS_LOGIN, TLS_READ_BUFFER

from .conftest import same_port_pool

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    cert, key = self_signed_cert(tmp_path_factory.mktemp("tls"), common_name="127.0.0.1")
    return str(cert), str(key)


@pytest.fixture(params=["http", "https"])
def pool_of(
    request: pytest.FixtureRequest, certificate: tuple[str, str]
) -> Iterator[Callable[..., SimPool]]:
    """Starts a three-host pool (PoolSpec fields as keywords) over the test's scheme."""
    pools: list[SimPool] = []

    def start(**fields: Any) -> SimPool:
        if request.param == "https":
            fields["tls_cert"], fields["tls_key"] = certificate
        pool = same_port_pool(PoolSpec(hosts=3, vms=0, seed=3, **fields))
        pool.start()
        pools.append(pool)
        return pool

    yield start
    for pool in pools:
        pool.stop()


def test_probes_at_rest_reuse_one_connection_per_host(pool_of: Callable[..., SimPool]) -> None:
    sim = pool_of()
    me = sim.host("host1").address

    async def scenario() -> None:
        conns = ProbeConnections()
        for _ in range(5):
            results = await asyncio.gather(
                *(probe(sim.url(h), source_address=me, timeout=1.0, connections=conns)
                  for h in ("host2", "host3")))
            assert all(r.answered and r.is_slave for r in results)
        assert conns.opened == 2
        conns.close()
        # Without a ProbeConnections, every probe opens its own, as before.
        for _ in range(3):
            assert (await probe(sim.url("host2"), source_address=me, timeout=1.0)).is_slave

    run(scenario)
    assert sim.connections_accepted("host2") == 1 + 3
    assert sim.connections_accepted("host3") == 1


def test_an_answer_the_same_as_the_last_is_read_once(
    pool_of: Callable[..., SimPool],
) -> None:
    sim = pool_of()
    me = sim.host("host1").address

    async def scenario() -> None:
        conns = ProbeConnections()
        results = [await probe(sim.url("host2"), source_address=me, timeout=1.0,
                               connections=conns) for _ in range(3)]
        assert all(r.is_slave and r.master_address == me for r in results)
        [(key, (_, read))] = conns._parsed.items()
        assert (await probe(sim.url("host2"), source_address=me, timeout=1.0,
                            connections=conns)).is_slave
        assert conns._parsed[key][1] is read  # the same bytes again: not parsed again
        # Another host's answer is its own, read on its own.
        assert (await probe(sim.url("host3"), source_address=me, timeout=1.0,
                            connections=conns)).is_slave
        assert len(conns._parsed) == 2 and conns._parsed[key][1] is read
        conns.close()

    run(scenario)


def test_two_probes_of_one_host_at_once_do_not_share_a_connection(
    pool_of: Callable[..., SimPool],
) -> None:
    sim = pool_of()

    async def scenario() -> None:
        conns = ProbeConnections()
        for _ in range(3):
            results = await asyncio.gather(
                *(probe(sim.url("host2"), timeout=1.0, connections=conns) for _ in range(2)))
            assert all(r.is_slave for r in results)
        conns.close()

    run(scenario)
    # One kept, and one opened for the second probe of each round (not kept: one idle
    # connection per URL).
    assert sim.connections_accepted("host2") == 1 + 3


def test_a_server_that_closes_idle_connections_costs_no_miss(
    pool_of: Callable[..., SimPool],
) -> None:
    sim = pool_of(idle_close_seconds=0.3)

    async def scenario() -> None:
        conns = ProbeConnections()
        assert (await probe(sim.url("host2"), timeout=1.0, connections=conns)).is_slave
        # Closed while the loop runs: the probe sees the end before it sends.
        await asyncio.sleep(0.6)
        assert (await probe(sim.url("host2"), timeout=1.0, connections=conns)).is_slave
        # Closed while the loop is busy elsewhere: the probe learns it when it sends (EOF
        # or reset at once), and asks again on a fresh connection, within its timeout.
        time.sleep(0.6)
        again = await probe(sim.url("host2"), timeout=1.0, connections=conns)
        assert again.is_slave and again.elapsed < 1.0
        conns.close()

    run(scenario)
    assert sim.connections_accepted("host2") == 3


def test_a_restarted_xapi_answers_on_a_fresh_connection_without_a_miss(
    pool_of: Callable[..., SimPool],
) -> None:
    sim = pool_of()
    me = sim.host("host1").address

    async def scenario() -> None:
        conns = ProbeConnections()
        before = await probe(sim.url("host2"), source_address=me, timeout=1.0,
                             connections=conns)
        assert before.is_slave and before.master_address == me
        # pool.emergency_reset_master: host2's xapi restarts (as host1's slave still).
        epoch = sim.host("host2").epoch
        sim.reset_master(sim.host("host2"), me, 0.0)
        sim.advance(1.0)
        assert sim.host("host2").epoch > epoch
        after = await probe(sim.url("host2"), source_address=me, timeout=1.0,
                            connections=conns)
        assert after.is_slave and after.master_address == me
        conns.close()

    run(scenario)
    assert sim.connections_accepted("host2") == 2


def test_a_hung_or_cut_off_host_still_times_out_on_its_kept_connection(
    pool_of: Callable[..., SimPool],
) -> None:
    sim = pool_of()
    me = sim.host("host1").address

    async def scenario() -> None:
        conns = ProbeConnections()

        async def ask(host: str, timeout: float = 1.0) -> Any:
            return await probe(sim.url(host), source_address=me, timeout=timeout,
                               connections=conns)

        assert (await ask("host2")).is_slave and (await ask("host3")).is_slave
        sim.hang("host3")
        sim.cut("host1", "host2")
        for host in ("host2", "host3"):
            silent = await ask(host, timeout=0.3)
            assert not silent.answered and "no answer within 0.3 s" in silent.detail
            assert silent.elapsed < 0.8
        sim.unhang("host3")
        sim.heal()
        # The connections that timed out were dropped: a fresh one each.
        assert (await ask("host2")).is_slave and (await ask("host3")).is_slave
        conns.close()

    run(scenario)
    # Each silent probe also asked on a connection of its own whether the xapi answers at
    # all (probe.py: a master holds the login), and dropped it: one more each.
    assert sim.connections_accepted("host2") == 3
    assert sim.connections_accepted("host3") == 3


def test_a_master_answering_after_the_timeout_is_told_by_its_held_login_and_loses_its_connection(
    pool_of: Callable[..., SimPool],
) -> None:
    # Real xapi makes a wrong login to a master wait 5 s (probe.py); the simulator answers
    # at once unless told to be slow. A xapi that answers the call every role answers at
    # once, and holds the login past the timeout, is a master (docs/virtual-time.md, 12).
    sim = pool_of()

    async def scenario() -> None:
        conns = ProbeConnections()
        first = await probe(sim.url("host1"), timeout=1.0, connections=conns)
        assert first.code == "SESSION_AUTHENTICATION_FAILED"
        sim.set_latency("host1", 0.6, "session.login_with_password")
        late = await probe(sim.url("host1"), timeout=0.3, connections=conns)
        assert late.answered and late.follows is None and late.code == MASTER_HOLDS_LOGIN
        sim.set_latency("host1", 0.0, "session.login_with_password")
        await asyncio.sleep(0.5)  # the late answer goes to a closed connection
        assert (await probe(sim.url("host1"), timeout=1.0, connections=conns)).answered
        conns.close()

    run(scenario)
    assert sim.connections_accepted("host1") == 2


def test_a_host_killed_and_booted_answers_again_on_a_fresh_connection(
    pool_of: Callable[..., SimPool],
) -> None:
    sim = pool_of(boot_seconds=1.0)
    me = sim.host("host1").address

    async def scenario() -> None:
        conns = ProbeConnections()
        assert (await probe(sim.url("host2"), source_address=me, timeout=1.0,
                            connections=conns)).is_slave
        sim.crash("host2")
        dead = await probe(sim.url("host2"), source_address=me, timeout=1.0,
                           connections=conns)
        assert not dead.answered and dead.elapsed < 0.5
        sim.boot("host2")
        sim.advance(2.0)
        back = await probe(sim.url("host2"), source_address=me, timeout=1.0,
                           connections=conns)
        assert back.answered, back.detail
        conns.close()

    run(scenario)
    assert sim.connections_accepted("host2") == 2


def test_closing_lets_go_of_every_idle_connection(pool_of: Callable[..., SimPool]) -> None:
    sim = pool_of()

    async def scenario() -> None:
        conns = ProbeConnections()
        for host in ("host2", "host3"):
            assert (await probe(sim.url(host), timeout=1.0, connections=conns)).is_slave
        assert sim.connections_open("host2") == sim.connections_open("host3") == 1
        conns.close()
        await until(lambda: sim.connections_open("host2") + sim.connections_open("host3") == 0)
        # A probe after close still works; its connection is not kept.
        assert (await probe(sim.url("host2"), timeout=1.0, connections=conns)).is_slave
        await until(lambda: sim.connections_open("host2") == 0)

    run(scenario)


def test_the_daemon_probes_on_kept_connections_and_closes_them_when_it_stops(
    tmp_path: Path, pool_of: Callable[..., SimPool],
) -> None:
    sim = pool_of()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    me = sim.host("host1")
    config = parse(
        f'[daemon]\nstate_dir = "{state}"\n[host]\nuuid = "{me.uuid}"\n'
        f'[detector]\nprobe_url = "{sim.scheme}://{{address}}:{me.port}/"\n'
        f'[xapi]\nsource_address = "{me.address}"\n',
        source="t", env={})
    host2 = sim.host("host2")
    view = HostView(host2.uuid, host2.ref, host2.name, host2.address, True, True)

    async def scenario() -> None:
        daemon = Daemon(tmp_path / "xenhad.toml", config)
        for _ in range(3):
            assert (await daemon._probe(view)).is_slave
        assert sim.connections_open("host2") == 1
        await daemon._shutdown()
        await until(lambda: sim.connections_open("host2") == 0)

    run(scenario)
    assert sim.connections_accepted("host2") == 1


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "not within 5 s"
        await asyncio.sleep(0.02)


# ---- answers xapi never gives ---------------------------------------------------------

SLAVE = xmlrpc.client.dumps(
    ({"Status": "Failure", "ErrorDescription": ["HOST_IS_SLAVE", "10.0.0.1"]},),
    methodresponse=True).encode()


async def loopback_server(answer: Callable[[], bytes], close_after: bool,
                          tls: ssl.SSLContext | None = None,
                          ) -> tuple[asyncio.AbstractServer, list[int]]:
    """Answers every request with answer()'s bytes; closes after each if told to. Counts the
    connections it accepted in the list it returns."""
    accepted = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(answer())
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    return server, accepted


@pytest.mark.parametrize(("kind", "connections"), [
    ("connection: close", 3),
    ("no length, to the end", 3),
    ("HTTP/1.0", 3),
    ("chunked, with a trailer", 1),
    ("keep-alive", 1),
])
def test_the_answers_framing_and_connection_header_decide_reuse(
    kind: str, connections: int,
) -> None:
    chunked = (f"{len(SLAVE):x}\r\n".encode() + SLAVE + b"\r\n0\r\nX-Trailer: 1\r\n\r\n")
    answers = {
        # Said, not done: the server leaves it open, the probe must not use it again.
        "connection: close": (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: "
                              + str(len(SLAVE)).encode() + b"\r\n\r\n" + SLAVE, False),
        "no length, to the end": (b"HTTP/1.1 200 OK\r\n\r\n" + SLAVE, True),
        "HTTP/1.0": (b"HTTP/1.0 200 OK\r\nContent-Length: " + str(len(SLAVE)).encode()
                     + b"\r\n\r\n" + SLAVE, False),
        "chunked, with a trailer": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    + chunked, False),
        "keep-alive": (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: "
                       + str(len(SLAVE)).encode() + b"\r\n\r\n" + SLAVE, False),
    }
    data, close_after = answers[kind]

    async def scenario() -> list[int]:
        server, accepted = await loopback_server(lambda: data, close_after)
        port = server.sockets[0].getsockname()[1]
        conns = ProbeConnections()
        for _ in range(3):
            result = await probe(f"http://127.0.0.1:{port}/", timeout=1.0, connections=conns)
            assert result.is_slave and result.master_address == "10.0.0.1", result.detail
        conns.close()
        server.close()
        return accepted

    assert run(scenario) == [connections]


def test_a_tls_answer_larger_than_the_read_buffer_is_read_whole_on_a_kept_connection(
    certificate: tuple[str, str],
) -> None:
    # asyncio's TLS layer reads into TLS_READ_BUFFER (16 KiB, not its 256 KiB) per kept
    # connection: an answer of many records still arrives whole, and the connection is kept.
    big = xmlrpc.client.dumps(
        ({"Status": "Failure", "ErrorDescription": ["HOST_IS_SLAVE", "10.0.0.1", "x" * 200_000]},),
        methodresponse=True).encode()
    data = (b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(big)).encode() + b"\r\n\r\n"
            + big)
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(*certificate)

    async def scenario() -> list[int]:
        server, accepted = await loopback_server(lambda: data, False, served)
        port = server.sockets[0].getsockname()[1]
        conns = ProbeConnections()
        for _ in range(3):
            result = await probe(f"https://127.0.0.1:{port}/", timeout=2.0, connections=conns)
            assert result.is_slave and result.master_address == "10.0.0.1", result.detail
        conns.close()
        server.close()
        return accepted

    assert run(scenario) == [1]
    assert asyncio.sslproto.SSLProtocol.max_size == TLS_READ_BUFFER


def test_a_master_holding_the_empty_login_is_told_for_a_master_on_the_wire(
    pool_of: Callable[..., SimPool],
) -> None:
    # xapi_session.ml: a master sleeps 5 s before it refuses a failed login, a slave names
    # its master at once (docs/virtual-time.md, defect 12). The probe tells the master by
    # the second call every live xapi refuses at once.
    sim = pool_of(failed_login_seconds=5.0)
    me = sim.host("host2").address

    async def scenario() -> None:
        conns = ProbeConnections()
        started = time.monotonic()
        master = await probe(sim.url("host1"), source_address=me, timeout=1.5,
                             connections=conns)
        assert master.answered and master.follows is None, master.detail
        assert time.monotonic() - started < 3.0
        slave = await probe(sim.url("host3"), source_address=me, timeout=1.5,
                            connections=conns)
        assert slave.answered and slave.is_slave
        # A hung master answers neither: silent, as before.
        sim.hang("host1")
        hung = await probe(sim.url("host1"), source_address=me, timeout=1.5,
                           connections=conns)
        assert not hung.answered
        conns.close()

    run(scenario)
