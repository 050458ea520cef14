"""The facade, the probe and the monitor against the XAPI pool simulator.

Host 1 is the master, hosts 2 and 3 are slaves. Timeouts are short (tenths of a second) so
the hung-host scenarios stay fast; backoff waits run on a ManualClock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from xenhad import monitor
from xenhad.clock import ManualClock
from xenhad.errors import CredentialError
from xenhad.model import PowerState
from xenhad.sim import PoolSpec, SimPool
from xenhad.xapi import Xapi, XapiAuthError, XapiError, XapiUnreachable, probe
from xenhad.xapi.connect import UNREAD

from .conftest import same_port_pool

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def url(pool: SimPool, host: str) -> str:
    return pool.url(host)


def facade(pool: SimPool, target: str = "host1", **kw: Any) -> Xapi:
    """A facade to `target`'s TCP endpoint, or to its socket with target="socket:hostN"."""
    kw.setdefault("timeout", 2.0)
    kw.setdefault("clock", ManualClock())
    if target.startswith("socket:"):
        return Xapi(pool.host(target[7:]).socket_path, **kw)
    kw.setdefault("password", pool.spec.root_password)
    return Xapi(url(pool, target), **kw)


async def ticking_while(work: Callable[[], Awaitable[T]]) -> tuple[T | BaseException, int, float]:
    """Run `work` while another coroutine ticks every 10 ms; returns (result or error,
    ticks, seconds)."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        outcome: T | BaseException = await work()
    except Exception as e:
        outcome = e
    finally:
        done.set()
        await task
    return outcome, ticks, time.monotonic() - started


# ---- logging in -------------------------------------------------------------------------


def test_login_over_tcp_and_over_the_local_socket(sim: SimPool) -> None:
    async def scenario() -> None:
        async with facade(sim) as tcp:
            await tcp.login()
            assert len(await tcp.get_all_records("host")) == 3
        # The socket is pre-authenticated as root: no password at all.
        async with facade(sim, "socket:host1") as local:
            await local.login()
            assert len(await local.get_all_records("host")) == 3

    run(scenario())


def test_a_slave_url_is_followed_once_to_the_master(sim: SimPool) -> None:
    async def scenario() -> None:
        async with facade(sim, "host2") as xapi:
            await xapi.login()
            assert xapi.url == url(sim, "host1")
            assert xapi.requests["session.login_with_password"] == 2
            pools = await xapi.get_all_records("pool")
            (record,) = pools.values()
            assert record["master"] == sim.host("host1").ref

    run(scenario())


def test_a_wrong_password_is_a_one_line_credential_error_without_the_password(
    sim: SimPool,
) -> None:
    async def scenario() -> None:
        async with facade(sim, password="hunter2") as xapi:
            with pytest.raises(XapiAuthError) as caught:
                await xapi.login()
            error = caught.value
            assert isinstance(error, CredentialError)
            assert error.code == "SESSION_AUTHENTICATION_FAILED"
            message = str(error)
            assert "hunter2" not in message and "\n" not in message
            assert "password" in message and "root" in message
            # Never retried: an answer is not a transient failure.
            assert xapi.requests["session.login_with_password"] == 1

    run(scenario())


def test_local_login_works_on_a_slave_whose_master_is_dead_while_a_normal_login_hangs(
    sim: SimPool,
) -> None:
    sim.crash("host1")

    async def scenario() -> None:
        # session.login_with_password on a slave's socket needs the master: it blocks in
        # xapi. Only our timeout ends it, and the loop keeps running meanwhile.
        async with facade(sim, "socket:host2", timeout=0.3, retry_attempts=1) as blocked:
            outcome, ticks, seconds = await ticking_while(blocked.login)
            assert isinstance(outcome, XapiUnreachable) and outcome.sent
            assert seconds < 1.0 and ticks > 10
        async with facade(sim, "socket:host2", timeout=1.0) as local:
            await local.login_local()
            assert local.logged_in
            await local.logout()
            assert not local.logged_in
        assert sim.host("host2").local_sessions == set()

    run(scenario())


# ---- sessions that go bad ---------------------------------------------------------------


def test_session_invalid_logs_in_again_and_the_call_succeeds(sim: SimPool) -> None:
    async def scenario() -> None:
        async with facade(sim) as xapi:
            await xapi.login()
            sim.inject_error("host1", "host.get_all_records", "SESSION_INVALID", ["x"], count=1)
            assert len(await xapi.get_all_records("host")) == 3
            # XenAPI.Session re-logged in by itself: two sessions were created in all.
            assert len(sim.host("host1").db.sessions) == 2

    run(scenario())


def test_a_failed_re_login_surfaces_as_one_clean_error(sim: SimPool) -> None:
    async def scenario() -> None:
        async with facade(sim) as xapi:
            await xapi.login()
            sim.inject_error("host1", "host.get_all_records", "SESSION_INVALID", ["x"], count=1)
            sim.inject_error(
                "host1",
                "session.login_with_password",
                "SESSION_AUTHENTICATION_FAILED",
                ["root", "password changed"],
                count=1,
            )
            with pytest.raises(XapiAuthError, match="fix the username or the password"):
                await xapi.get_all_records("host")
            # A session that never becomes valid again is SESSION_INVALID, not a traceback.
            sim.inject_error("host1", "VM.get_all_records", "SESSION_INVALID", ["x"], count=-1)
            with pytest.raises(XapiError) as caught:
                await xapi.get_all_records("VM")
            assert caught.value.code == "SESSION_INVALID"

    run(scenario())


# ---- hung and dead hosts ----------------------------------------------------------------


def test_a_hung_master_costs_each_attempt_its_timeout_and_never_the_loop(sim: SimPool) -> None:
    async def scenario() -> None:
        async with facade(sim, timeout=0.3, retry_attempts=2) as xapi:
            await xapi.login()
            sim.hang("host1")
            outcome, ticks, seconds = await ticking_while(lambda: xapi.get_all_records("VM"))
            assert isinstance(outcome, XapiUnreachable)
            assert outcome.sent is True
            # A read is retried: two attempts of 0.3 s.
            assert xapi.requests["VM.get_all_records"] == 2
            assert 0.6 <= seconds < 1.5
            assert ticks > 30

    run(scenario())


def test_vm_start_is_not_repeated_after_an_ambiguous_timeout(sim: SimPool) -> None:
    async def scenario() -> None:
        async with facade(sim, timeout=0.3, retry_attempts=3) as xapi:
            await xapi.login()
            halted = await halted_vm(xapi, sim)
            sim.hang("host1")
            with pytest.raises(XapiUnreachable) as caught:
                await xapi.vm_start(halted)
            assert caught.value.sent is True
            assert xapi.requests["VM.start"] == 1

    run(scenario())


def test_a_start_we_gave_up_on_may_still_happen_which_is_why_it_is_not_repeated(
    sim: SimPool,
) -> None:
    async def scenario() -> None:
        async with facade(sim, timeout=0.3, retry_attempts=3) as xapi:
            await xapi.login()
            halted = await halted_vm(xapi, sim)
            # xapi is slow, not dead: it performs the start after we stopped waiting.
            sim.set_latency("host1", 0.6, method="VM.start")
            with pytest.raises(XapiUnreachable) as caught:
                await xapi.vm_start(halted)
            assert caught.value.sent and xapi.requests["VM.start"] == 1
            sim.set_latency("host1", 0, method="VM.start")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                record = await xapi.call("VM.get_record", halted)
                if record["power_state"] == "Running":
                    break
                await asyncio.sleep(0.05)
            assert record["power_state"] == "Running"
            assert sim.double_runs() == []

    run(scenario())


def test_a_refused_start_surely_not_sent_is_retried(sim: SimPool) -> None:
    clock = ManualClock()

    async def scenario() -> None:
        async with facade(sim, timeout=1.0, retry_attempts=3, clock=clock) as xapi:
            await xapi.login()
            halted = await halted_vm(xapi, sim)
            sim.crash("host1")
            with pytest.raises(XapiUnreachable) as caught:
                await xapi.vm_start(halted)
            assert caught.value.sent is False
            assert xapi.requests["VM.start"] == 3

    run(scenario())


async def halted_vm(xapi: Xapi, sim: SimPool) -> str:
    """A guest VM, hard-shut down so that it can be started."""
    view = await monitor.snapshot(xapi, protection_key="xenhad", now=0.0)
    vm = next(v for v in view.vms.values() if v.resident_on == sim.host("host2").uuid)
    await xapi.vm_hard_shutdown(vm.ref)
    return vm.ref


# ---- probe ------------------------------------------------------------------------------


def test_probe_of_a_slave_names_its_master_and_a_dead_or_hung_host_does_not_answer(
    sim: SimPool,
) -> None:
    master = sim.host("host1")
    me = sim.host("host2").address

    async def scenario() -> None:
        slave = await probe(url(sim, "host3"), source_address=me, timeout=1.0)
        assert slave.answered and slave.is_slave
        assert slave.master_address == slave.follows == master.address
        of_master = await probe(url(sim, "host1"), source_address=me, timeout=1.0)
        # The simulator answers a bad login at once; real xapi waits 5 s (see probe.py).
        assert of_master.answered and of_master.code == "SESSION_AUTHENTICATION_FAILED"
        assert of_master.follows is None

        sim.hang("host3")
        started = time.monotonic()
        hung = await probe(url(sim, "host3"), source_address=me, timeout=0.3)
        assert not hung.answered and "no answer" in hung.detail
        assert time.monotonic() - started < 0.8

        sim.crash("host3")
        crashed = await probe(url(sim, "host3"), source_address=me, timeout=1.0)
        assert not crashed.answered and crashed.elapsed < 0.5

    run(scenario())


def test_probe_of_a_slave_in_emergency_mode_names_no_master(sim: SimPool) -> None:
    """A slave whose xapi started while its master was gone refuses all but the emergency
    calls (HOST_STILL_BOOTING): it answers, follows no master it can name, and is no master
    (ProbeResult.follows: taken for one, the old master stepped down to it)."""
    me = sim.host("host2").address
    sim.crash("host1")
    sim.restart_xapi("host3", down_seconds=0.1)

    async def scenario() -> None:
        deadline = time.monotonic() + 5.0
        result = await probe(url(sim, "host3"), source_address=me, timeout=1.0)
        while result.code != "HOST_STILL_BOOTING" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            result = await probe(url(sim, "host3"), source_address=me, timeout=1.0)
        assert result.answered and result.code == "HOST_STILL_BOOTING"
        assert result.follows == "" and not result.is_slave

    run(scenario())


def test_probe_from_the_wrong_side_of_a_partition_hears_nothing(sim: SimPool) -> None:
    sim.partition([["host1", "host2"], ["host3"]])

    async def scenario() -> None:
        cut = await probe(url(sim, "host3"), source_address=sim.host("host2").address, timeout=0.3)
        assert not cut.answered
        inside = await probe(
            url(sim, "host2"), source_address=sim.host("host1").address, timeout=1.0
        )
        assert inside.answered and inside.is_slave

    run(scenario())


def test_probe_never_raises_on_nonsense() -> None:
    async def scenario() -> None:
        bad = await probe("ftp://x", source_address=None, timeout=0.2)
        assert not bad.answered and "bad probe address" in bad.detail

    run(scenario())


def test_unread_fields_are_dropped_as_the_reply_is_parsed_and_nothing_else(sim: SimPool) -> None:
    async def scenario() -> None:
        async with facade(sim) as whole, facade(sim, unread=UNREAD) as trimmed:
            await whole.login()
            await trimmed.login()
            full = await whole.get_all_records("VM")
            kept = await trimmed.get_all_records("VM")
        booted = [r for r in full.values() if r["last_booted_record"]]
        assert booted, "the simulator fills last_booted_record on every running VM"
        assert kept.keys() == full.keys()
        for ref, record in full.items():
            assert kept[ref] == {k: v for k, v in record.items() if k not in UNREAD}

    run(scenario())


def test_field_names_and_short_values_are_shared_between_records(sim: SimPool) -> None:
    # What a cache of 1,000 records saves: one object per field name and per short value
    # (a power state, a host's ref), not one per record.
    async def scenario() -> dict[str, dict[str, Any]]:
        async with facade(sim, unread=UNREAD) as xapi:
            await xapi.login()
            return await xapi.get_all_records("VM")

    records = list(run(scenario()).values())
    assert len(records) >= 2
    first, second = records[0], records[1]
    names = {k: k for k in first}
    assert all(names[k] is k for k in second if k in names)
    running = [r["power_state"] for r in records if r["power_state"] == "Running"]
    assert len(running) >= 2 and all(p is running[0] for p in running)


# ---- monitor ----------------------------------------------------------------------------


def test_snapshot_matches_the_pool_and_costs_one_call_a_class_whatever_its_size() -> None:
    for hosts, vms in ((2, 3), (6, 30)):
        with same_port_pool(PoolSpec(hosts=hosts, vms=vms, seed=7)) as pool:

            async def scenario(pool: SimPool = pool) -> tuple[Any, Xapi]:
                async with facade(pool) as xapi:
                    await xapi.login()
                    before = sum(xapi.requests.values())
                    snap = await monitor.read_snapshot(xapi, protection_key="xenhad", now=42.0)
                    # pool, host, host_metrics, VM and the 8 classes of where a VM can run
                    assert sum(xapi.requests.values()) - before == 4 + len(monitor.STORAGE)
                    return snap, xapi

            snap, _ = run(scenario())
            truth = pool.truth()
            view = snap.view
            assert view.taken_at == 42.0
            assert view.master == pool.host("host1").uuid
            assert set(view.hosts) == {h.uuid for h in pool.hosts}
            assert all(h.live and h.enabled for h in view.hosts.values())
            guests = {v["uuid"]: v for v in truth["vms"] if not v["control_domain"]}
            assert set(view.vms) == set(guests)
            for uuid, vm in view.vms.items():
                running_on = guests[uuid]["running_on"]
                if running_on:
                    assert [vm.resident_on] == running_on
                    assert vm.power_state is PowerState.RUNNING
                else:
                    assert vm.resident_on is None
                    assert vm.power_state is PowerState.HALTED
                assert vm.memory > 0


def test_snapshot_reads_our_protection_key_and_reports_values_it_does_not_know(
    sim: SimPool,
) -> None:
    async def scenario() -> None:
        async with facade(sim) as xapi:
            await xapi.login()
            records = await xapi.get_all_records("VM")
            ref, record = next(
                (r, v)
                for r, v in records.items()
                if not v["is_control_domain"] and not v["is_a_template"]
            )
            await xapi.call("VM.add_to_other_config", ref, "xenhad", "sometimes")
            snap = await monitor.read_snapshot(xapi, protection_key="xenhad", now=0.0)
            (warning,) = snap.warnings
            assert warning.vm == record["uuid"] and warning.value == "sometimes"
            assert snap.view.vms[record["uuid"]].protection.value == "off"

    run(scenario())


def test_event_from_waits_server_side_beyond_the_call_timeout(sim: SimPool) -> None:
    async def scenario() -> None:
        async with facade(sim, timeout=0.3) as xapi:
            await xapi.login()
            first = await xapi.event_from(["VM"], "", 0.0)
            # The server holds the request for up to 0.5 s, longer than our 0.3 s timeout:
            # the call gets the server's wait on top of its own timeout.
            batch = await xapi.event_from(["VM"], str(first["token"]), 0.5)
            assert "token" in batch

    run(scenario())


def test_snapshot_says_what_each_host_sees_and_each_vm_needs() -> None:
    with same_port_pool(PoolSpec(hosts=3, vms=2, seed=7, local_vms=1, groups=1)) as pool:

        async def scenario() -> Any:
            async with facade(pool) as xapi:
                await xapi.login()
                return await monitor.read_snapshot(xapi, protection_key="xenhad", now=1.0)

        view = run(scenario()).view
        by_name = {v.name: v for v in view.vms.values()}
        host = {h.name: h for h in view.hosts.values()}
        (local_sr,) = by_name["local001"].srs
        assert view.labels[local_sr] == "Local storage on host2"
        assert host["host2"].srs is not None and local_sr in host["host2"].srs
        assert host["host3"].srs is not None and local_sr not in host["host3"].srs
        (shared,) = by_name["aa01a"].srs
        assert all(h.srs is not None and shared in h.srs for h in view.hosts.values())
        (net,) = by_name["aa01a"].networks
        assert all(h.networks is not None and net in h.networks for h in view.hosts.values())
        assert by_name["aa01a"].group is not None
        assert by_name["aa01a"].group == by_name["aa01b"].group
        assert by_name["local001"].group is None and by_name["local001"].pinned == ""


def test_no_field_dropped_as_unread_is_read_anywhere() -> None:
    # UNREAD's names are dropped at any depth of any reply: one that some code read would
    # silently read as missing.
    src = Path(__file__).resolve().parents[2] / "src" / "xenhad"
    readers = [p for p in src.rglob("*.py") if p.parts[-2] not in ("sim", "virtual")
               and p.name != "connect.py"]
    text = "\n".join(p.read_text() for p in readers)
    named = sorted(f for f in UNREAD if f'"{f}"' in text or f"'{f}'" in text)
    assert named == [], f"read somewhere, yet dropped as unread: {named}"
    assert not UNREAD & {f for fields in monitor.FIELDS.values() for f in fields}
