"""IPMI fencing against a pyghmi BMC on loopback (xenhad.sim.ipmi_bmc), over lanplus."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from xenhad.clock import SystemClock
from xenhad.fencing.base import FenceOutcome, PowerStatus
from xenhad.fencing.config import IpmiSettings, Secret
from xenhad.fencing.ipmi import IpmiBackend

from .conftest import PASSWORD, USER, IpmiFactory

pytestmark = pytest.mark.timeout(60)


def backend(
    port: int, password_file: Path, *, off_timeout: float = 3.0, request_timeout: float = 3.0
) -> IpmiBackend:
    settings = IpmiSettings(
        address="127.0.0.1",
        port=port,
        username=USER,
        password=Secret(file=password_file),
        off_timeout=off_timeout,
        request_timeout=request_timeout,
        poll_interval=0.2,
    )
    return IpmiBackend(settings, host="host3", clock=SystemClock())


def ipmitool_status(port: int) -> str:
    return subprocess.run(
        [
            "ipmitool",
            "-I",
            "lanplus",
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            USER,
            "-P",
            PASSWORD,
            "chassis",
            "power",
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout.strip()


def test_chassis_power_off_is_confirmed_by_a_status_read(
    ipmi_bmc: IpmiFactory, password_file: Path
) -> None:
    bmc = ipmi_bmc(power="on")
    fence = backend(bmc.port, password_file)
    assert asyncio.run(fence.power_status()) is PowerStatus.ON

    result = asyncio.run(fence.power_off())

    assert result.outcome is FenceOutcome.OFF, result.detail
    assert f"127.0.0.1:{bmc.port}" in result.detail and "host3" in result.detail
    assert asyncio.run(fence.power_status()) is PowerStatus.OFF


@pytest.mark.skipif(
    shutil.which("ipmitool") is None,
    reason="Debian's ipmitool is not installed: run scripts/install-test-deps",
)
def test_the_emulator_is_a_real_ipmi_peer_for_ipmitool(
    ipmi_bmc: IpmiFactory, password_file: Path
) -> None:
    bmc = ipmi_bmc(power="on")
    assert ipmitool_status(bmc.port) == "Chassis Power is on"
    assert asyncio.run(backend(bmc.port, password_file).power_off()).confirmed_off
    assert ipmitool_status(bmc.port) == "Chassis Power is off"


def test_power_off_accepted_but_chassis_stays_on_is_not_confirmed(
    ipmi_bmc: IpmiFactory, password_file: Path
) -> None:
    bmc = ipmi_bmc(power="on", stuck=True)
    result = asyncio.run(backend(bmc.port, password_file, off_timeout=1.0).power_off())
    assert result.outcome is FenceOutcome.NOT_CONFIRMED
    assert "still on" in result.detail
    assert 1.0 <= result.elapsed < 5


def test_wrong_password_is_auth_failed(ipmi_bmc: IpmiFactory, wrong_password_file: Path) -> None:
    bmc = ipmi_bmc(power="on")
    result = asyncio.run(backend(bmc.port, wrong_password_file).power_off())
    assert result.outcome is FenceOutcome.AUTH_FAILED, result.detail
    assert "not-the-password" not in result.detail
    assert result.elapsed < 3


def test_black_holed_bmc_is_unreachable_within_the_request_timeout(
    black_hole_udp: int, password_file: Path
) -> None:
    result = asyncio.run(backend(black_hole_udp, password_file, request_timeout=1.0).power_off())
    assert result.outcome is FenceOutcome.UNREACHABLE
    assert "host3" in result.detail
    assert result.elapsed < 3


def test_nothing_listening_is_unreachable(dead_tcp_port: int, password_file: Path) -> None:
    # The UDP port of the same number is closed too (the probe socket was TCP; nothing binds
    # UDP there), so the kernel answers port-unreachable or pyghmi times out: both UNREACHABLE.
    result = asyncio.run(backend(dead_tcp_port, password_file, request_timeout=1.0).power_off())
    assert result.outcome is FenceOutcome.UNREACHABLE
