"""Does a host's own xapi answer? One unauthenticated request, never an exception.

The probe sends `session.login_with_password` with EMPTY credentials over TCP. A slave
answers `HOST_IS_SLAVE [master_address]` before looking at any credential
(xapi_session.ml, login_with_password): its xapi is alive, and we learn which master it
believes in, with no password ever on the wire. Any other XAPI-shaped answer (a Failure
or Success envelope) also proves the xapi answered. A socket error, a timeout or a reply
that is not XAPI means it did not.

A MASTER checks the credentials, and when they are wrong it sleeps 5 s before answering
SESSION_AUTHENTICATION_FAILED (the same function, thread_delay_and_raise_error: against
brute force). Under a probe timeout of 1.5 s a healthy master would look silent, and a
master that boots back after a crash was taken for a hung xapi, never for the stray master
it is: the pool kept two masters (docs/virtual-time.md, defect 12). So when the login has
not answered within a third of the timeout, the probe also asks
`session.slave_local_login_with_password` with empty credentials, which every live xapi
refuses at once, whatever its role (xapi_session.ml: no role check, no delay). A login
still held at the timeout by a xapi that answered that is a master's: the probe says it
answered, as a master (`MASTER_HOLDS_LOGIN`). A slave names its master before any of this.

The probe is plain asyncio (no thread, no XenAPI.Session): a tick probes every host at once
and a black-holed host must cost only its own timeout, whatever the pool size.

TLS is not verified by default: nothing secret is sent, and a forged answer could only make
a dead host look alive, which delays a failover but never runs a VM twice.

A probe made every tick reuses a kept-alive connection (`ProbeConnections`, which the daemon
owns): at rest it costs one request and answer on an open TLS connection rather than a TCP
and TLS handshake each (bench/probe_cost.py and bench/RESULTS.md, 2026-12-07). Real xapi
keeps the connection open after answering an XML-RPC POST unless the request said
`Connection: close` or was HTTP/1.0, and never closes an idle one itself: it reads the next
request with no timeout (ocaml/libs/http-lib/http_svr.ml, handle_connection and
response_of_request; api_server.ml callback leaves the request's `close` as it came). On
443, stunnel holds the TLS side, one xapi connection per client connection, and closes a
connection idle for TIMEOUTidle, which xapi's stunnel.conf leaves at stunnel's default of
12 h (ocaml/xapi/xapi_stunnel_server.ml; stunnel src/options.c).

Reuse never makes a dead host look alive: an XAPI-shaped answer must still come within the
timeout. A reused connection that fails before any answer begins (EOF, reset: the server
closed it while idle, xapi restarted, the host rebooted) is dropped and the probe is made
once more on a fresh connection, within the same timeout; after a timeout or any other
failure the connection is dropped. Unlike the facade's calls (transport.py), a probe may be
sent twice: a login with empty credentials changes nothing (the session of a rare success
is logged out at once). A master's answer 5 s late (above) is a timeout as before, and its
connection is dropped.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import functools
import ssl
import time
import urllib.parse
import xmlrpc.client
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Callable, Protocol
from xml.parsers.expat import ExpatError

from xenhad.xapi.errors import HOST_IS_SLAVE, HOST_STILL_BOOTING

ORIGINATOR = "xenhad-probe"
_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 1024 * 1024

REUSE_IDLE_SECONDS = 60.0
"""A connection idle for longer is closed rather than reused: a firewall or NAT on the way
may forget an idle connection without a word, and a probe on it would then time out as if
the host were dead. Probes made every tick (2 s) stay far within it; a host heard by
heartbeat, probed every 2 minutes, gets a fresh connection each time (daemon.py,
PROBE_HEARD_EVERY)."""


@dataclass(frozen=True)
class ProbeResult:
    answered: bool
    """The host's xapi sent an XAPI-shaped answer within the timeout."""
    code: str = ""
    """xapi's error code in the answer (HOST_IS_SLAVE, SESSION_AUTHENTICATION_FAILED...)."""
    master_address: str | None = None
    """With HOST_IS_SLAVE: the master this host believes in."""
    detail: str = ""
    """One line: what it answered, or why it did not."""
    elapsed: float = 0.0

    @property
    def is_slave(self) -> bool:
        return self.code == HOST_IS_SLAVE

    @property
    def follows(self) -> str | None:
        """Whom its answer says this xapi follows: the master's address (HOST_IS_SLAVE),
        "" when it follows no master it can name (HOST_STILL_BOOTING: still starting, or a
        slave in emergency mode, which refuses all but the emergency calls: sim/api.py,
        api_server.ml), None when it answered as a master. An emergency slave taken for a
        master made the old master step down to it, and the pool had none (golden scenario
        of self-fence chaos seed 2612008014)."""
        if self.is_slave:
            return self.master_address or ""
        if self.code == HOST_STILL_BOOTING:
            return ""
        return None


class _NotXapi(Exception):
    pass


class Ask(Protocol):
    """One request to the xapi at `url` and its {Status, ...} envelope: over a socket
    (`ProbeConnections.ask`), or in process (xenhad.virtual). Raises OSError when it cannot
    connect."""

    def __call__(self, url: str, source_address: str | None,
                 context: ssl.SSLContext | None, method: str, *params: str
                 ) -> Awaitable[dict[str, Any]]: ...


async def probe(
    address_or_url: str,
    *,
    source_address: str | None = None,
    timeout: float,
    verify_tls: bool = False,
    ca_file: str | None = None,
    connections: ProbeConnections | None = None,
    ask: Ask | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """Ask the xapi at `address_or_url` ("10.0.0.2", "https://10.0.0.2", "http://h:8080")
    whether it is there, speaking from `source_address` if given, within `timeout` seconds
    for the whole probe. Reuses a connection of `connections` if given; without, opens one
    and closes it. Never raises (except cancellation). `ask` and `monotonic` replace the
    sockets (`connections` is then unused) and the clock (virtual time)."""
    started = monotonic()
    if ask is None:
        conns = connections if connections is not None else OneShotConnections()
        ask = conns.ask
    ask_xapi: Ask = ask

    def result(answered: bool, detail: str, **facts: Any) -> ProbeResult:
        return ProbeResult(answered, detail=detail, elapsed=monotonic() - started, **facts)

    try:
        url = _probe_url(address_or_url)
        context = _tls_context(url, verify_tls, ca_file)
        reply = await _login(ask_xapi, url, source_address, context, timeout)
    except _HeldAsMaster:
        return result(True, "answers; its login held past the timeout, as a master holds an "
                      "empty one (5 s)", code=MASTER_HOLDS_LOGIN)
    except asyncio.TimeoutError:
        return result(False, f"no answer within {timeout:g} s")
    except _NotXapi as e:
        return result(False, f"answered, but not as xapi: {e}")
    except ValueError as e:
        return result(False, f"bad probe address {address_or_url!r}: {e}")
    except ssl.SSLError as e:
        return result(False, f"TLS failed: {e.reason or e}")
    except OSError as e:
        return result(False, e.strerror or str(e) or type(e).__name__)
    except Exception as e:
        # A probe is an observation: whatever went wrong, it did not answer.
        return result(False, f"{type(e).__name__}: {e}")

    status = reply.get("Status")
    if status == "Success":
        # Empty credentials accepted (a root account without password): do not leave the
        # session behind.
        session = reply.get("Value")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                ask_xapi(url, source_address, context, "session.logout", str(session)),
                timeout,
            )
        return result(True, "login with empty credentials succeeded", code="")
    description = reply.get("ErrorDescription")
    if not isinstance(description, list) or not description:
        return result(True, f"xapi answered {status!r} without an error description")
    code = str(description[0])
    params = [str(p) for p in description[1:]]
    if code == HOST_IS_SLAVE:
        master = params[0] if params else ""
        return result(True, f"slave of {master or '?'}", code=code, master_address=master or None)
    return result(True, f"xapi answered {code}", code=code)


MASTER_HOLDS_LOGIN = "MASTER_HOLDS_LOGIN"
"""ProbeResult.code of a xapi that answered at once a call every role answers, and held
the empty login past the probe's timeout: a master's brute-force delay (module docstring).
Not an XAPI error code."""


class _HeldAsMaster(Exception):
    pass


async def _login(ask: Ask, url: str, source_address: str | None,
                 context: ssl.SSLContext | None, timeout: float) -> dict[str, Any]:
    """The empty login's envelope within `timeout`. Raises _HeldAsMaster when it is still
    held at the timeout by a xapi that answered `slave_local_login_with_password`,
    asyncio.TimeoutError when nothing answered."""
    login = asyncio.ensure_future(
        ask(url, source_address, context, "session.login_with_password"))
    alive: asyncio.Future[dict[str, Any]] | None = None
    try:
        done, _ = await asyncio.wait({login}, timeout=timeout / 3)
        if login in done:
            return login.result()
        alive = asyncio.ensure_future(
            ask(url, source_address, context, "session.slave_local_login_with_password"))
        done, _ = await asyncio.wait({login}, timeout=timeout - timeout / 3)
        if login in done:
            return login.result()
        if alive.done() and not alive.cancelled() and alive.exception() is None:
            answer = alive.result()
            if answer.get("Status") == "Success":  # a root without password: log it out
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ask(url, source_address, context,
                                               "session.local_logout",
                                               str(answer.get("Value"))), 1.0)
            raise _HeldAsMaster
        raise asyncio.TimeoutError
    finally:
        for pending in (login, alive):
            if pending is None:
                continue
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            elif not pending.cancelled():
                pending.exception()  # read: a refused second call is no error of ours


@functools.lru_cache(maxsize=1024)
def _probe_url(address_or_url: str) -> str:
    # Cached: a tick probes the same hosts' URLs as the last (a 64-host pool's at rest).
    text = address_or_url.strip()
    if not text:
        raise ValueError("empty address")
    if "://" not in text:
        host = f"[{text}]" if ":" in text and not text.startswith("[") else text
        text = f"https://{host}/"
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an address or an http(s) URL")
    parts.port  # noqa: B018 - raises ValueError on a bad port
    return text


def _tls_context(url: str, verify_tls: bool, ca_file: str | None) -> ssl.SSLContext | None:
    if not url.lower().startswith("https:"):
        return None
    return _shared_context(verify_tls, ca_file)


@functools.lru_cache(maxsize=8)
def _shared_context(verify_tls: bool, ca_file: str | None) -> ssl.SSLContext:
    # One context for every probe: building one loads the system's CA store, about 18 ms of
    # CPU, which a tick probing 63 hosts paid 63 times. A CA file changed on disk is read
    # again when the daemon restarts.
    context = ssl.create_default_context(cafile=ca_file)
    if not verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    _small_tls_buffers()
    return context


TLS_READ_BUFFER = 16 * 1024
"""What asyncio's TLS layer reads into, per connection: one TLS record's largest plaintext
(RFC 8446, 5.1). A probe's answer is under 1 kB."""


def _small_tls_buffers() -> None:
    # asyncio's SSLProtocol gives each connection a zeroed 256 KiB read buffer (CPython
    # 3.11, Lib/asyncio/sslproto.py: max_size): with a kept-alive TLS connection to each of
    # 63 hosts that is 16 MiB resident for answers of a few hundred bytes, what a daemon
    # over TLS held beyond one over http (bench/footprint.py --tls). The class attribute
    # sizes every connection made after it is set; reads then come in 16 KiB pieces,
    # which asyncio loops over (sslproto._do_read). Set once, before the first TLS probe,
    # for the whole process: its other TLS (XenAPI, webhooks) does not go through asyncio.
    protocol = getattr(asyncio.sslproto, "SSLProtocol", None)
    if protocol is not None and getattr(protocol, "max_size", 0) > TLS_READ_BUFFER:
        protocol.max_size = TLS_READ_BUFFER


class ProbeConnections:
    """Kept-alive connections for probes: at most one idle connection per URL and source
    address, taken by a probe and given back after a complete answer that leaves it open; a
    probe that finds it taken (another probe of the same URL is in flight) opens its own.

    The daemon owns one and closes it when it stops. Connections belong to the event loop
    that opened them: one instance per loop.
    """

    keep_alive = True

    def __init__(self, *, max_idle: float = REUSE_IDLE_SECONDS) -> None:
        self._max_idle = max_idle
        self._idle: dict[tuple[str, str | None], _Connection] = {}
        self._parsed: dict[tuple[str, str | None], tuple[bytes, dict[str, Any]]] = {}
        """Each host's last answer, as bytes and as read: at rest a slave answers the same
        HOST_IS_SLAVE every tick, and the same bytes mean the same answer, so they are not
        parsed again (an XML-RPC parse was a third of a probe's CPU on a kept connection)."""
        self._swept_at = time.monotonic()
        self._closed = False
        self.opened = 0
        """Connections opened so far (for bench/probe_cost.py)."""

    async def ask(
        self,
        url: str,
        source_address: str | None,
        context: ssl.SSLContext | None,
        method: str,
        *params: str,
    ) -> dict[str, Any]:
        """One XML-RPC call: on the idle connection to `url` if there is one, and once more
        on a fresh connection if that one turns out closed. The caller's timeout bounds the
        whole, retry included."""
        key = (url, source_address)
        request = _request(url, method, params, self.keep_alive)
        conn = self._take(key)
        if conn is not None:
            try:
                return await self._exchange(key, conn, request, reused=True)
            except _ClosedUnderUs:
                pass  # closed while idle (by the server, or a reboot): once more, fresh
        conn = await self._open(url, source_address, context)
        return await self._exchange(key, conn, request, reused=False)

    def close(self) -> None:
        """Close the idle connections; those in use close when their probe ends."""
        self._closed = True
        for conn in self._idle.values():
            conn.drop()
        self._idle.clear()
        self._parsed.clear()

    def _take(self, key: tuple[str, str | None]) -> _Connection | None:
        conn = self._idle.pop(key, None)
        if conn is not None and not conn.reusable(time.monotonic(), self._max_idle):
            conn.drop()
            return None
        return conn

    def _keep(self, key: tuple[str, str | None], conn: _Connection) -> None:
        if self._closed or not self.keep_alive or key in self._idle:
            conn.drop()
            return
        now = time.monotonic()
        conn.idle_since = now
        self._idle[key] = conn
        if now - self._swept_at >= self._max_idle:
            # Hosts no longer probed (gone from the pool, a new probe_url): let go of theirs.
            self._swept_at = now
            for k, c in list(self._idle.items()):
                if not c.reusable(now, self._max_idle):
                    c.drop()
                    del self._idle[k]

    async def _open(
        self, url: str, source_address: str | None, context: ssl.SSLContext | None
    ) -> _Connection:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if context is not None else 80)
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=context,
            server_hostname=host if context is not None else None,
            local_addr=(source_address, 0) if source_address else None,
        )
        self.opened += 1
        return _Connection(reader, writer)

    async def _exchange(
        self, key: tuple[str, str | None], conn: _Connection, request: bytes, *, reused: bool
    ) -> dict[str, Any]:
        answering = False
        try:
            conn.writer.write(request)
            await conn.writer.drain()
            status, headers = await _read_head(conn.reader)
            answering = True
            body, persistent = await _read_body(conn.reader, status, headers)
            last = self._parsed.get(key)
            if last is not None and last[0] == body:
                reply = last[1]
            else:
                reply = _envelope(body)
                self._parsed[key] = (body, reply)
        except BaseException as e:
            # A timeout (cancellation), an error, an answer that is not xapi's: whatever the
            # connection still carries is unknown, so it goes.
            conn.drop()
            if reused and not answering and isinstance(e, _CLOSED):
                raise _ClosedUnderUs() from e
            raise
        if persistent:
            self._keep(key, conn)
        else:
            conn.drop()
        return reply


class OneShotConnections(ProbeConnections):
    """No reuse: each probe opens its own connection and asks the server to close it after
    the answer. For a probe made once (a command, a test) rather than every tick."""

    keep_alive = False


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def reusable(self, now: float, max_idle: float) -> bool:
        return (
            now - self.idle_since <= max_idle
            and not self.reader.at_eof()
            and not self.writer.transport.is_closing()
        )

    def drop(self) -> None:
        # abort, not close: closing TLS politely waits for the peer's close_notify (up to
        # 30 s in asyncio), which a dead or hung host never sends.
        self.writer.transport.abort()


class _ClosedUnderUs(Exception):
    """A reused connection failed before any answer began: the server had closed it."""


class _NoAnswer(ConnectionResetError):
    pass


_CLOSED = (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)
"""Failures that, before any answer, mean the connection was closed at the other end. EOF
reads as _NoAnswer, a ConnectionResetError."""


@functools.lru_cache(maxsize=512)
def _request(url: str, method: str, params: tuple[str, ...], keep_alive: bool) -> bytes:
    # Cached: a probe at rest sends the same bytes to each host every tick.
    parts = urllib.parse.urlsplit(url)
    params = probe_params(method, params)
    body = xmlrpc.client.dumps(params, method, allow_none=True).encode()
    # xapi reads at most 1024 bytes of request header (max_header_length_tcp, xapi_globs.ml).
    return (
        b"POST " + (parts.path or "/").encode() + b" HTTP/1.1\r\n"
        b"Host: " + parts.netloc.encode("idna") + b"\r\n"
        b"User-Agent: " + ORIGINATOR.encode() + b"\r\n"
        b"Content-Type: text/xml\r\n"
        + (b"" if keep_alive else b"Connection: close\r\n")
        + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def probe_params(method: str, params: tuple[str, ...]) -> tuple[str, ...]:
    """What the probe sends: a login with empty credentials, never a password."""
    if method == "session.login_with_password":
        return ("", "", "1.0", ORIGINATOR)
    if method == "session.slave_local_login_with_password":
        return ("", "")
    return params


def envelope(body: bytes) -> dict[str, Any]:
    """The {Status, ...} envelope of an XML-RPC reply body; _NotXapi when it is none."""
    return _envelope(body)


async def _read_head(reader: asyncio.StreamReader) -> tuple[list[str], dict[str, str]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _NotXapi("HTTP header too long") from None
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise _NoAnswer("connection closed without an answer") from None
        raise _NotXapi("truncated HTTP header") from None
    if len(head) > _MAX_HEADER_BYTES:
        raise _NotXapi("HTTP header too long")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/"):
        raise _NotXapi(f"not HTTP: {lines[0][:80]!r}")
    if status[1] != "200":
        raise _NotXapi(f"HTTP {' '.join(status[1:])[:80]}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_body(
    reader: asyncio.StreamReader, status: list[str], headers: dict[str, str]
) -> tuple[bytes, bool]:
    """The answer's body, and whether the connection may carry another request: an HTTP/1.1
    answer that does not say `Connection: close` and whose end its framing told."""
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    persistent = status[0] == "HTTP/1.1" and "close" not in tokens
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader), persistent
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise _NotXapi("bad Content-Length") from None
        if not 0 <= length <= _MAX_BODY_BYTES:
            raise _NotXapi(f"unexpected Content-Length {length}")
        return await _exactly(reader, length), persistent
    # No length: the body ends with the connection (RFC 9112, 6.3), which is then spent.
    body = bytearray()
    while chunk := await reader.read(64 * 1024):
        body += chunk
        if len(body) > _MAX_BODY_BYTES:
            raise _NotXapi("answer too large")
    return bytes(body), False


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await _line(reader)
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise _NotXapi("bad chunk size") from None
        if size == 0:
            break
        if size < 0 or len(body) + size > _MAX_BODY_BYTES:
            raise _NotXapi("answer too large")
        body += await _exactly(reader, size)
        if await _line(reader) != b"\r\n":
            raise _NotXapi("bad chunk")
    # Trailers, up to the empty line that ends the answer: what follows is the next one's.
    trailers = 0
    while await _line(reader) != b"\r\n":
        trailers += 1
        if trailers > 100:
            raise _NotXapi("too many trailers")
    return bytes(body)


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise _NotXapi("HTTP line too long") from None
    except asyncio.IncompleteReadError:
        raise _NotXapi("truncated answer") from None


async def _exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise _NotXapi("truncated answer") from None


def _envelope(body: bytes) -> dict[str, Any]:
    try:
        (reply,), _ = xmlrpc.client.loads(body)
    except (ExpatError, ValueError, xmlrpc.client.Fault, xmlrpc.client.ResponseError) as e:
        raise _NotXapi(f"not an XML-RPC answer ({type(e).__name__})") from None
    # xapi always answers {Status, Value | ErrorDescription} (XAPI-FACTS, api_server).
    if not isinstance(reply, dict) or "Status" not in reply:
        raise _NotXapi("XML-RPC answer without a Status")
    return reply
