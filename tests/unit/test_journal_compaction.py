"""Compaction at start keeps whole incidents: an old incident whose host is still down must
replay closed, or the next start would reopen (and repeat) it."""

from __future__ import annotations

from pathlib import Path

from xenhad.clock import ManualClock
from xenhad.config import parse
from xenhad.daemon import HISTORY_SECONDS, Daemon
from xenhad.journal import Journal
from xenhad.model import Protection
from xenhad.recovery import events as ev
from xenhad.recovery.history import History
from xenhad.recovery.incident import Settings, VmSnapshot
from xenhad.recovery.machine import open_incident, step

SET = Settings()
GiB = 1024**3
OLD = 1.0e9
HOST_UUID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"


def write_closed_incident(path: Path) -> None:
    journal = Journal(path)
    history = History(journal, lambda: OLD)
    opened = ev.Opened("inc-old", "dead", "host2", OLD,
                       (VmSnapshot("uuid-a", "a", Protection.RESTART, 2 * GiB),), False)
    history.event(None, "dead", opened)
    t = open_incident(opened)
    incident = t.incident
    events: list[ev.Event] = [
        ev.FenceDone(OLD + 1, True, "redfish", "off"),
        ev.ResetDone(OLD + 2, "uuid-a", True),
        ev.CapacityMeasured(OLD + 3, (("h1", 64 * GiB),)),
        ev.StartDone(OLD + 4, "uuid-a", "h1", ev.StartOutcome.STARTED),
    ]
    for event in events:
        history.event(incident, "dead", event)  # StartDone carries host="h1" (its target)
        t = step(incident, event, SET)
        incident = t.incident
        for action in t.actions:
            history.action(incident, action)
    assert incident.phase.closed
    journal.close()


def test_an_old_incident_of_a_host_still_down_survives_compaction_whole(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    write_closed_incident(state / "journal.jsonl")
    text = f'[daemon]\nstate_dir = "{state}"\n[host]\nuuid = "{HOST_UUID}"\n'
    config = parse(text, source="t", env={})
    clock = ManualClock(start=0.0, wall_offset=OLD + HISTORY_SECONDS + 3600)
    daemon = Daemon(tmp_path / "xenhad.toml", config, clock=clock)
    before = daemon._history.recover(SET)
    assert [i.id for i in before.closed] == ["inc-old"] and "dead" in before.down_since
    daemon._compact_journal(before)
    after = History(Journal(state / "journal.jsonl"), clock.wall).recover(SET)
    assert [i.id for i in after.closed] == ["inc-old"], "the incident was cut short"
    assert not after.open
    assert after.down_since == before.down_since
