"""From a configuration file's [xapi] section to a logged-in facade, against the simulator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from xenhad import config
from xenhad.sim import SimPool
from xenhad.xapi import XapiAuthError
from xenhad.xapi.connect import open_xapi

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
