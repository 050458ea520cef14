"""`xenhad history` on hand-made journals: what an operator reads, and what it never does."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from tool_runs import one_line_error, xenhad

from xenhad.journal import Journal
from xenhad.model import Protection
from xenhad.placement import MIB
from xenhad.recovery import events as ev
from xenhad.recovery.history import History
from xenhad.recovery.incident import Incident, VmSnapshot
from xenhad.recovery.machine import open_incident
from xenhad.tools.history_cmd import run_history

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
H2, H3 = "22222222-0000-0000-0000-000000000002", "33333333-0000-0000-0000-000000000003"
WEB = VmSnapshot("vm-web", "web", Protection.RESTART, 2048 * MIB)
DB = VmSnapshot("vm-db", "db", Protection.BEST_EFFORT, 1024 * MIB)
TMP = VmSnapshot("vm-tmp", "scratch", Protection.OFF, 512 * MIB)


class Writer:
    """The daemon's own journal writer, with a wall clock the test moves."""

    def __init__(self, path: Path) -> None:
        self.now = T0
        self.journal = Journal(path)
        self.history = History(self.journal, lambda: self.now)
        self.incident: Incident | None = None

    def at(self, offset: float) -> float:
        self.now = T0 + offset
        return self.now

    def event(self, host: str, event: ev.Event) -> None:
        # As the runner does: an Opened names its incident, later events get it passed.
        if isinstance(event, ev.Opened):
            self.incident = open_incident(event).incident
            self.history.event(None, host, event)
        else:
            self.history.event(self.incident, host, event)


def write_incidents(path: Path) -> None:
    w = Writer(path)
    # An older incident of host3, closed when host3 came back before any fence worked.
    w.event(H3, ev.Opened("20231114T221000-host3", H3, "host3", w.at(-200), (), False))
    w.event(H3, ev.FenceDone(w.at(-199), False, "redfish", "BMC unreachable"))
    w.event(H3, ev.HostReturned(w.at(-190)))
    w.history.episode_end(H3)
    # host2 dies: fenced, reset, one VM restarted on host3, one fails, one left alone.
    w.event(H2, ev.Opened("20231114T221320-host2", H2, "host2", w.at(0), (WEB, DB, TMP),
                          False))
    w.event(H2, ev.FenceDone(w.at(2), True, "redfish", "power off"))
    for vm in (WEB, DB, TMP):
        w.event(H2, ev.ResetDone(w.at(3), vm.uuid, True))
    w.event(H2, ev.CapacityMeasured(w.at(3.5), ((H3, 4096 * MIB),)))
    assert w.incident is not None
    w.history.action(w.incident, ev.StartVm(WEB.uuid, H3))
    w.event(H2, ev.StartDone(w.at(5), WEB.uuid, H3, ev.StartOutcome.STARTED))
    w.event(H2, ev.CapacityMeasured(w.at(5.5), ((H3, 2048 * MIB),)))
    w.event(H2, ev.StartDone(w.at(6), DB.uuid, H3, ev.StartOutcome.FAILED,
                             "VM_REQUIRES_SR", "sr gone"))
    w.journal.close()


def config_for(tmp: Path) -> Path:
    config = tmp / "xenhad.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp / "state"}"\n')
    return config


def history(config: Path, **kwargs: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_history(config, out=out, err=err, **kwargs)  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return config_for(tmp_path)


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "journal.jsonl"
    write_incidents(path)
    return path


def test_each_incident_is_one_block_newest_first(config: Path, journal: Path) -> None:
    code, out, err = history(config)
    assert code == 0 and err == ""
    first, second = out.split("\n\n")
    assert first.startswith("incident 20231114T221320-host2")
    assert f"host        host2 ({H2})" in first
    assert "opened      2023-11-14T22:13:20Z" in first
    assert "closed      2023-11-14T22:13:26Z (after 6.0 s)" in first
    assert "outcome     done" in first
    assert "fenced by   redfish" in first
    # host3's name is known from its own incident, so the restart names it.
    assert "restarted (1):\n    web on host3" in first
    assert "failed (1):\n    db: VM_REQUIRES_SR sr gone" in first
    assert "not protected (left alone) (1):\n    scratch" in first
    assert "not placed" not in first
    timeline = first.split("timeline:\n")[1].splitlines()
    assert timeline[0].split() == ["+0.0s", "opened:", "3", "VMs", "were", "running", "on",
                                   "it,", "2", "protected"]
    assert any("+2.0s" in line and "fenced: redfish proved the power off" in line
               for line in timeline)
    assert any("web: start on host3" in line for line in timeline), "intents are shown"
    assert any("free memory: host3 4096 MiB" in line for line in timeline)
    assert second.startswith("incident 20231114T221000-host3")
    assert "outcome     aborted: host came back before anything was touched" in second
    assert "fenced by   -" in second
    assert "episode ended" in second.splitlines()[-1]


def test_json_carries_the_same_facts(config: Path, journal: Path) -> None:
    code, out, _ = history(config, as_json=True)
    assert code == 0
    doc = json.loads(out)
    assert doc["journal"] == str(journal) and doc["problems"] == []
    newest = doc["incidents"][0]
    assert newest["id"] == "20231114T221320-host2"
    assert (newest["host"], newest["host_uuid"]) == ("host2", H2)
    assert (newest["opened"], newest["closed"]) == ("2023-11-14T22:13:20Z",
                                                    "2023-11-14T22:13:26Z")
    assert (newest["phase"], newest["open"], newest["fenced_by"]) == ("done", False, "redfish")
    assert newest["restarted"] == [{"vm": "web", "uuid": "vm-web", "host": "host3"}]
    assert newest["failed"] == [{"vm": "db", "uuid": "vm-db", "error": "VM_REQUIRES_SR sr gone"}]
    assert newest["not_protected"] == [{"vm": "scratch", "uuid": "vm-tmp"}]
    assert newest["timeline"][0]["at_s"] == 0.0
    assert [s["at_s"] for s in newest["timeline"]] == sorted(
        s["at_s"] for s in newest["timeline"])


def test_host_and_limit_select_incidents(config: Path, journal: Path) -> None:
    _, out, _ = history(config, host="host3")
    assert out.startswith("incident 20231114T221000-host3") and "host2 (" not in out
    _, by_uuid, _ = history(config, host=H3)
    assert by_uuid == out
    _, newest, _ = history(config, limit=1)
    assert newest.count("\nincident ") == 0 and newest.startswith("incident 20231114T221320")
    _, none, _ = history(config, host="host9")
    assert none.strip().splitlines() == [f"no incident for host host9 in the journal {journal}"]


def test_an_open_incident_says_what_it_waits_for(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    w = Writer(tmp_path / "state" / "journal.jsonl")
    w.event(H2, ev.Opened("i-open", H2, "host2", w.at(0), (WEB, TMP), False))
    w.event(H2, ev.FenceDone(w.at(1), False, "ipmi", "no answer"))
    w.journal.close()
    _, out, _ = history(config)
    assert "closed      still open" in out
    assert "outcome     waiting-fence: no answer" in out
    assert "not placed (1):\n    web: power state not reset yet" in out
    assert "not protected (left alone) (1):\n    scratch" in out


def test_a_corrupt_line_is_one_line_and_the_rest_is_shown(config: Path, journal: Path) -> None:
    lines = journal.read_bytes().split(b"\n")
    lines.insert(3, b'{"t": 1700000000, "incident": "x", oops')
    lines.insert(5, b'{"t": 1, "incident": "20231114T221320-host2", "event": "teleported"}')
    journal.write_bytes(b"\n".join(lines) + b'{"t": 17000')  # and a torn tail
    before = journal.read_bytes()
    code, out, err = history(config)
    assert code == 0
    problems = err.strip().splitlines()
    assert len(problems) == 3, err
    assert problems[0].startswith("xenhad history: journal line 4: corrupt line skipped")
    assert "incomplete last line" in problems[1]
    assert "unknown event kind 'teleported'" in problems[2]
    assert out.count("incident 2023") == 2, "both incidents still shown"
    assert journal.read_bytes() == before, "history never rewrites the journal"


def test_a_record_that_breaks_the_machine_hides_only_its_incident(
    config: Path, journal: Path
) -> None:
    opened = {"t": T0 + 500, "host": H2, "event": "opened", "host_name": "host2",
              "vms": [], "unsafe": False}
    records = [
        {**opened, "incident": "i-when", "now": "yesterday"},
        {**opened, "incident": "i-math", "now": T0 + 500},
        {"t": T0 + 501, "incident": "i-math", "host": H2, "event": "fence-done",
         "now": "soon", "off": False, "backend": "ipmi", "detail": ""},
    ]
    with open(journal, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    code, out, err = history(config)
    assert code == 0 and "Traceback" not in err
    problems = err.strip().splitlines()
    assert len(problems) == 2, err
    assert "incident i-when" in problems[0] and "'yesterday'" in problems[0]
    assert "incident i-math: cannot be rebuilt (TypeError" in problems[1]
    assert out.count("incident 2023") == 2


def test_missing_and_empty_journals_say_so_in_one_line(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    code, out, err = history(config)
    journal = tmp_path / "state" / "journal.jsonl"
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"no journal at {journal}: this host's daemon has recorded "
                                "no incident"]
    assert not (tmp_path / "state").exists(), "reading created nothing"
    journal.parent.mkdir()
    journal.write_bytes(b"")
    _, out, _ = history(config)
    assert out.splitlines() == [f"the journal {journal} is empty: no incident recorded"]
    _, out, _ = history(config, as_json=True)
    assert json.loads(out)["incidents"] == []


def test_as_a_process_a_corrupt_journal_is_no_traceback(config: Path, journal: Path) -> None:
    with open(journal, "ab") as f:
        f.write(b"\x00\xff not json\n")
    result = xenhad("history", "--config", str(config), "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "corrupt line skipped" in result.stderr
    assert len(json.loads(result.stdout)["incidents"]) == 2
    assert not (journal.parent / "lock").exists(), "the daemon's lock is never taken"


def test_an_unreadable_journal_is_one_line_exit_2(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    (tmp_path / "state" / "journal.jsonl").mkdir(parents=True)  # unreadable even for root
    line = one_line_error(xenhad("history", "--config", str(config)))
    assert line.startswith("xenhad: cannot read the journal")


def test_a_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "xenhad.toml"
    config.write_text("[daemon]\nstate_dirr = '/x'\n")
    result = xenhad("history", "--config", str(config))
    assert result.returncode == 2 and "state_dirr" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    missing = xenhad("history", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "cannot read the config file" in missing.stderr
