"""The in-process facade answers as the XML-RPC simulator does (tests/sim/test_api.py,
test_faults.py), on virtual time: the same scenarios, through xenhad's own Xapi API."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from xenhad.sim import PoolSpec
from xenhad.virtual.loop import VirtualLoop, run
from xenhad.virtual.world import World
from xenhad.virtual.xapi import InProcessXapi, prober
from xenhad.xapi.client import single_attempt
from xenhad.xapi.errors import XapiAuthError, XapiError, XapiUnreachable
from xenhad.xapi.probe import MASTER_HOLDS_LOGIN, ProbeConnections

T = TypeVar("T")
SPEC = PoolSpec(hosts=3, vms=8, seed=3, vm_start_seconds=0.5, boot_seconds=20.0)


def in_world(scenario: Callable[[World], Awaitable[T]], spec: PoolSpec = SPEC,
             seed: int = 1) -> T:
    async def main(loop: VirtualLoop) -> T:
        world = World(loop, spec, random.Random(seed))
        try:
            return await scenario(world)
        finally:
            world.close()

    return run(main)


def url(world: World, host: str) -> str:
    return f"http://{world.pool.host(host).address}/"


def tcp(world: World, host: str, *, on: str | None = None, password: str = "",
        timeout: float = 10.0, retry_attempts: int = 1) -> InProcessXapi:
    password = password or world.pool.spec.root_password
    source = world.pool.host(on).address if on else None
    return InProcessXapi(world, url(world, host), password=password, source_address=source,
                         timeout=timeout, retry_attempts=retry_attempts)


def local(world: World, host: str, timeout: float = 10.0) -> InProcessXapi:
    return InProcessXapi(world, world.pool.host(host).socket_path, timeout=timeout,
                         retry_attempts=1)


def test_login_wrong_password_slave_and_follow() -> None:
    async def scenario(world: World) -> None:
        with pytest.raises(XapiAuthError):
            await tcp(world, "host1", password="wrong").login()
        # Xapi follows HOST_IS_SLAVE once: a login at a slave ends at the master.
        x = tcp(world, "host2")
        await x.login()
        assert x.url == url(world, "host1")
        assert len(await x.call("host.get_all")) == 3
        await x.close()
        # The probe's empty login: the slave names its master before any credential.
        probe = prober(world)
        answer = await probe(url(world, "host2"), timeout=1.0)
        assert answer.answered and answer.is_slave
        assert answer.master_address == world.pool.host("host1").address

    in_world(scenario)


def test_session_invalid_relogs_in_as_xenapi_does() -> None:
    async def scenario(world: World) -> None:
        x = tcp(world, "host1")
        await x.login()
        world.pool.hosts[0].db.sessions.clear()  # xapi forgot our session (a restart)
        assert len(await x.call("VM.get_all")) > 0
        assert x.requests["session.login_with_password"] == 1

    in_world(scenario)


def test_vm_start_errors_and_start_takes_virtual_time() -> None:
    async def scenario(world: World) -> None:
        x = tcp(world, "host1")
        vms = await x.get_all_records("VM")
        running = next(r for r, v in vms.items() if v["power_state"] == "Running"
                       and not v["is_control_domain"])
        with pytest.raises(XapiError) as e:
            await x.vm_start(running)
        assert (e.value.code, e.value.params) == (
            "VM_BAD_POWER_STATE", (running, "halted", "running"))
        await x.vm_hard_shutdown(running)
        [host3] = await x.call("host.get_by_name_label", "host3")
        await x.host_disable(host3)
        with pytest.raises(XapiError) as e:
            await x.vm_start_on(running, host3)
        assert (e.value.code, e.value.params) == ("HOST_DISABLED", (host3,))
        await x.host_enable(host3)
        before = world.clock.monotonic()
        await x.vm_start_on(running, host3)
        assert world.clock.monotonic() - before == pytest.approx(world.pool.spec.vm_start_seconds)
        assert await x.call("VM.get_resident_on", running) == host3
        # int64 travels as a decimal string, as over XML-RPC.
        assert isinstance(await x.call("VM.get_memory_static_max", running), str)
        assert world.pool.double_runs() == []

    in_world(scenario)


def test_partitioned_host_times_out_on_the_virtual_clock() -> None:
    async def scenario(world: World) -> None:
        world.pool.partition([["host1"], ["host2", "host3"]])
        x = tcp(world, "host1", on="host2", timeout=7.0)
        start = world.clock.monotonic()
        with pytest.raises(XapiUnreachable) as e:
            await x.login()
        assert e.value.sent and world.clock.monotonic() - start == pytest.approx(7.0)
        await tcp(world, "host1").login()  # the outside reaches everyone
        # The slave's local socket forwards to the unreachable master: held ...
        with pytest.raises(XapiUnreachable):
            await local(world, "host2", timeout=3.0).login()
        # ... but the emergency login is answered by the slave itself.
        await local(world, "host2").login_local()
        probe = prober(world)
        silent = await probe(url(world, "host1"), source_address=world.pool.host(
            "host2").address, timeout=2.0)
        assert not silent.answered and silent.elapsed == pytest.approx(2.0)
        world.pool.crash("host3")
        off = await probe(url(world, "host3"), timeout=2.0)
        assert not off.answered and off.detail == "no answer within 2 s"

    in_world(scenario)


def test_emergency_transition_on_a_stale_copy_and_recover_slaves() -> None:
    spec = PoolSpec(hosts=4, vms=8, seed=3, vm_start_seconds=0.1, fuse_seconds=10)

    async def scenario(world: World) -> None:
        pool = world.pool
        x = tcp(world, "host1")
        [p] = await x.call("pool.get_all")
        await x.pool_add_to_other_config(p, "before-sync", "1")
        await x.pool_sync_database()
        await x.pool_add_to_other_config(p, "after-sync", "1")  # host3 never sees this
        pool.crash("host1")
        pool.crash("host4")
        l3 = local(world, "host3")
        await l3.login_local()
        await l3.pool_emergency_transition_to_master()
        await world.clock.sleep(spec.fuse_seconds + 1)
        assert pool.truth()["hosts"]["host3"]["is_master"]
        x3 = tcp(world, "host3")
        assert await x3.call("pool.get_other_config", p) == {"before-sync": "1"}
        probe = prober(world)
        assert (await probe(url(world, "host2"), timeout=1.0)).master_address == \
            pool.host("host1").address
        assert await x3.pool_recover_slaves() == await x3.call(
            "host.get_by_name_label", "host2")
        # Its running xapi keeps the role it started with until it restarts.
        assert (await probe(url(world, "host2"), timeout=1.0)).master_address == \
            pool.host("host1").address
        await world.clock.sleep(spec.xapi_restart_seconds + 1)
        assert (await probe(url(world, "host2"), timeout=1.0)).master_address == \
            pool.host("host3").address

    in_world(scenario, spec)


def test_a_held_call_ends_when_the_xapi_holding_it_restarts() -> None:
    spec = PoolSpec(hosts=3, vms=4, seed=3, fuse_seconds=5)

    async def scenario(world: World) -> None:
        world.pool.crash("host1")
        l3 = local(world, "host3")
        await l3.login_local()
        held = local(world, "host3", timeout=30.0)
        import asyncio

        with single_attempt():
            login = asyncio.ensure_future(held.login())
            await world.clock.sleep(0.5)
            assert not login.done()
            await l3.pool_emergency_transition_to_master()
            with pytest.raises(XapiUnreachable) as e:
                await login
        # Closed unanswered when its xapi restarted, long before the caller's timeout.
        assert e.value.sent and world.clock.monotonic() < spec.fuse_seconds + 1

    in_world(scenario, spec)


def test_emergency_transition_refused_with_ha() -> None:
    async def scenario(world: World) -> None:
        l2 = local(world, "host2")
        await l2.login_local()
        with pytest.raises(XapiError) as e:
            await l2.pool_emergency_transition_to_master()
        assert e.value.code == "HA_IS_ENABLED"

    in_world(scenario, PoolSpec(hosts=2, vms=2, ha_enabled=True))


def test_a_host_promoted_while_disabled_enables_itself_on_the_virtual_clock() -> None:
    # tests/sim/test_faults.py's scenario (self-fence soak seed 2612007944) in process: the
    # consider_enabling_host of a new master and of the slaves that rejoin it are pool
    # timers, which the world runs through the pool's timer hook.
    spec = PoolSpec(hosts=3, vms=3, seed=3, fuse_seconds=10)

    async def scenario(world: World) -> None:
        pool = world.pool
        x = tcp(world, "host1")
        [host2] = await x.call("host.get_by_name_label", "host2")
        [host3] = await x.call("host.get_by_name_label", "host3")
        await x.host_disable(host2)
        await x.host_disable(host3)
        await x.pool_sync_database()  # the copy host2 will start from holds both disabled
        pool.crash("host1")
        l2 = local(world, "host2")
        await l2.login_local()
        await l2.pool_emergency_transition_to_master()
        await world.clock.sleep(spec.fuse_seconds + 1)
        x2 = tcp(world, "host2")
        assert not await x2.call("host.get_enabled", host2)
        await world.clock.sleep(spec.enable_after_boot_seconds + 1)
        assert await x2.call("host.get_enabled", host2)
        # host3 still follows the dead master: nothing asks for it until it rejoins.
        assert not await x2.call("host.get_enabled", host3)
        await x2.pool_recover_slaves()
        await world.clock.sleep(spec.xapi_restart_seconds + spec.enable_after_boot_seconds + 1)
        assert await x2.call("host.get_enabled", host3)

    in_world(scenario, spec)


def test_the_in_process_probe_takes_the_daemons_connections() -> None:
    # The daemon passes its ProbeConnections; in process there is nothing to keep, and no
    # socket is opened.
    async def scenario(world: World) -> None:
        connections = ProbeConnections()
        probe = prober(world)
        for _ in range(2):
            answer = await probe(url(world, "host2"), timeout=1.0, connections=connections)
            assert answer.is_slave
        assert connections.opened == 0
        connections.close()

    in_world(scenario)


def test_a_master_answers_a_failed_login_only_after_its_brute_force_delay() -> None:
    """xapi_session.ml thread_delay_and_raise_error, with PoolSpec.failed_login_seconds:
    the probe of a real master (an empty-credential login) times out, as a slave's does
    not (docs/virtual-time.md, defect 12)."""
    spec = PoolSpec(hosts=3, vms=8, seed=3, vm_start_seconds=0.5, boot_seconds=20.0,
                    failed_login_seconds=5.0)

    async def scenario(world: World) -> None:
        loop = world.loop
        started = loop.time()
        with pytest.raises(XapiAuthError):
            await tcp(world, "host1", password="wrong").login()
        assert loop.time() - started == pytest.approx(5.0, abs=0.2)
        probe = prober(world)
        # The probe tells the master by the login it holds, from a xapi that answers.
        master = await probe(url(world, "host1"), timeout=1.5)
        assert master.answered and master.follows is None
        assert master.code == MASTER_HOLDS_LOGIN
        slave = await probe(url(world, "host2"), timeout=1.5)
        assert slave.answered and slave.is_slave
        # Past the delay, the master's own answer.
        late = await probe(url(world, "host1"), timeout=6.0)
        assert late.answered and late.code == "SESSION_AUTHENTICATION_FAILED"
        # A hung master answers neither call: not answered.
        world.pool.host("host1").xapi = "hung"
        hung = await probe(url(world, "host1"), timeout=1.5)
        assert not hung.answered

    in_world(scenario, spec)
