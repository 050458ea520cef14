"""What an operator reads in `journalctl -u xenhad`: one line per event, a stable event name,
its facts as keys, the right priority, and never a secret."""

from __future__ import annotations

import enum
import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from xenhad import log

WALL = 1_750_000_000.25  # 2025-06-15T15:06:40.250Z
STAMP = "2025-06-15T15:06:40.250Z"


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    structlog.contextvars.clear_contextvars()
    log.configure("kv", "info", io.StringIO(), journald=False)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def journald(stream: io.StringIO, fmt: str = "kv", level: str = "info") -> None:
    log.configure(fmt, level, stream, journald=True, wall=lambda: WALL)


def terminal(stream: io.StringIO, fmt: str = "kv", level: str = "info") -> None:
    log.configure(fmt, level, stream, journald=False, wall=lambda: WALL)


class Colour(enum.Enum):
    RED = "red"


# --------------------------------------------------------------------------- kv


def test_a_kv_event_under_journald_is_one_line_with_a_priority_and_no_timestamp(
    out: io.StringIO,
) -> None:
    journald(out)
    log.get_logger("detector").warning("host.suspect", host="h1", misses=2, reason="no answer")
    assert lines(out) == [
        '<4>host.suspect component=detector host=h1 misses=2 reason="no answer"'
    ]


def test_a_kv_event_on_a_terminal_starts_with_a_timestamp_and_the_level(
    out: io.StringIO,
) -> None:
    terminal(out)
    log.get_logger("detector").info("host.down", host="h1", after_s=12.4)
    assert lines(out) == [f"{STAMP} info host.down component=detector host=h1 after_s=12.4"]


@pytest.mark.parametrize(
    ("method", "prefix"),
    [("debug", "<7>"), ("info", "<6>"), ("warning", "<4>"), ("error", "<3>"), ("critical", "<2>")],
)
def test_each_level_gets_the_syslog_priority_journald_reads(
    out: io.StringIO, method: str, prefix: str
) -> None:
    journald(out, level="debug")
    getattr(log.get_logger("t"), method)("x.y")
    assert lines(out) == [f"{prefix}x.y component=t"]


def test_values_are_quoted_only_when_they_must_be(out: io.StringIO) -> None:
    journald(out)
    log.get_logger("t").info(
        "x.y",
        plain="abc-1.2:3/4",
        empty="",
        spaced="a b",
        quote='say "hi"',
        newline="two\nlines",
        equals="a=b",
        flag=True,
        nothing=None,
        colour=Colour.RED,
        path=Path("/var/lib/xenhad"),
    )
    assert lines(out) == [
        "<6>x.y component=t plain=abc-1.2:3/4 empty=\"\" spaced=\"a b\" "
        'quote="say \\"hi\\"" newline="two\\nlines" equals="a=b" flag=true nothing=null '
        "colour=red path=/var/lib/xenhad"
    ]
    parsed = log.parse_line(lines(out)[0])
    assert parsed is not None
    assert parsed.fields["quote"] == 'say "hi"'
    assert parsed.fields["newline"] == "two\nlines"


def test_events_below_the_level_are_dropped(out: io.StringIO) -> None:
    journald(out, level="warning")
    logger = log.get_logger("t")
    logger.debug("a.debug")
    logger.info("a.info")
    logger.warning("a.warning")
    logger.error("a.error")
    assert [line.split(" ")[0] for line in lines(out)] == ["<4>a.warning", "<3>a.error"]


def test_context_bound_to_the_task_is_carried(out: io.StringIO) -> None:
    journald(out)
    logger = log.get_logger("recovery", host="h1")
    structlog.contextvars.bind_contextvars(incident="i-7")
    logger.info("incident.step", step="fence")
    assert lines(out) == ["<6>incident.step component=recovery host=h1 step=fence incident=i-7"]


# --------------------------------------------------------------------------- json


def test_a_json_event_is_one_object_a_line(out: io.StringIO) -> None:
    terminal(out, fmt="json")
    log.get_logger("monitor").info("pool.view", hosts=3, master="h1", colour=Colour.RED)
    [line] = lines(out)
    assert json.loads(line) == {
        "event": "pool.view",
        "level": "info",
        "timestamp": STAMP,
        "component": "monitor",
        "hosts": 3,
        "master": "h1",
        "colour": "red",
    }


def test_a_json_event_under_journald_keeps_the_priority_prefix(out: io.StringIO) -> None:
    journald(out, fmt="json")
    log.get_logger("monitor").error("xapi.unreachable", reason="timed out")
    [line] = lines(out)
    assert line.startswith("<3>{")
    assert json.loads(line[3:])["event"] == "xapi.unreachable"
    parsed = log.parse_line(line)
    assert parsed is not None
    assert (parsed.priority, parsed.level, parsed.event) == (3, "error", "xapi.unreachable")


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_secrets_are_never_written(out: io.StringIO, fmt: str) -> None:
    journald(out, fmt=fmt)
    log.get_logger("xapi").info(
        "xapi.login",
        user="root",
        password="hunter2",
        secret="s1",
        token="t1",
        bmc_password="b1",
        Password="p2",
        params={"username": "root", "password": "hunter2", "inner": {"api_token": "t2"}},
    )
    text = out.getvalue()
    for value in ("hunter2", "s1", "t1", "b1", "p2", "t2"):
        assert value not in text
    parsed = log.parse_line(lines(out)[0])
    assert parsed is not None
    for key in ("password", "secret", "token", "bmc_password", "Password"):
        assert parsed.fields[key] == "***"
    assert parsed.fields["user"] == "root"


# --------------------------------------------------------------------------- exceptions


def raise_timeout() -> None:
    raise TimeoutError("xapi call timed out\nafter 10 s")


@pytest.mark.parametrize("method", ["info", "warning", "error"])
def test_an_exception_is_one_line_unless_debugging(out: io.StringIO, method: str) -> None:
    journald(out)
    logger = log.get_logger("xapi")
    try:
        raise_timeout()
    except TimeoutError:
        getattr(logger, method)("xapi.failed", call="VM.start", exc_info=True)
    [line] = lines(out)
    assert line.endswith(' call=VM.start exc="TimeoutError: xapi call timed out after 10 s"')


def test_log_exception_is_an_error_with_the_exception(out: io.StringIO) -> None:
    journald(out)
    try:
        raise_timeout()
    except TimeoutError:
        log.get_logger("xapi").exception("xapi.failed")
    assert lines(out) == [
        '<3>xapi.failed component=xapi exc="TimeoutError: xapi call timed out after 10 s"'
    ]


def test_an_exception_instance_may_be_passed(out: io.StringIO) -> None:
    journald(out)
    log.get_logger("xapi").warning("xapi.failed", exc_info=ValueError("bad"))
    assert lines(out) == ['<4>xapi.failed component=xapi exc="ValueError: bad"']


def test_at_debug_the_traceback_follows_with_the_same_priority(out: io.StringIO) -> None:
    journald(out, level="debug")
    try:
        raise_timeout()
    except TimeoutError:
        log.get_logger("xapi").warning("xapi.failed", exc_info=True)
    first, *rest = lines(out)
    assert first.startswith("<4>xapi.failed component=xapi exc=")
    assert rest[0] == "<4>  | Traceback (most recent call last):"
    assert all(line.startswith("<4>  | ") for line in rest)
    assert any("raise_timeout" in line for line in rest)
    assert log.parse_line(rest[0]) is None  # continuation lines are not events


def test_at_debug_json_carries_the_traceback_as_a_key(out: io.StringIO) -> None:
    terminal(out, fmt="json", level="debug")
    try:
        raise_timeout()
    except TimeoutError:
        log.get_logger("xapi").error("xapi.failed", exc_info=True)
    [line] = lines(out)
    record = json.loads(line)
    assert record["exc"] == "TimeoutError: xapi call timed out after 10 s"
    assert "raise_timeout" in record["traceback"]


# --------------------------------------------------------------------------- reconfigure


def test_sighup_style_reconfiguration_changes_existing_loggers(out: io.StringIO) -> None:
    journald(out, level="info")
    logger = log.get_logger("daemon").bind(node="h1")  # created and bound before the change
    logger.debug("before.debug")
    logger.info("before.info")

    second = io.StringIO()
    log.configure("json", "debug", second, journald=False, wall=lambda: WALL)
    logger.debug("after.debug")

    assert lines(out) == ["<6>before.info component=daemon node=h1"]
    [line] = lines(second)
    assert json.loads(line)["event"] == "after.debug"
    assert json.loads(line)["node"] == "h1"


def test_an_unknown_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log format 'text' is invalid"):
        log.configure("text", "info", io.StringIO())
    with pytest.raises(ValueError, match="log level 'verbose' is invalid"):
        log.configure("kv", "verbose", io.StringIO())


# --------------------------------------------------------------------------- journald


def test_journald_is_detected_from_journal_stream_naming_our_stderr(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream, (tmp_path / "other").open("w") as other:
        st = Path(stream.name).stat()
        ours = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert log.under_journald(stream, ours)
        # Inherited by a child whose stderr goes elsewhere: not the journal.
        assert not log.under_journald(other, ours)
        assert not log.under_journald(stream, {})
        assert not log.under_journald(stream, {"JOURNAL_STREAM": "garbage"})
    assert not log.under_journald(io.StringIO(), ours)


def test_detected_journald_gives_prefixed_lines(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        st = path.stat()
        log.configure("kv", "info", stream, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        log.get_logger("t").info("x.y")
    log.configure("kv", "info", io.StringIO(), journald=False)
    assert path.read_text() == "<6>x.y component=t\n"


# --------------------------------------------------------------------------- libraries


def test_library_logging_is_routed_into_the_same_format(out: io.StringIO) -> None:
    journald(out)
    logging.getLogger("urllib3.connectionpool").info("chatter")  # below warning: dropped
    logging.getLogger("urllib3.connectionpool").warning("Retrying %s", "GET /")
    assert lines(out) == [
        '<4>python.log component=python logger=urllib3.connectionpool msg="Retrying GET /"'
    ]


def test_lines_from_threads_do_not_interleave(out: io.StringIO) -> None:
    journald(out)
    logger = log.get_logger("t")

    def burst(n: int) -> None:
        for i in range(200):
            logger.info("x.y", thread=n, i=i, pad="p" * 50)

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parsed = [log.parse_line(line) for line in lines(out)]
    assert len(parsed) == 800
    assert all(p is not None and p.fields["pad"] == "p" * 50 for p in parsed)


def test_parse_line_reads_terminal_lines_back(out: io.StringIO) -> None:
    terminal(out)
    log.get_logger("detector").warning("host.suspect", host="h1", reason="no answer")
    parsed = log.parse_line(lines(out)[0])
    assert parsed == log.LogLine(
        event="host.suspect",
        level="warning",
        fields={"component": "detector", "host": "h1", "reason": "no answer"},
        priority=None,
        timestamp=STAMP,
    )


def test_the_default_stream_is_stderr_at_the_time_of_writing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log.configure("kv", "info", journald=True)
    log.get_logger("t").info("x.y", n=1)
    assert capsys.readouterr().err == "<6>x.y component=t n=1\n"
    log.configure("kv", "info", io.StringIO(), journald=False)
