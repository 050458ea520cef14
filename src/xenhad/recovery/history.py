"""Incident records in the journal: what is written before each step, and what replay finds.

Three kinds of record, one JSON object a line (journal.py does the fsync):
  {"t", "incident", "host", "event": ...}     an event the machine applied (events.encode)
  {"t", "incident", "host", "action": ...}    an action about to be performed (intent)
  {"t", "host", "episode": "end"}             the host came back: a later death is new
Replay folds each incident's events into its state; a host whose last incident has no
"episode end" after it is still down, so a restarted daemon never recovers it twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xenhad.journal import Journal
from xenhad.model import HostId
from xenhad.recovery import events as ev
from xenhad.recovery.incident import Incident, Settings
from xenhad.recovery.machine import replay


@dataclass
class Recovered:
    """What the journal says when the daemon starts."""

    open: list[Incident] = field(default_factory=list)
    down_since: dict[HostId, float] = field(default_factory=dict)
    """Hosts whose episode has not ended: host -> when their incident opened."""
    closed: list[Incident] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """One line per record replay could not use (torn or unknown), for the log."""


class History:
    def __init__(self, journal: Journal, wall: Callable[[], float]) -> None:
        self._journal = journal
        self._wall = wall

    def event(self, incident: Incident | None, host: HostId, event: ev.Event) -> None:
        incident_id = incident.id if incident else getattr(event, "incident", "")
        self._journal.append(
            {"t": self._wall(), "incident": incident_id, "host": host, **ev.encode(event)}
        )

    def action(self, incident: Incident, action: ev.Action) -> None:
        record: dict[str, Any] = {
            "t": self._wall(),
            "incident": incident.id,
            "host": incident.host,
            "action": type(action).__name__,
        }
        record.update(dataclasses.asdict(action))
        self._journal.append(record)

    def episode_end(self, host: HostId) -> None:
        self._journal.append({"t": self._wall(), "host": host, "episode": "end"})

    def recover(self, settings: Settings) -> Recovered:
        records, problems = _read(self._journal)
        return fold(records, settings, problems)


def _read(journal: Journal) -> tuple[list[dict[str, Any]], list[str]]:
    result = journal.replay()
    return list(result.records), [str(p) for p in result.problems]


def fold(
    records: Iterable[Mapping[str, Any]], settings: Settings, problems: Iterable[str] = ()
) -> Recovered:
    by_incident: dict[str, list[ev.Event]] = {}
    last_incident_of: dict[HostId, str] = {}
    recovered = Recovered(skipped=list(problems))
    for record in records:
        host = str(record.get("host", ""))
        if record.get("episode") == "end":
            last_incident_of.pop(host, None)
            continue
        if "event" not in record:
            continue  # intents and other records: informative only
        try:
            event = ev.decode(record)
        except ev.CodecError as exc:
            recovered.skipped.append(str(exc))
            continue
        incident_id = str(record.get("incident", ""))
        by_incident.setdefault(incident_id, []).append(event)
        if isinstance(event, ev.Opened) and not event.offline:
            last_incident_of[host] = incident_id  # offline VMs have no dead host
    for incident_id, events in by_incident.items():
        incident = replay(events, settings)
        if incident is None:
            recovered.skipped.append(f"incident {incident_id} has no opening record")
            continue
        (recovered.closed if incident.phase.closed else recovered.open).append(incident)
        if last_incident_of.get(incident.host) == incident_id:
            recovered.down_since[incident.host] = incident.opened_at
    return recovered
