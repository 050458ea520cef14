"""Incident alerts reach webhooks in order, with their headers, retried when the receiver
may recover and not when it refused; a receiver that hangs never holds up the daemon."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from xenhad import __version__
from xenhad.alerts import Alerts
from xenhad.config import AlertsConfig
from xenhad.errors import CredentialError

from .conftest import Logged, Receiver, Tls, deliver

TOKEN = "tok-5f1e9a77c2d04b7f"
OPENED = {"event": "incident.opened", "incident": "i-1", "host": "host2", "phase": "fencing",
          "at": 1718000000.5}
STEP = {**OPENED, "event": "incident.step", "phase": "restarting"}
CLOSED = {**OPENED, "event": "incident.closed", "phase": "done"}


def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "alert-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def alerts_for(*urls: str, backoff: float = 0.01, **options: Any) -> Alerts:
    return Alerts.from_config(AlertsConfig(webhooks=urls, **options), backoff=backoff)


def test_each_transition_is_posted_in_order_with_its_headers_and_the_pool(
    serve: Any, tmp_path: Path, logged: Logged
) -> None:
    receiver: Receiver = serve()
    alerts = Alerts.from_config(
        AlertsConfig(webhooks=(receiver.url,), webhook_token_file=token_file(tmp_path)),
        pool="pool-uuid",
        sent_by="host1",
    )
    deliver(alerts, OPENED, STEP, CLOSED)

    got = receiver.received
    assert [r.json["event"] for r in got] == ["incident.opened", "incident.step",
                                              "incident.closed"]
    assert got[0].json == {**OPENED, "pool": "pool-uuid", "sent_by": "host1"}
    assert got[0].path == "/hook"
    headers = got[0].headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"xenhad/{__version__}"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert [e["alert"] for e in logged.events("alerts.delivered")] == [
        "incident.opened", "incident.step", "incident.closed"]
    assert TOKEN not in logged.text


def test_pool_and_sender_are_added_only_when_given(serve: Any) -> None:
    receiver: Receiver = serve()
    deliver(alerts_for(receiver.url), OPENED)
    assert receiver.received[0].json == OPENED
    assert "Authorization" not in receiver.received[0].headers


def test_a_503_is_retried_and_the_alert_then_delivered(serve: Any, logged: Logged) -> None:
    receiver: Receiver = serve(answers=[503, 503])
    deliver(alerts_for(receiver.url, retries=3), OPENED)
    assert [r.json for r in receiver.received] == [OPENED] * 3
    assert not logged.events("alerts.webhook_failed")
    assert [e["attempt"] for e in logged.events("alerts.webhook_retry")] == [1, 2]


def test_a_receiver_still_failing_after_the_retries_is_logged_once(
    serve: Any, logged: Logged, tmp_path: Path
) -> None:
    receiver: Receiver = serve(answers=[500, 502, 503])
    alerts = alerts_for(receiver.url, retries=2, webhook_token_file=token_file(tmp_path))
    deliver(alerts, OPENED)
    assert len(receiver.received) == 3
    [failed] = logged.events("alerts.webhook_failed")
    port = receiver.url.split(":")[2].split("/")[0]
    assert failed == {
        "level": "error",
        "target": f"http://127.0.0.1:{port}",
        "alert": "incident.opened",
        "reason": "HTTP 503 Service Unavailable",
        "attempts": 3,
    }
    assert TOKEN not in logged.text


@pytest.mark.parametrize(("status", "reason"), [(400, "HTTP 400 Bad Request"),
                                                (401, "HTTP 401 Unauthorized"),
                                                (302, "HTTP 302 Found")])
def test_a_refusal_or_a_redirect_is_not_retried(
    serve: Any, logged: Logged, status: int, reason: str
) -> None:
    receiver: Receiver = serve(answers=[status])
    deliver(alerts_for(receiver.url, retries=3), OPENED)
    assert len(receiver.received) == 1
    [failed] = logged.events("alerts.webhook_failed")
    assert (failed["reason"], failed["attempts"]) == (reason, 1)


def test_a_refused_connection_is_retried_then_logged(closed_port: int, logged: Logged) -> None:
    deliver(alerts_for(f"http://127.0.0.1:{closed_port}/", retries=1), OPENED)
    [failed] = logged.events("alerts.webhook_failed")
    assert failed["reason"] == "Connection refused"
    assert failed["attempts"] == 2


def test_a_hung_receiver_never_blocks_send_and_each_attempt_is_bounded(
    serve: Any, logged: Logged
) -> None:
    receiver: Receiver = serve(hang=True)
    alerts = alerts_for(receiver.url, timeout=0.5, retries=1)
    started = time.monotonic()
    longest_send = deliver(alerts, OPENED, CLOSED)
    elapsed = time.monotonic() - started

    assert longest_send < 0.05
    # Two alerts, two attempts each, half a second per attempt.
    assert 1.9 < elapsed < 6
    assert len(receiver.received) == 4
    failed = logged.events("alerts.webhook_failed")
    assert [(f["alert"], f["reason"], f["attempts"]) for f in failed] == [
        ("incident.opened", "no answer within 0.5s", 2),
        ("incident.closed", "no answer within 0.5s", 2),
    ]


def test_the_loop_keeps_ticking_while_a_receiver_hangs(serve: Any) -> None:
    receiver: Receiver = serve(hang=True)
    alerts = alerts_for(receiver.url, timeout=1.0, retries=0)

    async def scenario() -> float:
        alerts.send(OPENED)
        worst = 0.0
        for _ in range(40):  # a daemon ticking every 20 ms while the webhook hangs
            before = time.monotonic()
            await asyncio.sleep(0.02)
            worst = max(worst, time.monotonic() - before - 0.02)
        await alerts.drain(5)
        return worst

    assert asyncio.run(scenario()) < 0.2
    assert len(receiver.received) == 1


def test_drain_gives_up_after_its_timeout_and_says_what_was_left(
    serve: Any, logged: Logged
) -> None:
    receiver: Receiver = serve(hang=True)
    alerts = alerts_for(receiver.url, timeout=30, retries=0)
    started = time.monotonic()
    deliver(alerts, OPENED, STEP, drain=0.3)
    assert time.monotonic() - started < 2
    [timeout] = logged.events("alerts.drain_timeout")
    assert timeout["undelivered"] == {receiver.url.rsplit("/", 1)[0]: 2}


def test_one_hung_webhook_does_not_delay_another(serve: Any) -> None:
    hung: Receiver = serve(hang=True)
    fine: Receiver = serve()
    alerts = alerts_for(hung.url, fine.url, timeout=5, retries=0)

    async def scenario() -> list[str]:
        alerts.send(OPENED)
        alerts.send(CLOSED)
        got = await asyncio.to_thread(fine.wait_for, 2, 3.0)
        await alerts.drain(0.1)
        return [r.json["event"] for r in got]

    assert asyncio.run(scenario()) == ["incident.opened", "incident.closed"]


def test_send_never_raises(serve: Any, logged: Logged) -> None:
    receiver: Receiver = serve()
    alerts = alerts_for(receiver.url)
    alerts.send(OPENED)  # no running loop: logged, dropped
    assert logged.events("alerts.dropped")[0]["alert"] == "incident.opened"

    async def scenario() -> None:
        alerts.send({"event": "incident.opened", ("not", "a", "key"): 1})  # type: ignore[dict-item]
        alerts.send({**OPENED, "path": Path("/x"), "phase": object()})  # str()-ed
        await alerts.drain(5)

    asyncio.run(scenario())
    assert len(logged.events("alerts.dropped")) == 2
    assert receiver.received[0].json["path"] == "/x"


def test_alerts_without_targets_do_nothing() -> None:
    alerts = Alerts.from_config(AlertsConfig())
    assert not alerts.enabled
    alerts.send(OPENED)  # even outside a loop
    asyncio.run(alerts.drain(1))


def test_a_token_file_readable_by_others_is_refused_at_start(tmp_path: Path) -> None:
    path = token_file(tmp_path)
    path.chmod(0o644)
    with pytest.raises(CredentialError) as caught:
        alerts_for("https://alerts.example.com/", webhook_token_file=path)
    assert TOKEN not in str(caught.value)
    assert str(caught.value).endswith(f"run chmod 600 {path}")


# --------------------------------------------------------------------------- TLS


def test_https_with_the_receivers_ca_is_delivered(serve: Any, tls: Tls) -> None:
    receiver: Receiver = serve(tls=tls.server)
    deliver(alerts_for(receiver.url, ca_file=tls.ca_file), OPENED)
    assert [r.json for r in receiver.received] == [OPENED]


def test_an_untrusted_certificate_is_a_final_failure(
    serve: Any, tls: Tls, logged: Logged
) -> None:
    receiver: Receiver = serve(tls=tls.server)
    deliver(alerts_for(receiver.url, retries=3), OPENED)
    assert receiver.received == []
    [failed] = logged.events("alerts.webhook_failed")
    assert failed["reason"].startswith("TLS certificate not trusted (")
    assert failed["reason"].endswith("): set alerts.ca_file")
    assert failed["attempts"] == 1


def test_verify_tls_false_accepts_any_certificate(serve: Any, tls: Tls) -> None:
    receiver: Receiver = serve(tls=tls.server)
    deliver(alerts_for(receiver.url, verify_tls=False), OPENED)
    assert len(receiver.received) == 1


def test_an_alert_sent_while_draining_is_delivered_too(serve: Any) -> None:
    receiver: Receiver = serve()
    alerts = alerts_for(receiver.url)

    async def scenario() -> None:
        alerts.send(OPENED)
        draining = asyncio.ensure_future(alerts.drain(10))
        await asyncio.sleep(0)
        alerts.send(CLOSED)  # the daemon closing an incident as it stops
        await draining
        assert alerts.pending == 0

    asyncio.run(scenario())
    assert [r.json["event"] for r in receiver.received] == ["incident.opened",
                                                            "incident.closed"]
