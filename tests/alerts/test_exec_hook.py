"""The exec hook: a real executable run per alert, without a shell, with the alert on its
stdin and nothing of the daemon's environment; a failing or hanging hook is logged and
never holds up the daemon."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from xenhad.alerts import Alerts
from xenhad.config import AlertsConfig

from .conftest import Logged, deliver

OPENED = {"event": "incident.opened", "incident": "i-1", "host": "host2", "phase": "fencing",
          "at": 1718000000.5}
CLOSED = {**OPENED, "event": "incident.closed", "phase": "done"}


def hook(tmp_path: Path, body: str, *, python: bool = False) -> Path:
    path = tmp_path / "alert-hook"
    interpreter = sys.executable if python else "/bin/sh"
    path.write_text(f"#!{interpreter}\n{body}")
    path.chmod(0o755)
    return path


def running(pid: int, within: float = 2.0) -> bool:
    """Whether `pid` still runs after `within` seconds. A zombie does not count: the killed
    sleep is reparented to PID 1, which in a container may never reap it."""
    deadline = time.monotonic() + within
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state in ("Z", "X"):
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.02)


def test_the_hook_gets_the_event_in_argv_the_alert_on_stdin_and_a_clean_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged: Logged
) -> None:
    monkeypatch.setenv("XENHAD_TEST_LEAK", "must not reach the hook")
    out = tmp_path / "seen.jsonl"
    path = hook(tmp_path, f"""
import json, os, sys
with open({str(out)!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd(),
                         "stdin": sys.stdin.read()}}) + "\\n")
""", python=True)
    alerts = Alerts.from_config(AlertsConfig(exec=path), pool="pool-uuid")
    deliver(alerts, OPENED, CLOSED)

    seen = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["argv"] for s in seen] == [[str(path), "incident.opened"],
                                         [str(path), "incident.closed"]]
    assert json.loads(seen[0]["stdin"]) == {**OPENED, "pool": "pool-uuid"}
    env = seen[0]["env"]
    env.pop("LC_CTYPE", None)  # Python itself sets it in a C locale (PEP 538)
    assert set(env) == {"PATH", "XENHAD_EVENT"}
    assert env["XENHAD_EVENT"] == "incident.opened"
    assert "/usr/bin" in env["PATH"].split(":")
    assert seen[0]["cwd"] == "/"
    assert not logged.events("alerts.exec_failed")


def test_a_hook_that_exits_non_zero_is_logged_with_its_first_stderr_line(
    tmp_path: Path, logged: Logged
) -> None:
    path = hook(tmp_path, "cat >/dev/null\necho '' >&2\necho 'pager: no route' >&2\n"
                          "echo 'second line' >&2\nexit 3\n")
    deliver(Alerts.from_config(AlertsConfig(exec=path)), OPENED)
    [failed] = logged.events("alerts.exec_failed")
    assert failed == {"level": "error", "target": str(path), "alert": "incident.opened",
                      "reason": "exit status 3: pager: no route"}


def test_a_hook_that_hangs_is_killed_with_its_children_at_the_timeout(
    tmp_path: Path, logged: Logged
) -> None:
    pids = tmp_path / "pids"
    path = hook(tmp_path, f"sleep 60 &\necho $$ $! > {pids}\nwait\n")
    alerts = Alerts.from_config(AlertsConfig(exec=path, timeout=0.5))
    started = time.monotonic()
    longest_send = deliver(alerts, OPENED)
    assert longest_send < 0.05
    assert time.monotonic() - started < 5
    [failed] = logged.events("alerts.exec_failed")
    assert failed["reason"] == "still running after 0.5s: killed"
    for pid in map(int, pids.read_text().split()):
        assert not running(pid)


def test_alerts_reach_the_hook_one_at_a_time_in_order(tmp_path: Path) -> None:
    out = tmp_path / "order"
    # A slow first run: were runs concurrent, "closed" would be written first.
    path = hook(tmp_path, f'[ "$1" = incident.opened ] && sleep 0.3\necho "$1" >> {out}\n')
    events = [{**OPENED, "event": e} for e in ("incident.opened", "incident.step",
                                                "incident.step", "incident.closed")]
    deliver(Alerts.from_config(AlertsConfig(exec=path)), *events)
    assert out.read_text().split() == [e["event"] for e in events]


def test_a_hook_that_cannot_be_run_is_logged(tmp_path: Path, logged: Logged) -> None:
    path = hook(tmp_path, "exit 0\n")
    alerts = Alerts.from_config(AlertsConfig(exec=path))
    path.unlink()  # removed after the daemon started
    deliver(alerts, OPENED)
    [failed] = logged.events("alerts.exec_failed")
    assert failed["reason"] == "cannot run it: No such file or directory"


def test_a_hook_that_ignores_its_stdin_is_fine(tmp_path: Path, logged: Logged) -> None:
    path = hook(tmp_path, "exit 0\n")
    deliver(Alerts.from_config(AlertsConfig(exec=path)), {**OPENED, "pad": "x" * 1_000_000})
    assert not logged.events("alerts.exec_failed")
    assert [e["alert"] for e in logged.events("alerts.delivered")] == ["incident.opened"]
