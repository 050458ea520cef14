"""Redfish fencing against sushy-tools' emulator on loopback (fake driver, real HTTP)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from xenhad.clock import SystemClock
from xenhad.fencing.base import FenceOutcome, PowerStatus
from xenhad.fencing.config import RedfishSettings, Secret
from xenhad.fencing.redfish import RedfishBackend

from .conftest import USER, RedfishBmc

pytestmark = pytest.mark.timeout(60)


def backend(
    url: str,
    password_file: Path,
    *,
    system: str = "",
    off_timeout: float = 20.0,
    request_timeout: float = 2.0,
    ca_file: Path | None = None,
    verify_tls: bool = True,
) -> RedfishBackend:
    settings = RedfishSettings(
        url=url,
        username=USER,
        password=Secret(file=password_file),
        system=system,
        off_timeout=off_timeout,
        request_timeout=request_timeout,
        poll_interval=0.2,
        ca_file=ca_file,
        verify_tls=verify_tls,
    )
    return RedfishBackend(settings, host="host2", clock=SystemClock())


def test_force_off_is_confirmed_by_a_power_state_read(
    redfish_bmc: RedfishBmc, password_file: Path
) -> None:
    assert redfish_bmc.power_state("fence-me") == "On"
    fence = backend(redfish_bmc.url, password_file, system=redfish_bmc.systems["fence-me"])

    result = asyncio.run(fence.power_off())

    assert result.outcome is FenceOutcome.OFF, result.detail
    assert redfish_bmc.power_state("fence-me") == "Off"
    assert "host2" in result.detail and redfish_bmc.url in result.detail
    assert asyncio.run(fence.power_status()) is PowerStatus.OFF


def test_system_given_as_a_path_and_already_off(
    redfish_bmc: RedfishBmc, password_file: Path
) -> None:
    path = f"/redfish/v1/Systems/{redfish_bmc.systems['already-off']}"
    result = asyncio.run(backend(redfish_bmc.url, password_file, system=path).power_off())
    assert result.outcome is FenceOutcome.OFF
    assert "already off" in result.detail


def test_several_systems_and_none_configured_is_an_error_naming_the_fix(
    redfish_bmc: RedfishBmc, password_file: Path
) -> None:
    result = asyncio.run(backend(redfish_bmc.url, password_file).power_off())
    assert result.outcome is FenceOutcome.ERROR
    assert "set redfish.system" in result.detail
    assert redfish_bmc.power_state("stuck") == "On"


def test_force_off_accepted_but_power_stays_on_is_not_confirmed(
    redfish_bmc: RedfishBmc, password_file: Path
) -> None:
    # The "stuck" system accepts ForceOff with HTTP 204 and stays On (tests/fencing/redfish_bmc.py).
    fence = backend(
        redfish_bmc.url, password_file, system=redfish_bmc.systems["stuck"], off_timeout=1.5
    )
    result = asyncio.run(fence.power_off())
    assert result.outcome is FenceOutcome.NOT_CONFIRMED
    assert "still on" in result.detail
    assert 1.5 <= result.elapsed < 5
    assert asyncio.run(fence.power_status()) is PowerStatus.ON


def test_wrong_password_is_auth_failed_without_the_secret_in_the_detail(
    redfish_bmc: RedfishBmc, wrong_password_file: Path
) -> None:
    fence = backend(redfish_bmc.url, wrong_password_file, system=redfish_bmc.systems["stuck"])
    result = asyncio.run(fence.power_off())
    assert result.outcome is FenceOutcome.AUTH_FAILED
    assert "401" in result.detail and "host2" in result.detail
    assert "not-the-password" not in result.detail
    assert "\n" not in result.detail


def test_missing_password_file_is_auth_failed_naming_the_file(
    redfish_bmc: RedfishBmc, tmp_path: Path
) -> None:
    result = asyncio.run(backend(redfish_bmc.url, tmp_path / "nope").power_off())
    assert result.outcome is FenceOutcome.AUTH_FAILED
    assert str(tmp_path / "nope") in result.detail


def test_nothing_listening_is_unreachable_at_once(dead_tcp_port: int, password_file: Path) -> None:
    result = asyncio.run(backend(f"http://127.0.0.1:{dead_tcp_port}", password_file).power_off())
    assert result.outcome is FenceOutcome.UNREACHABLE
    assert "refused" in result.detail.lower()
    assert result.elapsed < 1


def test_black_holed_bmc_is_unreachable_within_the_request_timeout(
    black_hole_tcp: int, password_file: Path
) -> None:
    fence = backend(f"http://127.0.0.1:{black_hole_tcp}", password_file, request_timeout=0.5)
    result = asyncio.run(fence.power_off())
    assert result.outcome is FenceOutcome.UNREACHABLE
    assert 0.4 < result.elapsed < 3
    assert asyncio.run(fence.power_status()) is PowerStatus.UNKNOWN


def test_tls_is_verified_against_the_configured_ca(
    redfish_tls_bmc: RedfishBmc, password_file: Path
) -> None:
    system = redfish_tls_bmc.systems["tls-host"]
    untrusted = asyncio.run(backend(redfish_tls_bmc.url, password_file, system=system).power_off())
    assert untrusted.outcome is FenceOutcome.ERROR
    assert "certificate" in untrusted.detail and "ca_file" in untrusted.detail
    assert redfish_tls_bmc.power_state("tls-host") == "On"

    trusted = backend(
        redfish_tls_bmc.url, password_file, system=system, ca_file=redfish_tls_bmc.ca_file
    )
    assert asyncio.run(trusted.power_status()) is PowerStatus.ON

    insecure = backend(redfish_tls_bmc.url, password_file, system=system, verify_tls=False)
    assert asyncio.run(insecure.power_status()) is PowerStatus.ON
