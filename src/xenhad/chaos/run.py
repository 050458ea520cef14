"""`xenhad chaos`: run seeded fault schedules against one real daemon per simulated host,
checking the invariants all along, and print what was run and what broke.

Each schedule: a fresh simulated pool and its daemons (Redfish BMC fencing); faults from
its seed for about 24 s while the physical truth is polled every 0.2 s for a VM running
twice; then every fault is healed, every host booted, and the pool given time to settle
before the end-of-run checks (one master, quorum before every action, no repeated
incident, no daemon crash). A violation prints its seed: `xenhad chaos --replay SEED`
runs that schedule again and keeps its logs.
"""

from __future__ import annotations

import collections
import dataclasses
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from xenhad.chaos import checks
from xenhad.chaos.schedule import Fault, generate
from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

SETTLE_SECONDS = 60.0


@dataclasses.dataclass
class Outcome:
    seed: int
    faults: list[Fault]
    checks: int = 0
    violations: list[str] = dataclasses.field(default_factory=list)
    timeline: list[str] = dataclasses.field(default_factory=list)
    workdir: Path | None = None


def schedule_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def run_one(seed: int, *, hosts: int, bmc: str, keep: Path | None,
            faults: list[Fault] | None = None) -> Outcome:
    """One schedule: drawn from `seed`, or the given `faults` (a directed scenario)."""
    names = [f"host{i + 1}" for i in range(hosts)]
    outcome = Outcome(seed, generate(seed, names) if faults is None else faults)
    workdir = (keep / f"seed-{seed}") if keep else Path(tempfile.mkdtemp(prefix="xh-chaos-"))
    outcome.workdir = workdir
    # xapi's own clocks shortened (a host is marked dead after 10 s, not 600 s), so that
    # XAPI's word joins the faults within a schedule's half minute.
    spec = PoolSpec(hosts=hosts, vms=hosts * 3, seed=seed % 1000, vm_start_seconds=0.5,
                    fuse_seconds=3.0, boot_seconds=5.0, host_heartbeat_interval=2.0,
                    host_assumed_dead_interval=10.0, db_gc_interval=2.0)
    with Testbed(spec, workdir) as bed:
        bed.wait_for(lambda: len({n for n, _ in bed.events_named("quorum.gained")}) == hosts,
                     60, what="every daemon in contact")
        if bmc != "ok":
            for name in names:
                bed.bmc_mode(name, bmc)
        started = time.monotonic()
        pending = list(outcome.faults)
        while pending or time.monotonic() - started < pending_end(outcome.faults):
            now = time.monotonic() - started
            while pending and pending[0].at <= now:
                fault = pending.pop(0)
                outcome.timeline.append(fault.describe() + _apply(bed, fault))
            _check_runs(bed, outcome)
            time.sleep(0.2)
        outcome.timeline.append(f"+{time.monotonic() - started:5.1f}s heal all, boot all")
        _heal_all(bed, names, bmc)
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline:
            _check_runs(bed, outcome)
            if not checks.masters(bed.truth()) and time.monotonic() > deadline - 45:
                break
            time.sleep(0.2)
        outcome.checks += 1
        outcome.violations += checks.masters(bed.truth())
        for name in names:
            lines = [line for _, line in bed.events(name)]
            outcome.checks += 3
            outcome.violations += checks.quorum_before_acting(name, lines)
            outcome.violations += checks.no_repeat(name, lines)
            log = bed.daemons[name].log
            text = log.read_text(errors="replace") if log.exists() else ""
            outcome.violations += checks.daemon_crashes(name, text)
        outcome.timeline += [f"{n}: {e.event} {e.fields.get('host', '')}".rstrip()
                             for n, e in bed.events_named_any(_KEY_EVENTS)]
    return outcome


_KEY_EVENTS = ("host.down", "incident.opened", "incident.closed", "failover.promoting",
               "failover.stepping_down", "quorum.lost", "quorum.gained")


def pending_end(faults: Sequence[Fault]) -> float:
    return (faults[-1].at if faults else 0.0) + 2.0


def _check_runs(bed: Testbed, outcome: Outcome) -> None:
    outcome.checks += 1
    for problem in checks.double_runs(bed.pool.double_runs()):
        if problem not in outcome.violations:
            outcome.violations.append(problem)


def _apply(bed: Testbed, fault: Fault) -> str:
    """Inject one fault; returns a note when the world made it moot."""
    pool = bed.pool
    truth = bed.truth()["hosts"]
    powered = [n for n, h in truth.items() if h["powered"]]
    kind, hosts = fault.kind, fault.hosts
    if kind == "crash" or kind == "two-crash":
        for h in hosts:
            bed.crash(h)
    elif kind == "master-crash":
        master = next((n for n, h in truth.items() if h["is_master"] and h["powered"]), None)
        if master is None:
            return " (no master powered)"
        bed.crash(master)
        return f" ({master})"
    elif kind == "shutdown":
        pool.shutdown(hosts[0])
    elif kind == "boot":
        if hosts[0] in powered:
            return " (already on)"
        bed.boot(hosts[0])
    elif kind == "hang":
        if hosts[0] not in powered:
            return " (off)"
        pool.hang(hosts[0])
    elif kind == "partition":
        pool.partition([list(g) for g in fault.groups])
    elif kind == "one-way-cut":
        pool.cut(hosts[0], hosts[1])
    elif kind == "heal":
        pool.clear_faults()
    elif kind == "latency":
        pool.set_latency(hosts[0], fault.value)
    elif kind == "xapi-errors":
        pool.inject_error(hosts[0], "VM.start", "INTERNAL_ERROR", [], int(fault.value))
    elif kind == "bmc-down":
        bed.bmc_mode(hosts[0], "down")
    elif kind == "daemon-kill":
        bed.kill_daemon(hosts[0], respawn=True)
    elif kind == "sighup":
        bed.signal_daemon(hosts[0], signal.SIGHUP)
    return ""


def _heal_all(bed: Testbed, names: list[str], bmc: str) -> None:
    bed.pool.clear_faults()
    for name in names:
        bed.bmc_mode(name, bmc)
        if not bed.truth()["hosts"][name]["powered"]:
            bed.boot(name)


def main(*, schedules: int, seed: int, hosts: int, budget_minutes: float, bmc: str,
         keep: Path | None, replay: int | None) -> int:
    seeds = [replay] if replay is not None else [schedule_seed(seed, i)
                                                 for i in range(schedules)]
    if replay is not None and keep is None:
        keep = Path(tempfile.mkdtemp(prefix="xh-replay-"))
    deadline = time.monotonic() + budget_minutes * 60
    ran: list[Outcome] = []
    for s in seeds:
        if ran and time.monotonic() > deadline:
            print(f"budget of {budget_minutes:g} min spent: {len(ran)} of {len(seeds)} run")
            break
        outcome = run_one(s, hosts=hosts, bmc=bmc, keep=keep)
        ran.append(outcome)
        mark = "ok" if not outcome.violations else f"{len(outcome.violations)} VIOLATION(S)"
        print(f"schedule seed {s}: {len(outcome.faults)} faults, {outcome.checks} checks, "
              f"{mark}", flush=True)
    _report(ran)
    return 1 if any(o.violations for o in ran) else 0


def _report(ran: list[Outcome]) -> None:
    kinds = collections.Counter(f.kind for o in ran for f in o.faults)
    print("\n| schedules | faults | checks | violations |\n|---|---|---|---|")
    print(f"| {len(ran)} | {sum(kinds.values())} | {sum(o.checks for o in ran)} | "
          f"{sum(len(o.violations) for o in ran)} |")
    print("\n| fault | injected |\n|---|---|")
    for kind, n in sorted(kinds.items()):
        print(f"| {kind} | {n} |")
    for o in ran:
        if not o.violations:
            continue
        print(f"\nVIOLATIONS in schedule seed {o.seed} (replay: xenhad chaos --replay "
              f"{o.seed}; logs in {o.workdir}):")
        for v in o.violations:
            print(f"  - {v}")
        print("  timeline:")
        for line in o.timeline:
            print(f"    {line}")
