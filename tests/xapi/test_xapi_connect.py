"""From a configuration file's [xapi] section to a logged-in facade, against the simulator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from xenhad import config
from xenhad.sim import PoolSpec, SimPool
from xenhad.xapi import XapiAuthError
from xenhad.xapi.connect import open_xapi

from .conftest import same_port_pool

pytestmark = pytest.mark.timeout(30)


def _password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "xapi-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def test_a_url_with_a_password_file_from_a_slaves_address(sim: SimPool, tmp_path: Path) -> None:
    secret = _password_file(tmp_path, sim.spec.root_password)
    cfg = config.parse(
        f"""
        [xapi]
        url = "{sim.url("host2")}"
        allow_insecure_http = true
        password_file = "{secret}"
        source_address = "{sim.host("host2").address}"
        timeout = 2
        """
    )

    async def scenario() -> None:
        xapi = await open_xapi(cfg)
        try:
            # host2 is a slave: the login followed HOST_IS_SLAVE to the master.
            assert xapi.url == sim.url("host1")
            assert xapi.source_address == sim.host("host2").address
            assert len(await xapi.get_all_records("host")) == 3
        finally:
            await xapi.close()

    asyncio.run(scenario())


def test_a_unix_url_and_a_wrong_password(sim: SimPool, tmp_path: Path) -> None:
    local = config.parse(f'[xapi]\nurl = "unix://{sim.host("host1").socket_path}"\n')
    wrong = config.parse(
        f'[xapi]\nurl = "{sim.url("host1")}"\nallow_insecure_http = true\n'
        f'password_file = "{_password_file(tmp_path, "nope")}"\n'
    )

    async def scenario() -> None:
        xapi = await open_xapi(local)
        try:
            assert xapi.local and len(await xapi.get_all_records("VM")) > 0
        finally:
            await xapi.close()
        with pytest.raises(XapiAuthError):
            await open_xapi(wrong)

    asyncio.run(scenario())


def test_starts_up_to_the_recovery_concurrency_leave_the_pool_readable(tmp_path: Path) -> None:
    # A VM.start holds its thread for the whole boot. Six at once (recovery.concurrency 6)
    # must all be in flight together, and a read of the pool must not wait behind them.
    spec = PoolSpec(hosts=3, vms=24, seed=3, vm_start_seconds=3.0)
    with same_port_pool(spec) as sim:
        secret = _password_file(tmp_path, sim.spec.root_password)
        cfg = config.parse(
            f"""
            [xapi]
            url = "{sim.url("host1")}"
            allow_insecure_http = true
            password_file = "{secret}"
            timeout = 10
            [recovery]
            concurrency = 6
            """
        )

        async def scenario() -> None:
            xapi = await open_xapi(cfg)
            try:
                vms = await xapi.get_all_records("VM")
                chosen = sorted(ref for ref, vm in vms.items()
                                if vm["power_state"] == "Running"
                                and not vm["is_control_domain"])[:6]
                assert len(chosen) == 6
                for ref in chosen:
                    await xapi.call("VM.hard_shutdown", ref)
                starts = [asyncio.ensure_future(xapi.vm_start(ref)) for ref in chosen]
                while sum(1 for vm in (await xapi.get_all_records("VM")).values()
                          if "start" in vm["current_operations"].values()) < 6:
                    assert not any(s.done() for s in starts), "a start ended before all began"
                    await asyncio.sleep(0.05)
                assert not any(s.done() for s in starts)  # the reads did not wait for them
                await asyncio.gather(*starts)
            finally:
                await xapi.close()

        asyncio.run(scenario())
