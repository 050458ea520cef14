"""The invariants, read from what happened: the simulator's physical truth and the daemons'
own log lines. Each returns the violations it found, one line each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from xenhad.log import LogLine


def double_runs(found: list[dict[str, Any]]) -> list[str]:
    return [f"VM {d.get('name') or d.get('uuid')} runs on {', '.join(d.get('hosts', []))}"
            for d in found]


def masters(truth: dict[str, Any]) -> list[str]:
    """Once the pool has settled (healed, every host up): one master, followed by all."""
    powered = {n: h for n, h in truth["hosts"].items() if h["powered"]}
    acting = sorted(n for n, h in powered.items() if h["is_master"])
    followed = sorted({h["believes_master"] for h in powered.values()})
    if len(acting) == 1 and followed == acting:
        return []
    state = "; ".join(f"{n}: xapi {h['xapi']}, follows {h['believes_master']}"
                      + (", emergency" if h.get("emergency") else "")
                      for n, h in sorted(powered.items()))
    return [f"after settling: masters {acting or 'none'}, hosts follow {followed} ({state})"]


def not_running(truth: dict[str, Any], protected: Iterable[str]) -> list[str]:
    """The protected VMs (by name) that no host runs."""
    where = {vm["name"]: vm["hosts"] for vm in truth["vms"]}
    return sorted(name for name in protected if not where.get(name))


def quorum_before_acting(name: str, lines: Iterable[LogLine]) -> list[str]:
    """No promotion, and no incident, from a daemon that was not quorate at that moment."""
    quorate = False
    problems = []
    for line in lines:
        if line.event == "daemon.starting":
            quorate = False
        elif line.event == "quorum.gained":
            quorate = True
        elif line.event == "quorum.lost":
            quorate = False
        elif line.event in ("incident.opened", "failover.promoting") and not quorate:
            problems.append(f"{name}: {line.event} at {line.timestamp} without quorum")
    return problems


def no_repeat(name: str, lines: Iterable[LogLine]) -> list[str]:
    """One daemon opens at most one incident per host per down episode."""
    open_for: set[str] = set()
    problems = []
    for line in lines:
        host = str(line.fields.get("host", ""))
        if line.event == "daemon.starting":
            open_for.clear()  # a restarted daemon resumes from its journal, not from memory
        elif line.event == "host.back":
            open_for.discard(host)
        elif line.event == "incident.opened" and line.fields.get("mode") != "offline":
            # (Offline VMs found halted belong to no down host: see recovery/offline.py.)
            if host in open_for:
                problems.append(f"{name}: a second incident for {host} at {line.timestamp} "
                                "while it stayed down")
            open_for.add(host)
    return problems


def daemon_crashes(name: str, text: str) -> list[str]:
    if "Traceback (most recent call last)" in text:
        first = next(ln for ln in text.splitlines() if ln.startswith("Traceback"))
        return [f"{name}: a daemon raised ({first[:80]}...)"]
    return []


HEALTHY_FOR = 4.0
"""Seconds a host must have been healthy before a fence of it counts as a healthy host
fenced: time for heartbeats to bring the news of a heal, and for a fence already under way
to have been decided on before it."""


def healthy_fenced(
    fences: Iterable[tuple[float, str]], samples: list[tuple[float, dict[str, bool]]],
) -> list[str]:
    """Fences (time, host) of a host that was healthy all the HEALTHY_FOR seconds before:
    powered, its daemon running and in two-way reach of a majority of the pool's running
    daemons (`samples`: when, and which hosts were so). Such a host runs its VMs and is
    heard; fencing it kills them (issue 18)."""
    found = []
    for at, host in fences:
        window = [ok.get(host, False) for t, ok in samples if at - HEALTHY_FOR <= t <= at]
        if len(window) >= 5 and all(window):
            found.append(f"healthy host fenced: {host} was up, heartbeating and in reach of "
                         f"a majority for {HEALTHY_FOR:g}s before its BMC switched it off")
    return found


DETECTION_BOUND = 30.0
"""Seconds from a host's going down to its incident's opening, at most, in a schedule."""


def self_fence_proofs_hold(
    proofs: Iterable[tuple[float, str]], opened: Iterable[tuple[float, str]],
    power_losses: dict[str, list[float]],
) -> list[str]:
    """Each time a daemon took a host's watchdog deadline as proof of power-off (`proofs`:
    wall time, host), the host really went down after its incident opened and before then:
    a reset by its watchdog never counts as a fence before it happened (issue 18), whatever
    the network delayed or replayed (issue 24). `opened`: incident.opened (time, host)."""
    found = []
    opened_at: dict[str, list[float]] = {}
    for at, host in opened:
        opened_at.setdefault(host, []).append(at)
    for at, host in proofs:
        since = max((t for t in opened_at.get(host, []) if t <= at), default=None)
        if since is None:
            continue  # an offline incident or a resumed one: nothing to compare with
        # Down shortly before its incident opened counts: a crash is what opens one (within
        # the detection time, far under DETECTION_BOUND in a schedule's settings).
        down = [t for t in power_losses.get(host, [])
                if since - DETECTION_BOUND <= t <= at + 0.5]
        if not down:
            found.append(f"{host} was taken for reset by its watchdog at {at:.1f} but never "
                         "went down")
    return found
