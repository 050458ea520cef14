"""`xenhad history`: past incidents from this host's journal, as text or JSON.

Safe beside a running daemon: the journal is only read (see tools/history.py), the state-dir
lock is not taken, and files the config names (passwords) are not needed, so not checked.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from xenhad.config import Config, parse
from xenhad.errors import ConfigError
from xenhad.recovery.incident import Settings
from xenhad.tools.history import IncidentReport, VmLine, incidents, read_journal

JOURNAL_NAME = "journal.jsonl"


def run_history(
    config_path: Path,
    *,
    as_json: bool = False,
    host: str | None = None,
    limit: int | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    config = load_config(config_path)
    path = Path(config.daemon.state_dir) / JOURNAL_NAME
    journal = read_journal(path)
    reports, problems = incidents(journal.records, _settings(config))
    problems = journal.problems + problems
    for problem in problems:
        print(f"xenhad history: {problem}", file=err)
    if host is not None:
        reports = [r for r in reports if host in (r.host, r.host_uuid)]
    if limit is not None:
        reports = reports[:limit]
    if as_json:
        document = {
            "journal": str(path),
            "exists": journal.exists,
            "incidents": [to_json(r) for r in reports],
            "problems": problems,
        }
        print(json.dumps(document, indent=2), file=out)
        return 0
    if not journal.exists:
        print(f"no journal at {path}: this host's daemon has recorded no incident", file=out)
    elif not journal.records and not problems:
        print(f"the journal {path} is empty: no incident recorded", file=out)
    elif not reports:
        only = f" for host {host}" if host is not None else ""
        print(f"no incident{only} in the journal {path}", file=out)
    else:
        print("\n\n".join(render(r) for r in reports), file=out)
    return 0


def load_config(path: Path) -> Config:
    """The config, validated as `xenhad run` would, minus the secret files it names."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the config file ({exc.strerror or exc}): pass the daemon's "
            "config with --config FILE"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text: TOML files must be UTF-8") from None
    return parse(text, source=str(path), check_files=False)


def _settings(config: Config) -> Settings:
    # The same knobs the daemon folds with (daemon.py _recovery_settings).
    r = config.recovery
    return Settings(
        best_effort_attempts=r.best_effort_attempts,
        retry_backoff=r.retry_backoff,
        retry_backoff_max=r.retry_backoff_max,
    )


def utc(t: float | None) -> str | None:
    if t is None:
        return None
    try:
        when = datetime.fromtimestamp(t, tz=timezone.utc)
    except (OverflowError, ValueError, OSError):
        return repr(t)  # a hand-edited time beyond what a calendar holds: show it raw
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def to_json(r: IncidentReport) -> dict[str, Any]:
    def vms(lines: Sequence[VmLine], key: str) -> list[dict[str, str]]:
        return [{"vm": v.name, "uuid": v.uuid, **({key: v.detail} if key else {})}
                for v in lines]

    return {
        "id": r.id,
        "host": r.host,
        "host_uuid": r.host_uuid,
        "opened": utc(r.opened),
        "closed": utc(r.closed),
        "took_s": round(r.closed - r.opened, 1) if r.closed is not None else None,
        "phase": r.phase,
        "open": r.is_open,
        "fenced_by": r.fenced_by,
        "unsafe": r.unsafe,
        "note": r.note,
        "evidence": r.evidence,
        "restarted": vms(r.restarted, "host"),
        "failed": vms(r.failed, "error"),
        "not_placed": vms(r.not_placed, "reason"),
        "not_protected": vms(r.not_protected, ""),
        "timeline": [{"at_s": s.at_s, "what": s.what} for s in r.timeline],
    }


def render(r: IncidentReport) -> str:
    closed = (
        f"{utc(r.closed)} (after {r.closed - r.opened:.1f} s)"
        if r.closed is not None else "still open"
    )
    outcome = r.phase + (f": {r.note}" if r.note else "")
    lines = [
        f"incident {r.id}",
        f"  host        {r.host} ({r.host_uuid})",
        f"  opened      {utc(r.opened)}",
        *([f"  why down    {r.evidence}"] if r.evidence else []),
        f"  closed      {closed}",
        f"  outcome     {outcome}",
        f"  fenced by   {r.fenced_by or '-'}"
        + ("  (UNSAFE: trust-liveness, no proof the host was off)" if r.unsafe else ""),
    ]
    for title, vms, sep in (
        ("restarted", r.restarted, " on "),
        ("failed", r.failed, ": "),
        ("not placed", r.not_placed, ": "),
        ("not protected (left alone)", r.not_protected, ""),
    ):
        if vms:
            lines.append(f"  {title} ({len(vms)}):")
            lines.extend(f"    {v.name}{sep + v.detail if v.detail else ''}" for v in vms)
    lines.append("  timeline:")
    for step in r.timeline:
        at = f"{step.at_s:+.1f}s" if step.at_s is not None else "?"
        lines.append(f"    {at:>9}  {step.what}")
    return "\n".join(lines)
