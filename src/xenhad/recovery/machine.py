"""The recovery state machine: pure, deterministic, and the only place recovery is decided.

    FENCING --off--> RESETTING --all reset--> RESTARTING --all final--> DONE
       |  ^                |
   not off|  |wake         +--HOST_IS_LIVE--> ABORTED   (XAPI reached the "dead" host)
       v  |
    WAITING_FENCE --host back--> ABORTED                (nothing was touched)
    FENCING (a retry) --found back before fencing--> ABORTED

    (offline) ---------------------> RESTARTING          (protected VMs found Halted, every
                                                          host up: see offline.py)

`step(incident, event)` returns the new incident and the actions to perform. The executor
performs them and feeds their results back as events; the journal records every event, so
a daemon killed at any instant replays the same events into the same state, then sends
`Resumed` to re-issue whatever was in flight (every action is idempotent).

The rule above all: no VM is reset or started before the incident's host is proven off
(FenceDone.off), or the VM is Halted while every host is up, or the operator chose
trust-liveness; and a host that XAPI can still reach is never treated as dead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from xenhad import placement
from xenhad.model import Protection, VmId
from xenhad.recovery.events import (
    Action,
    CapacityMeasured,
    Event,
    FenceDone,
    FenceHost,
    HostReturned,
    MeasureCapacity,
    Opened,
    ResetDone,
    ResetVm,
    Resumed,
    StartDone,
    StartOutcome,
    StartVm,
    VmObserved,
    Wake,
)
from xenhad.recovery.incident import Incident, Phase, Settings, VmStatus, VmTask

# power_state_reset on a VM already halted answers VM_BAD_POWER_STATE: the reset it asked
# for has happened (xapi_vm.ml power_state_reset only resets running/paused/suspended VMs).
_ALREADY_RESET = "VM_BAD_POWER_STATE"
# xapi_vm.ml power_state_reset: the resident host answered a liveness check.
_HOST_ANSWERS = "HOST_IS_LIVE"


@dataclass(frozen=True)
class Transition:
    incident: Incident
    actions: tuple[Action, ...] = ()


def open_incident(event: Opened) -> Transition:
    tasks = {vm.uuid: VmTask(vm=vm) for vm in event.vms}
    incident = Incident(
        id=event.incident,
        host=event.host,
        host_name=event.host_name,
        opened_at=event.now,
        unsafe=event.unsafe,
        vms=tasks,
    )
    if event.offline:
        # Halted already, with every host up and joined: no domain of theirs runs anywhere.
        halted = {uuid: replace(t, status=VmStatus.RESET) for uuid, t in tasks.items()}
        return _settle(replace(incident, phase=Phase.RESTARTING, vms=halted,
                               note="protected VMs found halted"), event.now, ())
    if event.unsafe:
        return _begin_reset(replace(incident, fenced_by="trust-liveness"), event.now)
    return Transition(replace(incident, fence_attempts=1), (FenceHost(event.host),))


def step(incident: Incident, event: Event, settings: Settings) -> Transition:
    """Apply one event. A closed incident ignores everything."""
    if incident.phase.closed:
        return Transition(incident)
    if isinstance(event, FenceDone):
        return _fence_done(incident, event, settings)
    if isinstance(event, ResetDone):
        return _reset_done(incident, event, settings)
    if isinstance(event, CapacityMeasured):
        return _capacity(incident, event, settings)
    if isinstance(event, StartDone):
        return _start_done(incident, event, settings)
    if isinstance(event, VmObserved):
        return _observed(incident, event, settings)
    if isinstance(event, HostReturned):
        return _host_returned(incident, event)
    if isinstance(event, Wake):
        # The cap of a resumed incident, at every wake: a wall clock stepped back while
        # the incident runs stretched its wait as much (virtual chaos seed 1000881: a
        # clock 51.7 s ahead stepped right mid-retry, and the retry came past the bound).
        return _wake(_capped_waits(incident, event.now, settings), event.now)
    if isinstance(event, Resumed):
        return _resumed(_capped_waits(incident, event.now, settings), event.now)
    # Opened is handled by open_incident; seeing it here means a duplicate in the journal.
    return Transition(incident)


def replay(events: Iterable[Event], settings: Settings) -> Incident | None:
    """Rebuild an incident from its journaled events (the actions were performed already)."""
    incident: Incident | None = None
    for event in events:
        if incident is None:
            if isinstance(event, Opened):
                incident = open_incident(event).incident
            continue
        incident = step(incident, event, settings).incident
    return incident


# -- fencing -----------------------------------------------------------------------------


def _fence_done(incident: Incident, event: FenceDone, settings: Settings) -> Transition:
    if incident.phase is not Phase.FENCING:
        return Transition(incident)
    if event.off:
        fenced = replace(incident, fenced_by=event.backend, note="")
        return _begin_reset(fenced, event.now)
    if event.returned:
        return _abort(incident, event.now, f"host came back before it was fenced: {event.detail}")
    if incident.note == _RETURNED_WHILE_FENCING:
        return _abort(incident, event.now, "host came back and fencing did not power it off")
    waiting = replace(
        incident,
        phase=Phase.WAITING_FENCE,
        retry_at=event.now + settings.backoff(incident.fence_attempts),
        note=event.detail,
    )
    return Transition(waiting)


_RETURNED_WHILE_FENCING = "host answered again while being fenced"


def _host_returned(incident: Incident, event: HostReturned) -> Transition:
    if incident.phase is Phase.WAITING_FENCE:
        return _abort(incident, event.now, "host came back before anything was touched")
    if incident.phase is Phase.FENCING:
        # A fence is in flight: if it powers the host off, the host is off and recovery must
        # go on (its VMs died with it); if it does not, the host is back and we stop.
        return Transition(replace(incident, note=_RETURNED_WHILE_FENCING))
    # Fenced hosts come back empty (their domains died with the power); keep going.
    return Transition(incident)


# -- resetting ---------------------------------------------------------------------------


def _begin_reset(incident: Incident, now: float) -> Transition:
    tasks = dict(incident.vms)
    actions: list[Action] = []
    for uuid, task in tasks.items():
        if task.status is not VmStatus.PENDING:
            continue  # seen running elsewhere meanwhile: its power state is not ours to reset
        tasks[uuid] = replace(task, attempts=0, retry_at=0.0, host=None)
        actions.append(ResetVm(uuid, incident.host))
    resetting = replace(incident, phase=Phase.RESETTING, vms=tasks, retry_at=0.0)
    if not actions:
        return _settle(resetting, now, ())
    return Transition(resetting, tuple(actions))


def _reset_done(incident: Incident, event: ResetDone, settings: Settings) -> Transition:
    task = incident.vms.get(event.vm)
    if incident.phase is not Phase.RESETTING or task is None or task.status is not VmStatus.PENDING:
        return Transition(incident)
    if event.code == _HOST_ANSWERS:
        return _abort(
            incident,
            event.now,
            f"XAPI reached the host while resetting {task.vm.name}: it is not dead; "
            "refusing to restart its VMs",
        )
    if event.ok or event.code == _ALREADY_RESET:
        new_status = VmStatus.LEFT if task.vm.protection is Protection.OFF else VmStatus.RESET
        updated = replace(task, status=new_status, retry_at=0.0, last_error="")
        return _settle(_with_task(incident, updated), event.now, ())
    attempt = task.attempts + 1
    failed = replace(
        task,
        attempts=attempt,
        retry_at=event.now + settings.backoff(attempt),
        last_error=f"{event.code} {event.detail}".strip(),
    )
    return Transition(_with_task(incident, failed))


# -- restarting --------------------------------------------------------------------------


def _capacity(incident: Incident, event: CapacityMeasured, settings: Settings) -> Transition:
    if incident.phase is not Phase.RESTARTING or not incident.capacity_pending:
        return Transition(incident)
    incident = replace(incident, capacity_pending=False)
    eligible = _eligible(incident, event.now)
    if not eligible:
        return _settle(incident, event.now, ())
    plan = _plan(incident, eligible, event)
    tasks = dict(incident.vms)
    actions: list[Action] = []
    for stranded in plan.stranded:
        # No host but the dead one can run it: it is not attempted, and the summary says why.
        tasks[stranded.vm] = replace(tasks[stranded.vm], status=VmStatus.STRANDED, host=None,
                                     last_error=stranded.reason)
    if plan.waves:
        # Only the first wave starts now: later waves wait for it, as xapi's HA restarts
        # in `order` (xapi_ha_vm_failover.ml); the next capacity reading sees its memory used.
        for p in plan.waves[0].placements:
            task = tasks[p.vm]
            tasks[p.vm] = replace(
                task, status=VmStatus.STARTING, host=p.host, attempts=task.attempts + 1
            )
            actions.append(StartVm(p.vm, p.host))
    if not actions:
        # Nothing can start now: each eligible VM spends an attempt and waits for its retry,
        # so a pool without room is asked again after the backoff, not in a tight loop.
        reasons = {u.vm: u.reason for u in plan.unplaced}
        for task in eligible:
            if tasks[task.vm.uuid].status is VmStatus.STRANDED:
                continue
            why = reasons.get(task.vm.uuid, "no live, enabled host to place it on")
            spent = replace(task, attempts=task.attempts + 1)
            tasks[task.vm.uuid] = _failed_attempt(
                spent, event.now, settings, f"no host fits: {why}"
            )
    return _settle(replace(incident, vms=tasks), event.now, tuple(actions))


def _plan(incident: Incident, eligible: list[VmTask], event: CapacityMeasured) -> placement.Plan:
    sees = {h: (frozenset(srs), frozenset(nets)) for h, srs, nets in event.sees}
    receiving = {h for h, _ in event.hosts}
    hosts = [
        placement.HostCapacity(uuid=h, free_memory=m, srs=sees[h][0] if h in sees else None,
                               networks=sees[h][1] if h in sees else None)
        for h, m in event.hosts
    ]
    hosts.extend(
        placement.HostCapacity(uuid=h, free_memory=0, srs=srs, networks=nets, receiving=False)
        for h, (srs, nets) in sorted(sees.items()) if h not in receiving and h != incident.host
    )
    # Members of a group running now: as XAPI last said, and as this incident started them
    # (a start XAPI has not reported yet counts already).
    member_host = {vm: (g, h) for g, h, vm in event.grouped}
    for t in incident.tasks(VmStatus.RUNNING, VmStatus.STARTING):
        if t.vm.group is not None and t.host is not None:
            member_host[t.vm.uuid] = (t.vm.group, t.host)
    grouped: dict[str, dict[str, int]] = {}
    for g, h in member_host.values():
        grouped.setdefault(g, {})[h] = grouped.get(g, {}).get(h, 0) + 1
    return placement.plan(
        [
            placement.Candidate(
                uuid=t.vm.uuid,
                memory=t.vm.memory,
                affinity=t.vm.affinity,
                order=t.vm.order,
                protection=t.vm.protection,
                srs=t.vm.srs,
                networks=t.vm.networks,
                pinned=t.vm.pinned,
                group=t.vm.group,
                refused=t.refused,
            )
            for t in eligible
        ],
        hosts,
        grouped=grouped,
        labels=dict(event.labels),
    )


def _start_done(incident: Incident, event: StartDone, settings: Settings) -> Transition:
    task = incident.vms.get(event.vm)
    if task is None or task.status is not VmStatus.STARTING:
        return Transition(incident)
    if event.outcome in (StartOutcome.STARTED, StartOutcome.ALREADY_RUNNING):
        host = event.host if event.outcome is StartOutcome.STARTED else None
        updated = replace(task, status=VmStatus.RUNNING, host=host, last_error="")
    elif event.outcome is StartOutcome.RETRY:
        updated = _failed_attempt(task, event.now, settings, f"{event.code} {event.detail}")
    elif event.outcome is StartOutcome.REFUSED:
        # This host cannot run it; another that can is tried at the next placement, at once.
        updated = replace(
            task, status=VmStatus.RESET, host=None, retry_at=event.now,
            refused=task.refused | {event.host},
            last_error=f"{event.code} {event.detail}".strip(),
        )
    elif event.outcome is StartOutcome.FAILED:
        updated = replace(
            task, status=VmStatus.FAILED, host=None, last_error=f"{event.code} {event.detail}"
        )
    else:
        updated = replace(task, status=VmStatus.UNKNOWN, last_error=event.detail)
    return _settle(_with_task(incident, updated), event.now, ())


def _observed(incident: Incident, event: VmObserved, settings: Settings) -> Transition:
    task = incident.vms.get(event.vm)
    if task is None or task.status.final:
        return Transition(incident)
    elsewhere = event.resident_on is not None and event.resident_on != incident.host
    if event.running and elsewhere:
        # Running on a live host, whoever started it: never start it a second time.
        updated = replace(task, status=VmStatus.RUNNING, host=event.resident_on, last_error="")
        if task.status in (VmStatus.STARTING, VmStatus.UNKNOWN) and task.vm.start_delay > 0:
            # Our start has not answered (or its answer was lost: a timeout, or a daemon
            # resumed from its journal while it was in flight): VM.start sleeps the VM's
            # start_delay once its domain runs (Xapi_vm_helpers.start_delay), and xapi's HA
            # starts the next order after that. The delay is counted from now, which is no
            # earlier than the domain came up. The task is final all the same: should the
            # answer never come (its host lost), the VM is safe from a second start, and
            # the incident closes.
            incident = replace(incident, next_wave_at=max(
                incident.next_wave_at, event.now + task.vm.start_delay))
        return _settle(_with_task(incident, updated), event.now, ())
    if task.status is VmStatus.UNKNOWN and not event.running and not event.busy:
        # The start that timed out did not happen (or failed): it may be tried again.
        updated = _failed_attempt(task, event.now, settings, task.last_error or "start lost")
        return _settle(_with_task(incident, updated), event.now, ())
    return Transition(incident)


def _failed_attempt(task: VmTask, now: float, settings: Settings, error: str) -> VmTask:
    error = error.strip()
    exhausted = task.attempts >= settings.best_effort_attempts
    if task.vm.protection is Protection.BEST_EFFORT and exhausted:
        return replace(task, status=VmStatus.FAILED, host=None, last_error=error)
    return replace(
        task,
        status=VmStatus.RESET,
        host=None,
        retry_at=now + settings.backoff(max(1, task.attempts)),
        last_error=error,
    )


# -- time and restarts -------------------------------------------------------------------


def _wake(incident: Incident, now: float) -> Transition:
    if incident.phase is Phase.WAITING_FENCE and now >= incident.retry_at:
        fencing = replace(
            incident, phase=Phase.FENCING, fence_attempts=incident.fence_attempts + 1
        )
        return Transition(fencing, (FenceHost(incident.host, retry=True),))
    if incident.phase is Phase.RESETTING:
        due = [
            t for t in incident.tasks(VmStatus.PENDING) if t.attempts > 0 and now >= t.retry_at
        ]
        if due:
            # Mark them in flight by pushing retry_at past any wake until their result comes.
            tasks = dict(incident.vms)
            for t in due:
                tasks[t.vm.uuid] = replace(t, retry_at=float("inf"))
            return Transition(
                replace(incident, vms=tasks),
                tuple(ResetVm(t.vm.uuid, incident.host) for t in due),
            )
        return Transition(incident)
    return _settle(incident, now, ())


def _capped_waits(incident: Incident, now: float, settings: Settings) -> Incident:
    """The incident with no wait ending later than a whole one could from `now`: retry
    times are wall clock (they outlive the process), and one journaled while the clock ran
    ahead (an NTP step back since, an RTC wrong at boot) would hold the resumed incident for
    as long as the clock was off, past every bound (virtual chaos seed 1000106: 32 s past
    its backoff). No wait journaled was longer than `retry_backoff_max` (a retry) or the
    longest `start_delay` of its VMs (a wave) when written, and at least no time has passed
    since, so the cap only cuts what the clock's step added."""
    longest = settings.retry_backoff_max
    tasks = {
        uuid: replace(t, retry_at=min(t.retry_at, now + longest))
        if t.status is VmStatus.RESET else t
        for uuid, t in incident.vms.items()
    }
    wave = max((t.vm.start_delay for t in incident.vms.values()), default=0)
    return replace(incident, vms=tasks,
                   retry_at=min(incident.retry_at, now + longest),
                   next_wave_at=min(incident.next_wave_at, now + wave))


def _resumed(incident: Incident, now: float) -> Transition:
    if incident.phase is Phase.FENCING:
        # The host may have come back while we were down: asked first, as a retry is.
        return Transition(incident, (FenceHost(incident.host, retry=True),))
    if incident.phase is Phase.RESETTING:
        pending = incident.tasks(VmStatus.PENDING)
        tasks = dict(incident.vms)
        for t in pending:
            tasks[t.vm.uuid] = replace(t, retry_at=float("inf"))
        return Transition(
            replace(incident, vms=tasks), tuple(ResetVm(t.vm.uuid, incident.host) for t in pending)
        )
    if incident.phase is Phase.RESTARTING:
        # A start that was in flight may or may not have happened: XAPI's snapshot decides.
        tasks = {
            uuid: replace(t, status=VmStatus.UNKNOWN) if t.status is VmStatus.STARTING else t
            for uuid, t in incident.vms.items()
        }
        return _settle(replace(incident, vms=tasks, capacity_pending=False), now, ())
    return Transition(incident)


def _eligible(incident: Incident, now: float) -> list[VmTask]:
    return [t for t in incident.tasks(VmStatus.RESET) if t.retry_at <= now]


def _settle(incident: Incident, now: float, actions: tuple[Action, ...]) -> Transition:
    """Move on when the current phase's work is all done; ask for capacity when VMs wait."""
    if incident.phase is Phase.RESETTING:
        if incident.tasks(VmStatus.PENDING):
            return Transition(incident, actions)
        incident = replace(incident, phase=Phase.RESTARTING)
    if incident.phase is not Phase.RESTARTING:
        return Transition(incident, actions)
    if all(t.status.final for t in incident.vms.values()):
        return Transition(replace(incident, phase=Phase.DONE, closed_at=now), actions)
    # A start in doubt (UNKNOWN: lost answer, or resumed from the journal) holds the next
    # wave as one in flight does, until a snapshot says whether it runs (then its
    # start_delay holds it, _observed) or not (then it is tried again with the others).
    in_flight = incident.capacity_pending or incident.tasks(
        VmStatus.STARTING, VmStatus.UNKNOWN) or any(isinstance(a, StartVm) for a in actions)
    if not in_flight and now >= incident.next_wave_at and _eligible(incident, now):
        return Transition(
            replace(incident, capacity_pending=True),
            (*actions, MeasureCapacity(exclude=incident.host)),
        )
    return Transition(incident, actions)


def _abort(incident: Incident, now: float, why: str) -> Transition:
    return Transition(replace(incident, phase=Phase.ABORTED, closed_at=now, note=why))


def _with_task(incident: Incident, task: VmTask) -> Incident:
    tasks: dict[VmId, VmTask] = dict(incident.vms)
    tasks[task.vm.uuid] = task
    return replace(incident, vms=tasks)


def summary(incident: Incident) -> Mapping[str, object]:
    """The facts of the one line an incident ends with."""
    restarted = {t.vm.name: t.host for t in incident.tasks(VmStatus.RUNNING)}
    failed = {t.vm.name: t.last_error for t in incident.tasks(VmStatus.FAILED)}
    stranded = {t.vm.name: t.last_error for t in incident.tasks(VmStatus.STRANDED)}
    left = sorted(t.vm.name for t in incident.tasks(VmStatus.LEFT))
    waiting = sorted(
        t.vm.name for t in incident.vms.values() if not t.status.final
    )
    took = (incident.closed_at - incident.opened_at) if incident.closed_at is not None else None
    return {
        "phase": incident.phase.value,
        "restarted": restarted,
        "failed": failed,
        "cannot_run_elsewhere": stranded,
        "not_protected": left,
        "waiting": waiting,
        "fenced_by": incident.fenced_by,
        "took_s": round(took, 1) if took is not None else None,
        "note": incident.note,
    }


