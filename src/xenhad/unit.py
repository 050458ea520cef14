"""What the installed systemd unit promises the daemon: how soon it is restarted.

Read from the unit file and its drop-ins, where systemd looks for them ($SYSTEMD_UNIT_PATH,
as systemd honours it, else the system unit directories): a daemon that dies holding an
armed watchdog must be running again, and feeding it, before the watchdog resets the host
(config.check_restart_fits). No unit found: nothing restarts this daemon on a schedule we
know, and nothing is checked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

UNIT = "xenhad.service"
SYSTEM_UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
                    "/usr/lib/systemd/system", "/lib/systemd/system")
DEFAULT_RESTART_SEC = 0.1
"""systemd's own RestartSec= when the unit sets none (systemd.service(5))."""

_UNITS = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1.0, "sec": 1.0,
          "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
          "minutes": 60.0, "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0}
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


@dataclass(frozen=True)
class RestartDelay:
    seconds: float
    source: Path
    """The file that set it (or the unit file, for systemd's default)."""


def parse_timespan(text: str) -> float | None:
    """systemd.time(7) spans ("5", "5s", "1min 30s", "500ms") in seconds; None if not one."""
    text = text.strip().lower()
    if not text:
        return None
    total, at = 0.0, 0
    for match in _SPAN.finditer(text):
        if text[at:match.start()].strip():
            return None
        unit = match.group(2) or "s"
        if unit not in _UNITS:
            return None
        total += float(match.group(1)) * _UNITS[unit]
        at = match.end()
    return total if text[at:].strip() == "" and at else None


def restart_delay(env: Mapping[str, str] | None = None, unit: str = UNIT) -> RestartDelay | None:
    """The unit's RestartSec=, as systemd would read it, or None when no unit is installed."""
    env = os.environ if env is None else env
    dirs = [Path(d) for d in (env.get("SYSTEMD_UNIT_PATH") or "").split(":") if d] or [
        Path(d) for d in SYSTEM_UNIT_DIRS]
    main = next((d / unit for d in dirs if (d / unit).is_file()), None)
    if main is None:
        return None
    # Drop-ins of every directory, in the order systemd applies them: by file name.
    dropins = sorted({p.name: p for d in reversed(dirs)
                      for p in (d / f"{unit}.d").glob("*.conf")}.items())
    found = RestartDelay(DEFAULT_RESTART_SEC, main)
    for path in [main, *(p for _, p in dropins)]:
        value = _restart_sec(path)
        if value is not None:
            found = RestartDelay(value, path)
    return found


def _restart_sec(path: Path) -> float | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    section, value = "", None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and line.startswith("RestartSec="):
            value = parse_timespan(line.split("=", 1)[1])
    return value
