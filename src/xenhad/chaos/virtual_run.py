"""`xenhad chaos --virtual`: the chaos schedules of chaos/run.py, with the whole pool (every
host's daemon core, its xapi, the network between them, BMCs, watchdogs) in one process on
virtual time (xenhad.virtual), every random choice from the schedule's seed.

The same schedule generator (chaos/schedule.py, with VIRTUAL_KINDS: heartbeat delay,
duplication and reordering, clock jumps, paused daemons, journal write and fsync failures,
xapi restarting mid-call), the same pool and daemon settings as the process chaos, the same
invariants (chaos/checks.py, chaos/placement_checks.py): a VM on two hosts is looked for
after every event of the world (each tick, each step of a call), the other samples every
0.2 s of virtual time as the process chaos does. What differs is only how long it takes:
no process, no socket, no sleep; and a run is a pure function of its seed and the code, so
its trace (every daemon's every log event, stamped with virtual time) is the same bytes
each time: a violation found once is found again by `--replay SEED`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xenhad.chaos import checks, placement_checks
from xenhad.chaos.ledger import Finished, Ledger, count_faults, summary
from xenhad.chaos.run import (
    RECOVERY_BOUND,
    SETTLE_SECONDS,
    Outcome,
    _expected,
    _groups,
    _halted_by_shutdown,
    _healthy,
    _placement_sample,
    _reset_since,
    at_wall,
    pending_end,
    schedule_seed,
)
from xenhad.chaos.schedule import VIRTUAL_KINDS, Fault, generate
from xenhad.sim import PoolSpec
from xenhad.sim.pool import SimPool
from xenhad.testbed import DEFAULT_DAEMON, to_toml
from xenhad.virtual.daemons import Capture, OwnedLoop, Pool, host_config
from xenhad.virtual.loop import VirtualLoop
from xenhad.virtual.net import HeartbeatNetwork, Weather
from xenhad.virtual.world import World

PEER_PORT = 7400
SAMPLE_EVERY = 0.2
SUPERVISE_EVERY = 0.1
"""Seconds of virtual time between two looks of the host's power by its 'systemd'."""

WEATHER = {
    "heartbeat-delay": Weather(delay=(0.05, 1.5)),
    "heartbeat-duplicate": Weather(duplicate=0.3),
    "heartbeat-reorder": Weather(reorder=0.3, reorder_delay=1.0),
}


@dataclasses.dataclass
class VirtualOutcome(Outcome):
    trace: list[str] = dataclasses.field(default_factory=list)
    """Every daemon's log events and the faults, with virtual time: the run's record."""
    virtual_seconds: float = 0.0
    real_seconds: float = 0.0


def config_doc(host: dict[str, Any], *, overrides: dict[str, dict[str, Any]],
               names: Sequence[str], self_fence: bool) -> dict[str, dict[str, Any]]:
    """Testbed.config_for, in process: the same settings, the in-process endpoints."""
    doc: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULT_DAEMON.items()}
    for section, values in overrides.items():
        doc.setdefault(section, {}).update(values)
    doc.setdefault("host", {})["uuid"] = host["uuid"]
    doc["xapi"].update({"socket": host["socket"], "source_address": host["address"]})
    doc["detector"].setdefault("probe_url", "http://{address}:80/")
    doc["daemon"]["state_dir"] = f"/virtual/{host['name']}/state"
    peers = doc.setdefault("peers", {})
    peers.update({"secret_file": "/virtual/pool-secret", "port": PEER_PORT,
                  "listen_port": PEER_PORT})
    peers.setdefault("interval", 0.5)
    peers.setdefault("window", 2.0)
    fencing = doc.setdefault("fencing", {})
    if self_fence:
        fencing.setdefault("self_fence", {"watchdog": "sim", "timeout": 6, "margin": 2.0,
                                          "mode": "required",
                                          "sim_control_url": "http://127.0.0.1:1/"})
    fencing.setdefault("hosts", [
        {"host": name, "chain": ["redfish"], "redfish": {
            "url": f"https://bmc-{name}.invalid", "username": "admin",
            "password_file": "/virtual/bmc-password", "request_timeout": 2.0,
            "off_timeout": 5.0, "poll_interval": 0.3}}
        for name in names])
    return doc


class _Bed:
    """What chaos/run.py's helpers read of a Testbed, over a virtual pool."""

    def __init__(self, pool: Pool) -> None:
        self.vpool = pool
        self.pool: SimPool = pool.world.pool

    def truth(self) -> dict[str, Any]:
        return self.pool.truth()

    def vm_hosts(self) -> dict[str, list[str]]:
        return {vm["name"]: sorted(vm["hosts"]) for vm in self.truth()["vms"]
                if not vm.get("control_domain")}

    def daemon_alive(self, name: str) -> bool:
        # A paused daemon (SIGSTOP) is as silent as a dead one: not a healthy host.
        return self.vpool.running(name)

    def vm_records(self) -> dict[str, dict[str, Any]]:
        with self.pool.lock:
            db = self.pool.master_db()
            result = {}
            for rec in db.tables["VM"].values():
                if rec["is_control_domain"] or rec.get("is_a_template") \
                        or rec.get("is_a_snapshot"):
                    continue
                result[rec["name_label"]] = {
                    "protection": rec["other_config"].get("xenhad")
                    or rec["ha_restart_priority"] or "off"}
            return result

    def events_named(self, event: str) -> list[tuple[str, Any]]:
        return [(n, e) for n, lines in self.vpool.logs.items() for e in lines
                if e.event == event]


def run_one(seed: int, *, hosts: int = 3, bmc: str = "ok", self_fence: bool = False,
            storage: bool = True, faults: list[Fault] | None = None,
            play_for: float = 0.0, kinds: tuple[str, ...] = VIRTUAL_KINDS,
            spec: Mapping[str, Any] | None = None,
            settings: Mapping[str, Mapping[str, Any]] | None = None,
            weather: Mapping[str, Weather] | None = None,
            wire: bool = False) -> VirtualOutcome:
    """One schedule on virtual time: drawn from `seed`, or the given `faults` (a directed
    scenario), played for at least `play_for` seconds before everything is healed.

    A directed scenario (chaos/scenarios.py) may also change the pool (`spec`: PoolSpec
    fields), the daemons' settings (`settings`: config sections over the chaos ones) and
    what a heartbeat fault's spell does (`weather`: by kind, over WEATHER). `wire`: every
    xapi call goes through its XML (World's), as tests/virtual/test_marshal.py compares."""
    names = [f"host{i + 1}" for i in range(hosts)]
    outcome = VirtualOutcome(seed, generate(seed, names, kinds=kinds)
                             if faults is None else faults)
    loop = OwnedLoop()
    started = time.perf_counter()
    try:
        asyncio.set_event_loop(loop)
        pool = loop.run_until_complete(_build(loop, seed, names, self_fence=self_fence,
                                              storage=storage, spec=spec or {},
                                              settings=settings or {}, wire=wire))
        with Capture(pool):
            try:
                loop.run_until_complete(_run(pool, outcome, names, bmc=bmc,
                                             play_for=play_for,
                                             weather={**WEATHER, **(weather or {})}))
            finally:
                outcome.virtual_seconds = loop.time()
                pool.end()
                pool.world.close()
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    outcome.real_seconds = time.perf_counter() - started
    return outcome


async def _build(loop: OwnedLoop, seed: int, names: list[str], *, self_fence: bool,
                 storage: bool, spec: Mapping[str, Any],
                 settings: Mapping[str, Mapping[str, Any]], wire: bool = False) -> Pool:
    """The pool and settings of chaos/run.py's run_one, in process."""
    hosts = len(names)
    pool_spec = PoolSpec(hosts=hosts, vms=hosts * 3, seed=seed % 1000, vm_start_seconds=0.5,
                         fuse_seconds=3.0, boot_seconds=5.0, host_heartbeat_interval=2.0,
                         host_assumed_dead_interval=10.0, db_gc_interval=2.0,
                         local_vms=1 if storage else 0, groups=1 if storage else 0)
    world = World(loop, dataclasses.replace(pool_spec, **spec), random.Random(seed),
                  wire=wire)
    net = HeartbeatNetwork(world, world.fork())
    info = world.pool.info()
    overrides: dict[str, dict[str, Any]] = {"recovery": {"start_timeout": 10.0}}
    for section, values in settings.items():
        overrides.setdefault(section, {}).update(values)
    configs = {h["name"]: host_config(to_toml(config_doc(
        h, overrides=overrides, names=names, self_fence=self_fence))) for h in info["hosts"]}
    return Pool(world, net, configs)


async def _run(pool: Pool, outcome: VirtualOutcome, names: list[str], *, bmc: str,
               play_for: float, weather: Mapping[str, Weather]) -> None:
    world = pool.world
    loop = world.loop
    bed = _Bed(pool)
    trace = pool.trace

    def note(line: str) -> None:
        outcome.timeline.append(line)
        trace.append(f"{loop.time():10.4f} chaos {line}")

    def check_runs() -> None:
        outcome.checks += 1
        for problem in checks.double_runs(world.pool.double_runs()):
            if problem not in outcome.violations:
                outcome.violations.append(problem)
                trace.append(f"{loop.time():10.4f} chaos VIOLATION {problem}")

    for name in names:
        pool.start(name)
    supervisor = loop.create_task(_supervise(pool))
    world.observers.append(check_runs)
    try:
        await _until(lambda: len({n for n, _ in bed.events_named("quorum.gained")})
                     == len(names), 60.0, loop)
        await _play(loop, pool, bed, outcome, names, note, bmc=bmc, play_for=play_for,
                    weather=weather)
    finally:
        supervisor.cancel()
        world.observers.clear()
    outcome.violations += pool.crashes
    outcome.trace = list(trace)


_KEY_EVENTS = ("host.down", "incident.opened", "incident.closed", "failover.promoting",
               "failover.stepping_down", "quorum.lost", "quorum.gained")


async def _supervise(pool: Pool) -> None:
    while True:
        pool.supervise()
        await asyncio.sleep(SUPERVISE_EVERY)


async def _until(predicate: Callable[[], bool], timeout: float, loop: VirtualLoop) -> None:
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"waited {timeout:g} virtual seconds for every daemon in "
                               "contact")
        await asyncio.sleep(SAMPLE_EVERY)


async def _play(loop: VirtualLoop, pool: Pool, bed: _Bed, outcome: VirtualOutcome,
                names: list[str], note: Callable[[str], None], *, bmc: str,
                play_for: float = 0.0, weather: Mapping[str, Weather] = WEATHER) -> None:
    world = pool.world
    samples: list[tuple[float, dict[str, bool]]] = []
    running = bed.vm_hosts()
    protected = {vm for vm, rec in bed.vm_records().items()
                 if rec["protection"] == "restart" and running.get(vm)}
    if bmc != "ok":
        for host in pool.hosts.values():
            host.bmc.mode = bmc
    groups = _groups(bed)  # type: ignore[arg-type]
    homes = {vm: on[0] for vm, on in running.items() if vm.startswith("local") and on}
    placed: list[placement_checks.Sample] = []

    def sample() -> None:
        samples.append((loop.time(), _healthy(bed, names)))  # type: ignore[arg-type]
        placed.append(_placement_sample(bed, groups, loop.time()))  # type: ignore[arg-type]

    started = loop.time()
    pending = list(outcome.faults)
    end = max(pending_end(outcome.faults), play_for)
    while pending or loop.time() - started < end:
        now = loop.time() - started
        while pending and pending[0].at <= now:
            fault = pending.pop(0)
            halted: set[str] = set()
            if fault.kind == "shutdown":
                halted = _halted_by_shutdown(bed, fault.hosts[0]) & protected  # type: ignore[arg-type]
                protected -= halted
            said = _apply(pool, fault, weather)
            note(fault.describe() + said + (
                f" (halts {', '.join(sorted(halted))})" if halted else ""))
            pool.supervise()
            world.observe()
        sample()
        await asyncio.sleep(SAMPLE_EVERY)
    note(f"+{loop.time() - started:5.1f}s heal all, boot all")
    _heal_all(pool, bmc)
    pool.supervise()
    healed = loop.time()
    healed_wall = world.clock.wall()
    while loop.time() < healed + SETTLE_SECONDS:
        sample()
        truth = bed.truth()
        since = loop.time() - healed - _reset_since(truth, healed_wall)
        if outcome.recovered_in is None and not checks.not_running(
                truth, _expected(truth, protected, homes)):
            outcome.recovered_in = since
        if since > RECOVERY_BOUND and outcome.recovered_in is None:
            break
        if not checks.masters(truth) and outcome.recovered_in is not None and since > 15:
            break
        await asyncio.sleep(SAMPLE_EVERY)
    outcome.checks += 4
    outcome.violations += checks.masters(bed.truth())
    outcome.violations += placement_checks.anti_affinity_spread(groups, placed)
    fences = [(at, name) for name, host in pool.hosts.items()
              for at, kind in host.bmc.resets if kind != "On"]
    outcome.violations += checks.healthy_fenced(fences, samples)
    proofs = [(at_wall(e.timestamp), str(e.fields.get("host", "")))
              for _, e in bed.events_named("fence.self_fence_proven")]
    opened = [(at_wall(e.timestamp), str(e.fields.get("host", "")))
              for _, e in bed.events_named("incident.opened")]
    losses = {n: list(h.get("power_losses", [])) for n, h in bed.truth()["hosts"].items()}
    outcome.violations += checks.self_fence_proofs_hold(proofs, opened, losses)
    if outcome.recovered_in is None:
        truth = bed.truth()
        lost = checks.not_running(truth, _expected(truth, protected, homes))
        outcome.violations.append(f"protected VMs not running {RECOVERY_BOUND:g}s after "
                                  f"the heal (and any reset after it): {', '.join(lost)}")
    for name in names:
        lines = pool.logs[name]
        outcome.checks += 3
        outcome.violations += checks.quorum_before_acting(name, lines)
        outcome.violations += checks.no_repeat(name, lines)
    outcome.timeline += [f"{n}: {e.event} {e.fields.get('host', '')}".rstrip()
                         for n, lines in pool.logs.items() for e in lines
                         if e.event in _KEY_EVENTS]


def _apply(pool: Pool, fault: Fault, weather: Mapping[str, Weather] = WEATHER) -> str:
    """Inject one fault; returns a note when the world made it moot."""
    world = pool.world
    sim = world.pool
    loop = world.loop
    truth = sim.truth()["hosts"]
    powered = [n for n, h in truth.items() if h["powered"]]
    kind, hosts = fault.kind, fault.hosts
    if kind in ("crash", "two-crash"):
        for h in hosts:
            sim.crash(h)
            pool.kill(h)
    elif kind == "master-crash":
        master = next((n for n, h in truth.items() if h["is_master"] and h["powered"]), None)
        if master is None:
            return " (no master powered)"
        sim.crash(master)
        pool.kill(master)
        return f" ({master})"
    elif kind == "shutdown":
        sim.shutdown(hosts[0])
        pool.kill(hosts[0])
    elif kind == "boot":
        if hosts[0] in powered:
            return " (already on)"
        sim.boot(hosts[0])
    elif kind == "hang":
        if hosts[0] not in powered:
            return " (off)"
        sim.hang(hosts[0])
    elif kind == "partition":
        sim.partition([list(g) for g in fault.groups])
    elif kind == "one-way-cut":
        sim.cut(hosts[0], hosts[1])
    elif kind == "heal":
        sim.clear_faults()
    elif kind == "latency":
        sim.set_latency(hosts[0], fault.value)
    elif kind == "xapi-errors":
        sim.inject_error(hosts[0], "VM.start", "INTERNAL_ERROR", [], int(fault.value))
    elif kind == "bmc-down":
        pool.hosts[hosts[0]].bmc.mode = "down"
    elif kind == "daemon-kill":
        pool.kill(hosts[0], respawn=True)
    elif kind == "sighup":
        life = pool.hosts[hosts[0]].current
        if life is None or life.daemon is None:
            return " (no daemon)"
        life.daemon.reload()  # what its SIGHUP handler does
    elif kind == "heartbeat-replay":
        return " (not modelled in process)"
    elif kind in weather:
        spell = pool.net.weather = dataclasses.replace(weather[kind])
        loop.call_later(fault.value, _calm, pool, spell)
    elif kind == "clock-jump":
        pool.hosts[hosts[0]].clock.jump_wall(fault.value)
    elif kind == "daemon-pause":
        if not pool.alive(hosts[0]):
            return " (no daemon)"
        pool.pause(hosts[0], fault.value)
    elif kind in ("journal-write", "journal-fsync"):
        disk = pool.hosts[hosts[0]].disk
        op = kind.split("-")[1]
        disk.fail(op)
        loop.call_later(fault.value, disk.heal, op)
    elif kind == "xapi-restart":
        if hosts[0] not in powered:
            return " (off)"
        sim.restart_xapi(hosts[0], fault.value)
    return ""


def _calm(pool: Pool, weather: Weather | None = None) -> None:
    """Fair weather again; a spell's end calms only that spell (a later one runs on)."""
    if weather is None or pool.net.weather is weather:
        pool.net.weather = Weather()


def _heal_all(pool: Pool, bmc: str) -> None:
    sim = pool.world.pool
    sim.clear_faults()
    _calm(pool)
    for name, host in pool.hosts.items():
        host.bmc.mode = bmc
        host.disk.heal()
        host.clock.set_right()  # NTP steps a jumped clock back
        life = host.current
        if life is not None:
            life.paused_until = float("-inf")
        if not sim.truth()["hosts"][name]["powered"]:
            sim.boot(name)


# -- the command ------------------------------------------------------------------------


def mixed(index: int) -> tuple[int, bool]:
    """Schedule `index`'s pool in a mixed run (`--mix`): 3 to 7 hosts in turn, every other
    one self-fencing (tests/virtual/test_chaos_budget.py's shape, with 6 and 7 hosts too);
    the ten pools recur every ten schedules."""
    return 3 + index % 5, index % 2 == 1


@dataclasses.dataclass(frozen=True)
class Planned:
    """One schedule a run is to play: its seed and its pool."""

    seed: int
    hosts: int
    self_fence: bool
    bmc: str

    @property
    def key(self) -> tuple[int, int, bool, str]:
        return self.seed, self.hosts, self.self_fence, self.bmc


def main(*, schedules: int, seed: int, hosts: int, budget_minutes: float, bmc: str,
         replay: Sequence[int] = (), self_fence: bool = False,
         trace: Path | None = None, ledger: Path | None = None, mix: bool = False,
         jobs: int = 1) -> int:
    """`ledger`: skip the schedules it holds, add each one finished, report all it holds
    (chaos/ledger.py). `mix`: pools of `mixed(i)` instead of `hosts` and `self_fence`.
    `jobs`: schedules run side by side, each in a process of its own."""
    _fix_hash_seed()
    seeds = list(replay) or [schedule_seed(seed, i) for i in range(schedules)]
    plan = [Planned(one, *(mixed(i) if mix else (hosts, self_fence)), bmc)
            for i, one in enumerate(seeds)]
    book = Ledger(ledger) if ledger is not None else None
    if book is not None:
        held = sum(book.holds(p.key) for p in plan)
        print(f"ledger {ledger}: {len(book.finished)} schedules finished before, {held} of "
              f"this run's {len(plan)} among them" + (
                  f" (a torn last line of {book.cut} bytes cut away)" if book.cut else ""),
              flush=True)
        plan = [p for p in plan if not book.holds(p.key)]
    started = time.monotonic()
    deadline = started + budget_minutes * 60
    ran: list[Finished] = []
    for finished in _play_all(plan, deadline, trace, jobs):
        ran.append(finished)
        if book is not None:
            book.add(finished)
        mark = "ok" if not finished.violations else \
            f"{len(finished.violations)} VIOLATION(S)"
        back = "" if finished.recovered_in is None else \
            f", VMs back {finished.recovered_in:.1f}s"
        print(f"schedule seed {finished.seed}: {sum(finished.faults.values())} faults, "
              f"{finished.checks} checks{back}, {finished.virtual_seconds:.0f} virtual s in "
              f"{finished.real_seconds:.1f} s, {mark}", flush=True)
    if len(ran) < len(plan):
        print(f"budget of {budget_minutes:g} min spent: {len(ran)} of {len(plan)} run")
    wall = time.monotonic() - started
    if ran:
        print(f"this run: {len(ran)} schedules in {wall:.0f} s, {max(1, jobs)} at a time: "
              f"{3600 * len(ran) / wall:.0f} an hour")
    reported = book.finished if book is not None else ran
    for line in summary(reported, bound=RECOVERY_BOUND):
        print(line)
    return 1 if any(f.violations for f in reported) else 0


def _play_all(plan: Sequence[Planned], deadline: float, trace: Path | None,
              jobs: int) -> Iterator[Finished]:
    """Each planned schedule that starts before `deadline`, as it finishes (at least one)."""
    if jobs <= 1 or len(plan) <= 1:
        for index, planned in enumerate(plan):
            if index and time.monotonic() > deadline:
                return
            yield _play_one(planned, trace)
        return
    # fork: each worker starts from this process, imports done; a schedule is a function
    # of its seed alone, whichever process plays it.
    with multiprocessing.get_context("fork").Pool(jobs) as workers:
        work = [(p, trace, deadline if index else None) for index, p in enumerate(plan)]
        for finished in workers.imap_unordered(_play_in_worker, work):
            if finished is not None:
                yield finished


def _play_in_worker(work: tuple[Planned, Path | None, float | None]) -> Finished | None:
    planned, trace, deadline = work
    if deadline is not None and time.monotonic() > deadline:
        return None
    return _play_one(planned, trace)


def _play_one(planned: Planned, trace: Path | None) -> Finished:
    outcome = run_one(planned.seed, hosts=planned.hosts, bmc=planned.bmc,
                      self_fence=planned.self_fence)
    if trace is not None:
        trace.mkdir(parents=True, exist_ok=True)
        (trace / f"seed-{planned.seed}.trace").write_text("\n".join(outcome.trace) + "\n")
    return Finished(
        seed=planned.seed, hosts=planned.hosts, self_fence=planned.self_fence,
        bmc=planned.bmc, faults=count_faults(f.kind for f in outcome.faults),
        checks=outcome.checks, violations=list(outcome.violations),
        recovered_in=outcome.recovered_in, virtual_seconds=outcome.virtual_seconds,
        real_seconds=outcome.real_seconds,
        timeline=list(outcome.timeline) if outcome.violations else [])


def _fix_hash_seed() -> None:
    """String hashing is randomised per process, and set iteration order with it: a run is
    the same bytes for a seed only with PYTHONHASHSEED fixed. Re-executed once with it."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "xenhad", *sys.argv[1:]])
