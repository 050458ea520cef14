"""XML-RPC transports for XenAPI.Session with a per-call timeout.

XenAPI.Session (the official binding) is plain `xmlrpc.client` with no timeout: on a
black-holed xapi it blocks forever. It accepts a transport, so we give it one of these:

- `TcpTransport`: http or https, optional source address to bind (the daemon on host N
  speaks from N's address, which is also how the simulator knows which host a client is
  "on"), TLS verified by default, optional CA file.
- `UnixTransport`: HTTP over a UNIX socket at any path (XenAPI's own UDSTransport derives
  the path from the URL host, turning every '_' into '/', so it cannot reach arbitrary
  paths such as a simulator's socket in a temporary directory).

Each request opens a new connection and closes it after the reply. That costs a handshake
per call but makes the one property we need easy to state: a failure before the connection
(and its TLS handshake) completed means the request surely did not reach xapi
(`XapiUnreachable(sent=False)`); any failure later is ambiguous (`sent=True`). A reused
keep-alive connection would blur that line, and xmlrpc.client would even resend a request
on one silently (Transport.request retries once on ECONNRESET), which a non-idempotent call
such as VM.start must never suffer.

The timeout is a deadline for the whole request: each socket operation gets only the time
left. A peer that trickles bytes could still stretch one operation to the deadline, never
past it by more than one read.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from xml.parsers.expat import ExpatError

from xenhad import heap
from xenhad.xapi.errors import XapiReplyError, XapiUnreachable

USER_AGENT = "xenhad"
_READ_CHUNK = 64 * 1024
_INTERN_MAX = 64
"""Longer string values are rarely shared (descriptions, XML documents): not interned."""
MAX_REPLY_BYTES = 64 * 1024 * 1024
"""The largest reply read; a larger one fails the call with one XapiReplyError line.

The largest read xenhad makes is the first event.from of a whole pool: 6.0 MiB for the
simulator's 64 hosts and 1,000 VMs (1,066 VM records of 46 fields; VM.get_all_records alone
5.3 MiB). A real VM record has about 110 fields, so a real pool of that size is nearer 15 to
30 MiB: this leaves twice that, and ten times the simulator's. Without a bound one 100 MB
reply took the daemon from 32 to 331 MiB resident (issue 24)."""
MAX_REPLY_DEPTH = 32
"""Arrays and structs nested deeper than this are not xapi's (a record in an event batch is
6 deep): refused while parsing, before a caller recursing into them could overflow."""
TRIM_AFTER_BYTES = 8 * 1024 * 1024
"""After a reply at least this large, freed heap is handed back to the system (malloc_trim):
parsing it fragmented the heap, and the daemon's resident size would stay at its peak."""


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise socket.timeout(f"timed out after {self.seconds:g} s")
        return left


class _BaseTransport(xmlrpc.client.Transport):
    """A request is connect, send, wait, read; the phase a failure happens in decides
    whether the request may have reached xapi."""

    def __init__(self, *, timeout: float, unread: frozenset[str] = frozenset()) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        super().__init__(use_datetime=False, use_builtin_types=False)
        self.timeout = timeout
        self.unread = unread
        """Struct members dropped as a reply is parsed (see `_Unmarshaller`)."""
        self._local = threading.local()

    # Per-thread override so one call (event.from with its server-side wait) can have a
    # longer timeout while the Session and its transport stay shared between threads.
    @contextmanager
    def call_timeout(self, seconds: float) -> Iterator[None]:
        previous = getattr(self._local, "timeout", None)
        self._local.timeout = seconds
        try:
            yield
        finally:
            self._local.timeout = previous

    def current_timeout(self) -> float:
        override: float | None = getattr(self._local, "timeout", None)
        return self.timeout if override is None else override

    def endpoint(self, host: str) -> str:
        """How errors name where we tried to go."""
        raise NotImplementedError

    def _open(self, host: str, timeout: float) -> http.client.HTTPConnection:
        raise NotImplementedError

    def request(  # type: ignore[override]
        self, host: Any, handler: str, request_body: bytes, verbose: bool = False
    ) -> tuple[Any, ...]:
        deadline = _Deadline(self.current_timeout())
        sent = False
        endpoint = self.endpoint(str(host))
        conn = self._open(str(host), deadline.left())
        try:
            conn.connect()
            sock = conn.sock
            assert sock is not None
            sent = True
            sock.settimeout(deadline.left())
            conn.putrequest("POST", handler, skip_accept_encoding=True)
            conn.putheader("Content-Type", "text/xml")
            conn.putheader("User-Agent", USER_AGENT)
            conn.putheader("Connection", "close")
            conn.putheader("Content-Length", str(len(request_body)))
            conn.endheaders(request_body)
            sock.settimeout(deadline.left())
            response = conn.getresponse()
            if response.status != 200:
                # 500/503 while xapi restarts: it did receive the request.
                raise XapiUnreachable(
                    f"HTTP {response.status} {response.reason}",
                    sent=True,
                    endpoint=endpoint,
                )
            return _read_reply(response, sock, deadline, endpoint, self.unread)
        except XapiUnreachable:
            raise
        except XapiReplyError:
            raise
        except xmlrpc.client.Fault:
            raise
        except (OSError, http.client.HTTPException) as e:
            raise XapiUnreachable(_describe(e), sent=sent, endpoint=endpoint) from e
        finally:
            conn.close()


class _Unmarshaller(xmlrpc.client.Unmarshaller):
    """xmlrpc.client's, but a struct member named in `unread` is dropped the moment it is
    parsed. A running VM's last_booted_record is its whole record serialised again: kept
    until the struct closes, a 1,000-VM reply's would grow the heap by megabytes that a
    caller reading none of them would still hold in its resident size afterwards. The name
    is matched at any depth (XML-RPC does not say which struct is a record), so a map key
    of that name, in other_config say, goes too: name only fields nobody reads anywhere.
    Every other member's name, and its value when a short string, is interned (see `end`)."""

    def __init__(self, unread: frozenset[str]) -> None:
        super().__init__(use_datetime=False, use_builtin_types=False)
        self._unread = unread
        self._members: list[int] = []
        self._depth = 0

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if tag == "member":
            self._members.append(len(self._stack))
        elif tag in ("array", "struct"):
            self._depth += 1
            if self._depth > MAX_REPLY_DEPTH:
                raise XapiReplyError(
                    f"xapi reply nests arrays and structs more than {MAX_REPLY_DEPTH} deep: "
                    "refused (not a xapi reply)"
                )
        super().start(tag, attrs)

    def end(self, tag: str) -> None:
        if tag in ("array", "struct"):
            self._depth -= 1
        if tag != "member":
            super().end(tag)
            return
        # Expat balances every end with its start, so a mark is always there. A member
        # leaves exactly its name and value; anything else is malformed, left for
        # end_struct to refuse.
        mark = self._members.pop()
        if len(self._stack) != mark + 2:
            return
        name, value = self._stack[mark], self._stack[mark + 1]
        if name in self._unread:
            del self._stack[mark:]
            return
        # Interned, a field name is one object for the thousand records that carry it, and
        # so is a short value many share (a power state, the ref of the host they run on):
        # held in a cache, the copies would cost more than what they name.
        if isinstance(name, str):
            self._stack[mark] = sys.intern(name)
        if isinstance(value, str) and len(value) <= _INTERN_MAX:
            self._stack[mark + 1] = sys.intern(value)


def _read_reply(
    response: http.client.HTTPResponse, sock: socket.socket, deadline: _Deadline,
    endpoint: str, unread: frozenset[str],
) -> tuple[Any, ...]:
    """The reply's XML-RPC values, parsed as its chunks arrive: a whole pool's records are
    megabytes of XML, never held as one string beside what they parse into."""
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_REPLY_BYTES:
        raise XapiReplyError(
            f"xapi at {endpoint} announced a reply of {int(declared)} bytes, more than the "
            f"{MAX_REPLY_BYTES} xenhad reads: refused"
        )
    unmarshaller = _Unmarshaller(unread)
    parser = xmlrpc.client.ExpatParser(unmarshaller)
    size = 0
    try:
        # The response closes the socket itself once the body is complete (its fp is then
        # None): touching the socket after that would fail with EBADF.
        while not response.isclosed():
            sock.settimeout(deadline.left())
            chunk = response.read(_READ_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise XapiReplyError(
                    f"xapi at {endpoint} sent a reply larger than {MAX_REPLY_BYTES} bytes, "
                    "more than xenhad reads: refused"
                )
            parser.feed(chunk)
        parser.close()
        params: tuple[Any, ...] = unmarshaller.close()
    except xmlrpc.client.Fault:
        raise
    except XapiReplyError:
        raise
    except (ExpatError, xmlrpc.client.ResponseError, ValueError, TypeError) as e:
        raise XapiReplyError(
            f"xapi at {endpoint} sent a reply that is not XML-RPC ({e}): is this a xapi endpoint?"
        ) from e
    finally:
        # What a refused reply had parsed goes now, not with the traceback that holds it.
        del parser, unmarshaller
        if size >= TRIM_AFTER_BYTES:
            _give_back_freed_memory()
    return params


def _give_back_freed_memory() -> None:
    """glibc keeps freed heap for reuse; after a large reply, hand it back (heap.py; a no-op
    where malloc_trim does not exist)."""
    heap.release()


def parse_reply(data: bytes, endpoint: str, unread: frozenset[str] = frozenset()
                ) -> tuple[Any, ...]:
    """A whole reply body's XML-RPC values, parsed as `_read_reply` parses a reply read from
    a socket (the in-process pool of xenhad.virtual answers with the simulator's bytes)."""
    if len(data) > MAX_REPLY_BYTES:
        raise XapiReplyError(
            f"xapi at {endpoint} sent a reply larger than {MAX_REPLY_BYTES} bytes, "
            "more than xenhad reads: refused"
        )
    unmarshaller = _Unmarshaller(unread)
    parser = xmlrpc.client.ExpatParser(unmarshaller)
    try:
        parser.feed(data)
        parser.close()
        params: tuple[Any, ...] = unmarshaller.close()
    except (xmlrpc.client.Fault, XapiReplyError):
        raise
    except (ExpatError, xmlrpc.client.ResponseError, ValueError, TypeError) as e:
        raise XapiReplyError(
            f"xapi at {endpoint} sent a reply that is not XML-RPC ({e}): is this a xapi endpoint?"
        ) from e
    return params


def _describe(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate not verified ({e.verify_message}): give the pool's CA "
            "certificate file in the configuration"
        )
    if isinstance(e, socket.timeout):
        text = str(e) or "timed out"
        return text if "timed out" in text else f"timed out ({text})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


class TcpTransport(_BaseTransport):
    """XML-RPC over http or https, with a timeout and an optional source address."""

    def __init__(
        self,
        *,
        https: bool,
        timeout: float,
        source_address: str | None = None,
        ca_file: str | None = None,
        verify_tls: bool = True,
        unread: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(timeout=timeout, unread=unread)
        self.https = https
        self.source_address = source_address
        self._ssl: ssl.SSLContext | None = None
        if https:
            if verify_tls:
                self._ssl = ssl.create_default_context(cafile=ca_file)
            else:
                # Explicit operator choice (verify_tls = false); never a default.
                self._ssl = ssl.create_default_context()
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE

    def endpoint(self, host: str) -> str:
        return f"{'https' if self.https else 'http'}://{host}"

    def _open(self, host: str, timeout: float) -> http.client.HTTPConnection:
        source = (self.source_address, 0) if self.source_address else None
        if self._ssl is not None:
            return http.client.HTTPSConnection(
                host, timeout=timeout, source_address=source, context=self._ssl
            )
        return http.client.HTTPConnection(host, timeout=timeout, source_address=source)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class UnixTransport(_BaseTransport):
    """XML-RPC over the UNIX socket at `path` (xapi's is /var/lib/xcp/xapi).

    Use with a `http://localhost/` URL: the host part is ignored.
    """

    def __init__(self, path: str, *, timeout: float,
                 unread: frozenset[str] = frozenset()) -> None:
        super().__init__(timeout=timeout, unread=unread)
        self.path = path

    def endpoint(self, host: str) -> str:
        return self.path

    def _open(self, host: str, timeout: float) -> http.client.HTTPConnection:
        return _UnixConnection(self.path, timeout)
