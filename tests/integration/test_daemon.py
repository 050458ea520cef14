"""Real `xenhad run` processes, one per simulated host, against the XAPI simulator."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from pool_checks import protected_on, running_again, unprotected_on, wait_all_logged

from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def wait_ready(bed: Testbed) -> None:
    wait_all_logged(bed, "daemon.ready")


def test_slave_crash_brings_its_protected_vms_back_once(workdir: Path) -> None:
    with Testbed(PoolSpec(hosts=3, vms=12, seed=3, vm_start_seconds=0.5), workdir) as bed:
        wait_ready(bed)
        victim = "host2"
        protected = protected_on(bed, victim)
        left_alone = unprotected_on(bed, victim)
        assert protected, "the seed should put protected VMs on host2"
        bed.crash(victim)
        bed.wait_for(lambda: running_again(bed, protected, victim), 60,
                     what=f"{protected} running again")
        bed.wait_for(lambda: bed.events_named("incident.closed"), 30, what="incident closed")
        hosts = bed.vm_hosts()
        for vm in protected:
            assert len(hosts[vm]) == 1 and hosts[vm][0] != victim
        for vm in left_alone:
            assert hosts.get(vm) == [], "an unprotected VM was restarted"
        assert bed.pool.double_runs() == []
        opened = bed.events_named("incident.opened")
        assert [n for n, _ in opened] == ["host1"], "only the master acts, once"
        (_, closed), = bed.events_named("incident.closed")
        assert closed.fields["phase"] == "done"
        assert set(closed.fields["restarted"]) == set(protected)


def test_without_fencing_the_vms_of_a_dead_host_are_not_touched(workdir: Path) -> None:
    spec = PoolSpec(hosts=3, vms=9, seed=3)
    with Testbed(spec, workdir, fencing="none") as bed:
        wait_ready(bed)
        protected = protected_on(bed, "host2")
        bed.crash("host2")
        bed.wait_for(lambda: bed.events_named("incident.waiting_fence"), 30,
                     what="the incident to wait for a fence")
        time.sleep(2)
        hosts = bed.vm_hosts()
        assert all(hosts.get(vm) == [] for vm in protected)
        assert not bed.events_named("vm.restarted")
        (_, waiting), = bed.events_named("incident.waiting_fence")[:1]
        assert "no fencing backend" in waiting.fields["why"]


def test_a_flapping_host_is_never_recovered(workdir: Path) -> None:
    # Without heartbeats: a peer's heartbeats would cover one-second blips of its xapi
    # (peers.window), and the blips are what this test is about.
    with Testbed(PoolSpec(hosts=3, vms=6, seed=3), workdir, peers=False) as bed:
        wait_ready(bed)
        for _ in range(4):
            bed.pool.partition([["host1", "host3"], ["host2"]])
            # Shorter than confirm_seconds (2 s), and longer than the 1 s between two
            # probes of a host at rest with no peers (cadence.rest_every): a 1 s blip
            # could fall between them on a loaded machine, and none was seen (CI).
            time.sleep(1.5)
            bed.pool.heal()
            time.sleep(1.0)
        time.sleep(2)
        assert bed.events_named("host.suspect"), "the blips were seen"
        assert not bed.events_named("host.down")
        assert not bed.events_named("incident.opened")


def test_a_disabled_host_is_left_to_the_operator(workdir: Path) -> None:
    with Testbed(PoolSpec(hosts=3, vms=6, seed=3), workdir) as bed:
        wait_ready(bed)
        bed.set_host_enabled("host2", False)
        time.sleep(1.5)
        protected = protected_on(bed, "host2")
        bed.crash("host2")
        time.sleep(6)  # three times the confirmation threshold
        assert not bed.events_named("host.down")
        assert not bed.events_named("incident.opened")
        hosts = bed.vm_hosts()
        assert all(hosts.get(vm) == [] for vm in protected)


def test_native_ha_on_keeps_xenhad_passive(workdir: Path) -> None:
    with Testbed(PoolSpec(hosts=3, vms=6, seed=3, ha_enabled=True), workdir) as bed:
        bed.wait_for(lambda: len(bed.events_named("daemon.passive")) >= 3, 30,
                     what="every daemon to go passive")
        bed.crash("host2")
        time.sleep(5)
        assert not bed.events_named("incident.opened")
        (_, passive), *_ = bed.events_named("daemon.passive")
        assert "native HA" in passive.fields["why"]


def test_daemon_killed_mid_recovery_resumes_and_repeats_nothing(workdir: Path) -> None:
    spec = PoolSpec(hosts=3, vms=16, seed=5, vm_start_seconds=4.0)
    overrides = {"recovery": {"concurrency": 1}}
    with Testbed(spec, workdir, overrides=overrides) as bed:
        wait_ready(bed)
        protected = protected_on(bed, "host2")
        assert len(protected) >= 2, "one to restart before the kill, one after"
        bed.crash("host2")
        bed.wait_for(lambda: bed.events_named("vm.restarted", "host1"), 60,
                     what="the first VM restarted")
        bed.kill_daemon("host1")  # SIGKILL in the middle of the restarts
        bed.start_daemon("host1")
        bed.wait_for(lambda: running_again(bed, protected, "host2"), 90,
                     what="every protected VM running again")
        bed.wait_for(lambda: bed.events_named("incident.closed", "host1"), 30,
                     what="the resumed incident to close")
        assert bed.events_named("incident.resuming", "host1")
        assert len(bed.events_named("incident.opened", "host1")) == 1, "recovery repeated"
        assert bed.pool.double_runs() == []
        hosts = bed.vm_hosts()
        assert all(len(hosts[vm]) == 1 for vm in protected)


def test_black_holed_xapi_keeps_the_loop_alive_and_says_so(workdir: Path) -> None:
    with Testbed(PoolSpec(hosts=3, vms=6, seed=3), workdir, systemd=True,
                 overrides={"xapi": {"timeout": 1.0}}) as bed:
        wait_ready(bed)
        bed.pool.hang("host1")  # the master's xapi accepts and never answers
        hung_at = time.monotonic()
        bed.wait_for(lambda: bed.events_named("xapi.unreachable", "host1"), 20,
                     what="the master's daemon to say XAPI is unreachable")
        time.sleep(4)
        notify = bed.daemons["host1"].notify
        assert notify is not None
        assert len(notify.seen("WATCHDOG=1", since=hung_at + 2)) >= 2, "loop wedged"
        assert any("XAPI unreachable" in s for s in notify.seen("STATUS=", since=hung_at))
        assert bed.daemon_alive("host1")
        assert not bed.events_named("incident.opened")
        bed.pool.unhang("host1")
        bed.wait_for(lambda: bed.events_named("xapi.reachable", "host1"), 20,
                     what="the daemon to see XAPI again")


def test_sighup_with_a_bad_file_keeps_the_old_config(workdir: Path) -> None:
    with Testbed(PoolSpec(hosts=2, vms=4, seed=3), workdir, systemd=True) as bed:
        wait_ready(bed)
        good = bed.daemons["host1"].config.read_text()
        assert "confirm_misses = 3" in good
        bed.write_config("host1", good.replace("confirm_misses = 3", "confirm_misses = 0"))
        bed.signal_daemon("host1", signal.SIGHUP)
        bed.wait_for(lambda: bed.events_named("config.reload_refused", "host1"), 10,
                     what="the bad reload to be refused")
        (_, refused), = bed.events_named("config.reload_refused", "host1")
        assert "confirm_misses" in refused.fields["error"]
        notify = bed.daemons["host1"].notify
        assert notify is not None
        assert notify.seen("RELOADING=1")
        t = time.monotonic()
        time.sleep(1.5)
        assert notify.seen("WATCHDOG=1", since=t), "the loop stopped after a refused reload"
        bed.write_config("host1", good.replace("log_level = \"info\"", "log_level = \"debug\""))
        bed.signal_daemon("host1", signal.SIGHUP)
        bed.wait_for(lambda: bed.events_named("config.reloaded", "host1"), 10,
                     what="the good reload")


def test_systemd_sees_ready_status_watchdog_and_a_clean_stop(workdir: Path) -> None:
    with Testbed(PoolSpec(hosts=2, vms=2, seed=3), workdir, systemd=True) as bed:
        wait_ready(bed)
        notify = bed.daemons["host1"].notify
        assert notify is not None
        bed.wait_for(lambda: len(notify.seen("WATCHDOG=1")) >= 2, 10, what="watchdog pings")
        assert notify.seen("READY=1")
        assert any("master host1" in s for s in notify.seen("STATUS="))
        t = time.monotonic()
        assert bed.stop_daemon("host1") == 0
        assert time.monotonic() - t < 10
        assert notify.seen("STOPPING=1")
