"""Alerts: tell the operator about each incident transition, by webhook and/or a local hook.

An HA daemon that acts silently is one operators switch off, so every transition of an
incident is pushed out as it happens. Delivery must never get in the way of recovery:
`send()` only queues (it never blocks the event loop and never raises), a background task
per target delivers, and every failure becomes one log line, never an exception.

Targets ([alerts] in the config, `AlertsConfig`):

- each URL of `webhooks` gets an HTTP POST of the payload as JSON (User-Agent
  "xenhad/<version>", `Authorization: Bearer <token>` when `webhook_token_file` is set),
  each attempt bounded by `timeout`, retried `retries` times with exponential backoff on
  connection errors, timeouts and 5xx answers; a 4xx or 3xx answer is final (repeating
  the same request cannot fix it).
- `exec` is run once per event without a shell: argv = [exec, event], the payload as JSON
  on stdin, an environment of PATH and XENHAD_EVENT only, cwd "/", killed (with its
  process group) after `timeout`. A non-zero exit is logged with its first stderr line.

Deliveries to one target happen one at a time, in the order `send()` was called, so an
incident's "opened" never arrives after its "closed"; a slow target never delays another.

Log events (logger "xenhad.alerts"): alerts.webhook_failed, alerts.exec_failed (error,
with `target` and `reason`), alerts.dropped (a target's queue is full, or the payload
cannot be serialised), alerts.drain_timeout, and alerts.delivered / alerts.webhook_retry at
debug. A webhook is named by its origin only (`https://hooks.example.com`): services such
as Slack put their secret in the URL path. The token is never logged.

Daemon wiring (daemon.py owns it; this module does not reach into the daemon):

    from xenhad.alerts import Alerts

    # at start, after config.load(); CredentialError/ConfigError (one line) if the token
    # file or ca_file is unusable, as for the other secrets:
    alerts = Alerts.from_config(cfg.alerts, pool=pool_uuid, sent_by=host_name)

    # on each incident transition, from the event loop (returns at once, never raises):
    alerts.send({"event": "incident.opened", "incident": incident_id, "host": host_name,
                 "phase": phase.value, "at": clock.wall()})
    # ... "incident.step" per step, "incident.closed" at the end, same keys.

    # on SIGTERM, before the loop stops (waits at most `timeout` seconds, never raises):
    await alerts.drain(timeout=5.0)

`Alerts.from_config` with an [alerts] section naming no target gives an `Alerts` whose
`send()` does nothing, so the daemon needs no "if enabled" branch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from xenhad import __version__, credentials
from xenhad.config import AlertsConfig
from xenhad.errors import ConfigError, CredentialError

log = structlog.get_logger("xenhad.alerts")

USER_AGENT = f"xenhad/{__version__}"
EXEC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The hook's PATH: the system's, never the daemon's (which a unit file may have changed)."""
QUEUE_LIMIT = 256
"""Undelivered payloads kept per target. Past it new ones are dropped (and logged): a target
down for hours must not grow the daemon's memory without bound."""
BACKOFF_MAX = 60.0


@dataclass(frozen=True)
class Delivery:
    """One payload, serialised once at send() time so later changes to the caller's dict
    cannot alter what is delivered."""

    event: str
    body: bytes


class Target(Protocol):
    name: str

    async def deliver(self, delivery: Delivery) -> None:
        """Deliver (with retries where they apply); log any failure; never raise."""


class _Retryable(Exception):
    """An attempt failed in a way another attempt may fix (connection, timeout, 5xx)."""


class _Final(Exception):
    """An attempt failed in a way repeating it cannot fix (4xx, redirect, untrusted TLS)."""


@dataclass
class Webhook:
    url: str = field(repr=False)  # may hold a secret in its path (see the module docstring)
    timeout: float
    retries: int
    executor: concurrent.futures.Executor
    ssl_context: ssl.SSLContext | None = None
    token: str = field(default="", repr=False)
    backoff: float = 1.0
    name: str = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        self.name = f"{parts.scheme}://{parts.netloc}"
        # No redirect handler: urllib would turn a redirected POST into a GET and drop the
        # body, and could carry the bearer token to another host. A 3xx is a final error.
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if self.ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ssl_context))
        self._opener = urllib.request.build_opener(*handlers)

    async def deliver(self, delivery: Delivery) -> None:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff, max=BACKOFF_MAX),
            retry=retry_if_exception_type(_Retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    status = await self._attempt(delivery)
        except (_Retryable, _Final) as exc:
            log.error(
                "alerts.webhook_failed",
                target=self.name,
                alert=delivery.event,
                reason=str(exc),
                attempts=retrying.statistics.get("attempt_number", 1),
            )
            return
        log.debug("alerts.delivered", target=self.name, alert=delivery.event, status=status)

    async def _attempt(self, delivery: Delivery) -> int:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, self._post, delivery.body)
        try:
            # The socket timeout bounds each blocking read; this bounds the whole attempt
            # (a server trickling bytes would otherwise hold it forever). A thread left
            # behind ends at its own socket timeout.
            return await asyncio.wait_for(future, self.timeout)
        except asyncio.TimeoutError:
            raise self._no_answer() from None

    def _no_answer(self) -> Exception:
        return _Retryable(f"no answer within {self.timeout:g}s")

    def _post(self, body: bytes) -> int:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read(65536)  # let the server finish; the body is not ours to read
                return int(response.status)
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code} {exc.reason}".rstrip()
            if exc.code >= 500:
                raise _Retryable(reason) from None
            raise _Final(reason) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, socket.timeout):
                raise self._no_answer() from None
            raise _connect_failure(exc.reason) from None
        except socket.timeout:
            # The socket's own timeout can fire just before wait_for's: the same event.
            raise self._no_answer() from None
        except OSError as exc:
            # Resets and timeouts while reading the answer (http.client raises
            # RemoteDisconnected, an OSError, for a server that closes without answering).
            raise _connect_failure(exc) from None
        except http.client.HTTPException as exc:  # a garbled answer
            raise _Retryable(f"bad HTTP answer: {type(exc).__name__}") from None

    def _log_retry(self, state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        log.debug("alerts.webhook_retry", target=self.name, attempt=state.attempt_number,
                  reason=str(error))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _connect_failure(reason: object) -> Exception:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return _Final(
            f"TLS certificate not trusted ({reason.verify_message}): set alerts.ca_file"
        )
    if isinstance(reason, OSError):
        return _Retryable(reason.strerror or str(reason) or type(reason).__name__)
    return _Retryable(str(reason))


@dataclass
class ExecHook:
    path: Path
    timeout: float
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = str(self.path)

    async def deliver(self, delivery: Delivery) -> None:
        reason = await self._run(delivery)
        if reason:
            log.error("alerts.exec_failed", target=self.name, alert=delivery.event,
                      reason=reason)
        else:
            log.debug("alerts.delivered", target=self.name, alert=delivery.event)

    async def _run(self, delivery: Delivery) -> str:
        """"" on success, else why it failed (one line)."""
        try:
            process = await asyncio.create_subprocess_exec(
                str(self.path),
                delivery.event,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                # The hook runs as root: give it nothing of ours (secrets' paths, proxies,
                # $CREDENTIALS_DIRECTORY) but what the contract promises.
                env={"PATH": EXEC_PATH, "XENHAD_EVENT": delivery.event},
                cwd="/",
                # Its own process group, so a timeout kills the children of a shell script
                # too, not only the shell.
                start_new_session=True,
            )
        except OSError as exc:
            return f"cannot run it: {exc.strerror or exc}"
        try:
            _, stderr = await asyncio.wait_for(process.communicate(delivery.body), self.timeout)
        except asyncio.TimeoutError:
            _kill_group(process.pid)
            await process.wait()
            return f"still running after {self.timeout:g}s: killed"
        finally:
            # Cancelled (drain gave up): leave no hook running behind us.
            if process.returncode is None:
                _kill_group(process.pid)
        code = process.returncode
        if code == 0:
            return ""
        first = next((s.strip() for s in stderr.decode("utf-8", "replace").splitlines()
                      if s.strip()), "")
        assert code is not None  # communicate() returned: the process has exited
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        return f"{how}: {first[:200]}" if first else f"{how}, nothing on stderr"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):  # already gone
        os.killpg(pid, signal.SIGKILL)


@dataclass
class _Lane:
    """One target's queue and the task delivering from it, in order."""

    target: Target
    queue: asyncio.Queue[Delivery]
    task: asyncio.Task[None] | None = None
    undelivered: int = 0
    """Queued plus the one being delivered."""

    async def work(self) -> None:
        while True:
            delivery = await self.queue.get()
            try:
                await self.target.deliver(delivery)
            except Exception as exc:  # a bug in one delivery must not stop the lane
                log.error("alerts.delivery_crashed", target=self.target.name,
                          alert=delivery.event, reason=f"{type(exc).__name__}: {exc}")
            finally:
                self.undelivered -= 1
                self.queue.task_done()


class Alerts:
    """Queues payloads for each target and delivers them in the background (see module)."""

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.targets = tuple(targets)
        self.extra = dict(extra or {})
        self._lanes: list[_Lane] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(
        cls,
        cfg: AlertsConfig,
        *,
        pool: str | None = None,
        sent_by: str | None = None,
        backoff: float = 1.0,
    ) -> Alerts:
        """The targets `cfg` names; `pool` and `sent_by`, when given, are added to every
        payload. `backoff` is the first retry's wait in seconds (it doubles each time).

        Raises CredentialError for an unusable webhook_token_file and ConfigError for an
        unusable ca_file (one line each): these are start-up problems, not alert failures.
        """
        extra = {k: v for k, v in (("pool", pool), ("sent_by", sent_by)) if v is not None}
        targets: list[Target] = []
        if cfg.webhooks:
            token = _read_token(cfg.webhook_token_file) if cfg.webhook_token_file else ""
            https = any(urlsplit(url).scheme.lower() == "https" for url in cfg.webhooks)
            context = _ssl_context(cfg) if https else None
            # A pool of our own: the default executor also runs the watchdog keepalive, and
            # a hung webhook must never make a keepalive wait (a late one resets the host).
            # One thread per webhook, plus one for an attempt abandoned at its timeout.
            executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2 * len(cfg.webhooks), thread_name_prefix="xenhad-alerts"
            )
            targets.extend(
                Webhook(url, cfg.timeout, cfg.retries, executor, ssl_context=context,
                        token=token, backoff=backoff)
                for url in cfg.webhooks
            )
        if cfg.exec is not None:
            targets.append(ExecHook(cfg.exec, cfg.timeout))
        return cls(targets, extra=extra)

    @property
    def enabled(self) -> bool:
        return bool(self.targets)

    def send(self, payload: Mapping[str, Any]) -> None:
        """Queue `payload` for every target and return at once. Never raises: an alert that
        cannot be sent is logged, and the incident goes on."""
        if not self.targets:
            return
        try:
            self._send(payload)
        except Exception as exc:  # an alert must never break the caller's incident handling
            with contextlib.suppress(Exception):
                log.error("alerts.dropped", alert=_event_of(payload),
                          reason=f"{type(exc).__name__}: {exc}")

    def _send(self, payload: Mapping[str, Any]) -> None:
        event = _event_of(payload)
        # The daemon's own keys win over the extras: it knows best what happened.
        document = {**self.extra, **payload}
        body = json.dumps(document, default=str, separators=(",", ":")).encode("utf-8")
        delivery = Delivery(event, body)
        for lane in self._ensure_lanes():
            try:
                lane.queue.put_nowait(delivery)
            except asyncio.QueueFull:
                log.error("alerts.dropped", target=lane.target.name, alert=event,
                          reason=f"{QUEUE_LIMIT} alerts already waiting for this target")
            else:
                lane.undelivered += 1

    def _ensure_lanes(self) -> list[_Lane]:
        loop = asyncio.get_running_loop()  # RuntimeError outside the loop: logged by send()
        if self._loop is not loop:
            # First send, or a new loop (a test, a restarted loop): the old lanes died with
            # their loop.
            self._loop = loop
            self._lanes = []
            for target in self.targets:
                lane = _Lane(target, asyncio.Queue(maxsize=QUEUE_LIMIT))
                lane.task = loop.create_task(lane.work(), name=f"alerts {target.name}")
                self._lanes.append(lane)
        return self._lanes

    @property
    def pending(self) -> int:
        """Payloads queued or being delivered, over all targets."""
        return sum(lane.undelivered for lane in self._lanes)

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for every queued alert to be delivered (or to fail),
        then stop the delivery tasks. Never raises; what is left undelivered is logged."""
        lanes = self._lanes
        if not lanes:
            return
        try:
            await asyncio.wait_for(
                asyncio.gather(*(lane.queue.join() for lane in lanes)), max(timeout, 0.0)
            )
        except asyncio.TimeoutError:
            left = {lane.target.name: lane.undelivered for lane in lanes if lane.undelivered}
            log.error("alerts.drain_timeout", timeout=timeout, undelivered=left)
        except Exception as exc:
            log.error("alerts.drain_failed", reason=f"{type(exc).__name__}: {exc}")
        # Alerts sent while draining joined these queues and were waited for too; only
        # now may a later send() start new lanes.
        self._lanes, self._loop = [], None
        tasks = [lane.task for lane in lanes if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _event_of(payload: Mapping[str, Any]) -> str:
    try:
        return str(payload["event"])
    except Exception:  # not a mapping, no "event": still an alert worth delivering
        return "unknown"


def _read_token(path: Path) -> str:
    token = credentials.read_secret(file=path).strip()
    # http.client refuses a header value with a control character and puts the value in
    # its error message: check here, where the message can leave the token out.
    if not token.isprintable() or not token.isascii() or any(c.isspace() for c in token):
        raise CredentialError(
            f"secret file {path} holds spaces or control characters: write the webhook "
            "token alone on one line"
        )
    return token


def _ssl_context(cfg: AlertsConfig) -> ssl.SSLContext:
    if not cfg.verify_tls:
        # The operator wrote verify_tls = false: anyone on the path can read the alerts
        # (and the token). Their choice; the config documents it.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = str(cfg.ca_file) if cfg.ca_file is not None else None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"alerts.ca_file = {cafile!r} is unusable ({exc}): point it at a PEM file of the "
            "CA that signed the webhook server's certificate"
        ) from None
