"""The findings of issues 18 and 24, each a named scenario with real daemons.

Each arranges the pool, injects the fault the finding was made with, and asserts the
outcome and the two rules: never a VM on two hosts, never a healthy host fenced.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path

import pytest
from pool_checks import never_twice_until as watch
from pool_checks import protected_on, running_again, wait_all_logged

from xenhad.cadence import PROBE_HEARD_EVERY
from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SPEC = PoolSpec(hosts=3, vms=9, seed=3, vm_start_seconds=0.5, fuse_seconds=3.0,
                boot_seconds=5.0)
WINDOW, INTERVAL = 2.0, 0.5
"""The testbed's peers.window and peers.interval (and detector.interval)."""

POWER_OFF = ("ForceOff", "GracefulShutdown", "PushPowerButton", "ForceRestart", "PowerCycle")


def wall(line_timestamp: str | None) -> float:
    assert line_timestamp is not None
    return datetime.datetime.fromisoformat(line_timestamp.replace("Z", "+00:00")).timestamp()


def first(bed: Testbed, event: str, host: str, after: float = 0.0) -> float | None:
    """Wall time of `host`'s daemon's first `event` at or after wall time `after`."""
    times = [wall(e.timestamp) for _, e in bed.events_named(event, host)]
    later = [t for t in times if t >= after]
    return min(later) if later else None


def stayed_without_quorum(bed: Testbed, host: str, lost: float) -> list[str]:
    """What `host`'s daemon said, from its `quorum.lost` at wall time `lost` until it died
    (its next start is another boot), that shows it quorate or feeding again."""
    again = []
    for _, e in bed.events(host):
        if wall(e.timestamp) < lost:
            continue
        if e.event == "daemon.starting":
            break
        if e.event in ("quorum.gained", "watchdog.fed_again"):
            again.append(f"{e.event} +{wall(e.timestamp) - lost:.1f}s")
    return again


def powered_off_by_bmc(bed: Testbed, host: str) -> list[str]:
    assert bed.bmcs is not None
    return [kind for _, kind in bed.bmcs.bmcs[host].resets if kind in POWER_OFF]


def incidents_for(bed: Testbed, host: str) -> list[str]:
    return [n for n, e in bed.events_named_any({"incident.opened", "host.down"})
            if e.fields.get("host") == host]


def guests_on(bed: Testbed, host: str) -> list[str]:
    return sorted(vm for vm, hosts in bed.vm_hosts().items() if hosts == [host])


def wait_armed(bed: Testbed) -> None:
    wait_all_logged(bed, "watchdog.armed")
    wait_all_logged(bed, "quorum.gained", 30)


def test_18_1_a_slow_master_cut_off_stops_feeding_within_a_window(workdir: Path) -> None:
    """The master's xapi answers 4 s late (xapi.timeout raised to 6 s for it), its BMC is
    dead: only its watchdog can prove it off. Its quorum must go within a window of the
    cut whatever a tick costs, so its VMs start elsewhere only after it reset."""
    overrides = {"xapi": {"timeout": 6.0}}
    with Testbed(SPEC, workdir, self_fence=True, watchdog_timeout=8,
                 overrides=overrides) as bed:
        wait_armed(bed)
        on_master = guests_on(bed, "host1")
        protected = protected_on(bed, "host1")
        assert protected
        bed.pool.set_latency("host1", 4.0)
        time.sleep(8)  # the master's ticks are slow now
        bed.bmc_mode("host1", "down")
        cut = time.time()
        bed.pool.partition([["host1"], ["host2", "host3"]])
        watch(bed, lambda: running_again(bed, protected, "host1"), 120,
              f"{protected} running again")
        lost = first(bed, "quorum.lost", "host1", cut)
        assert lost is not None, "the cut-off master never said it lost quorum"
        assert lost - cut <= WINDOW + INTERVAL + 1.0, f"quorum.lost {lost - cut:.1f}s after"
        assert stayed_without_quorum(bed, "host1", lost) == []
        assert bed.truth()["hosts"]["host1"]["watchdog_fired"] >= 1
        assert bed.pool.double_runs() == []
        for healthy in ("host2", "host3"):
            assert not powered_off_by_bmc(bed, healthy)
        assert on_master


def test_18_2_a_one_way_cut_from_the_master_fences_no_healthy_host(workdir: Path) -> None:
    """master -> slaves dropped, slaves -> master flowing; after the heal, no host that
    stayed up and beating is fenced, and none of its VMs is lost."""
    # xapi's liveness timers short, so the old master's database marks its former slaves
    # not live while it is cut off; Xapi_fuse at its 10 s, so it is back as a master
    # before the promotion on the other side is through.
    spec = dataclasses.replace(SPEC, host_heartbeat_interval=1.0, db_gc_interval=1.0,
                               host_assumed_dead_interval=4.0, fuse_seconds=10.0)
    with Testbed(spec, workdir, self_fence=True) as bed:
        wait_armed(bed)
        kept = {h: guests_on(bed, h) for h in ("host2", "host3")}
        for slave in ("host2", "host3"):
            bed.pool.cut("host1", slave)
        watch(bed, lambda: bed.truth()["hosts"]["host1"]["watchdog_fired"] >= 1, 60,
              "the cut master to starve its watchdog and reset")
        # It boots as a master (its pool.conf), its new daemon counts misses while it has
        # no quorum (the cut still holds), and only then does the network heal.
        watch(bed, lambda: bed.daemons["host1"].starts >= 2 and bed.daemon_alive("host1"),
              60, "host1's daemon to start again after its reset")
        time.sleep(6)
        bed.pool.heal()
        healed = time.monotonic()
        # Past the old master's boot, its daemon's confirmation and an incident's fence.
        watch(bed, lambda: time.monotonic() - healed > 25, 40, "the pool to settle")
        for healthy in ("host2", "host3"):
            assert not powered_off_by_bmc(bed, healthy), f"{healthy} was fenced"
            assert not incidents_for(bed, healthy), incidents_for(bed, healthy)
            assert bed.truth()["hosts"][healthy]["boots"] == 0, f"{healthy} rebooted"
        hosts = bed.vm_hosts()
        lost = [vm for h, vms in kept.items() for vm in vms if not hosts.get(vm)]
        assert lost == [], f"VMs of healthy hosts lost: {lost}"
        assert bed.pool.double_runs() == []


def test_18_3_a_hung_xapi_with_a_beating_daemon_is_left_alone(workdir: Path) -> None:
    """Past xapi's dead interval (the master's database says the host is not live) and the
    detector's confirmation, the host is still left alone, and said loudly."""
    # xapi's liveness timers, short: XAPI says "not live" within seconds, not 10 minutes.
    spec = dataclasses.replace(SPEC, host_heartbeat_interval=1.0, db_gc_interval=1.0,
                               host_assumed_dead_interval=4.0)
    with Testbed(spec, workdir, self_fence=True) as bed:
        wait_armed(bed)
        guests = guests_on(bed, "host2")
        bed.pool.hang("host2")
        session = bed.xapi()
        try:
            ref = session.xenapi.host.get_by_uuid(bed.host("host2")["uuid"])
            metrics = session.xenapi.host.get_metrics(ref)
            bed.wait_for(lambda: not session.xenapi.host_metrics.get_live(metrics), 30,
                         what="xapi to mark host2 not live")
        finally:
            session.xenapi.session.logout()
        time.sleep(8)  # four times detector.confirm_seconds, with XAPI saying not live
        assert not incidents_for(bed, "host2")
        assert not powered_off_by_bmc(bed, "host2")
        assert bed.truth()["hosts"]["host2"]["watchdog_fired"] == 0
        assert guests_on(bed, "host2") == guests
        assert bed.pool.double_runs() == []
        # Said at once: a heard host that XAPI says is not live is probed every tick, not
        # only at the round of probes every PROBE_HEARD_EVERY ticks (30 s here).
        assert PROBE_HEARD_EVERY * INTERVAL > 8 + 2
        bed.wait_for(lambda: bed.events_named("host.xapi_hung", "host1"),
                     2, what="the master to say it hangs")
        (_, said), *_ = bed.events_named("host.xapi_hung", "host1")
        assert said.level == "error" and said.fields["host"] == "host2"
        assert not incidents_for(bed, "host2")
        assert guests_on(bed, "host2") == guests


def test_a_daemon_restarted_while_its_xapi_hangs_keeps_its_host_from_a_fence(
        workdir: Path) -> None:
    """Virtual chaos seed 1000131 with real daemons: host2's xapi hangs, and its daemon is
    killed and started again while it does. It cannot read the pool, and it used to beat
    only once it had: silent, with a xapi the master cannot probe, host2 was fenced with
    its VMs running (rule 2). It beats from its start now, to the peers its last reads left
    in its state directory (peers/roster.py), naming no master until it has read."""
    with Testbed(SPEC, workdir) as bed:
        wait_all_logged(bed, "quorum.gained", 30)
        guests = guests_on(bed, "host2")
        assert guests
        bed.pool.hang("host2")
        restarted = time.time()
        bed.kill_daemon("host2")
        bed.start_daemon("host2")
        # Four times detector.confirm_seconds past the restart, its xapi still hung.
        watch(bed, lambda: time.time() - restarted > 12, 30, "the master's confirmation")
        assert not incidents_for(bed, "host2")
        assert not powered_off_by_bmc(bed, "host2")
        assert guests_on(bed, "host2") == guests
        assert bed.pool.double_runs() == []
        assert first(bed, "peers.beating_unread", "host2", restarted) is not None


def test_18_4_a_waiting_incident_does_not_fence_a_host_that_came_back(
    workdir: Path,
) -> None:
    """No self-fencing: the master is cut off with its BMC dead, the new master's incident
    waits for a proof; the partition heals and the BMC answers: the incident is held, the
    returned host keeps its VMs."""
    with Testbed(SPEC, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        guests = guests_on(bed, "host1")
        assert guests
        bed.bmc_mode("host1", "down")
        bed.pool.partition([["host1"], ["host2", "host3"]])
        watch(bed, lambda: bed.events_named("incident.waiting_fence"), 60,
              "the incident to wait for a fence")
        bed.pool.heal()
        bed.bmc_mode("host1", "ok")
        watch(bed, lambda: bed.events_named("fence.held")
              or bed.events_named("incident.closed"), 30, "the incident to end")
        time.sleep(5)  # recover_hold_seconds and a fence's poll, had one been sent
        assert bed.events_named("fence.held"), "the incident ended without being held"
        assert not powered_off_by_bmc(bed, "host1"), "the returned host was fenced"
        assert bed.truth()["hosts"]["host1"]["boots"] == 0, "host1 rebooted"
        hosts = bed.vm_hosts()
        assert [vm for vm in guests if not hosts.get(vm)] == [], "VMs of host1 lost"
        assert bed.pool.double_runs() == []


def test_18_5_a_two_host_pool_without_a_witness_arms_no_watchdog(workdir: Path) -> None:
    spec = dataclasses.replace(SPEC, hosts=2, vms=6)
    with Testbed(spec, workdir, self_fence=True) as bed:
        wait_all_logged(bed, "watchdog.not_armed")
        wait_all_logged(bed, "quorum.gained", 30)
        time.sleep(2)
        assert not bed.events_named("watchdog.armed")
        for name, host in bed.truth()["hosts"].items():
            assert host["watchdog_deadline"] is None, f"{name}'s watchdog is armed"
        (_, said), *_ = bed.events_named("watchdog.not_armed")
        assert said.level == "error" and "witness" in said.fields["fix"]


def test_24_1_heartbeats_delivered_late_extend_no_quorum(workdir: Path) -> None:
    """host3 is cut off with its BMC dead; heartbeats host1 and host2 sent it in the
    first 2 s of the cut, held by the network, reach it one every 1.8 s: it loses quorum
    within a window all the same, resets, and only then do its VMs move."""
    with Testbed(SPEC, workdir, self_fence=True, watchdog_timeout=6) as bed:
        wait_armed(bed)
        protected = protected_on(bed, "host3")
        assert protected
        bed.bmc_mode("host3", "down")
        cut, cut_at = time.time(), time.monotonic()
        bed.pool.partition([["host1", "host2"], ["host3"]])
        time.sleep(2.0)
        assert bed.relay is not None
        bed.relay.replay("host3", ["host1", "host2"], every=1.8, since=cut_at)
        watch(bed, lambda: running_again(bed, protected, "host3"), 90,
              f"{protected} running again")
        lost = first(bed, "quorum.lost", "host3", cut)
        assert lost is not None, "host3 never said it lost quorum"
        assert lost - cut <= WINDOW + INTERVAL + 1.0, f"quorum.lost {lost - cut:.1f}s after"
        assert stayed_without_quorum(bed, "host3", lost) == [], "late heartbeats counted"
        assert bed.truth()["hosts"]["host3"]["watchdog_fired"] >= 1
        assert bed.pool.double_runs() == []


def recover_after_crash(bed: Testbed, host: str) -> float:
    protected = protected_on(bed, host)
    assert protected
    crashed = time.monotonic()
    bed.crash(host)
    watch(bed, lambda: running_again(bed, protected, host), 90, f"{protected} running again")
    return time.monotonic() - crashed


def test_24_2_two_boots_replayed_alternately_do_not_delay_recovery(workdir: Path) -> None:
    """host2's daemon restarts (a second boot), then host2 crashes; heartbeats of both
    boots, replayed to the master alternately, vouch for nothing: recovery takes about as
    long as host3's crash without them."""
    with Testbed(SPEC, workdir) as bed:
        wait_all_logged(bed, "quorum.gained")
        plain = recover_after_crash(bed, "host3")
        bed.boot("host3")
        bed.wait_for(lambda: bed.daemon_alive("host3")
                     and len(bed.events_named("quorum.gained", "host3")) >= 2, 60,
                     what="host3 back in the pool")
        bed.wait_for(lambda: bed.events_named("host.back", "host1"), 30,
                     what="the master to see host3 back")
        bed.kill_daemon("host2", respawn=True)  # one boot of host2's daemon ends...
        bed.wait_for(lambda: bed.daemon_alive("host2"), 10, what="host2's daemon again")
        time.sleep(4)  # ...and the next one beats
        protected = protected_on(bed, "host2")
        assert protected
        crashed = time.monotonic()
        bed.crash("host2")
        assert bed.relay is not None
        bed.relay.replay("host1", ["host2"], every=INTERVAL / 2, order="ends")
        watch(bed, lambda: running_again(bed, protected, "host2"), 90,
              f"{protected} running again")
        replayed = time.monotonic() - crashed
        assert replayed <= plain + 3.0, f"{replayed:.1f}s with replays, {plain:.1f}s without"
        assert bed.pool.double_runs() == []
