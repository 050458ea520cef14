"""Self-fencing: the watchdog facade's modes and the simulator's per-host watchdog."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from xenhad.fencing.config import WatchdogMode
from xenhad.fencing.watchdog import (
    WDIOC_GETSUPPORT,
    WDIOC_GETTIMEOUT,
    WDIOC_KEEPALIVE,
    WDIOC_SETTIMEOUT,
    LinuxWatchdogDevice,
    NullWatchdogDevice,
    SimWatchdogDevice,
    Watchdog,
    WatchdogError,
    WatchdogPlan,
    self_fence_deadline_passed,
)

pytestmark = pytest.mark.timeout(60)


def test_ioctl_numbers_match_linux_watchdog_h() -> None:
    # The values the kernel headers expand to on x86_64 and aarch64.
    assert WDIOC_GETSUPPORT == 0x80285700
    assert WDIOC_KEEPALIVE == 0x80045705
    assert WDIOC_SETTIMEOUT == 0xC0045706
    assert WDIOC_GETTIMEOUT == 0x80045707


def test_peer_deadline_is_heartbeat_plus_timeout_plus_margin() -> None:
    assert not self_fence_deadline_passed(100.0, 100.0 + 60 + 15, 60, 15)
    assert self_fence_deadline_passed(100.0, 100.0 + 60 + 15.001, 60, 15)
    assert not self_fence_deadline_passed(100.0, 150.0, 60, 0)
    with pytest.raises(ValueError):
        self_fence_deadline_passed(0, 1, 0, 1)


def test_required_mode_refuses_a_timeout_without_slack() -> None:
    plan = WatchdogPlan(WatchdogMode.REQUIRED, timeout=15, loop_interval=10)
    with pytest.raises(WatchdogError, match="at least 20"):
        asyncio.run(Watchdog(NullWatchdogDevice(), plan).activate())


def test_automatic_mode_logs_and_runs_without_when_unsafe() -> None:
    plan = WatchdogPlan(WatchdogMode.AUTOMATIC, timeout=15, loop_interval=10)
    watchdog = Watchdog(SimWatchdogDevice("http://127.0.0.1:9", "host1"), plan)
    assert asyncio.run(watchdog.activate()) is False
    assert watchdog.device.is_null
    assert asyncio.run(watchdog.keepalive(healthy=True, quorate=True)) is False


def test_required_mode_with_a_missing_device_is_an_error_naming_the_fix() -> None:
    plan = WatchdogPlan(WatchdogMode.REQUIRED, timeout=60, loop_interval=5)
    watchdog = Watchdog(LinuxWatchdogDevice("/nonexistent/watchdog"), plan)
    with pytest.raises(WatchdogError, match="modprobe xen_wdt"):
        asyncio.run(watchdog.activate())


def test_off_mode_never_touches_the_device() -> None:
    plan = WatchdogPlan(WatchdogMode.OFF, timeout=1, loop_interval=5)
    watchdog = Watchdog(LinuxWatchdogDevice("/nonexistent/watchdog"), plan)
    assert asyncio.run(watchdog.activate()) is False
    assert watchdog.device.is_null


def _truth(control_url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{control_url}/truth", timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _advance(control_url: str, seconds: float) -> None:
    request = urllib.request.Request(
        f"{control_url}/advance",
        data=json.dumps({"seconds": seconds}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


@pytest.fixture
def sim_pool():  # type: ignore[no-untyped-def]
    sim = pytest.importorskip("xenhad.sim.pool", reason="the XAPI simulator is not there")
    from xenhad.sim.spec import PoolSpec

    with sim.SimPool(PoolSpec(hosts=2, vms=1)) as pool:
        yield pool


def test_a_node_that_loses_quorum_is_reset_by_its_simulated_watchdog(sim_pool) -> None:  # type: ignore[no-untyped-def]
    control = sim_pool.control_url
    host = sim_pool.info()["hosts"][1]["name"]
    plan = WatchdogPlan(WatchdogMode.REQUIRED, timeout=30, loop_interval=5)
    watchdog = Watchdog(SimWatchdogDevice(control, host, timeout=30), plan)

    async def scenario() -> None:
        assert await watchdog.activate()
        hosts = _truth(control)["hosts"]
        assert hosts[host]["watchdog_deadline"] is not None  # type: ignore[index]
        # Healthy and quorate: fed every tick, so time passing does not reset the node.
        for _ in range(3):
            assert await watchdog.keepalive(healthy=True, quorate=True)
            _advance(control, 20)
        assert _truth(control)["hosts"][host]["powered"] is True  # type: ignore[index]
        # Quorum lost: no more food; 31 s later the simulator has reset the node.
        assert not await watchdog.keepalive(healthy=True, quorate=False)
        _advance(control, 31)

    asyncio.run(scenario())
    # A watchdog reset: power lost (its VMs' domains gone), then the host boots again, its
    # xapi down until the boot completes (sim/pool.py, _power_loss and _schedule_boot).
    for _ in range(50):
        state = _truth(control)["hosts"][host]  # type: ignore[index]
        if state["xapi"] == "down":
            break
        asyncio.run(asyncio.sleep(0.05))
    assert state["xapi"] == "down" and state["watchdog_deadline"] is None


def test_disable_disarms_the_simulated_watchdog(sim_pool) -> None:  # type: ignore[no-untyped-def]
    control = sim_pool.control_url
    host = sim_pool.info()["hosts"][0]["name"]
    watchdog = Watchdog(
        SimWatchdogDevice(control, host, timeout=30),
        WatchdogPlan(WatchdogMode.REQUIRED, timeout=30, loop_interval=5),
    )
    asyncio.run(watchdog.activate())
    asyncio.run(watchdog.disable())
    assert _truth(control)["hosts"][host]["watchdog_deadline"] is None  # type: ignore[index]
    _advance(control, 100)
    assert _truth(control)["hosts"][host]["powered"] is True  # type: ignore[index]


def test_a_new_timeout_is_applied_at_the_next_keepalive(sim_pool) -> None:  # type: ignore[no-untyped-def]
    control = sim_pool.control_url
    host = sim_pool.info()["hosts"][0]["name"]
    watchdog = Watchdog(
        SimWatchdogDevice(control, host, timeout=30),
        WatchdogPlan(WatchdogMode.REQUIRED, timeout=30, loop_interval=5),
    )
    asyncio.run(watchdog.activate())
    with pytest.raises(WatchdogError):
        watchdog.change_timeout(6)
    watchdog.change_timeout(90)
    assert watchdog.device.get_timeout() == 30
    asyncio.run(watchdog.keepalive(healthy=True, quorate=True))
    assert watchdog.device.get_timeout() == 90
    _advance(control, 60)
    assert _truth(control)["hosts"][host]["powered"] is True  # type: ignore[index]


def test_the_sim_device_reports_a_refusal_in_one_line() -> None:
    device = SimWatchdogDevice("http://127.0.0.1:9", "host1")
    with pytest.raises(WatchdogError, match="arm failed"):
        device.open()
