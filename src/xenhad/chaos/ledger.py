"""The record of a long virtual chaos soak (`xenhad chaos --virtual --ledger FILE`): one
JSON line per finished schedule, appended and flushed as each ends, so that a soak of
100,000 schedules can run in parts (a session, a machine, ends; the next run of the same
command goes on where it stopped) and its summary counts every part.

A schedule is known by its seed and its pool (hosts, self-fencing, BMCs): a run skips those
the ledger holds. A line cut short by a kill is the one schedule that was being written: it
is cut away, and that schedule runs again.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from xenhad.errors import XenhadError


@dataclasses.dataclass(frozen=True)
class Finished:
    """One finished schedule, as the ledger keeps it."""

    seed: int
    hosts: int
    self_fence: bool
    bmc: str
    faults: dict[str, int]
    """Faults injected, by kind."""
    checks: int
    violations: list[str]
    recovered_in: float | None
    """Seconds after the heal until every protected VM ran again (None: not within the
    bound)."""
    virtual_seconds: float
    real_seconds: float
    timeline: list[str] = dataclasses.field(default_factory=list)
    """The faults and key events, kept only with violations (to read them without a
    replay)."""

    @property
    def key(self) -> tuple[int, int, bool, str]:
        return self.seed, self.hosts, self.self_fence, self.bmc

    def line(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> Finished:
        doc: dict[str, Any] = json.loads(text)
        return cls(seed=int(doc["seed"]), hosts=int(doc["hosts"]),
                   self_fence=bool(doc["self_fence"]), bmc=str(doc["bmc"]),
                   faults={str(k): int(v) for k, v in doc["faults"].items()},
                   checks=int(doc["checks"]), violations=[str(v) for v in doc["violations"]],
                   recovered_in=(None if doc["recovered_in"] is None
                                 else float(doc["recovered_in"])),
                   virtual_seconds=float(doc["virtual_seconds"]),
                   real_seconds=float(doc["real_seconds"]),
                   timeline=[str(t) for t in doc.get("timeline", [])])


class Ledger:
    """The schedules finished so far in FILE, and the way to add one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.finished: list[Finished] = []
        self.cut = 0
        """Bytes of a torn last line cut away on opening."""
        text = path.read_bytes() if path.exists() else b""
        whole = text[:text.rfind(b"\n") + 1]
        for number, raw in enumerate(whole.decode().splitlines(), start=1):
            try:
                self.finished.append(Finished.parse(raw))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise XenhadError(
                    f"{path}:{number} is not a finished schedule ({raw[:60]!r}): the ledger "
                    "was written by something else; give another --ledger file") from None
        if len(whole) < len(text):
            self.cut = len(text) - len(whole)
            with path.open("r+b") as f:
                f.truncate(len(whole))
        self._done = {f.key for f in self.finished}

    def holds(self, key: tuple[int, int, bool, str]) -> bool:
        return key in self._done

    def add(self, finished: Finished) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(finished.line() + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.finished.append(finished)
        self._done.add(finished.key)


def summary(finished: Sequence[Finished], *, bound: float) -> list[str]:
    """The soak's report, as Markdown lines: totals, recovery times, faults by kind, and
    each violation with its timeline and the command that replays it."""
    kinds: collections.Counter[str] = collections.Counter()
    for f in finished:
        kinds.update(f.faults)
    real = sum(f.real_seconds for f in finished)
    lines = ["", "| schedules | faults | checks | violations | real s | schedules/hour |",
             "|---|---|---|---|---|---|",
             f"| {len(finished)} | {sum(kinds.values())} | {sum(f.checks for f in finished)} | "
             f"{sum(len(f.violations) for f in finished)} | {real:.1f} | "
             f"{3600 * len(finished) / real if real else 0:.0f} |"]
    shapes = collections.Counter((f.hosts, f.self_fence) for f in finished)
    if len(shapes) > 1:
        lines += ["", "| hosts | self-fence | schedules |", "|---|---|---|"]
        lines += [f"| {h} | {'yes' if s else 'no'} | {n} |" for (h, s), n in sorted(shapes.items())]
    back = sorted(f.recovered_in for f in finished if f.recovered_in is not None)
    if back:
        lines += ["", f"protected VMs all running again after the heal: median "
                  f"{back[len(back) // 2]:.1f}s, slowest {back[-1]:.1f}s (bound {bound:g}s)"]
    lines += ["", "| fault | injected |", "|---|---|"]
    lines += [f"| {kind} | {n} |" for kind, n in sorted(kinds.items())]
    for f in finished:
        if not f.violations:
            continue
        again = f"--hosts {f.hosts}" + (" --self-fence" if f.self_fence else "") + (
            f" --bmc {f.bmc}" if f.bmc != "ok" else "")
        lines += ["", f"VIOLATIONS in schedule seed {f.seed} (replay: xenhad chaos --virtual "
                  f"--replay {f.seed} {again} --trace DIR):"]
        lines += [f"  - {v}" for v in f.violations]
        lines.append("  timeline:")
        lines += [f"    {t}" for t in f.timeline]
    return lines


def count_faults(kinds: Iterable[str]) -> dict[str, int]:
    return dict(sorted(collections.Counter(kinds).items()))
