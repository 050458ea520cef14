"""Drives one incident: applies events in order, journals them, performs the actions.

Single flight lives here and in the daemon: one runner per host, and inside a runner one
event at a time, so the machine never sees two results race. Actions run as tasks whose
results come back through the same queue.

Nothing is done that the journal has not recorded: an event is applied only once it is
written, an action performed only once its intent is. When the journal refuses a write (a
full or read-only disk), the runner holds: the event waits, first in line, with the results
that arrive after it, and every Wake (each tick) tries the writes again; snapshots
(VmObserved) are dropped meanwhile, as the next tick brings fresh ones. A daemon stopped
or killed while it holds resumes from what the journal has, as after any crash.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from xenhad.journal import JournalError
from xenhad.model import PoolView
from xenhad.recovery import events as ev
from xenhad.recovery.executor import Executor
from xenhad.recovery.history import History
from xenhad.recovery.incident import Incident, Phase, Settings, VmStatus
from xenhad.recovery.machine import Transition, open_incident, step, summary

log = structlog.get_logger("xenhad.recovery")


@dataclass(frozen=True)
class RunnerDeps:
    """What every incident needs from the daemon: the world, the journal, the knobs."""

    executor: Executor
    history: History
    settings: Settings
    host_names: Callable[[], dict[str, str]]
    wall: Callable[[], float]
    alert: Callable[[dict[str, Any]], None] = lambda payload: None
    """Each incident transition, for webhooks and hooks (xenhad.alerts: never blocks)."""
    notice: Callable[[Incident, Incident, ev.Event], None] = lambda before, after, event: None
    """Each step (before, after, the event that made it), for the XAPI messages and the
    metrics (never blocks, never raises)."""


class IncidentRunner:
    def __init__(self, incident: Incident, deps: RunnerDeps) -> None:
        self.incident = incident
        self._wall = deps.wall
        self._executor = deps.executor
        self._history = deps.history
        self._settings = deps.settings
        self._host_names = deps.host_names
        self._alert = deps.alert
        self._notice = deps.notice
        self._queue: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unwritten: list[Callable[[], None]] = []
        """Intents the journal refused: `_held` waits until they are written."""
        self._held: list[ev.Action] = []
        self._backlog: collections.deque[ev.Event] = collections.deque()
        """Events not applied yet: the first one's record was refused, the rest came later."""

    @property
    def blocked(self) -> bool:
        """The journal refused a write this incident needs: it takes no step until then."""
        return bool(self._unwritten or self._backlog)

    @classmethod
    def open(cls, opened: ev.Opened, deps: RunnerDeps) -> IncidentRunner:
        # Journaled (fsync) before the first action exists: a crash right after this line
        # replays into an open incident that re-issues its fence.
        deps.history.event(None, opened.host, opened)
        transition = open_incident(opened)
        runner = cls(transition.incident, deps)
        protected = sum(1 for t in transition.incident.vms.values()
                        if t.vm.protection.value != "off")
        log.warning(
            "incident.opened",
            incident=opened.incident,
            host=opened.host_name,
            vms=len(opened.vms),
            protected=protected,
            mode=("offline" if opened.offline else
                  "trust-liveness" if opened.unsafe else "fence-first"),
            phase=transition.incident.phase.value,
        )
        if opened.unsafe:
            log.error(
                "incident.unsafe",
                incident=opened.incident,
                host=opened.host_name,
                why="fencing.mode = trust-liveness: restarting VMs without proof their host "
                "is off; a host that is only cut off will run them twice",
            )
        runner._owe(runner._record(transition))
        runner._send("incident.opened", vms=len(opened.vms), protected=protected,
                     unsafe=opened.unsafe)
        return runner

    def feed(self, event: ev.Event) -> None:
        self._queue.put_nowait(event)

    def observe(self, view: PoolView, now: float) -> None:
        """Tell the incident what the latest snapshot says of its VMs, and that time passed."""
        if self.blocked:
            self.feed(ev.Wake(now))  # try the journal again; snapshots would be dropped
            return
        for uuid, task in self.incident.vms.items():
            if task.status.final:
                continue
            vm = view.vms.get(uuid)
            if vm is None:
                continue
            self.feed(ev.VmObserved(now, uuid, vm.running, vm.resident_on, vm.busy))
        self.feed(ev.Wake(now))

    async def run(self) -> Incident:
        self._flush()
        while not self.incident.phase.closed:
            event = await self._queue.get()
            if not self.blocked:
                if not self._apply(event):
                    self._backlog.append(event)
                continue
            if not isinstance(event, (ev.Wake, ev.VmObserved)):
                self._backlog.append(event)  # a result: it keeps its place in line
            self._retry()
        await self._cancel_in_flight()
        self._log_closed()
        return self.incident

    async def park(self) -> None:
        """Stop at a safe point: the journal already holds everything needed to resume."""
        await self._cancel_in_flight()
        log.info("incident.parked", incident=self.incident.id, phase=self.incident.phase.value)

    def _apply(self, event: ev.Event) -> bool:
        """Journal `event`, apply it, and perform its actions once their intents are
        written. False when the journal refused the event: nothing changed."""
        transition = step(self.incident, event, self._settings)
        if transition.incident == self.incident and not transition.actions:
            return True  # nothing changed: not worth a journal line
        try:
            self._history.event(self.incident, self.incident.host, event)
        except JournalError:
            return False  # the daemon says so, once (Daemon._watch_journal)
        before = self.incident
        self._owe(self._record(transition))
        self._notice(before, self.incident, event)
        self._flush()
        return True

    def _owe(self, actions: tuple[ev.Action, ...]) -> None:
        incident = self.incident
        self._unwritten.extend(functools.partial(self._history.action, incident, a)
                               for a in actions)
        self._held.extend(actions)

    def _flush(self) -> bool:
        """Write the intents owed, then perform their actions; False while refused."""
        while self._unwritten:
            try:
                self._unwritten[0]()
            except JournalError:
                return False
            self._unwritten.pop(0)
        held, self._held = self._held, []
        for action in held:
            self._launch(action)
        return True

    def _retry(self) -> None:
        """Take the steps the journal refused, in order, as far as it lets us now."""
        if not self._flush():
            return
        while self._backlog and not self.incident.phase.closed:
            if not self._apply(self._backlog[0]):
                return
            self._backlog.popleft()
            if self._unwritten:
                return
        if self.blocked:
            return
        log.info("incident.journaled_again", incident=self.incident.id,
                 phase=self.incident.phase.value)

    def _record(self, transition: Transition) -> tuple[ev.Action, ...]:
        before, after = self.incident, transition.incident
        self.incident = after
        # What happened to VMs first, then the phase it led to: the log reads in order.
        self._log_vm_changes(before, after)
        if before.phase is not after.phase:
            log.info(
                "incident.step",
                incident=after.id,
                host=after.host_name,
                phase=after.phase.value,
                note=after.note or None,
            )
            if not after.phase.closed:
                self._send("incident.step", note=after.note or None)
        if after.phase is Phase.WAITING_FENCE and before.phase is not Phase.WAITING_FENCE:
            log.error(
                "incident.waiting_fence",
                incident=after.id,
                host=after.host_name,
                attempt=after.fence_attempts,
                retry_in_s=round(after.retry_at - self._wall(), 1),
                why=after.note,
                fix="no proof the host is off, so none of its VMs is touched; check its BMC "
                "or fencing config",
            )
        return transition.actions

    def _log_vm_changes(self, before: Incident, after: Incident) -> None:
        names = self._host_names()
        for uuid, task in after.vms.items():
            old = before.vms.get(uuid)
            if old is not None and old.status is task.status and old.attempts == task.attempts:
                continue
            if task.status is VmStatus.RUNNING:
                log.info("vm.restarted", incident=after.id, vm=task.vm.name,
                         host=names.get(task.host or "", task.host),
                         after_s=round(self._wall() - after.opened_at, 1))
            elif task.status is VmStatus.STARTING:
                log.info("vm.starting", incident=after.id, vm=task.vm.name,
                         host=names.get(task.host or "", task.host), attempt=task.attempts)
            elif task.status is VmStatus.FAILED:
                log.error("vm.failed", incident=after.id, vm=task.vm.name, why=task.last_error)
            elif task.status is VmStatus.STRANDED:
                log.error("vm.cannot_run_elsewhere", incident=after.id, vm=task.vm.name,
                          why=task.last_error, fix="not attempted; it runs again when its "
                          "host is back, or once a host can run it and it is started")
            elif task.status is VmStatus.RESET and old is not None and task.last_error:
                log.warning("vm.retry", incident=after.id, vm=task.vm.name,
                            attempt=task.attempts, why=task.last_error)
            elif task.status is VmStatus.UNKNOWN:
                log.warning("vm.in_doubt", incident=after.id, vm=task.vm.name,
                            why="start may or may not have happened; waiting for XAPI to say")

    def _launch(self, action: ev.Action) -> None:
        task = asyncio.get_running_loop().create_task(self._perform(action))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _perform(self, action: ev.Action) -> None:
        try:
            result = await self._executor.perform(action)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not wedge the incident: report, retry later
            log.exception("incident.action_crashed", incident=self.incident.id,
                          action=type(action).__name__)
            result = _failure_event(action, exc, self._wall())
        self.feed(result)

    async def _cancel_in_flight(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _log_closed(self) -> None:
        facts = summary(self.incident)
        names = self._host_names()
        restarted = facts["restarted"]
        assert isinstance(restarted, dict)
        facts = {**facts, "restarted": {vm: names.get(h or "", h) for vm, h in restarted.items()}}
        level = log.info if self.incident.phase is Phase.DONE else log.error
        level("incident.closed", incident=self.incident.id, host=self.incident.host_name, **facts)
        self._send("incident.closed", **facts)

    def _send(self, event: str, **facts: Any) -> None:
        incident = self.incident
        self._alert({"event": event, "incident": incident.id, "host": incident.host_name,
                     "phase": incident.phase.value, "at": self._wall(), **facts})


def _failure_event(action: ev.Action, exc: Exception, now: float) -> ev.Event:
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(action, ev.FenceHost):
        return ev.FenceDone(now, False, "internal", detail)
    if isinstance(action, ev.ResetVm):
        return ev.ResetDone(now, action.vm, False, "INTERNAL_ERROR", detail)
    if isinstance(action, ev.StartVm):
        return ev.StartDone(now, action.vm, action.host, ev.StartOutcome.UNKNOWN,
                            "INTERNAL_ERROR", detail)
    return ev.CapacityMeasured(now, ())
