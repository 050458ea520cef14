"""XAPI messages: what xenhad did, where administrators look (Xen Orchestra, XenCenter, mail).

Native HA speaks through XAPI messages (ocaml/xapi-consts/api_messages.ml: HA_HOST_FAILED,
HA_HOST_WAS_FENCED, HA_POOL_OVERCOMMITTED, ...), which both tools list and xapi's
mail-alarm mails. xenhad posts its own the same way (`message.create`, datamodel.ml's
message class), named XENHAD_*, on the object they are about: the host (class Host), the
VM (class VM) or the pool (class Pool), with a one-line body that names it by its
name_label. Priorities follow api_messages.ml's scale and, where native HA has the same
message, its value:

    1 critical  take action now or data may be lost
    2 major     take action now or a service may fail (a VM stays down)
    3 warning   take action now or a service may suffer
    4 minor     something just improved
    5 info      day-to-day

Posting never gets in the way of recovery: `post()` only queues (bounded, never blocks,
never raises) and one task delivers, one message at a time, each call bounded by
CALL_TIMEOUT and tried again only while the message is younger than GIVE_UP_SECONDS (xapi
restarting as a new master); then it is dropped and counted. A condition that lasts (a
host still not fenced, a VM still without room) is posted again at most every
`repeat` seconds, and a token bucket caps the whole stream (BURST, then one every
REFILL_SECONDS): a host failure with 500 VMs posts what fits and says how many were left
out in the incident's summary line, never a flood.

Messages are files on the master's disk (xapi_message.ml), not database rows: after a
promotion the new master holds only what was posted to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from xenhad.clock import Clock
from xenhad.recovery.incident import Incident, Phase, VmStatus
from xenhad.recovery.offline import OFFLINE
from xenhad.xapi.client import Xapi, single_attempt
from xenhad.xapi.errors import XapiError, XapiUnreachable

log = structlog.get_logger("xenhad.messages")

QUEUE_LIMIT = 128
CALL_TIMEOUT = 5.0
GIVE_UP_SECONDS = 60.0
BURST = 40
REFILL_SECONDS = 3.0


class Priority(enum.IntEnum):
    CRITICAL = 1
    MAJOR = 2
    WARNING = 3
    MINOR = 4
    INFO = 5


class Subject(enum.Enum):
    """datamodel.ml's Message.cls values we post on, spelt as xapi spells them."""

    HOST = "Host"
    VM = "VM"
    POOL = "Pool"


@dataclass(frozen=True)
class Message:
    name: str
    priority: Priority
    cls: Subject
    obj_uuid: str
    body: str
    repeat_key: str = ""
    """Posted at most once per `repeat` seconds under this key ("" = every time)."""


# The catalogue: (name, priority). Where native HA has the same message, its priority.
HOST_FAILED = ("XENHAD_HOST_FAILED", Priority.WARNING)            # HA_HOST_FAILED 3
HOST_FENCED = ("XENHAD_HOST_FENCED", Priority.MINOR)              # HA_HOST_WAS_FENCED 4
HOST_NOT_FENCED = ("XENHAD_HOST_FENCE_FAILED", Priority.MAJOR)
HOST_UNSAFE = ("XENHAD_HOST_NOT_FENCED", Priority.MAJOR)
HOST_XAPI_HUNG = ("XENHAD_HOST_XAPI_HUNG", Priority.MAJOR)
VM_RESTARTED = ("XENHAD_VM_RESTARTED", Priority.MINOR)
VM_GIVEN_UP = ("XENHAD_VM_RESTART_FAILED", Priority.MAJOR)        # HA_PROTECTED_VM_RESTART_FAILED 2
VM_NO_ROOM = ("XENHAD_VM_NO_ROOM", Priority.MAJOR)
VM_RETRY = ("XENHAD_VM_RESTART_DELAYED", Priority.WARNING)
VMS_FOUND_HALTED = ("XENHAD_VMS_FOUND_HALTED", Priority.MAJOR)
INCIDENT_DONE = ("XENHAD_INCIDENT_CLOSED", Priority.MINOR)
INCIDENT_BAD = ("XENHAD_INCIDENT_CLOSED", Priority.MAJOR)
MASTER_PROMOTED = ("XENHAD_MASTER_PROMOTED", Priority.WARNING)    # POOL_MASTER_TRANSITION 4
QUORUM_LOST = ("XENHAD_QUORUM_LOST", Priority.MAJOR)
QUORUM_REGAINED = ("XENHAD_QUORUM_REGAINED", Priority.MINOR)
WATCHDOG_ARMED = ("XENHAD_SELF_FENCE_ARMED", Priority.INFO)
WATCHDOG_NOT_ARMED = ("XENHAD_SELF_FENCE_NOT_ARMED", Priority.MAJOR)
POOL_OVERCOMMITTED = ("XENHAD_POOL_OVERCOMMITTED", Priority.WARNING)  # HA_POOL_OVERCOMMITTED 3
POOL_OVERCOMMIT_CLEARED = ("XENHAD_POOL_OVERCOMMIT_CLEARED", Priority.MINOR)


def make(kind: tuple[str, Priority], cls: Subject, obj_uuid: str, body: str,
         repeat_key: str = "") -> Message:
    # One line: a body that wraps reads badly in every list that shows it.
    line = " ".join(body.split())
    return Message(kind[0], kind[1], cls, obj_uuid, line[:1000], repeat_key)


# -- incidents ---------------------------------------------------------------------------


def incident_messages(before: Incident, after: Incident, names: Mapping[str, str],
                      pool_uuid: str) -> list[Message]:
    """What one step of an incident tells the administrator (pure)."""
    out: list[Message] = []
    host, offline = after.host_name, after.host == OFFLINE
    subject = (Subject.POOL, pool_uuid) if offline else (Subject.HOST, after.host)
    if not before.fenced_by and after.fenced_by and not offline:
        if after.fenced_by == "trust-liveness":
            out.append(make(HOST_UNSAFE, Subject.HOST, after.host,
                            f"{host} was NOT fenced: fencing.mode = trust-liveness restarts "
                            f"its VMs on XAPI's word alone; if {host} still runs, they run "
                            "twice"))
        else:
            tries = after.fence_attempts
            out.append(make(HOST_FENCED, Subject.HOST, after.host,
                            f"{host} is off: fenced by {after.fenced_by}"
                            + (f" after {tries} attempts" if tries > 1 else "")
                            + f"; restarting its protected VMs ({_protected(after)})"))
    if after.phase is Phase.WAITING_FENCE and before.phase is not Phase.WAITING_FENCE:
        out.append(make(HOST_NOT_FENCED, Subject.HOST, after.host,
                        f"{host} could not be fenced (attempt {after.fence_attempts}: "
                        f"{after.note or 'no backend proved it off'}): none of its "
                        f"{_protected(after)} protected VMs is restarted until it is proven "
                        "off; check its BMC and [fencing] config",
                        repeat_key=f"fence:{after.host}"))
    for uuid, task in after.vms.items():
        old = before.vms.get(uuid)
        if old is not None and old.status is task.status and old.attempts == task.attempts:
            continue
        vm = task.vm.name
        if task.status is VmStatus.RUNNING:
            where = names.get(task.host or "", task.host or "a host XAPI chose")
            out.append(make(VM_RESTARTED, Subject.VM, uuid,
                            f"{vm} restarted on {where}: it was found Halted" if offline
                            else f"{vm} restarted on {where} after {host} failed"))
        elif task.status is VmStatus.FAILED:
            out.append(make(VM_GIVEN_UP, Subject.VM, uuid,
                            f"{vm} given up after {host} failed: {task.last_error or '?'}"
                            f" ({task.attempts} attempts); start it by hand"))
        elif task.status is VmStatus.RESET and task.last_error and old is not None:
            if task.last_error.startswith("no host fits"):
                out.append(make(VM_NO_ROOM, Subject.VM, uuid,
                                f"{vm} (protected) cannot be restarted anywhere: "
                                f"{task.last_error[len('no host fits: '):]}; free memory on a "
                                "live host and xenhad retries it",
                                repeat_key=f"room:{uuid}"))
            else:
                out.append(make(VM_RETRY, Subject.VM, uuid,
                                f"{vm} not restarted yet (attempt {task.attempts}): "
                                f"{task.last_error}; retrying",
                                repeat_key=f"retry:{uuid}"))
    if after.phase.closed and not before.phase.closed:
        out.append(closed_message(after, names, subject))
    return out


def _protected(incident: Incident) -> int:
    return sum(1 for t in incident.vms.values() if t.vm.protection.value != "off")


def closed_message(incident: Incident, names: Mapping[str, str],
                   subject: tuple[Subject, str]) -> Message:
    restarted = [f"{t.vm.name} on {names.get(t.host or '', t.host or '?')}"
                 for t in incident.vms.values() if t.status is VmStatus.RUNNING]
    failed = [t.vm.name for t in incident.vms.values() if t.status is VmStatus.FAILED]
    waiting = [t.vm.name for t in incident.vms.values() if not t.status.final]
    took = ((incident.closed_at or incident.opened_at) - incident.opened_at)
    good = incident.phase is Phase.DONE and not failed and not waiting
    parts = [f"incident {incident.id} {incident.phase.value} in {took:.1f} s"]
    if incident.fenced_by:
        parts.append(f"fenced by {incident.fenced_by}")
    parts.append(f"{len(restarted)} restarted" + (
        f" ({_listed(restarted)})" if restarted else ""))
    parts.append(f"{len(failed)} given up" + (f" ({_listed(failed)})" if failed else ""))
    if waiting:
        parts.append(f"{len(waiting)} not restarted ({_listed(waiting)})")
    if incident.phase is Phase.ABORTED and incident.note:
        parts.append(incident.note)
    cls, uuid = subject
    return make(INCIDENT_DONE if good else INCIDENT_BAD, cls, uuid,
                f"{incident.host_name}: " + "; ".join(parts) + "; see xenhad history")


def _listed(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


# -- delivery ----------------------------------------------------------------------------


@dataclass
class _Queued:
    message: Message
    at: float


class PoolMessages:
    """Posts messages through the daemon's XAPI session, in the background (see module).

    `xapi` returns the daemon's current session (None before the first connection);
    `may_post` says whether a message would reach the master now (we are the master, or our
    master is heard): until it does, a message waits (up to GIVE_UP_SECONDS), as a call
    forwarded to a silent master would only hold a thread in XAPI.
    """

    def __init__(self, xapi: Callable[[], Xapi | None], clock: Clock, *,
                 repeat: float = 900.0, enabled: bool = True,
                 may_post: Callable[[], bool] = lambda: True) -> None:
        self._xapi = xapi
        self._may_post = may_post
        self._clock = clock
        self.repeat = repeat
        self.enabled = enabled
        self._queue: asyncio.Queue[_Queued] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, float] = {}
        self._tokens = float(BURST)
        self._refilled = clock.monotonic()
        self.posted = 0
        self.dropped = 0
        self.suppressed = 0
        """Held back by the repeat interval or the rate cap (never sent)."""

    def post(self, message: Message) -> None:
        """Queue `message`; returns at once and never raises."""
        if not self.enabled:
            return
        try:
            self._post(message)
        except Exception as exc:  # a message must never break what the daemon was doing
            with contextlib.suppress(Exception):
                log.error("message.dropped", message=message.name,
                          reason=f"{type(exc).__name__}: {exc}")

    def _post(self, message: Message) -> None:
        now = self._clock.monotonic()
        if message.repeat_key:
            last = self._last.get(message.repeat_key)
            if last is not None and now - last < self.repeat:
                self.suppressed += 1
                return
        self._tokens = min(float(BURST), self._tokens + (now - self._refilled) / REFILL_SECONDS)
        self._refilled = now
        if self._tokens < 1:
            self.suppressed += 1
            if self.suppressed == 1 or self.suppressed % 100 == 0:
                log.warning("message.rate_capped", message=message.name,
                            suppressed=self.suppressed,
                            why=f"more than {BURST} XAPI messages at once: the logs and "
                            "the incident's summary have the rest")
            return
        queue = self._ensure_worker()
        try:
            queue.put_nowait(_Queued(message, now))
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("message.dropped", message=message.name,
                      reason=f"{QUEUE_LIMIT} messages already waiting for XAPI")
            return
        self._tokens -= 1
        if message.repeat_key:
            self._last[message.repeat_key] = now

    def forget(self, repeat_key: str) -> None:
        """The condition ended: its next occurrence is posted at once."""
        self._last.pop(repeat_key, None)

    def _ensure_worker(self) -> asyncio.Queue[_Queued]:
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue(maxsize=QUEUE_LIMIT)
            self._task = asyncio.get_running_loop().create_task(self._work(self._queue),
                                                                name="xapi messages")
        return self._queue

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def _work(self, queue: asyncio.Queue[_Queued]) -> None:
        while True:
            item = await queue.get()
            try:
                await self._deliver(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in one delivery must not stop the rest
                self.dropped += 1
                log.error("message.crashed", message=item.message.name,
                          reason=f"{type(exc).__name__}: {exc}")
            finally:
                queue.task_done()

    async def _deliver(self, item: _Queued) -> None:
        message, wait = item.message, 1.0
        while True:
            # Asked at each try: a slave that has not heard its master yet (just started,
            # or cut off) waits, as for an unreachable xapi, rather than hold a thread.
            ready = self._may_post()
            xapi = self._xapi() if ready else None
            reason = "no XAPI session yet" if ready else "the pool master is not heard"
            if xapi is not None:
                try:
                    # One attempt a call: the facade's retries would outlast our deadline,
                    # and message.create is not idempotent (a resend posts it twice).
                    with single_attempt():
                        await xapi.call("message.create", message.name,
                                        str(int(message.priority)), message.cls.value,
                                        message.obj_uuid, message.body,
                                        timeout=CALL_TIMEOUT)
                    self.posted += 1
                    log.debug("message.posted", message=message.name, obj=message.obj_uuid)
                    return
                except XapiError as exc:
                    # xapi refused it (UUID_INVALID: the object is gone): final.
                    self.dropped += 1
                    log.warning("message.refused", message=message.name, error=str(exc))
                    return
                except XapiUnreachable as exc:
                    reason = str(exc)
            if self._clock.monotonic() + wait - item.at > GIVE_UP_SECONDS:
                self.dropped += 1
                log.warning("message.dropped", message=message.name, reason=reason,
                            after_s=round(self._clock.monotonic() - item.at, 1))
                return
            await self._clock.sleep(wait)
            wait = min(wait * 2, 10.0)

    async def drain(self, timeout: float) -> None:
        """Give queued messages up to `timeout` seconds, then stop. Never raises."""
        queue, task = self._queue, self._task
        if queue is None or task is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(queue.join(), max(0.0, timeout))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        self._queue, self._task = None, None
