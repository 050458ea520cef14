"""Fence agents (Debian's fence-agents) run by xenhad against the same loopback emulators."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from xenhad.clock import SystemClock
from xenhad.fencing.agent import AgentBackend, find_agent
from xenhad.fencing.base import FenceOutcome, PowerStatus
from xenhad.fencing.config import AgentSettings, Secret

from .conftest import PASSWORD, USER, IpmiFactory, RedfishBmc

pytestmark = pytest.mark.timeout(90)

needs_redfish_agent = pytest.mark.skipif(
    find_agent("fence_redfish") is None,
    reason="fence_redfish is missing: install Debian's fence-agents (scripts/install-test-deps)",
)
needs_ipmi_agent = pytest.mark.skipif(
    find_agent("fence_ipmilan") is None,
    reason="fence_ipmilan is missing: install Debian's fence-agents (scripts/install-test-deps)",
)


def agent(
    command: str,
    options: dict[str, str],
    password_file: Path | None,
    *,
    timeout: float = 40.0,
    off_timeout: float = 3.0,
) -> AgentBackend:
    settings = AgentSettings(
        command=command,
        options=options,
        password=Secret(file=password_file) if password_file else None,
        timeout=timeout,
        off_timeout=off_timeout,
        poll_interval=0.2,
    )
    return AgentBackend(settings, host="host4", clock=SystemClock())


def redfish_options(bmc: RedfishBmc, system: str) -> dict[str, str]:
    return {
        "ip": "127.0.0.1",
        "ipport": bmc.url.rsplit(":", 1)[1],
        "username": USER,
        "systems_uri": f"/redfish/v1/Systems/{bmc.systems[system]}",
        "ssl_secure": "1",
    }


def ipmi_options(port: int, **extra: str) -> dict[str, str]:
    return {"ip": "127.0.0.1", "ipport": str(port), "username": USER, "lanplus": "1", **extra}


@needs_redfish_agent
def test_fence_redfish_powers_off_and_status_confirms(
    redfish_tls_bmc: RedfishBmc, password_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fence_redfish speaks https only and verifies the certificate with requests, which
    # takes its CA bundle from REQUESTS_CA_BUNDLE: the agent inherits our environment.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(redfish_tls_bmc.ca_file))
    fence = agent("fence_redfish", redfish_options(redfish_tls_bmc, "agent-off"), password_file)

    result = asyncio.run(fence.power_off())

    assert result.outcome is FenceOutcome.OFF, result.detail
    assert redfish_tls_bmc.power_state("agent-off") == "Off"
    assert "host4" in result.detail and "fence_redfish 127.0.0.1" in result.detail


@needs_redfish_agent
def test_fence_redfish_wrong_password_is_a_failure_without_the_secret(
    redfish_tls_bmc: RedfishBmc, wrong_password_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(redfish_tls_bmc.ca_file))
    options = redfish_options(redfish_tls_bmc, "agent-stuck")
    result = asyncio.run(agent("fence_redfish", options, wrong_password_file).power_off())
    # fence_redfish ignores the HTTP status (a 401's error body has no PowerState), so the
    # agent itself cannot say "wrong password": we report its words, never OFF.
    assert result.outcome in (FenceOutcome.AUTH_FAILED, FenceOutcome.ERROR)
    assert "exited 1" in result.detail and "PowerState" in result.detail
    assert "not-the-password" not in result.detail and "\n" not in result.detail


@needs_redfish_agent
def test_fence_redfish_with_nothing_listening_is_unreachable(
    dead_tcp_port: int, password_file: Path
) -> None:
    options = {"ip": "127.0.0.1", "ipport": str(dead_tcp_port), "username": USER}
    result = asyncio.run(agent("fence_redfish", options, password_file).power_off())
    assert result.outcome is FenceOutcome.UNREACHABLE, result.detail
    assert "refused" in result.detail


@needs_ipmi_agent
def test_fence_ipmilan_powers_off_and_status_confirms(
    ipmi_bmc: IpmiFactory, password_file: Path
) -> None:
    bmc = ipmi_bmc(power="on")
    fence = agent("fence_ipmilan", ipmi_options(bmc.port), password_file)
    assert asyncio.run(fence.power_status()) is PowerStatus.ON
    result = asyncio.run(fence.power_off())
    assert result.outcome is FenceOutcome.OFF, result.detail
    assert asyncio.run(fence.power_status()) is PowerStatus.OFF


@needs_ipmi_agent
def test_fence_ipmilan_off_accepted_but_chassis_stays_on_is_not_confirmed(
    ipmi_bmc: IpmiFactory, password_file: Path
) -> None:
    bmc = ipmi_bmc(power="on", stuck=True)
    options = ipmi_options(bmc.port, power_timeout="1")
    result = asyncio.run(agent("fence_ipmilan", options, password_file).power_off())
    assert result.outcome is FenceOutcome.NOT_CONFIRMED, result.detail
    assert "Timed out waiting to power OFF" in result.detail


@needs_ipmi_agent
def test_fence_ipmilan_wrong_password_is_not_off(
    ipmi_bmc: IpmiFactory, wrong_password_file: Path
) -> None:
    bmc = ipmi_bmc(power="on")
    result = asyncio.run(
        agent("fence_ipmilan", ipmi_options(bmc.port), wrong_password_file).power_off()
    )
    assert result.outcome in (FenceOutcome.AUTH_FAILED, FenceOutcome.ERROR), result.detail
    assert "not-the-password" not in result.detail


def _recording_agent(directory: Path, *, status_exit: int, sleep: float = 0) -> Path:
    """A stand-in agent that records how it was called. It checks our side of the contract
    (argument list, stdin, exit codes), which the real agents cannot show us."""
    script = directory / "fence_record"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "argc=$#" >> "{directory}/calls"\n'
        f'cat >> "{directory}/calls"\n'
        f"sleep {sleep}\n"
        f'if grep -q "^action=status" "{directory}/calls"; then exit {status_exit}; fi\n'
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_the_password_goes_on_stdin_never_on_the_command_line(
    tmp_path: Path, password_file: Path
) -> None:
    script = _recording_agent(tmp_path, status_exit=2)
    fence = agent(str(script), {"ip": "10.9.9.9", "lanplus": "1"}, password_file)
    result = asyncio.run(fence.power_off())
    assert result.outcome is FenceOutcome.OFF
    calls = (tmp_path / "calls").read_text()
    assert calls.count("argc=0") == 2
    assert f"password={PASSWORD}\naction=off\n" in calls
    assert "ip=10.9.9.9\nlanplus=1\n" in calls
    assert "action=status\n" in calls


def test_status_on_after_a_successful_off_is_not_confirmed(
    tmp_path: Path, password_file: Path
) -> None:
    script = _recording_agent(tmp_path, status_exit=0)
    result = asyncio.run(agent(str(script), {}, password_file, off_timeout=0.5).power_off())
    assert result.outcome is FenceOutcome.NOT_CONFIRMED
    assert "still on" in result.detail


def test_a_hung_agent_is_killed_at_its_timeout(tmp_path: Path) -> None:
    script = _recording_agent(tmp_path, status_exit=2, sleep=30)
    result = asyncio.run(agent(str(script), {}, None, timeout=0.5).power_off())
    assert result.outcome is FenceOutcome.NOT_CONFIRMED
    assert result.elapsed < 3


def test_a_missing_agent_says_what_to_install() -> None:
    result = asyncio.run(agent("fence_nonexistent_xyz", {}, None).power_off())
    assert result.outcome is FenceOutcome.ERROR
    assert "install fence-agents" in result.detail


def test_agents_are_searched_in_sbin(tmp_path: Path) -> None:
    assert find_agent("fence_nonexistent_xyz") is None
    assert find_agent(str(tmp_path)) is None
    assert os.access("/bin/sh", os.X_OK) and find_agent("/bin/sh") == Path("/bin/sh")
