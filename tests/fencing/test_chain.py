"""The chain falls through backends that cannot prove a host off; the confirmation loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from xenhad.clock import ManualClock, SystemClock
from xenhad.fencing.base import (
    FenceChain,
    FenceFailure,
    FenceOutcome,
    PowerStatus,
    chain_confirmed_off,
    chain_summary,
    confirm_off,
)
from xenhad.fencing.config import IpmiSettings, RedfishSettings, Secret
from xenhad.fencing.ipmi import IpmiBackend
from xenhad.fencing.redfish import RedfishBackend

from .conftest import USER, IpmiFactory

pytestmark = pytest.mark.timeout(60)


def test_an_unreachable_bmc_falls_through_to_the_next_backend(
    dead_tcp_port: int, ipmi_bmc: IpmiFactory, password_file: Path
) -> None:
    bmc = ipmi_bmc(power="on")
    clock = SystemClock()
    redfish = RedfishBackend(
        RedfishSettings(
            url=f"http://127.0.0.1:{dead_tcp_port}",
            username=USER,
            password=Secret(file=password_file),
            request_timeout=1.0,
        ),
        host="host2",
        clock=clock,
    )
    ipmi = IpmiBackend(
        IpmiSettings(
            address="127.0.0.1",
            port=bmc.port,
            username=USER,
            password=Secret(file=password_file),
            off_timeout=3.0,
            poll_interval=0.2,
        ),
        host="host2",
        clock=clock,
    )
    results = asyncio.run(FenceChain("host2", [redfish, ipmi]).power_off())

    assert [(r.backend, r.outcome) for r in results] == [
        ("redfish", FenceOutcome.UNREACHABLE),
        ("ipmi", FenceOutcome.OFF),
    ]
    assert chain_confirmed_off(results)
    assert "redfish: unreachable" in chain_summary(results)


def test_a_chain_where_nothing_confirms_reports_every_attempt(
    dead_tcp_port: int, ipmi_bmc: IpmiFactory, password_file: Path, wrong_password_file: Path
) -> None:
    bmc = ipmi_bmc(power="on")
    clock = SystemClock()
    redfish = RedfishBackend(
        RedfishSettings(
            url=f"http://127.0.0.1:{dead_tcp_port}",
            username=USER,
            password=Secret(file=password_file),
        ),
        host="host2",
        clock=clock,
    )
    ipmi = IpmiBackend(
        IpmiSettings(
            address="127.0.0.1",
            port=bmc.port,
            username=USER,
            password=Secret(file=wrong_password_file),
        ),
        host="host2",
        clock=clock,
    )
    chain = FenceChain("host2", [redfish, ipmi])
    results = asyncio.run(chain.power_off())
    assert [r.outcome for r in results] == [FenceOutcome.UNREACHABLE, FenceOutcome.AUTH_FAILED]
    assert not chain_confirmed_off(results)
    assert asyncio.run(chain.power_status()) is PowerStatus.UNKNOWN


def test_a_chain_needs_a_backend() -> None:
    with pytest.raises(ValueError):
        FenceChain("host2", [])


# -- the confirmation loop, on a manual clock: no sleeping --------------------------------


def _reads(*answers: PowerStatus | FenceFailure):  # type: ignore[no-untyped-def]
    queue = list(answers)

    async def read() -> PowerStatus:
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, FenceFailure):
            raise answer
        return answer

    return read


def test_confirm_off_polls_until_off() -> None:
    clock = ManualClock()
    read = _reads(PowerStatus.ON, PowerStatus.ON, PowerStatus.OFF)
    assert asyncio.run(confirm_off(read, clock=clock, deadline=10, interval=2)) == 3
    assert clock.monotonic() == 1004.0


def test_confirm_off_gives_up_at_the_deadline() -> None:
    clock = ManualClock()
    with pytest.raises(FenceFailure) as failure:
        asyncio.run(confirm_off(_reads(PowerStatus.ON), clock=clock, deadline=5, interval=2))
    assert failure.value.outcome is FenceOutcome.NOT_CONFIRMED
    assert "still on" in failure.value.reason
    assert clock.monotonic() == 1005.0


def test_a_failed_read_while_waiting_is_not_the_end() -> None:
    clock = ManualClock()
    dropped = FenceFailure(FenceOutcome.UNREACHABLE, "GET /x: timed out")
    read = _reads(dropped, PowerStatus.UNKNOWN, PowerStatus.OFF)
    assert asyncio.run(confirm_off(read, clock=clock, deadline=10, interval=1)) == 3


def test_reads_that_keep_failing_end_not_confirmed_with_the_last_reason() -> None:
    clock = ManualClock()
    read = _reads(FenceFailure(FenceOutcome.UNREACHABLE, "GET /x: timed out"))
    with pytest.raises(FenceFailure) as failure:
        asyncio.run(confirm_off(read, clock=clock, deadline=3, interval=1))
    assert failure.value.outcome is FenceOutcome.NOT_CONFIRMED
    assert "timed out" in failure.value.reason


def test_build_chain_keeps_the_configured_order() -> None:
    from xenhad.fencing import build_chain, parse_fencing

    config = parse_fencing(
        {
            "hosts": [
                {
                    "host": "host2",
                    "chain": ["ipmi", "redfish"],
                    "redfish": {"url": "https://x", "username": "a", "password_file": "/p"},
                    "ipmi": {"address": "10.0.0.1", "username": "a", "password_file": "/p"},
                }
            ]
        },
        source="t.toml",
    )
    chain = build_chain(config.hosts[0], clock=ManualClock())
    assert [b.name for b in chain.backends] == ["ipmi", "redfish"]
    assert all(b.host == "host2" for b in chain.backends)
