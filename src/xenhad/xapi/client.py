"""`Xapi`: the async facade over XenAPI.Session that the rest of xenhad talks to.

XenAPI.Session is synchronous. Every call here runs it in a worker thread of a small
executor owned by the facade, bounded twice: the transport's socket deadline is the real
bound (it frees the thread), and `asyncio.wait_for` is the backstop that frees the event
loop even if a thread wedges anyway. A black-holed xapi therefore costs a call its timeout,
never the daemon its loop.

Retries (tenacity, jittered exponential backoff) happen only where repeating is harmless,
a property decided by `may_retry(method, error)` and nothing else:

- reads (get_*, compute_*, event.from) and idempotent writes are retried whenever xapi was
  unreachable;
- every other write (VM.start, VM.start_on, VM.power_state_reset, host.declare_dead,
  pool.emergency_transition_to_master, pool.recover_slaves, pool.add_to_other_config, and
  any method we do not know) is retried only when the request surely never left us
  (`XapiUnreachable.sent` is False, e.g. connection refused). After an ambiguous timeout the
  call may have been performed; the caller gets the error and decides from fresh state.

xapi failures (`XapiError`) are never retried here: they are answers. Inside
`single_attempt()` nothing is retried: a caller that polls anyway (a daemon whose own xapi
is restarting) must not sit out a backoff after that xapi is back.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import enum
import re
import urllib.parse
import xmlrpc.client
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

import XenAPI
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from xenhad.clock import Clock, SystemClock
from xenhad.errors import ConfigError
from xenhad.xapi.errors import (
    HOST_IS_SLAVE,
    SESSION_INVALID,
    XapiError,
    XapiException,
    XapiReplyError,
    XapiUnreachable,
    shown,
)
from xenhad.xapi.transport import TcpTransport, UnixTransport

LOCAL_SOCKET = "/var/lib/xcp/xapi"
ORIGINATOR = "xenhad"
API_VERSION = "1.0"
"""login_with_password's version argument; xapi ignores it (xapi_session.ml)."""

RecordClass = Literal["pool", "host", "host_metrics", "VM", "SR", "PBD", "VDI", "VBD",
                      "network", "PIF", "VIF", "VM_group"]
Record = dict[str, Any]
T = TypeVar("T")

_single_attempt: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "xenhad_xapi_single_attempt", default=False)


@contextlib.contextmanager
def single_attempt() -> Iterator[None]:
    """Calls made inside (and in tasks started inside) are tried once, never retried."""
    token = _single_attempt.set(True)
    try:
        yield
    finally:
        _single_attempt.reset(token)


class Safety(enum.Enum):
    """How safe a method is to repeat when we do not know whether it was performed."""

    READ = "read"
    IDEMPOTENT = "idempotent"
    NOT_IDEMPOTENT = "not-idempotent"


# Writes whose repetition converges to the same state.
IDEMPOTENT_WRITES = frozenset(
    {
        "host.disable",
        "host.enable",
        "pool.sync_database",
        # Removing a key twice leaves the map as removing it once.
        "pool.remove_from_other_config",
        "VM.remove_from_other_config",
        "host.remove_from_other_config",
        # A repeated login only makes a second session, which xapi expires.
        "session.login_with_password",
        "session.slave_local_login_with_password",
    }
)

# Listed for readers; any unknown method is treated the same way.
NOT_IDEMPOTENT_WRITES = frozenset(
    {
        "VM.start",
        "VM.start_on",
        "VM.power_state_reset",
        # A second hard_shutdown could hit a VM that was started again meanwhile.
        "VM.hard_shutdown",
        "host.declare_dead",
        "pool.emergency_transition_to_master",
        "pool.emergency_reset_master",
        "pool.recover_slaves",
        # add_to_other_config is our compare-and-set lock: a repeat after an unseen success
        # answers MAP_DUPLICATE_KEY and we would think someone else holds the lock.
        "pool.add_to_other_config",
        "VM.add_to_other_config",
        "host.add_to_other_config",
    }
)

_READ_METHODS = frozenset({"event.from", "event.get_current_id"})
_READ_PREFIXES = ("get_", "compute_")


def safety_of(method: str) -> Safety:
    """READ, IDEMPOTENT or NOT_IDEMPOTENT; anything not known to be safe is NOT_IDEMPOTENT."""
    if method in IDEMPOTENT_WRITES:
        return Safety.IDEMPOTENT
    if method in NOT_IDEMPOTENT_WRITES:
        return Safety.NOT_IDEMPOTENT
    if method in _READ_METHODS or method.rpartition(".")[2].startswith(_READ_PREFIXES):
        return Safety.READ
    return Safety.NOT_IDEMPOTENT


def may_retry(method: str, error: BaseException) -> bool:
    """Whether `method` may be sent again after failing with `error`.

    Only an unreachable xapi is worth retrying. A non-idempotent method is retried only when
    the failed request surely did not reach xapi.
    """
    if not isinstance(error, XapiUnreachable):
        return False
    if safety_of(method) is Safety.NOT_IDEMPOTENT:
        return not error.sent
    return True


def _follow_url(url: str, master_address: str) -> str:
    """`url` with its host replaced by the master's address.

    Scheme, port and path are kept: xapi listens on the same ports on every member of a
    pool (80 and 443 on a real pool; one port shared by every simulated host), so the
    port that reached a slave reaches the master too.
    """
    parts = urllib.parse.urlsplit(url)
    host = f"[{master_address}]" if ":" in master_address else master_address
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _normalise_endpoint(endpoint: str) -> str:
    if endpoint.startswith("/"):
        return endpoint
    if "://" not in endpoint:
        if not endpoint or "/" in endpoint:
            raise ConfigError(
                f"xapi endpoint {endpoint!r} is neither a socket path nor a URL: give "
                f"{LOCAL_SOCKET} or https://<master address>"
            )
        return f"https://{endpoint}"
    scheme = endpoint.split("://", 1)[0].lower()
    if scheme not in ("http", "https") or not urllib.parse.urlsplit(endpoint).hostname:
        raise ConfigError(
            f"xapi endpoint {endpoint!r} is not an http(s) URL with a host: give "
            f"https://<master address> or the socket path {LOCAL_SOCKET}"
        )
    return endpoint


class Xapi:
    """Async XAPI client for one endpoint: the local socket path or an http(s) URL.

    `timeout` bounds one request (seconds); `retry_attempts` is the total number of
    attempts of a retryable call (1 = no retry); backoff between attempts is random in
    [0, min(retry_backoff_max, retry_backoff * 2**n)] ("full jitter").
    """

    def __init__(
        self,
        endpoint: str = LOCAL_SOCKET,
        *,
        username: str = "root",
        password: str = "",
        source_address: str | None = None,
        ca_file: str | None = None,
        verify_tls: bool = True,
        timeout: float = 10.0,
        retry_attempts: int = 3,
        retry_backoff: float = 0.5,
        retry_backoff_max: float = 5.0,
        workers: int = 4,
        clock: Clock | None = None,
        unread: frozenset[str] = frozenset(),
    ) -> None:
        if timeout <= 0:
            raise ConfigError(f"xapi timeout {timeout!r} must be positive: give seconds > 0")
        if retry_attempts < 1:
            raise ConfigError(
                f"xapi retry_attempts {retry_attempts!r} must be at least 1 (1 = no retry)"
            )
        if retry_backoff < 0 or retry_backoff_max < 0:
            raise ConfigError("xapi retry_backoff and retry_backoff_max must not be negative")
        self.endpoint = _normalise_endpoint(endpoint)
        self.local = self.endpoint.startswith("/")
        self.username = username
        self._password = password
        self.source_address = source_address
        self.ca_file = ca_file
        self.verify_tls = verify_tls
        self.timeout = timeout
        self.unread = unread
        """Record fields this facade's caller never reads: dropped as replies are parsed."""
        self.retry_attempts = retry_attempts
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self._clock = clock or SystemClock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="xenhad-xapi"
        )
        self.url: str | None = None
        """The URL in use: the configured one, or the master's after HOST_IS_SLAVE."""
        self._session: Any = None
        self._transport: TcpTransport | UnixTransport | None = None
        self._login_method: str | None = None
        self._login_lock: asyncio.Lock | None = None
        self.requests: collections.Counter[str] = collections.Counter()
        """Requests sent per method (each attempt counts; logins count under their name)."""
        self.logins = 0
        """Sessions opened so far: what a session-bound cache (event tokens) keys on."""

    def __repr__(self) -> str:
        return f"Xapi({self.endpoint!r}, username={self.username!r})"

    # ----------------------------------------------------------------- sessions

    def _new_session(self, url: str | None) -> tuple[Any, TcpTransport | UnixTransport]:
        transport: TcpTransport | UnixTransport
        if url is None:
            transport = UnixTransport(self.endpoint, timeout=self.timeout, unread=self.unread)
            return XenAPI.Session("http://localhost/", transport=transport), transport
        transport = TcpTransport(
            https=url.lower().startswith("https:"),
            timeout=self.timeout,
            source_address=self.source_address,
            ca_file=self.ca_file,
            verify_tls=self.verify_tls,
            unread=self.unread,
        )
        return XenAPI.Session(url, transport=transport), transport

    @property
    def logged_in(self) -> bool:
        return self._session is not None

    async def login(self) -> None:
        """session.login_with_password; over TCP, follows HOST_IS_SLAVE to the master once.

        On the local socket any credentials work (pre-authenticated as root), but on a slave
        whose master is gone this login blocks inside xapi: only our timeout ends it. Use
        `login_local` there.
        """
        await self._login("login_with_password")

    async def login_local(self) -> None:
        """session.slave_local_login_with_password: answered by this host's xapi alone, so it
        works on a slave whose master is dead (xapi_session.ml). Logout uses local_logout."""
        await self._login("slave_local_login_with_password")

    async def _login(self, method: str) -> None:
        async with self._lock():
            await self._drop_session()
            await self._login_locked(method)

    async def _ensure_session(self) -> None:
        if self._session is not None:
            return
        async with self._lock():
            if self._session is None:
                await self._login_locked(self._login_method or "login_with_password")

    def _lock(self) -> asyncio.Lock:
        # Created on first use: an asyncio.Lock made outside the loop binds the wrong loop
        # on Python 3.9.
        if self._login_lock is None:
            self._login_lock = asyncio.Lock()
        return self._login_lock

    async def _login_locked(self, method: str) -> None:
        self._login_method = method
        url = None if self.local else self.endpoint
        try:
            await self._login_at(url, method)
        except XapiError as e:
            if e.code != HOST_IS_SLAVE or url is None or method != "login_with_password":
                raise
            master = e.params[0] if e.params else ""
            if not master:
                raise
            # One hop only: a master that also answers HOST_IS_SLAVE means the pool is
            # mid-transition; the caller retries later from the configured URL.
            await self._login_at(_follow_url(url, master), method)

    async def _login_at(self, url: str | None, method: str) -> None:
        session, transport = self._new_session(url)
        if method == "login_with_password":
            args: tuple[str, ...] = (self.username, self._password, API_VERSION, ORIGINATOR)
        else:
            args = (self.username, self._password)

        def work() -> None:
            getattr(session, method)(*args)

        await self._retrying(f"session.{method}", transport, work)
        self._session, self._transport, self.url = session, transport, url
        self.logins += 1

    async def logout(self) -> None:
        """Best effort: a dead xapi forgets our session anyway."""
        session, transport = self._session, self._transport
        self._session = None
        if session is None or transport is None:
            return
        method = "session.local_logout" if self._is_local_login() else "session.logout"
        with contextlib.suppress(XapiException):
            await self._once(method, transport, lambda: session.xenapi.session.logout())

    def _is_local_login(self) -> bool:
        return (self._login_method or "").startswith("slave_local")

    async def _drop_session(self) -> None:
        if self._session is not None:
            await self.logout()

    async def close(self) -> None:
        await self.logout()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Xapi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------- calls

    async def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call `method` ("VM.start", ...) with our session prepended to `args`.

        Logs in first if needed (as the last login did; login_with_password at first).
        Retries per `may_retry`.
        """
        await self._ensure_session()
        session, transport = self._session, self._transport
        assert transport is not None
        target: Any = session.xenapi
        for part in method.split("."):
            target = getattr(target, part)

        def work() -> Any:
            return target(*args)

        try:
            return await self._retrying(method, transport, work, timeout)
        except XapiError as e:
            if e.code == HOST_IS_SLAVE:
                # Our host stopped being the master (XenAPI re-logged in after
                # SESSION_INVALID and was told so): start over from the configured URL.
                self._session = None
            raise

    async def _retrying(
        self,
        method: str,
        transport: TcpTransport | UnixTransport,
        work: Callable[[], T],
        timeout: float | None = None,
    ) -> T:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(1 if _single_attempt.get() else self.retry_attempts),
            wait=wait_random_exponential(multiplier=self.retry_backoff, max=self.retry_backoff_max),
            retry=retry_if_exception(lambda e: may_retry(method, e)),
            sleep=self._clock.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(method, transport, work, timeout)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _once(
        self,
        method: str,
        transport: TcpTransport | UnixTransport,
        work: Callable[[], T],
        timeout: float | None = None,
    ) -> T:
        seconds = self.timeout if timeout is None else timeout
        endpoint = self.url or self.endpoint

        def run() -> T:
            with transport.call_timeout(seconds):
                try:
                    return work()
                except XenAPI.Failure as e:
                    raise XapiError.from_details(e.details, endpoint=endpoint) from None
                except xmlrpc.client.Fault as e:
                    raise _from_fault(method, e) from None
                except (TypeError, KeyError, IndexError, AttributeError, ValueError) as e:
                    # XenAPI.Session's own parsing of a reply it did not expect.
                    raise XapiReplyError(
                        f"xapi at {endpoint} answered {method} with a malformed reply ({e})"
                    ) from e

        self.requests[method] += 1
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, run)
        # XenAPI re-logs in and resends up to 3 times after SESSION_INVALID, each request
        # bounded by the transport: leave room for one such round before the backstop.
        backstop = 2 * seconds + 1.0
        try:
            return await asyncio.wait_for(future, backstop)
        except asyncio.TimeoutError:
            raise XapiUnreachable(
                f"{method} did not return within {backstop:g} s", sent=True, endpoint=endpoint
            ) from None

    # ------------------------------------------------------------ typed methods

    async def get_all_records(self, cls: RecordClass) -> dict[str, Record]:
        """ref -> record for every object of `cls`."""
        reply = await self.call(f"{cls}.get_all_records")
        if not isinstance(reply, dict):
            raise XapiReplyError(
                f"{cls}.get_all_records answered {type(reply).__name__}, not a map of records"
            )
        return reply

    async def host_compute_free_memory(self, host: str) -> int:
        return _int_reply(
            "host.compute_free_memory", await self.call("host.compute_free_memory", host)
        )

    async def host_declare_dead(self, host: str) -> None:
        await self.call("host.declare_dead", host)

    async def host_disable(self, host: str) -> None:
        await self.call("host.disable", host)

    async def host_enable(self, host: str) -> None:
        await self.call("host.enable", host)

    async def vm_power_state_reset(self, vm: str) -> None:
        await self.call("VM.power_state_reset", vm)

    async def vm_start(self, vm: str, *, start_paused: bool = False, force: bool = False) -> None:
        await self.call("VM.start", vm, start_paused, force)

    async def vm_start_on(
        self, vm: str, host: str, *, start_paused: bool = False, force: bool = False,
        timeout: float | None = None,
    ) -> None:
        """`timeout`: a start boots the VM (start_delay included), far longer than a
        database call; None uses the facade's."""
        await self.call("VM.start_on", vm, host, start_paused, force, timeout=timeout)

    async def vm_hard_shutdown(self, vm: str) -> None:
        await self.call("VM.hard_shutdown", vm)

    async def pool_emergency_transition_to_master(self) -> None:
        await self.call("pool.emergency_transition_to_master")

    async def pool_emergency_reset_master(self, master_address: str) -> None:
        await self.call("pool.emergency_reset_master", master_address)

    async def pool_recover_slaves(self) -> list[str]:
        """Refs of the hosts that were told the new master (failures are dropped by xapi)."""
        reply = await self.call("pool.recover_slaves")
        if not isinstance(reply, (list, tuple)) or not all(isinstance(r, str) for r in reply):
            raise XapiReplyError(
                f"pool.recover_slaves answered {shown(reply)}, not a list of host refs"
            )
        return list(reply)

    async def pool_sync_database(self) -> None:
        await self.call("pool.sync_database")

    async def pool_add_to_other_config(self, pool: str, key: str, value: str) -> None:
        """Raises XapiError MAP_DUPLICATE_KEY when `key` exists: an atomic test-and-set."""
        await self.call("pool.add_to_other_config", pool, key, value)

    async def pool_remove_from_other_config(self, pool: str, key: str) -> None:
        await self.call("pool.remove_from_other_config", pool, key)

    async def event_from(
        self, classes: Sequence[str], token: str, timeout: float
    ) -> Mapping[str, Any]:
        """event.from: waits up to `timeout` s server-side, so the request gets that long
        on top of our own timeout."""
        reply = await self.call(
            "event.from", list(classes), token, float(timeout), timeout=timeout + self.timeout
        )
        if not isinstance(reply, dict) or "token" not in reply:
            raise XapiReplyError("event.from answered without a token: not an event batch")
        return reply


def _int_reply(method: str, value: object) -> int:
    # int64 travels as a decimal string in XML-RPC: plain ASCII digits, 64 bits at most.
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,19}", value.strip()):
        number = int(value.strip())
    if number is None or not -(2**63) <= number < 2**63:
        raise XapiReplyError(f"{method} answered {shown(value)}, not a 64-bit integer")
    return number


def _from_fault(method: str, fault: xmlrpc.client.Fault) -> XapiException:
    text = fault.faultString if isinstance(fault.faultString, str) else shown(fault.faultString)
    text = text if len(text) <= 200 else text[:197] + "..."
    # XenAPI.Session raises these Faults itself when a re-login after SESSION_INVALID does
    # not give it a valid session (XenAPI.py xenapi_request / _login).
    if "SESSION_INVALID" in text or "valid session" in text or fault.faultCode == 401:
        return XapiError(SESSION_INVALID, (text,))
    return XapiReplyError(f"xapi answered {method} with XML-RPC fault {fault.faultCode}: {text}")
