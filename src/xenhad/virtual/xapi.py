"""The Xapi facade and the probe, answered in process by the simulator's own api.py.

`InProcessXapi` is `xenhad.xapi.client.Xapi` with its bottom replaced: where Xapi hands a
XenAPI.Session call to a worker thread that speaks XML-RPC over a socket, this one sends the
same request over `World.request` and parses the very bytes the XML-RPC server would have
written, with the transport's own parser (unread fields dropped). What a caller sees is
therefore what it sees over the wire: the same values, the same exception types
(XapiError from the ErrorDescription, XapiUnreachable with the same `sent`, XapiReplyError),
XenAPI.Session's own handling of SESSION_INVALID (log in again with the last login, resend,
at most 3 times: XenAPI.py xenapi_request), HOST_IS_SLAVE followed once (Xapi._login_locked),
and the facade's retries (tenacity, the same `may_retry`), with its jitter drawn from the
run's seed instead of the global `random`.

The endpoint and source address pick the hosts as they do for the simulator: a URL names
the host whose address it holds, a socket path the host whose xapi.sock it is (the UNIX
channel: pre-authenticated, no network cut on its way), and `source_address` the host the
request comes from (None: the outside, which every cut lets through).

Not modelled yet: `Async.*` calls (their task runs in a thread of the simulator); they are
refused with a one-line XapiReplyError naming this module.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import ssl
import urllib.parse
import xmlrpc.client
from collections.abc import Callable
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from xenhad.virtual import marshal
from xenhad.virtual.world import NoAnswer, World
from xenhad.xapi.client import (
    API_VERSION,
    LOCAL_SOCKET,
    ORIGINATOR,
    T,
    Xapi,
    _from_fault,
    _single_attempt,
    may_retry,
)
from xenhad.xapi.errors import XapiError, XapiReplyError, XapiUnreachable
from xenhad.xapi.probe import ProbeConnections, ProbeResult, envelope, probe, probe_params

_request_seconds: contextvars.ContextVar[float] = contextvars.ContextVar(
    "xenhad_virtual_request_seconds", default=10.0)
"""The deadline of each request of the call in flight (transport.call_timeout's twin)."""


class _Failure(Exception):
    """XenAPI.Failure: xapi's ErrorDescription."""

    def __init__(self, details: list[Any]) -> None:
        super().__init__(details)
        self.details = details


_RECONNECT_AND_RETRY = object()


def _parse_result(result: Any) -> Any:
    # XenAPI.py _parse_result, to the letter.
    if not isinstance(result, dict) or "Status" not in result:
        raise xmlrpc.client.Fault(500, "Missing Status in response from server")
    if result["Status"] == "Success":
        if "Value" in result:
            return result["Value"]
        raise xmlrpc.client.Fault(500, "Missing Value in response from server")
    if "ErrorDescription" in result:
        if result["ErrorDescription"][0] == "SESSION_INVALID":
            return _RECONNECT_AND_RETRY
        raise _Failure(result["ErrorDescription"])
    raise xmlrpc.client.Fault(500, "Missing ErrorDescription in response from server")


class _Dispatcher:
    def __init__(self, send: Callable[[str, tuple[Any, ...]], Any], name: str | None) -> None:
        self._send = send
        self._name = name

    def __getattr__(self, name: str) -> _Dispatcher:
        return _Dispatcher(self._send, name if self._name is None else f"{self._name}.{name}")

    def __call__(self, *args: Any) -> Any:
        assert self._name is not None
        return self._send(self._name, args)


class _Session:
    """XenAPI.Session's session handling (XenAPI.py), its requests sent in process."""

    def __init__(self, facade: InProcessXapi, url: str | None) -> None:
        self._facade = facade
        self._url = url
        self.handle: Any = None
        self.last_login_method: str | None = None
        self.last_login_params: tuple[Any, ...] = ()

    @property
    def xenapi(self) -> _Dispatcher:
        return _Dispatcher(self._xenapi_request, None)

    async def login(self, method: str, params: tuple[Any, ...]) -> None:
        result = _parse_result(await self._rpc(f"session.{method}", params))
        if result is _RECONNECT_AND_RETRY:
            raise xmlrpc.client.Fault(500, "Received SESSION_INVALID when logging in")
        self.handle = result
        self.last_login_method = method
        self.last_login_params = params

    async def _xenapi_request(self, name: str, params: tuple[Any, ...]) -> Any:
        if name in ("logout", "session.logout"):
            return await self._logout()
        for _ in range(3):
            result = _parse_result(await self._rpc(name, (self.handle, *params)))
            if result is not _RECONNECT_AND_RETRY:
                return result
            if not self.last_login_method:
                raise xmlrpc.client.Fault(401, "You must log in")
            await self.login(self.last_login_method, self.last_login_params)
        raise xmlrpc.client.Fault(500, "Tried 3 times to get a valid session, but failed")

    async def _logout(self) -> Any:
        try:
            local = (self.last_login_method or "").startswith("slave_local")
            name = "session.local_logout" if local else "session.logout"
            return _parse_result(await self._rpc(name, (self.handle,)))
        finally:
            self.handle = None
            self.last_login_method = None
            self.last_login_params = ()

    async def _rpc(self, name: str, params: tuple[Any, ...]) -> Any:
        f = self._facade
        if f.guard is not None:
            f.guard()
        world = f.world
        if self._url is None:
            target, channel, source = world.host_of_socket(f.endpoint), "unix", None
            source = target
        else:
            target = world.host_at(urllib.parse.urlsplit(self._url).hostname or "")
            channel = "tcp"
            source = world.host_at(f.source_address) if f.source_address else None
        endpoint = self._url or f.endpoint
        reply = await world.request(target, channel, source, name, list(params),
                                    _request_seconds.get())
        return reply.read(endpoint, f.unread)


class InProcessXapi(Xapi):
    """`Xapi` over a World: same constructor (plus the world, and a Random for the retry
    jitter, else one forked from the world's), same public API, no thread."""

    def __init__(self, world: World, endpoint: str = LOCAL_SOCKET, *,
                 jitter: random.Random | None = None,
                 guard: Callable[[], None] | None = None, **kwargs: Any) -> None:
        """`guard` is called before each request: it raises when the caller may send none
        (a daemon whose host lost its power, xenhad.virtual.daemons)."""
        if kwargs.get("clock") is None:
            kwargs["clock"] = world.clock
        kwargs["workers"] = 1  # Xapi makes an executor; this facade never submits to it
        super().__init__(endpoint, **kwargs)
        self.world = world
        self._jitter = jitter or world.fork()
        self.guard = guard

    def _new_session(self, url: str | None) -> tuple[Any, Any]:
        session = _Session(self, url)
        return session, session

    async def _login_at(self, url: str | None, method: str) -> None:
        session, transport = self._new_session(url)
        if method == "login_with_password":
            args: tuple[str, ...] = (self.username, self._password, API_VERSION, ORIGINATOR)
        else:
            args = (self.username, self._password)
        await self._retrying(f"session.{method}", transport,
                             lambda: session.login(method, args))
        self._session, self._transport, self.url = session, transport, url
        self.logins += 1

    async def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        if method.startswith("Async."):
            raise XapiReplyError(f"{method}: Async calls are not modelled in process yet "
                                 "(xenhad.virtual.xapi)")
        return await super().call(method, *args, timeout=timeout)

    async def _retrying(self, method: str, transport: Any, work: Callable[[], T],
                        timeout: float | None = None) -> T:
        # Xapi._retrying with the full-jitter backoff drawn from the run's Random.
        retrying = AsyncRetrying(
            stop=stop_after_attempt(1 if _single_attempt.get() else self.retry_attempts),
            wait=_FullJitter(self._jitter, self.retry_backoff, self.retry_backoff_max),
            retry=retry_if_exception(lambda e: may_retry(method, e)),
            sleep=self._clock.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(method, transport, work, timeout)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _once(self, method: str, transport: Any, work: Callable[[], T],
                    timeout: float | None = None) -> T:
        seconds = self.timeout if timeout is None else timeout
        endpoint = self.url or self.endpoint

        async def run() -> Any:
            try:
                return await work()  # type: ignore[misc]
            except _Failure as e:
                raise XapiError.from_details(e.details, endpoint=endpoint) from None
            except xmlrpc.client.Fault as e:
                raise _from_fault(method, e) from None
            except NoAnswer as e:
                raise XapiUnreachable(e.reason, sent=e.sent, endpoint=endpoint) from None

        self.requests[method] += 1
        token = _request_seconds.set(seconds)
        try:
            backstop = 2 * seconds + 1.0  # Xapi._once's, for the same reason
            try:
                result: T = await asyncio.wait_for(run(), backstop)
            except asyncio.TimeoutError:
                raise XapiUnreachable(
                    f"{method} did not return within {backstop:g} s", sent=True,
                    endpoint=endpoint) from None
            return result
        finally:
            _request_seconds.reset(token)

    async def close(self) -> None:
        await self.logout()
        self._executor.shutdown(wait=False)


class _FullJitter(wait_base):
    """tenacity's wait_random_exponential (uniform in [0, min(max, multiplier * 2**n)]),
    from a given Random."""

    def __init__(self, rng: random.Random, multiplier: float, maximum: float) -> None:
        self._rng = rng
        self._multiplier = multiplier
        self._max = maximum

    def __call__(self, retry_state: Any) -> float:
        try:
            high = self._multiplier * 2 ** (retry_state.attempt_number - 1)
        except OverflowError:
            high = self._max
        return self._rng.uniform(0, max(0.0, min(self._max, high)))


def prober(world: World) -> Callable[..., Any]:
    """`xenhad.xapi.probe.probe` with its request sent in process and its elapsed time read
    from the virtual clock: the same interpretation of every answer and silence."""

    async def ask(url: str, source_address: str | None, context: ssl.SSLContext | None,
                  method: str, *params: str) -> dict[str, Any]:
        parts = urllib.parse.urlsplit(url)
        address = parts.hostname or ""
        port = parts.port or (443 if context is not None else 80)
        target = world.host_at(address)
        source = world.host_at(source_address) if source_address else None
        try:
            # The probe's own wait_for bounds it: no deadline of our own (a day).
            reply = await world.request(target, "tcp", source, method,
                                        list(probe_params(method, params)), 86400.0)
        except NoAnswer as e:
            if not e.sent and e.reason != "timed out":
                # asyncio.open_connection's words for a refused connection.
                raise ConnectionRefusedError(111, f"Connect call failed ('{address}', {port})"
                                             ) from None
            await asyncio.Event().wait()  # silent: the probe's timeout ends it
            raise
        try:
            if not world.wire:
                # What envelope() would parse from the bytes (virtual/marshal.py); any other
                # answer is left to it, and to its complaint.
                read = marshal.loaded(reply.name, reply.kind, reply.value)
                if isinstance(read, dict) and "Status" in read:
                    return read
        except marshal.Unusual:
            pass
        return envelope(reply.body())

    async def in_process_probe(address_or_url: str, *, source_address: str | None = None,
                               timeout: float, verify_tls: bool = False,
                               ca_file: str | None = None,
                               connections: ProbeConnections | None = None) -> ProbeResult:
        # `connections` is taken as the daemon passes it, and unused: in process there is no
        # connection to keep (each request reaches the host's xapi of its time, as a kept
        # connection found closed after a restart is retried once on a fresh one).
        del connections
        return await probe(address_or_url, source_address=source_address, timeout=timeout,
                           verify_tls=verify_tls, ca_file=ca_file, ask=ask,
                           monotonic=world.clock.monotonic)

    return in_process_probe


__all__ = ["InProcessXapi", "prober"]
