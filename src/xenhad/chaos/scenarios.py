"""Golden scenarios (issue 21, item 4): a failover bug found once becomes a named directory
that a reader can replay and read, as pve-ha-manager's src/test/test-*/ (cmdlist,
log.expect) and Pacemaker's cts/scheduler do.

`tests/scenarios/NAME/` holds:
  faults         the timed faults, one a line as `Fault.describe()` prints them
                 (`+3.0s crash host2`, `+2.0s partition host1,host3 | host2`,
                 `+1.0s heartbeat-delay 8s`); `#` lines are comments, the first one says
                 what the scenario shows and which seed or rule it comes from
  scenario.toml  optional: [pool] (hosts, seed, bmc, self_fence, storage, play_for,
                 schedule = "seed" to draw the faults from the seed as the chaos run does),
                 [spec] (PoolSpec fields), [settings.SECTION] (daemon config over the chaos
                 one), [weather.KIND] (a heartbeat spell's Weather), [expect] defect = "..."
  expected.log   the normalised event log (`normalise`): virtual time, who, a stable event
                 name and the few fields that matter; no uuid, incident id or wall clock

The log of a run is compared with expected.log line by line. A missing expected.log is
written and the check fails, saying so: a golden log is read by a person before it is
trusted. `xenhad scenarios --update` (or XENHAD_GOLDEN_UPDATE=1 under pytest) rewrites
them deliberately.

An open defect (the current code still breaks a rule in the scenario) is recorded as it
happens now: expected.log shows the violation, and scenario.toml's `[expect] defect` says
which defect; the check reports it as expected to fail. A declared defect whose run no
longer violates anything fails the check, so the fix updates its golden log on purpose.
`[expect] violation = "..."` is for a check of the harness itself (a lying BMC): the run must
break a rule, and passes only when it does.

Parsing, normalising and comparing are pure; only `run` and `check`'s file writes do I/O.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from xenhad.chaos.schedule import KINDS, VIRTUAL_KINDS, Fault, generate

FAULTS, SETTINGS, EXPECTED = "faults", "scenario.toml", "expected.log"

KEPT: Mapping[str, tuple[str, ...]] = {
    # event: the fields that tell the story, in this order. Everything else a daemon logs
    # (reasons with timings, uuids, incident ids, statuses) is left out: a golden line
    # changes when what happened changes, not when a sentence is reworded.
    "daemon.starting": (),
    "daemon.crashed": (),
    "quorum.gained": ("sees", "pool"),
    "quorum.lost": ("sees", "pool"),
    "failover.decision": ("role",),
    "failover.master_suspect": ("master",),
    "failover.master_down": ("master",),
    "failover.master_answers": ("master",),
    "failover.voted": ("master", "candidate"),
    "failover.vote_withdrawn": ("master",),
    "failover.agreed": ("master", "candidate", "voters"),
    "failover.promoting": ("master",),
    "failover.promoted": (),
    "failover.promotion_stalled": (),
    "failover.transition_failed": (),
    "failover.rival_promoting": ("hosts",),
    "failover.rival_master": ("masters",),
    "failover.lock_not_held": (),
    "failover.epoch": ("epoch",),
    "failover.lock_taken": ("epoch",),
    "failover.reconciled": ("epoch",),
    "failover.reconcile_waiting": ("hosts",),
    "failover.slaves_recovered": ("told", "not_reached"),
    "failover.stepping_down": ("new_master",),
    "failover.step_down_failed": (),
    "host.suspect": ("host",),
    "host.down": ("host",),
    "host.back": ("host",),
    "host.cleared": ("host",),
    "host.xapi_hung": ("host",),
    "incident.opened": ("host", "mode", "phase", "vms", "protected"),
    "incident.deferred": ("host",),
    "incident.step": ("host", "phase"),
    "incident.waiting_fence": ("host",),
    "incident.parked": ("host",),
    "incident.resuming": ("host",),
    "incident.closed": ("host", "phase", "fenced_by"),
    "fence.off": ("host", "backend"),
    "fence.held": ("host",),
    "fence.failed": ("host",),
    "fence.self_fence_proven": ("host",),
    "vm.restarted": ("vm", "host"),
    "vm.failed": ("vm",),
    "vm.in_doubt": ("vm",),
    "vm.cannot_run_elsewhere": ("vm",),
    "vms.found_halted": (),
    "watchdog.armed": (),
    "watchdog.not_armed": (),
    "watchdog.fed_again": (),
    "watchdog.disarmed": (),
    "journal.unwritable": (),
    "journal.writable": (),
}
"""The events a golden log keeps, each with the fields kept."""

PARALLEL = frozenset({"vm.restarted", "vm.failed", "vm.in_doubt", "vm.cannot_run_elsewhere",
                      "host.suspect", "host.down", "host.back", "host.cleared",
                      "host.xapi_hung"})
"""Events a host logs for things it does side by side: their order within an instant is
the loop's, not the story's."""

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_FAULT = re.compile(r"\+\s*(?P<at>-?[\d.]+)s\s+(?P<kind>[a-z-]+)(?P<rest>.*)")
_VALUE = re.compile(r"-?\d+(?:\.\d+)?s?")


class ScenarioError(ValueError):
    """A scenario directory that cannot be read: the message names the file and line."""


class Verdict(enum.Enum):
    MATCH = "match"
    DEFECT = "open defect, as recorded"
    MISMATCH = "log differs from expected.log"
    DEFECT_GONE = "declared defect no longer shows"
    CAUGHT = "the violation it must show, caught"
    NOT_CAUGHT = "the violation it must show, missing"
    WRITTEN = "expected.log written for review"
    UPDATED = "expected.log rewritten"


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    """The faults file's first comment: what it shows, which seed or rule it comes from."""
    faults: tuple[Fault, ...]
    hosts: int = 3
    seed: int = 1
    bmc: str = "ok"
    self_fence: bool = False
    storage: bool = True
    play_for: float = 20.0
    from_seed: str = ""
    """"virtual" or "process": the faults are the chaos schedule drawn from the seed."""
    spec: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    weather: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    defect: str = ""
    """Set when the scenario shows an open defect: what rule breaks, and where it is told."""
    violation: str = ""
    """Set when the scenario must break a rule: a check of the harness itself (a lying
    BMC), where no violation would mean the checks went blind."""


@dataclasses.dataclass(frozen=True)
class Result:
    verdict: Verdict
    log: list[str]
    violations: list[str]
    diff: str = ""
    seconds: float = 0.0


# -- reading a scenario (pure) ---------------------------------------------------------


def parse_fault(line: str) -> Fault:
    """The inverse of Fault.describe() (its 0.1 s rounding aside)."""
    match = _FAULT.fullmatch(line.strip())
    if match is None:
        raise ScenarioError(f"not a fault: {line.strip()!r} (like '+3.0s crash host2')")
    kind, rest = match["kind"], match["rest"].split()
    if kind not in VIRTUAL_KINDS and kind != "heartbeat-replay":
        raise ScenarioError(f"unknown fault kind {kind!r} in {line.strip()!r}")
    value = 0.0
    if rest and _VALUE.fullmatch(rest[-1]):
        value = float(rest.pop().rstrip("s"))
    text = " ".join(rest)
    hosts: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()
    if "|" in text:
        groups = tuple(tuple(h for h in part.replace(",", " ").split())
                       for part in text.split("|"))
    elif text:
        hosts = tuple(text.replace(",", " ").split())
    return Fault(float(match["at"]), kind, hosts, groups, value)


def parse_faults(text: str) -> tuple[str, tuple[Fault, ...]]:
    """(the first comment, the faults) of a faults file."""
    about = ""
    faults = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            about = about or stripped.lstrip("#").strip()
        elif stripped:
            try:
                faults.append(parse_fault(stripped))
            except ScenarioError as e:
                raise ScenarioError(f"line {number}: {e}") from None
    return about, tuple(sorted(faults, key=lambda f: f.at))


def format_faults(about: str, faults: Iterable[Fault], *, digits: int = 1) -> str:
    """A faults file; `digits` > 1 keeps a drawn schedule's times to the millisecond, so
    a replay of a chaos seed times its faults as the seed did, near enough."""
    def line(f: Fault) -> str:
        _, rest = f.describe().split("s ", 1)
        return f"+{f.at:.{digits}f}s {' '.join(rest.split())}"
    return "".join([f"# {about}\n", *(f"{line(f)}\n" for f in faults)])


def scenario(name: str, faults_text: str, settings_text: str = "") -> Scenario:
    """A scenario from its files' text."""
    about, faults = parse_faults(faults_text)
    if not about:
        raise ScenarioError(f"{name}/{FAULTS}: the first line must be a '#' comment saying "
                            "what the scenario shows and where it comes from")
    try:
        doc = tomllib.loads(settings_text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{name}/{SETTINGS}: {e}") from None
    pool = dict(doc.get("pool", {}))
    known = {"hosts", "seed", "bmc", "self_fence", "storage", "play_for", "schedule"}
    if unknown := set(pool) - known:
        raise ScenarioError(f"{name}/{SETTINGS}: unknown [pool] keys {sorted(unknown)} "
                            f"(known: {', '.join(sorted(known))})")
    schedule = pool.pop("schedule", "")
    if schedule not in ("", "virtual", "process"):
        raise ScenarioError(f"{name}/{SETTINGS}: schedule = {schedule!r}; use 'virtual' or "
                            "'process' (the chaos kinds the seed draws from)")
    if schedule and faults:
        raise ScenarioError(f"{name}: faults drawn from the seed and listed too; keep one")
    return Scenario(name=name, about=about, faults=faults, from_seed=schedule,
                    spec=doc.get("spec", {}), settings=doc.get("settings", {}),
                    weather=doc.get("weather", {}),
                    defect=str(doc.get("expect", {}).get("defect", "")),
                    violation=str(doc.get("expect", {}).get("violation", "")), **pool)


def load(directory: Path) -> Scenario:
    settings = directory / SETTINGS
    return scenario(directory.name, (directory / FAULTS).read_text(),
                    settings.read_text() if settings.exists() else "")


def discover(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob(f"*/{FAULTS}"))


def schedule(s: Scenario) -> list[Fault]:
    """The faults the scenario plays: listed, or drawn as the chaos run draws them."""
    if not s.from_seed:
        return list(s.faults)
    names = [f"host{i + 1}" for i in range(s.hosts)]
    return generate(s.seed, names, kinds=VIRTUAL_KINDS if s.from_seed == "virtual" else KINDS)


# -- the golden log (pure) -------------------------------------------------------------


def fields(text: str) -> dict[str, str]:
    """key=value pairs of a trace line, JSON-quoted values unquoted (virtual/daemons.py
    _render quotes a value with a space in it)."""
    found = {}
    for key, raw in _FIELD.findall(text):
        found[key] = json.loads(raw) if raw.startswith('"') else raw
    return found


def normalise(trace: Sequence[str], violations: Sequence[str] = ()) -> list[str]:
    """The golden lines of a run's trace: `TIME WHO EVENT field=value ...`, time in tenths of
    a virtual second, WHO a host and its daemon's life (host2#1) or `chaos`."""
    lines = []
    seen: set[str] = set()
    roles: dict[str, str] = {}
    for line in trace:
        parts = line.split(maxsplit=4)
        if len(parts) < 3:
            continue
        at, who = float(parts[0]), parts[1]
        if who == "chaos":
            what = " ".join(line.split()[2:])
            if what.startswith("VIOLATION "):
                seen.add(what.removeprefix("VIOLATION "))
            lines.append(_line(at, "chaos", re.sub(r"^\+\s*", "+", what)))
            continue
        if len(parts) < 4 or parts[3] not in KEPT:
            continue
        event, facts = parts[3], fields(parts[4] if len(parts) > 4 else "")
        if event == "failover.decision":
            # Logged when its reason changes; the golden log keeps the role changes only.
            if roles.get(who) == facts.get("role"):
                continue
            roles[who] = facts.get("role", "")
        kept = " ".join(f"{k}={_value(facts[k])}" for k in KEPT[event] if k in facts)
        lines.append(_line(at, who, f"{event} {kept}".rstrip()))
    # Within one tenth of a second, hosts' lines are grouped by host (each host's own order
    # kept): which host's callback the loop ran first at one instant is no part of the
    # story, and a change there should not rewrite half a golden log.
    # Likewise lines of one PARALLEL event from one host in one tenth (two VM starts
    # answering at once) are sorted among themselves: parallel work, not a sequence. Every
    # other line keeps its host's order, the one that tells cause and effect (a role
    # change, an incident's steps).
    lines.sort(key=lambda line: (float(line.split()[0]), line.split()[1]))
    lines = _sort_runs(lines)
    # The end-of-run checks (a healthy host fenced, VMs not back) have no time: last.
    lines += [_line(None, "end", f"VIOLATION {v}") for v in violations if v not in seen]
    return lines


def _sort_runs(lines: list[str]) -> list[str]:
    """Each run of consecutive lines with the same time, who and PARALLEL event, sorted."""
    out: list[str] = []
    run: list[str] = []
    for line in lines:
        key = line.split()[:3]
        if run and (key != run[0].split()[:3] or key[2] not in PARALLEL):
            out += sorted(run)
            run = []
        run.append(line)
    return out + sorted(run)


def _line(at: float | None, who: str, what: str) -> str:
    stamp = "      -" if at is None else f"{at:7.1f}"
    return _UUID.sub("<uuid>", f"{stamp} {who} {what}")


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace(" ", "") if text.startswith(("[", "{")) else (
        text if text and " " not in text else json.dumps(text))


def header(s: Scenario) -> list[str]:
    """What the log was made from, first in expected.log so a diff shows a changed pool."""
    pool = (f"# hosts={s.hosts} seed={s.seed} bmc={s.bmc} self_fence={str(s.self_fence).lower()}"
            f" storage={str(s.storage).lower()} play_for={s.play_for:g}")
    return [f"# {s.name}: {s.about}", pool]


def compare(expected: str, actual: Sequence[str], name: str) -> str:
    """A unified diff of expected.log against this run's lines; empty when they agree."""
    return "".join(difflib.unified_diff(
        expected.splitlines(keepends=True), [f"{line}\n" for line in actual],
        f"{name}/{EXPECTED}", f"{name} (this run)"))


def verdict(s: Scenario, diff: str, violations: Sequence[str]) -> Verdict:
    """MATCH with violations is still a failure for the caller: a rule broken in a
    scenario that does not declare it as an open defect."""
    if diff:
        return Verdict.MISMATCH
    if s.violation:
        return Verdict.CAUGHT if violations else Verdict.NOT_CAUGHT
    if s.defect:
        return Verdict.DEFECT if violations else Verdict.DEFECT_GONE
    return Verdict.MATCH


# -- running (I/O) ---------------------------------------------------------------------


def run(s: Scenario) -> tuple[list[str], list[str], float]:
    """(golden lines, violations, real seconds) of one run of the scenario."""
    from xenhad.chaos.virtual_run import run_one
    from xenhad.virtual.net import Weather

    outcome = run_one(s.seed, hosts=s.hosts, bmc=s.bmc, self_fence=s.self_fence,
                      storage=s.storage, faults=schedule(s), play_for=s.play_for,
                      spec=s.spec, settings=s.settings,
                      weather={kind: _weather(Weather, spell)
                               for kind, spell in s.weather.items()})
    lines = header(s) + normalise(outcome.trace, outcome.violations)
    return lines, list(outcome.violations), outcome.real_seconds


def _weather(kind: Any, spell: Mapping[str, Any]) -> Any:
    """A Weather from its TOML table (a delay is a two-item array there)."""
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in spell.items()})


def check(directory: Path, *, update: bool = False) -> Result:
    """Run the scenario in `directory` and compare (or write) its expected.log."""
    s = load(directory)
    lines, violations, seconds = run(s)
    golden = directory / EXPECTED
    text = "".join(f"{line}\n" for line in lines)
    if update or not golden.exists():
        written = golden.exists()
        golden.write_text(text)
        return Result(Verdict.UPDATED if written else Verdict.WRITTEN, lines, violations,
                      seconds=seconds)
    diff = compare(golden.read_text(), lines, s.name)
    return Result(verdict(s, diff, violations), lines, violations, diff, seconds)


def failing(result: Result, *, update: bool) -> bool:
    """Whether a check's result fails the run: a log that differs, a declared defect gone,
    a harness check gone blind, a rule broken undeclared, or a golden log just written
    (unless writing them was the point)."""
    if result.verdict in (Verdict.MISMATCH, Verdict.DEFECT_GONE, Verdict.NOT_CAUGHT):
        return True
    if update:
        return False
    return result.verdict is Verdict.WRITTEN or (result.verdict is Verdict.MATCH
                                                 and bool(result.violations))


def main(root: Path, names: Sequence[str] = (), *, update: bool = False) -> int:
    """`xenhad scenarios`: every scenario under `root` (or those named), one line each."""
    dirs = [d for d in discover(root) if not names or d.name in names]
    if names and (missing := set(names) - {d.name for d in dirs}):
        print(f"no such scenario under {root}: {', '.join(sorted(missing))}")
        return 2
    failed = 0
    total = 0.0
    for directory in dirs:
        result = check(directory, update=update)
        total += result.seconds
        print(f"{directory.name}: {result.verdict.value} ({result.seconds:.1f} s)", flush=True)
        if result.verdict is Verdict.MISMATCH:
            print(result.diff)
        elif result.violations and result.verdict not in (Verdict.DEFECT, Verdict.CAUGHT):
            print("\n".join(f"  {v}" for v in result.violations))
        failed += failing(result, update=update)
    print(f"{len(dirs)} scenarios, {failed} failing, {total:.1f} s of runs")
    return 1 if failed else 0
