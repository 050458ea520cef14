"""Does a host's own xapi answer? One unauthenticated request, never an exception.

The probe sends `session.login_with_password` with EMPTY credentials over TCP. A slave
answers `HOST_IS_SLAVE [master_address]` before looking at any credential
(xapi_session.ml, login_with_password): its xapi is alive, and we learn which master it
believes in, with no password ever on the wire. Any other XAPI-shaped answer (a Failure
or Success envelope) also proves the xapi answered. A socket error, a timeout or a reply
that is not XAPI means it did not.

Caveat, from the same function: a MASTER checks the credentials, and when they are wrong
it sleeps 5 s before answering SESSION_AUTHENTICATION_FAILED (brute-force delay). With a
probe timeout under ~5 s a healthy master therefore looks silent; the probe is meant for
slaves.

The probe is plain asyncio (no thread, no XenAPI.Session): a tick probes every host at once
and a black-holed host must cost only its own timeout, whatever the pool size.

TLS is not verified by default: nothing secret is sent, and a forged answer could only make
a dead host look alive, which delays a failover but never runs a VM twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
import urllib.parse
import xmlrpc.client
from dataclasses import dataclass
from typing import Any
from xml.parsers.expat import ExpatError

from xenhad.xapi.errors import HOST_IS_SLAVE

ORIGINATOR = "xenhad-probe"
_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 1024 * 1024


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


class _NotXapi(Exception):
    pass


async def probe(
    address_or_url: str,
    *,
    source_address: str | None = None,
    timeout: float,
    verify_tls: bool = False,
    ca_file: str | None = None,
) -> ProbeResult:
    """Ask the xapi at `address_or_url` ("10.0.0.2", "https://10.0.0.2", "http://h:8080")
    whether it is there, speaking from `source_address` if given. Never raises (except
    cancellation)."""
    started = time.monotonic()

    def result(answered: bool, detail: str, **facts: Any) -> ProbeResult:
        return ProbeResult(answered, detail=detail, elapsed=time.monotonic() - started, **facts)

    try:
        url = _probe_url(address_or_url)
        context = _tls_context(url, verify_tls, ca_file)
        reply = await asyncio.wait_for(
            _ask(url, source_address, context, "session.login_with_password"), timeout
        )
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
                _ask(url, source_address, context, "session.logout", str(session)), timeout
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


def _probe_url(address_or_url: str) -> str:
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
    return context


async def _ask(
    url: str,
    source_address: str | None,
    context: ssl.SSLContext | None,
    method: str,
    *params: str,
) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if context is not None else 80)
    if method == "session.login_with_password":
        params = ("", "", "1.0", ORIGINATOR)
    body = xmlrpc.client.dumps(params, method, allow_none=True).encode()
    reader, writer = await asyncio.open_connection(
        host,
        port,
        ssl=context,
        server_hostname=host if context is not None else None,
        local_addr=(source_address, 0) if source_address else None,
    )
    try:
        netloc = parts.netloc.encode("idna")
        head = (
            b"POST " + (parts.path or "/").encode() + b" HTTP/1.1\r\n"
            b"Host: " + netloc + b"\r\n"
            b"User-Agent: " + ORIGINATOR.encode() + b"\r\n"
            b"Content-Type: text/xml\r\n"
            b"Connection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        writer.write(head + body)
        await writer.drain()
        return _envelope(await _read_response(reader))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _NotXapi("HTTP header too long") from None
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise ConnectionResetError("connection closed without an answer") from None
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
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise _NotXapi("bad Content-Length") from None
        if not 0 <= length <= _MAX_BODY_BYTES:
            raise _NotXapi(f"unexpected Content-Length {length}")
        return await reader.readexactly(length)
    return await reader.read(_MAX_BODY_BYTES)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readline()
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise _NotXapi("bad chunk size") from None
        if size == 0:
            return bytes(body)
        if len(body) + size > _MAX_BODY_BYTES:
            raise _NotXapi("answer too large")
        body += await reader.readexactly(size)
        await reader.readline()


def _envelope(body: bytes) -> dict[str, Any]:
    try:
        (reply,), _ = xmlrpc.client.loads(body)
    except (ExpatError, ValueError, xmlrpc.client.Fault, xmlrpc.client.ResponseError) as e:
        raise _NotXapi(f"not an XML-RPC answer ({type(e).__name__})") from None
    # xapi always answers {Status, Value | ErrorDescription} (XAPI-FACTS, api_server).
    if not isinstance(reply, dict) or "Status" not in reply:
        raise _NotXapi("XML-RPC answer without a Status")
    return reply
