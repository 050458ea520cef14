"""Which calls may be repeated after a failure: the property that keeps a VM from being
started twice because a reply got lost."""

from __future__ import annotations

import asyncio
import socket

import pytest

from xenhad.clock import ManualClock
from xenhad.errors import ConfigError
from xenhad.xapi import Safety, Xapi, XapiError, XapiUnreachable, may_retry, safety_of
from xenhad.xapi.client import single_attempt

AMBIGUOUS = XapiUnreachable("timed out", sent=True)
REFUSED = XapiUnreachable("Connection refused", sent=False)

NOT_IDEMPOTENT = [
    "VM.start",
    "VM.start_on",
    "VM.power_state_reset",
    "VM.hard_shutdown",
    "host.declare_dead",
    "pool.emergency_transition_to_master",
    "pool.emergency_reset_master",
    "pool.recover_slaves",
    "pool.add_to_other_config",
    "VM.destroy",  # unknown to us: assumed unsafe
]
READS = [
    "pool.get_all_records",
    "host.get_all_records",
    "host_metrics.get_all_records",
    "VM.get_all_records",
    "VM.get_record",
    "host.compute_free_memory",
    "event.from",
]
IDEMPOTENT = ["host.disable", "host.enable", "pool.sync_database", "pool.remove_from_other_config"]


@pytest.mark.parametrize("method", NOT_IDEMPOTENT)
def test_a_write_that_may_have_happened_is_never_repeated(method: str) -> None:
    assert safety_of(method) is Safety.NOT_IDEMPOTENT
    assert not may_retry(method, AMBIGUOUS)
    # ... but a request that surely never left us may be sent again.
    assert may_retry(method, REFUSED)


@pytest.mark.parametrize("method", READS + IDEMPOTENT)
def test_reads_and_idempotent_writes_are_repeated_whenever_xapi_was_unreachable(
    method: str,
) -> None:
    assert safety_of(method) in (Safety.READ, Safety.IDEMPOTENT)
    assert may_retry(method, AMBIGUOUS)
    assert may_retry(method, REFUSED)


@pytest.mark.parametrize("method", READS + IDEMPOTENT + NOT_IDEMPOTENT)
def test_an_answer_from_xapi_is_never_retried(method: str) -> None:
    assert not may_retry(method, XapiError("HOST_IS_LIVE", ["OpaqueRef:1"]))
    assert not may_retry(method, ValueError("bug"))


def refused_port() -> int:
    """A loopback port nothing listens on: a connection to it is refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.mark.timeout(10)
def test_backoff_waits_on_the_injected_clock_and_stops_after_the_attempts() -> None:
    port = refused_port()
    clock = ManualClock()

    async def scenario() -> Xapi:
        xapi = Xapi(
            f"http://127.0.0.1:{port}",
            password="pw",
            timeout=1,
            retry_attempts=4,
            retry_backoff=1.0,
            retry_backoff_max=2.0,
            clock=clock,
        )
        try:
            with pytest.raises(XapiUnreachable) as caught:
                await xapi.login()
            assert caught.value.sent is False
        finally:
            await xapi.close()
        return xapi

    start = clock.monotonic()
    xapi = asyncio.run(scenario())
    assert xapi.requests["session.login_with_password"] == 4
    # Three waits, each jittered in [0, min(2, 1 * 2**n)].
    assert 0 <= clock.monotonic() - start <= 6.0


@pytest.mark.timeout(10)
def test_inside_single_attempt_nothing_is_retried() -> None:
    port = refused_port()
    clock = ManualClock()

    async def scenario() -> Xapi:
        xapi = Xapi(f"http://127.0.0.1:{port}", password="pw", timeout=1, retry_attempts=4,
                    retry_backoff=1.0, clock=clock)
        try:
            with single_attempt(), pytest.raises(XapiUnreachable):
                await xapi.login()
            assert xapi.requests["session.login_with_password"] == 1
            with pytest.raises(XapiUnreachable):  # outside it, retried as ever
                await xapi.login()
        finally:
            await xapi.close()
        return xapi

    xapi = asyncio.run(scenario())
    assert xapi.requests["session.login_with_password"] == 1 + 4


def test_bad_endpoints_and_knobs_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="neither a socket path nor a URL"):
        Xapi("pool/master")
    with pytest.raises(ConfigError, match="not an http"):
        Xapi("ftp://master")
    with pytest.raises(ConfigError, match="retry_attempts"):
        Xapi("https://master", retry_attempts=0)
    with pytest.raises(ConfigError, match="timeout"):
        Xapi("https://master", timeout=0)


def test_the_password_never_appears_in_the_facade_repr() -> None:
    assert "s3cret" not in repr(Xapi("https://master", password="s3cret"))
