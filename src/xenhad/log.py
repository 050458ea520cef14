"""Logging: structlog events as one line each on stderr, shaped for journald.

Every event has a stable dotted name and its facts as keys:

    log = get_logger("detector")
    log.warning("host.suspect", host=uuid, misses=2)

Line formats (`configure(fmt=...)`):

- kv, under journald:  `<4>host.suspect component=detector host=6f1c... misses=2`
- kv, elsewhere:       `2025-06-01T10:00:00.123Z warning host.suspect component=detector ...`
- json, under journald: `<4>{"event": "host.suspect", "level": "warning", "timestamp": ...}`
- json, elsewhere:      the same object without the `<N>` prefix.

`<N>` is the syslog priority (debug=7, info=6, warning=4, error=3, critical=2). journald
reads and strips it from a service's stderr (SyslogLevelPrefix=, on by default), so
`journalctl -p err -u xenhad` lists errors and the JSON in MESSAGE stays parseable. It is
written only when stderr *is* the journal stream (`$JOURNAL_STREAM` names our stderr's
device:inode), where journald also stamps each line, so kv lines carry no timestamp there.
On a terminal or in a file the prefix would be noise, and there is no other clock, so the
line starts with an ISO-8601 UTC timestamp and the level's name instead. JSON lines always
carry "timestamp": whoever parses them may not have journald's metadata.

Values are bare when they have no space, quote, `=` or backslash, else JSON-quoted (so a
value never spans two lines). Values of keys named password, secret, token (and
`*_password`, ...) are replaced by "***" before rendering.

An exception (`exc_info=True`, `log.exception(...)`) renders as one key,
`exc="TimeoutError: timed out"`. Only when the configured level is debug is its traceback
written too: as continuation lines after the event (kv) or a "traceback" key (json).

`configure()` may be called again at any time (SIGHUP): level, format and stream change for
every logger already handed out, because the processors read the settings on each event.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Optional, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

PRIORITIES: dict[str, int] = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
"""syslog priority of each level, as journald reads it from a `<N>` line prefix."""

_SEVERITY: dict[str, int] = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

FORMATS = ("kv", "json")
LEVELS = tuple(_SEVERITY)

REDACTED = "***"
_SECRET_NAMES = frozenset({"password", "passwd", "secret", "token"})


def is_secret_key(key: str) -> bool:
    """Whether a value logged under `key` must be hidden."""
    lowered = key.lower()
    return lowered in _SECRET_NAMES or any(lowered.endswith("_" + n) for n in _SECRET_NAMES)


@dataclass
class _Settings:
    fmt: str = "kv"
    level: str = "info"
    stream: TextIO | None = None
    journald: bool = False
    wall: Callable[[], float] = time.time
    lock: threading.Lock = field(default_factory=threading.Lock)
    configured: bool = False


_settings = _Settings()


def configure(
    fmt: str = "kv",
    level: str = "info",
    stream: TextIO | None = None,
    *,
    journald: bool | None = None,
    wall: Callable[[], float] | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Set (or change) how every xenhad logger writes.

    stream: default sys.stderr (looked up on each write). journald: None detects it from
    `$JOURNAL_STREAM` (in `env`, default os.environ) and the stream's file descriptor.
    wall: the wall clock for timestamps (tests pass a fixed one).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is invalid: expected one of {', '.join(FORMATS)}")
    if level not in _SEVERITY:
        raise ValueError(f"log level {level!r} is invalid: expected one of {', '.join(LEVELS)}")
    out = sys.stderr if stream is None else stream
    if journald is None:
        journald = under_journald(out, os.environ if env is None else env)
    with _settings.lock:
        _settings.fmt = fmt
        _settings.level = level
        # None: whatever sys.stderr is when a line is written (pytest's capsys swaps it).
        _settings.stream = stream
        _settings.journald = journald
        _settings.wall = time.time if wall is None else wall
        first = not _settings.configured
        _settings.configured = True
    if first:
        structlog.configure(
            processors=[
                _filter_level,
                structlog.contextvars.merge_contextvars,
                _redact,
                _exceptions,
                _render,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            logger_factory=_WriterFactory(),
            cache_logger_on_first_use=False,
        )
        _install_stdlib_bridge()
    # Libraries' info chatter (urllib3's "Resetting dropped connection") is not one of our
    # events: let their warnings through, and everything only when debugging.
    logging.getLogger().setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def print_error(message: str, *, stream: TextIO | None = None,
                env: Mapping[str, str] | None = None) -> None:
    """An error that is no event (a command's, or the daemon's before its logs are set up):
    one line, `xenhad: <message>`, with journald's error prefix `<3>` when `stream` (default
    stderr) is the journal, so that `journalctl -p err` lists it."""
    out = sys.stderr if stream is None else stream
    prefix = "<3>" if under_journald(out, os.environ if env is None else env) else ""
    text = " ".join(message.split())  # one line, whatever the message holds
    with contextlib.suppress(OSError, ValueError):
        out.write(f"{prefix}xenhad: {text}\n")
        out.flush()


def get_logger(component: str, **context: Any) -> FilteringBoundLogger:
    """A logger whose events carry `component=...` (and `context`). Configures defaults
    (kv, info, stderr) if `configure` was never called."""
    if not _settings.configured:
        configure()
    logger = structlog.get_logger().bind(component=component, **context)
    return cast(FilteringBoundLogger, logger)


def under_journald(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Whether `stream` is connected to the journal (systemd.exec(5), $JOURNAL_STREAM):
    the variable is inherited by children whose stderr may go elsewhere, so it counts only
    if its device:inode is our stream's."""
    value = env.get("JOURNAL_STREAM", "")
    match = re.fullmatch(r"(\d+):(\d+)", value)
    if not match:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(match.group(1)), int(match.group(2)))


# --------------------------------------------------------------------------- processors


def _level_name(method_name: str) -> str:
    name = {"warn": "warning", "exception": "error", "fatal": "critical"}.get(
        method_name, method_name
    )
    return name if name in _SEVERITY else "info"


def _filter_level(_: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    # Filtering here rather than in the bound logger's class lets `configure` change the
    # level of loggers that were created (and bound) before it.
    level = _level_name(method_name)
    if _SEVERITY[level] < _SEVERITY[_settings.level]:
        raise structlog.DropEvent
    event_dict["level"] = level
    return event_dict


def _redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key, value in event_dict.items():
        if is_secret_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, Mapping):
            event_dict[key] = _redacted_mapping(value)
    return event_dict


def _redacted_mapping(value: Mapping[Any, Any]) -> dict[Any, Any]:
    return {
        k: REDACTED
        if isinstance(k, str) and is_secret_key(k)
        else _redacted_mapping(v)
        if isinstance(v, Mapping)
        else v
        for k, v in value.items()
    }


# Evaluated at run time: spelled with Optional so the module still imports on 3.9.
_ExcInfo = tuple[type[BaseException], BaseException, Optional[TracebackType]]


def _exc_info(value: object) -> _ExcInfo | None:
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return cast(_ExcInfo, value)
    if value:
        info = sys.exc_info()
        if info[1] is not None:
            return cast(_ExcInfo, info)
    return None


def _exceptions(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    info = _exc_info(event_dict.pop("exc_info", None))
    if info is None:
        return event_dict
    kind, exc, tb = info
    message = " ".join(str(exc).split())
    event_dict["exc"] = f"{kind.__name__}: {message}" if message else kind.__name__
    if _settings.level == "debug":
        event_dict["traceback"] = "".join(traceback.format_exception(kind, exc, tb)).rstrip()
    return event_dict


def _render(_: WrappedLogger, __: str, event_dict: EventDict) -> str:
    level = str(event_dict.pop("level", "info"))
    event = str(event_dict.pop("event", ""))
    prefix = f"<{PRIORITIES[level]}>" if _settings.journald else ""
    if _settings.fmt == "json":
        record: dict[str, Any] = {"event": event, "level": level}
        record["timestamp"] = _timestamp(_settings.wall())
        record.update(event_dict)
        return prefix + json.dumps(record, default=_json_default, ensure_ascii=False)
    tb = event_dict.pop("traceback", None)
    fields = "".join(f" {key}={format_value(value)}" for key, value in event_dict.items())
    head = prefix if _settings.journald else f"{_timestamp(_settings.wall())} {level} "
    line = head + event + fields
    if tb is not None:
        # Continuation lines keep the event's priority prefix so journald files the
        # traceback under the same level as the event it belongs to.
        indent = f"{prefix}  | "
        line += "".join("\n" + indent + row for row in str(tb).splitlines())
    return line


_BARE = re.compile(r'[^\s"=\\]+')


def format_value(value: object) -> str:
    """A value as it appears after `key=` in a kv line."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = value if isinstance(value, str) else str(value)
    if _BARE.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _json_default(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _timestamp(wall: float) -> str:
    moment = datetime.datetime.fromtimestamp(wall, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- output


class _Writer:
    """The end of the chain: writes a rendered line to the currently configured stream.

    One write() per event under a lock, so lines from worker threads (XAPI calls run in
    threads) never interleave."""

    def msg(self, line: str) -> None:
        with _settings.lock:
            stream = _settings.stream or sys.stderr
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                # A closed or broken stderr must not take the daemon down with it.
                pass

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _WriterFactory:
    def __call__(self, *args: Any) -> _Writer:
        return _Writer()


class _StdlibBridge(logging.Handler):
    """Routes records of libraries using `logging` (urllib3, asyncio) into our format under
    one stable event name, `python.log`, with the library's logger name and message."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string must not kill logging
            message = str(record.msg)
        level = logging.getLevelName(record.levelno).lower()
        kwargs: MutableMapping[str, Any] = {"logger": record.name, "msg": message}
        if record.exc_info:
            kwargs["exc_info"] = record.exc_info
        structlog.get_logger().log(
            _SEVERITY.get(level, logging.INFO), "python.log", component="python", **kwargs
        )


_bridge = _StdlibBridge()


def _install_stdlib_bridge() -> None:
    root = logging.getLogger()
    if _bridge not in root.handlers:
        root.addHandler(_bridge)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class LogLine:
    """One parsed line, for tests and tools that read xenhad's output back."""

    event: str
    level: str
    fields: dict[str, Any]
    priority: int | None = None
    timestamp: str | None = None


_KV_FIELD = re.compile(r' ([A-Za-z_][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\.)*"|[^\s"=\\]*)')
_PRIORITY_LEVEL = {n: level for level, n in PRIORITIES.items()}


def parse_line(line: str) -> LogLine | None:
    """A line written by this module back as a LogLine (field values as strings in kv mode,
    as JSON types in json mode); None for a continuation line or foreign text."""
    line = line.rstrip("\n")
    priority: int | None = None
    match = re.match(r"<(\d)>", line)
    if match:
        priority = int(match.group(1))
        line = line[match.end() :]
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return None
        if not isinstance(record, dict) or "event" not in record:
            return None
        event = str(record.pop("event"))
        level = str(record.pop("level", _PRIORITY_LEVEL.get(priority or 6, "info")))
        timestamp = record.pop("timestamp", None)
        return LogLine(event, level, record, priority, timestamp)
    timestamp = None
    if priority is None:
        head = re.match(r"(\S+Z) (\w+) ", line)
        if not head or head.group(2) not in _SEVERITY:
            return None
        timestamp, level = head.group(1), head.group(2)
        line = line[head.end() :]
    else:
        level = _PRIORITY_LEVEL.get(priority, "info")
    event, _, rest = line.partition(" ")
    if not event or event.startswith("|"):
        return None
    fields: dict[str, Any] = {}
    for key, raw in _KV_FIELD.findall(" " + rest):
        fields[key] = json.loads(raw) if raw.startswith('"') else raw
    return LogLine(event, level, fields, priority, timestamp)
