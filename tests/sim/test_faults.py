"""Faults as a pool meets them: crashes, hangs, partitions, transitions, timers."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import XenAPI

from xenhad.sim import PoolSpec, SimPool
from xenhad.sim.pool import RESET_OFF_SECONDS

from .clients import failure, login, tcp_session, unix_session

pytestmark = pytest.mark.timeout(60)


def guest_on(pool: SimPool, host: str) -> tuple[str, str]:
    """(ref, uuid) of a running guest resident on `host`, from the master's database."""
    db = pool.hosts[0].db
    h = pool.host(host)
    for ref, rec in db.tables["VM"].items():
        if rec["resident_on"] == h.ref and not rec["is_control_domain"]:
            return ref, rec["uuid"]
    raise AssertionError(f"no guest on {host}")


def live(x: object, host: str) -> bool:
    href = x.host.get_by_name_label(host)[0]  # type: ignore[attr-defined]
    return bool(x.host_metrics.get_live(x.host.get_metrics(href)))  # type: ignore[attr-defined]


def test_crash_refuses_connections_and_keeps_live_until_the_timeout(pool: SimPool) -> None:
    x = login(pool).xenapi
    _, vm_uuid = guest_on(pool, "host2")
    pool.crash("host2")
    with pytest.raises(ConnectionRefusedError):
        tcp_session(pool, "host2").login_with_password("root", "x")
    assert vm_uuid not in {v["uuid"] for v in pool.truth()["vms"] if v["running_on"]}
    assert live(x, "host2")  # db_gc.ml: only after host_assumed_dead_interval
    pool.advance(pool.spec.host_assumed_dead_interval - 60)
    assert live(x, "host2")
    pool.advance(90)
    assert not live(x, "host2")
    assert live(x, "host3")  # still heartbeating


def test_power_state_reset_refused_while_the_host_answers(pool: SimPool) -> None:
    x = login(pool).xenapi
    ref, _uuid = guest_on(pool, "host2")
    host2 = x.host.get_by_name_label("host2")[0]
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.power_state_reset(ref)
    assert failure(e) == ["HOST_IS_LIVE", host2]
    dom0 = x.host.get_control_domain(host2)
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.power_state_reset(dom0)
    assert failure(e) == ["CANNOT_RESET_CONTROL_DOMAIN", dom0]
    # A host that refuses connections is taken as dead, even while still marked live.
    pool.crash("host2")
    x.VM.power_state_reset(ref)
    assert x.VM.get_power_state(ref) == "Halted"
    assert x.VM.get_resident_on(ref) == "OpaqueRef:NULL"


def test_reset_does_not_kill_the_domain_and_a_restart_is_a_double_run(pool: SimPool) -> None:
    x = login(pool).xenapi
    ref, uuid = guest_on(pool, "host2")
    pool.partition([["host1", "host3"], ["host2"]])
    # host2 is cut off but its domains run on. Once the master's database says not live
    # (here written directly instead of waiting 600 s), power_state_reset asks nobody.
    with pool.lock:
        db = pool.hosts[0].db
        db.set(db.tables["host"][pool.host("host2").ref]["metrics"], "live", False)
    x.VM.power_state_reset(ref)
    x.VM.start_on(ref, x.host.get_by_name_label("host3")[0], False, False)
    runs = pool.double_runs()
    assert len(runs) == 1
    assert runs[0]["vm"] == uuid and runs[0]["hosts"] == ["host2", "host3"]
    assert runs[0]["sim_time"] >= 0 and runs[0]["wall_time"] > 0


def test_hang_holds_requests_and_domains_keep_running(pool: SimPool) -> None:
    _, uuid = guest_on(pool, "host2")
    pool.hang("host2")
    s = tcp_session(pool, "host2", timeout=0.5)
    with pytest.raises((socket.timeout, TimeoutError)):
        s.login_with_password("root", "x")
    assert any(v["uuid"] == uuid and v["hosts"] == ["host2"] for v in pool.truth()["vms"])
    pool.unhang("host2")
    with pytest.raises(XenAPI.Failure):
        tcp_session(pool, "host2").login_with_password("", "")


def test_partition_blackholes_and_the_outside_reaches_everyone(pool: SimPool) -> None:
    pool.partition([["host1"], ["host2", "host3"]])
    on2 = tcp_session(pool, "host1", on="host2", timeout=0.5)
    with pytest.raises((socket.timeout, TimeoutError)):
        on2.login_with_password("root", pool.spec.root_password)
    login(pool, "host1")  # the outside
    # The slave's local socket: DB calls go to the unreachable master and hang ...
    local = unix_session(pool, "host2", timeout=0.5)
    with pytest.raises((socket.timeout, TimeoutError)):
        local.login_with_password("root", "")
    # ... but the emergency login is answered locally.
    local = unix_session(pool, "host2", timeout=2)
    local.slave_local_login_with_password("root", "")
    local.xenapi.session.local_logout()
    pool.heal()
    login(pool, "host1", on="host2")


def test_one_way_cut(pool: SimPool) -> None:
    pool.cut("host2", "host1")
    with pytest.raises((socket.timeout, TimeoutError)):
        login(pool, "host1", on="host2", timeout=0.5)
    with pytest.raises(XenAPI.Failure) as e:  # the other way still works
        tcp_session(pool, "host2", on="host1").login_with_password("", "")
    assert failure(e)[0] == "HOST_IS_SLAVE"
    # host2's heartbeats no longer reach the master: dead after the interval.
    pool.advance(pool.spec.host_assumed_dead_interval + 60)
    x = login(pool).xenapi
    assert not live(x, "host2") and live(x, "host3")
    pool.heal()
    pool.advance(60)
    assert live(x, "host2")


def test_transition_to_master_on_a_stale_copy_and_recover_slaves() -> None:
    spec = PoolSpec(hosts=4, vms=8, seed=3, vm_start_seconds=0.1, fuse_seconds=10)
    with SimPool(spec) as pool:
        x = login(pool).xenapi
        [p] = x.pool.get_all()
        x.pool.add_to_other_config(p, "before-sync", "1")
        x.pool.sync_database()
        x.pool.add_to_other_config(p, "after-sync", "1")  # host3 never sees this
        pool.crash("host1")
        pool.crash("host4")
        local = unix_session(pool, "host3")
        local.slave_local_login_with_password("root", "")
        local.xenapi.pool.emergency_transition_to_master()
        pool.advance(spec.fuse_seconds + 1)
        assert pool.truth()["hosts"]["host3"]["is_master"]
        s = login(pool, "host3")
        x3 = s.xenapi
        assert x3.pool.get_other_config(p) == {"before-sync": "1"}
        assert x3.host.get_name_label(x3.pool.get_master(p)) == "host3"
        # The dead old master still looks live: a new master starts every timer afresh.
        assert live(x3, "host1")
        with pytest.raises(XenAPI.Failure) as e:
            tcp_session(pool, "host2").login_with_password("", "")
        assert failure(e) == ["HOST_IS_SLAVE", pool.host("host1").address]
        recovered = x3.pool.recover_slaves()
        assert recovered == x3.host.get_by_name_label("host2")
        # Told, but its running xapi keeps the role it started with until it restarts.
        with pytest.raises(XenAPI.Failure) as e:
            tcp_session(pool, "host2").login_with_password("", "")
        assert failure(e) == ["HOST_IS_SLAVE", pool.host("host1").address]
        pool.advance(spec.xapi_restart_seconds + 1)
        with pytest.raises(XenAPI.Failure) as e:
            tcp_session(pool, "host2").login_with_password("", "")
        assert failure(e) == ["HOST_IS_SLAVE", pool.host("host3").address]
        assert pool.truth()["hosts"]["host2"]["believes_master"] == "host3"
        pool.advance(spec.enable_after_boot_seconds + 1)
        assert x3.host.get_enabled(x3.host.get_by_name_label("host2")[0])


def test_a_call_held_for_a_dead_master_ends_when_the_xapi_holding_it_restarts() -> None:
    spec = PoolSpec(hosts=3, vms=4, seed=3, fuse_seconds=5)
    with SimPool(spec) as pool:
        pool.crash("host1")
        local = unix_session(pool, "host3")
        local.slave_local_login_with_password("root", "")
        held = unix_session(pool, "host3", timeout=30)
        outcome: list[object] = []

        def forwarded() -> None:
            # Forwarded to the dead master: never answered while this xapi runs.
            try:
                outcome.append(held.login_with_password("root", pool.spec.root_password))
            except BaseException as exc:
                outcome.append(exc)

        caller = threading.Thread(target=forwarded)
        caller.start()
        time.sleep(0.5)
        assert not outcome
        local.xenapi.pool.emergency_transition_to_master()
        started = time.monotonic()
        pool.advance(spec.fuse_seconds + 1)
        caller.join(10)
        # Its xapi exited to restart as master: the connection closed unanswered, and the
        # client's one resend (xmlrpc.client retries a reset connection) reached the new
        # master, long before the caller's own timeout.
        assert outcome and time.monotonic() - started < 5
        assert not isinstance(outcome[0], BaseException)
        assert pool.truth()["hosts"]["host3"]["is_master"]


def test_emergency_transition_refused_with_ha() -> None:
    with SimPool(PoolSpec(hosts=2, vms=2, ha_enabled=True)) as pool:
        local = unix_session(pool, "host2")
        local.slave_local_login_with_password("root", "")
        with pytest.raises(XenAPI.Failure) as e:
            local.xenapi.pool.emergency_transition_to_master()
        assert failure(e) == ["HA_IS_ENABLED"]


def test_clean_shutdown_is_not_live_at_once_and_boot_comes_back_disabled(pool: SimPool) -> None:
    x = login(pool).xenapi
    ref, _ = guest_on(pool, "host3")
    pool.shutdown("host3")
    assert not live(x, "host3")
    assert x.VM.get_power_state(ref) == "Halted"
    pool.boot("host3")
    pool.advance(pool.spec.boot_seconds + 1)
    host3 = x.host.get_by_name_label("host3")[0]
    # xapi_pool.ml hello: live again, disabled until consider_enabling_host runs.
    assert live(x, "host3") and not x.host.get_enabled(host3)
    pool.advance(pool.spec.enable_after_boot_seconds + 1)
    assert x.host.get_enabled(host3)


def test_a_host_promoted_while_disabled_enables_itself_at_its_start_as_master() -> None:
    # Self-fence soak seed 2612007944: host2 booted while its master's xapi failed, so the
    # consider_enabling_host after its hello found no master; promoted later, it stayed
    # disabled for ever and the VM on its local SR was never started again. xapi runs
    # consider_enabling_host at the end of every start-up, a master's too.
    spec = PoolSpec(hosts=3, vms=3, seed=3, fuse_seconds=10)
    with SimPool(spec) as pool:
        x = login(pool).xenapi
        host2 = x.host.get_by_name_label("host2")[0]
        host3 = x.host.get_by_name_label("host3")[0]
        x.host.disable(host2)
        x.host.disable(host3)
        x.pool.sync_database()  # the copy host2 will start from holds both disabled
        pool.crash("host1")
        local = unix_session(pool, "host2")
        local.slave_local_login_with_password("root", "")
        local.xenapi.pool.emergency_transition_to_master()
        pool.advance(spec.fuse_seconds + 1)
        x2 = login(pool, "host2").xenapi
        assert not x2.host.get_enabled(host2)
        pool.advance(spec.enable_after_boot_seconds + 1)
        assert x2.host.get_enabled(host2)
        # host3 still follows the dead master: nothing asks for it until it rejoins.
        assert not x2.host.get_enabled(host3)
        x2.pool.recover_slaves()
        pool.advance(spec.xapi_restart_seconds + spec.enable_after_boot_seconds + 1)
        assert x2.host.get_enabled(host3)


def test_declare_dead(pool: SimPool) -> None:
    x = login(pool).xenapi
    host2 = x.host.get_by_name_label("host2")[0]
    with pytest.raises(XenAPI.Failure) as e:
        x.host.declare_dead(host2)
    assert failure(e) == ["HOST_IS_LIVE", host2]
    ref, _ = guest_on(pool, "host2")
    pool.crash("host2")
    x.host.declare_dead(host2)
    assert x.VM.get_power_state(ref) == "Halted"
    assert not x.host.get_enabled(host2)
    assert live(x, "host2")  # declare_dead leaves live alone


def test_watchdog_expiry_resets_the_host(pool: SimPool) -> None:
    _, uuid = guest_on(pool, "host2")
    pool.watchdog_arm("host2", 30)
    pool.advance(20)
    pool.watchdog_keepalive("host2")
    pool.advance(20)
    assert pool.truth()["hosts"]["host2"]["xapi"] == "up"
    boots = pool.truth()["hosts"]["host2"]["boots"]
    pool.advance(15)
    # A reset is a reboot (issue 18): off at once with every domain, then on again after
    # the reset's own time, then booting; /truth counts the firing and the boot.
    t = pool.truth()
    assert t["hosts"]["host2"]["xapi"] == "down" and not t["hosts"]["host2"]["powered"]
    assert t["hosts"]["host2"]["watchdog_fired"] == 1
    assert not any(v["uuid"] == uuid and v["running_on"] for v in t["vms"])
    pool.advance(RESET_OFF_SECONDS)
    t = pool.truth()
    assert t["hosts"]["host2"]["powered"] and t["hosts"]["host2"]["boots"] == boots + 1
    pool.advance(pool.spec.boot_seconds + 1)
    assert pool.truth()["hosts"]["host2"]["xapi"] == "up"


def test_a_feed_counts_from_when_it_was_decided_not_from_when_it_arrived(pool: SimPool) -> None:
    # The daemon's simulated watchdog is fed over HTTP; a real one by an ioctl on the spot.
    # A request that reached the simulator 5 s after the decision restarts the countdown
    # from the decision (scale 1 here), never later.
    pool.watchdog_arm("host2", 30)
    pool.advance(10)
    pool.watchdog_keepalive("host2", decided_monotonic=time.monotonic() - 5.0)
    deadline = pool.truth()["hosts"]["host2"]["watchdog_deadline"]
    assert pool.clock.now() + 25 - 0.5 <= deadline <= pool.clock.now() + 25 + 0.5


def test_injected_errors_and_latency(pool: SimPool) -> None:
    x = login(pool).xenapi
    pool.inject_error("host1", "VM.get_all", "INTERNAL_ERROR", ["boom"], count=1)
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.get_all()
    assert failure(e) == ["INTERNAL_ERROR", "boom"]
    assert x.VM.get_all()
    pool.set_latency("host1", 0.3, "pool.get_all")
    t0 = time.monotonic()
    x.pool.get_all()
    assert time.monotonic() - t0 >= 0.3
    pool.clear_faults()


def test_time_scale_runs_timers_without_advance() -> None:
    with SimPool(PoolSpec(hosts=2, vms=2, time_scale=600.0)) as pool:
        pool.crash("host2")
        x = login(pool).xenapi
        deadline = time.monotonic() + 10
        while live(x, "host2") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not live(x, "host2")
