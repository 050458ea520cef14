"""Past incidents, rebuilt from the daemon's journal without touching it.

`Journal.replay` is no use here: it opens the file read-write, creates it when missing and
cuts a torn tail, while the daemon may be appending this very instant. This module opens the
file read-only, parses it as journal.py does, and folds each incident's records the way the
daemon does at start (recovery/history.py `fold`), so what it shows is what a restarted
daemon would believe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from xenhad.errors import XenhadError
from xenhad.journal import Problem, ProblemKind

# The parser itself, not a copy: torn and corrupt lines must mean here what they mean to the
# daemon. journal.py has no public read-only entry point (Journal opens read-write).
from xenhad.journal import _parse as parse_journal
from xenhad.model import Protection
from xenhad.placement import MIB
from xenhad.recovery.history import fold
from xenhad.recovery.incident import Incident, Settings, VmStatus, VmTask

Record = Mapping[str, Any]


@dataclass(frozen=True)
class JournalRead:
    path: Path
    exists: bool
    records: list[dict[str, Any]]
    problems: list[str]


@dataclass(frozen=True)
class Step:
    """One journal record of an incident, as a line of its timeline."""

    at_s: float | None
    """Seconds since the incident opened; None when the record has no usable time."""
    what: str


@dataclass(frozen=True)
class VmLine:
    uuid: str
    name: str
    detail: str
    """Where it runs (restarted), why not (failed, not placed), or "" (not protected)."""


@dataclass(frozen=True)
class IncidentReport:
    id: str
    host: str
    host_uuid: str
    opened: float
    """Wall-clock seconds (the Opened event's time: the daemon journals wall time)."""
    closed: float | None
    phase: str
    is_open: bool
    fenced_by: str
    unsafe: bool
    note: str
    evidence: str
    """Why the host was confirmed down (the opening's `evidence`; "" in older journals)."""
    restarted: tuple[VmLine, ...]
    failed: tuple[VmLine, ...]
    not_placed: tuple[VmLine, ...]
    not_protected: tuple[VmLine, ...]
    timeline: tuple[Step, ...]


class HistoryError(XenhadError):
    """The journal exists but cannot be read."""


def read_journal(path: Path) -> JournalRead:
    """Every whole record of the journal at `path`, opened read-only; never creates it."""
    try:
        with open(path, "rb") as f:  # O_RDONLY: no lock, no truncation, no creation
            data = f.read()
    except FileNotFoundError:
        return JournalRead(path, False, [], [])
    except OSError as exc:
        raise HistoryError(
            f"cannot read the journal {path}: {exc.strerror or exc}; run as root (the "
            "journal is private to the daemon's user)"
        ) from None
    records, problems, _ = parse_journal(data)
    return JournalRead(path, True, records, [_problem_line(p) for p in problems])


def _problem_line(problem: Problem) -> str:
    if problem.kind is ProblemKind.TORN:
        # A live daemon may be writing that line now; a dead one was killed mid-write.
        what = "incomplete last line (being written, or cut short by a crash), ignored"
    else:
        what = f"corrupt line skipped: {problem.detail}"
    return f"journal line {problem.line}: {what}: {problem.excerpt!r}"


def incidents(
    records: Iterable[Record], settings: Settings
) -> tuple[list[IncidentReport], list[str]]:
    """Every incident the records hold, newest first, and what could not be used."""
    groups: dict[str, list[Record]] = {}
    host_names: dict[str, str] = {}
    last_of_host: dict[str, str] = {}
    for record in records:
        host = str(record.get("host", ""))
        if record.get("episode") == "end":
            # An episode end belongs to the host's latest incident (as in `fold`).
            latest = last_of_host.pop(host, None)
            if latest is not None:
                groups[latest].append(record)
            continue
        incident_id = record.get("incident")
        if not isinstance(incident_id, str) or not incident_id:
            continue
        groups.setdefault(incident_id, []).append(record)
        if record.get("event") == "opened":
            last_of_host[host] = incident_id
            # The pool's hosts as the incident opened (journals since issue 22), so the
            # hosts VMs went to are named, not only the dead one.
            for pair in record.get("pool_hosts") or ():
                if isinstance(pair, (list, tuple)) and len(pair) == 2:
                    host_names.setdefault(str(pair[0]), str(pair[1]))
            host_names[host] = str(record.get("host_name", host))

    reports: list[IncidentReport] = []
    problems: list[str] = []
    for incident_id, group in groups.items():
        try:
            recovered = fold(group, settings)
            rebuilt = [*recovered.open, *recovered.closed]
            problems.extend(
                s if incident_id in s else f"incident {incident_id}: {s}"
                for s in recovered.skipped
            )
            bad_time = _bad_time(rebuilt[0]) if rebuilt else None
            if bad_time is not None:
                problems.append(f"incident {incident_id}: {bad_time}, skipped")
            elif rebuilt:
                reports.append(_report(rebuilt[0], group, host_names))
        except Exception as exc:
            # A hand-edited record can upset the machine's arithmetic in any way: one
            # unreadable incident must not hide the others.
            problems.append(
                f"incident {incident_id}: cannot be rebuilt ({type(exc).__name__}: {exc}), "
                "skipped"
            )
    reports.sort(key=lambda r: r.opened, reverse=True)
    return reports, problems


def _bad_time(incident: Incident) -> str | None:
    # Event times come from the file as they are: a hand edit can make them anything.
    if _time(incident.opened_at) is None:
        return f"opening time {incident.opened_at!r} is not a number"
    if incident.closed_at is not None and _time(incident.closed_at) is None:
        return f"closing time {incident.closed_at!r} is not a number"
    return None


def _report(
    incident: Incident, group: list[Record], host_names: Mapping[str, str]
) -> IncidentReport:
    def host_name(uuid: str | None) -> str:
        return host_names.get(uuid or "", uuid or "?")

    vm_names = {uuid: task.vm.name for uuid, task in incident.vms.items()}
    tasks = sorted(incident.vms.values(), key=lambda t: (t.vm.name, t.vm.uuid))
    unprotected = [t for t in tasks if t.vm.protection is Protection.OFF
                   and t.status is not VmStatus.RUNNING]
    protected = [t for t in tasks if t not in unprotected]
    return IncidentReport(
        id=incident.id,
        host=incident.host_name,
        host_uuid=incident.host,
        opened=incident.opened_at,
        closed=incident.closed_at,
        phase=incident.phase.value,
        is_open=not incident.phase.closed,
        fenced_by=incident.fenced_by,
        unsafe=incident.unsafe,
        note=incident.note,
        evidence=next((str(r.get("evidence") or "") for r in group
                       if r.get("event") == "opened"), ""),
        restarted=tuple(
            _line(t, host_name(t.host) if t.host else "where: not recorded")
            for t in protected if t.status is VmStatus.RUNNING
        ),
        failed=tuple(_line(t, t.last_error) for t in protected
                     if t.status in (VmStatus.FAILED, VmStatus.STRANDED)),
        not_placed=tuple(
            _line(t, t.last_error or _WAITING[t.status])
            for t in protected if not t.status.final
        ),
        not_protected=tuple(_line(t, "") for t in unprotected),
        timeline=tuple(
            _step(r, incident.opened_at, vm_names, host_name) for r in group
        ),
    )


_WAITING = {
    VmStatus.PENDING: "power state not reset yet",
    VmStatus.RESET: "waiting for a host to start it on",
    VmStatus.STARTING: "start in flight",
    VmStatus.UNKNOWN: "start in doubt: waiting for XAPI to say whether it runs",
}


def _line(task: VmTask, detail: str) -> VmLine:
    return VmLine(task.vm.uuid, task.vm.name, detail)


def _step(
    record: Record, opened: float, vm_names: Mapping[str, str],
    host_name: Callable[[str | None], str],
) -> Step:
    t = _time(record.get("t"))
    at = round(t - opened, 1) if t is not None else None
    try:
        what = describe(record, vm_names, host_name)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        what = f"unreadable record ({type(exc).__name__}: {exc})"
    return Step(at, what)


def _time(value: object) -> float | None:
    """`value` as seconds, or None when a hand edit made it something else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def describe(
    record: Record, vm_names: Mapping[str, str], host_name: Callable[[str | None], str]
) -> str:
    """One record of an incident, in words."""
    vm_id = str(record.get("vm", ""))
    vm = vm_names.get(vm_id, vm_id)
    if record.get("episode") == "end":
        return "host back and steady: episode ended (a later death is a new incident)"
    action = record.get("action")
    if action is not None:
        return _describe_action(str(action), vm, record, host_name)
    kind = record.get("event")
    if kind == "opened":
        vms = list(record.get("vms") or [])
        protected = sum(1 for v in vms if v.get("protection") != Protection.OFF.value)
        unsafe = " (trust-liveness: no fencing)" if record.get("unsafe") else ""
        return f"opened: {len(vms)} VMs were running on it, {protected} protected{unsafe}"
    if kind == "fence-done":
        if record.get("off"):
            return f"fenced: {record.get('backend')} proved the power off"
        return f"fence failed ({record.get('backend')}): {record.get('detail')}"
    if kind == "reset-done":
        if record.get("ok"):
            return f"{vm}: power state reset"
        return f"{vm}: reset failed: {record.get('code')} {record.get('detail', '')}".rstrip()
    if kind == "capacity":
        free = [f"{host_name(str(h))} {int(m) // MIB} MiB" for h, m in record.get("hosts", [])]
        return "free memory: " + (", ".join(free) if free else "no live, enabled host")
    if kind == "start-done":
        return _describe_start(vm, record, host_name)
    if kind == "vm-observed":
        if record.get("running"):
            return f"{vm}: XAPI says it runs on {host_name(record.get('resident_on'))}"
        return f"{vm}: XAPI says it is not running" + (" (busy)" if record.get("busy") else "")
    if kind == "host-returned":
        return "the host answered again"
    if kind == "wake":
        return "a retry came due"
    if kind == "resumed":
        return "daemon restarted: incident resumed from the journal"
    return f"unknown record {kind!r}"


def _describe_action(
    action: str, vm: str, record: Record, host_name: Callable[[str | None], str]
) -> str:
    if action == "FenceHost":
        return "fence the host"
    if action == "ResetVm":
        return f"{vm}: reset its power state"
    if action == "MeasureCapacity":
        return "measure the other hosts' free memory"
    if action == "StartVm":
        # History.action lets the action's own `host` (the target) replace the record's.
        return f"{vm}: start on {host_name(record.get('host'))}"
    return f"action {action}"


def _describe_start(vm: str, record: Record, host_name: Callable[[str | None], str]) -> str:
    outcome = record.get("outcome")
    where = host_name(record.get("host"))
    if outcome == "started":
        return f"{vm}: started on {where}"
    if outcome == "already-running":
        return f"{vm}: already running"
    why = f"{record.get('code', '')} {record.get('detail', '')}".strip()
    return f"{vm}: start on {where}: {outcome}: {why}"
