"""The disk holding the journal fails: read-only before the daemon starts, full at start, full
in the middle of an incident (issue 25). Real daemons, a real small tmpfs (mounted as root;
skipped where mounting is not allowed). Nothing is done that the journal cannot record, the
daemon stays up and says so once, loudly, and carries on by itself when the disk is back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pool_checks import never_twice_until, protected_on, running_again, wait_all_logged

from small_disk import fill, remount, small_disk
from xenhad.daemon import STOP_SECONDS
from xenhad.journal import Journal
from xenhad.log import parse_line
from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

HOST_UUID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"


def start_alone(workdir: Path, state_dir: Path, name: str,
                extra: str = "") -> tuple[int, list[str]]:
    """`xenhad run` with stderr as the journal would see it ($JOURNAL_STREAM names it):
    its exit status and its lines. It fails before it needs a pool."""
    config = workdir / f"{name}.toml"
    config.write_text(f'[host]\nuuid = "{HOST_UUID}"\n[daemon]\nstate_dir = "{state_dir}"\n'
                      '[xapi]\nsocket = "/nonexistent/xapi"\n' + extra)
    err = workdir / f"{name}.err"
    with open(err, "wb") as out:
        st = os.fstat(out.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        env.pop("NOTIFY_SOCKET", None)
        done = subprocess.run([sys.executable, "-m", "xenhad", "run", "--config", str(config)],
                              stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                              timeout=60, check=False)
    return done.returncode, err.read_text().splitlines()


def errors_of(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("<0>", "<1>", "<2>", "<3>"))]


@pytest.mark.parametrize("existing", [False, True], ids=["new-state-dir", "existing-state-dir"])
def test_a_read_only_state_dir_stops_each_start_with_one_error_line(
    workdir: Path, existing: bool
) -> None:
    with small_disk(workdir / "disk") as disk:
        state = disk / "state"
        if existing:  # a daemon ran here before the disk went read-only
            state.mkdir(mode=0o700)
            (state / "lock").write_text("1234\n")
            with Journal(state / "journal.jsonl") as journal:
                journal.append({"t": 1.0, "host": "h", "episode": "end"})
        remount(disk, read_only=True)
        for attempt in ("first start", "restart"):  # as systemd's Restart= would
            code, lines = start_alone(workdir, state, attempt.replace(" ", "-"))
            assert code == 2, (attempt, lines)
            assert not any("Traceback" in line for line in lines), lines
            (error,) = errors_of(lines)
            assert error.startswith("<3>"), "journalctl -p err must list it"
            parsed = parse_line(error)
            assert parsed is not None and parsed.event == "daemon.failed"
            assert "Read-only file system" in parsed.fields["error"]
            assert str(state) in parsed.fields["error"]


def test_a_config_error_at_start_is_one_error_line_too(workdir: Path) -> None:
    code, lines = start_alone(workdir, workdir / "state", "bad", "[detector]\nconfirm_misses = 0\n")
    assert code == 2
    (error,) = errors_of(lines)
    assert error.startswith("<3>xenhad: ") and "confirm_misses" in error
    assert len(lines) == 1


def status_doc(bed: Testbed, name: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "xenhad", "status", "--json", "--config",
         str(bed.daemons[name].config)], capture_output=True, text=True, timeout=30, check=True)
    doc = json.loads(done.stdout)
    assert isinstance(doc, dict)
    return doc


def test_a_full_disk_holds_every_step_loudly_and_recovery_carries_on_once_freed(
    workdir: Path,
) -> None:
    spec = PoolSpec(hosts=3, vms=9, seed=3, vm_start_seconds=0.5)
    state = workdir / "host1" / "state"
    with small_disk(state, kib=256), Testbed(spec, workdir, systemd=True) as bed:
        wait_all_logged(bed, "daemon.ready")
        victim = "host2"
        protected = protected_on(bed, victim)
        assert protected, "the seed should put protected VMs on host2"
        notify = bed.daemons["host1"].notify
        assert notify is not None

        # 1. Full before the host dies: no incident may open, the daemon says why.
        filler = fill(state, slack_of=state / "journal.jsonl")
        bed.bmc_mode(victim, "down")  # then its fence waits (phase 2)
        bed.crash(victim)
        bed.wait_for(lambda: bed.events_named("host.down", "host1"), 30, what="host2 down")
        bed.wait_for(lambda: bed.events_named("journal.unwritable", "host1"), 10,
                     what="the daemon to say its journal cannot be written")
        time.sleep(3)
        assert not bed.events_named("incident.opened"), "an incident opened unjournaled"
        assert bed.daemon_alive("host1")
        (_, line), = bed.events_named("journal.unwritable", "host1")
        assert line.level == "error" and str(state) in line.fields["fix"]
        assert any("CANNOT ACT" in s for s in notify.seen("STATUS="))
        doc = status_doc(bed, "host1")
        assert "No space left on device" in str(doc["journal_error"])

        # Freed: the incident opens by itself, and waits for its fence (BMC down).
        filler.unlink()
        bed.wait_for(lambda: bed.events_named("incident.waiting_fence", "host1"), 30,
                     what="the incident to open once the disk had room")
        assert len(bed.events_named("journal.writable", "host1")) == 1

        # 2. Full while the incident waits: the fence's retry is a step it cannot record.
        filler = fill(state, slack_of=state / "journal.jsonl")
        bed.bmc_mode(victim, "ok")
        bed.wait_for(lambda: len(bed.events_named("journal.unwritable", "host1")) == 2, 30,
                     what="the daemon to say again that its journal cannot be written")
        time.sleep(4)  # several fence retries' worth (retry_backoff_max 4 s)
        assert not bed.events_named("fence.off", "host1"), "fenced though unjournaled"
        steps = [e.fields.get("phase") for _, e in bed.events_named("incident.step", "host1")]
        assert "resetting" not in steps, "a step was taken that the journal does not hold"
        assert all(bed.vm_hosts().get(vm) == [] for vm in protected)
        doc = status_doc(bed, "host1")
        incidents = doc["incidents"]
        assert isinstance(incidents, list) and incidents[0]["waiting_for_journal"] is True
        assert bed.daemon_alive("host1")

        filler.unlink()
        bed.wait_for(lambda: running_again(bed, protected, victim), 60,
                     what="the protected VMs running again once the disk had room")
        bed.wait_for(lambda: bed.events_named("incident.closed", "host1"), 30,
                     what="the incident to close")
        assert bed.pool.double_runs() == []
        assert len(bed.events_named("journal.writable", "host1")) == 2
        assert bed.daemons["host1"].starts == 1, "the daemon restarted"
        # Every record whole: nothing glued to a torn line, nothing lost.
        report = Journal(state / "journal.jsonl").replay()
        assert report.problems == []
        kinds = [r.get("event") for r in report.records if r.get("event")]
        assert kinds.count("opened") == 1 and "fence-done" in kinds
        bed.stop_daemon("host1")


def test_a_full_disk_at_start_keeps_the_daemon_up(workdir: Path) -> None:
    # A journal with an old record to compact away: compaction needs room it cannot have.
    state = workdir / "host1" / "state"
    spec = PoolSpec(hosts=2, vms=2, seed=3)
    with small_disk(state, kib=64):
        state.chmod(0o700)
        with Journal(state / "journal.jsonl") as journal:
            journal.append({"t": 1.0, "host": "gone", "episode": "end"})  # compacted away
            journal.append({"t": time.time(), "host": "back", "episode": "end"})  # kept
        fill(state, slack_of=state / "journal.jsonl")
        with Testbed(spec, workdir, daemon_hosts=("host1",)) as bed:
            bed.wait_for(lambda: bed.events_named("daemon.ready", "host1"), 60,
                         what="the daemon to come up on a full disk")
            assert bed.events_named("journal.not_compacted", "host1")
            time.sleep(2)
            assert bed.daemon_alive("host1") and bed.daemons["host1"].starts == 1
            bed.stop_daemon("host1")


def test_sigterm_during_a_long_vm_start_exits_at_once_and_the_start_is_found_out_later(
    workdir: Path,
) -> None:
    # A VM.start runs for half a minute in its XAPI worker thread (a long boot, a
    # start_delay), more than twice what a stop may take (STOP_SECONDS): the stop abandons
    # it, and the next start learns from the pool whether it happened.
    spec = PoolSpec(hosts=3, vms=9, seed=3, vm_start_seconds=30.0)
    with Testbed(spec, workdir, overrides={"recovery": {"concurrency": 1}}) as bed:
        wait_all_logged(bed, "daemon.ready")
        protected = protected_on(bed, "host2")
        assert protected
        bed.crash("host2")
        bed.wait_for(lambda: bed.events_named("vm.starting", "host1"), 60,
                     what="a VM start in flight")
        proc = bed.daemons["host1"].proc
        assert proc is not None
        sent = time.monotonic()
        bed.signal_daemon("host1", signal.SIGTERM)
        try:
            code = proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - sent
        assert code == 0 and took < STOP_SECONDS, f"exit {code} after {took:.1f}s"
        (_, stopped), = bed.events_named("daemon.stopped", "host1")
        assert stopped.fields["open_incidents"] == 1, "the parked incident was not counted"
        (_, starting), = bed.events_named("vm.starting", "host1")
        in_flight = starting.fields["vm"]
        bed.start_daemon("host1")

        def found_out() -> bool:
            return any(e.fields["vm"] == in_flight for _, e in
                       bed.events_named("vm.restarted", "host1"))

        # The abandoned start carries on in xapi; the new daemon waits for it, not again.
        never_twice_until(bed, found_out, 90, what=f"{in_flight}'s start found out")
        starts = [e for _, e in bed.events_named("vm.starting", "host1")
                  if e.fields["vm"] == in_flight]
        assert len(starts) == 1, f"{in_flight} was started again"
        assert len(bed.events_named("incident.opened", "host1")) == 1
        bed.stop_daemon("host1")


def test_a_restart_that_cannot_beat_the_watchdog_refuses_the_start_in_one_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The unit restarts the daemon 5 s after a crash; a 6 s watchdog would reset the host
    # before the daemon could feed it again (issue 25, finding 6).
    units = workdir / "units"
    units.mkdir()
    unit = Path(__file__).parents[2] / "packaging" / "systemd" / "xenhad.service"
    (units / "xenhad.service").write_text(unit.read_text())
    secret = workdir / "pool-secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    extra = (f'[peers]\nsecret_file = "{secret}"\n'
             '[fencing]\nself_fence = { watchdog = "/dev/watchdog", timeout = 6 }\n')
    monkeypatch.setenv("SYSTEMD_UNIT_PATH", str(units))  # where systemd would look
    code, lines = start_alone(workdir, workdir / "state", "tight", extra)
    assert code == 2
    (error,) = errors_of(lines)
    parsed = parse_line(error)
    assert parsed is not None and parsed.event == "daemon.failed"
    assert "RestartSec=5s" in parsed.fields["error"] and "self_fence.timeout = 6" in error
