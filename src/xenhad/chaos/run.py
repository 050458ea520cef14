"""`xenhad chaos`: run seeded fault schedules against one real daemon per simulated host,
checking the invariants all along, and print what was run and what broke.

Each schedule: a fresh simulated pool and its daemons (Redfish BMC fencing); faults from
its seed for about 24 s while the physical truth is polled every 0.2 s for a VM running
twice; then every fault is healed, every host booted, and the pool given time to settle
before the end-of-run checks: one master, every protected VM running again within
RECOVERY_BOUND of the heal (or of a host's reset after it), quorum before every action, no
repeated incident, no daemon crash. A violation prints its seed: `xenhad chaos --replay
SEED` runs that schedule again and keeps its logs.

Schedules run side by side with `--jobs`: each worker has its own loopback range
(127.1.<worker>.2 and up), so their pools never share an address.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import multiprocessing
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xenhad.chaos import checks, placement_checks
from xenhad.chaos.schedule import KINDS, SELF_FENCE_KINDS, Fault, generate
from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

SETTLE_SECONDS = 60.0
RECOVERY_BOUND = 45.0
"""Seconds after the heal by which every protected VM runs again. The worst paths within
it: a master that died last, so a promotion (3 s fuse) waits for every host to boot (5 s)
and rejoin, then its own incident: fence retries (backoff up to 4 s), reset, starts; a
start lost in a partition, given up after recovery.start_timeout (10 s here) and tried
again."""


@dataclasses.dataclass
class Outcome:
    seed: int
    faults: list[Fault]
    checks: int = 0
    violations: list[str] = dataclasses.field(default_factory=list)
    timeline: list[str] = dataclasses.field(default_factory=list)
    workdir: Path | None = None
    recovered_in: float | None = None
    """Seconds after the heal until every protected VM ran again."""


def schedule_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def run_one(seed: int, *, hosts: int, bmc: str, keep: Path | None,
            faults: list[Fault] | None = None, base_address: str = "127.0.0.2",
            self_fence: bool = False, storage: bool = True) -> Outcome:
    """One schedule: drawn from `seed`, or the given `faults` (a directed scenario)."""
    names = [f"host{i + 1}" for i in range(hosts)]
    kinds = SELF_FENCE_KINDS if self_fence else KINDS
    outcome = Outcome(seed, generate(seed, names, kinds=kinds) if faults is None else faults)
    workdir = (keep / f"seed-{seed}") if keep else Path(tempfile.mkdtemp(prefix="xh-chaos-"))
    outcome.workdir = workdir
    # xapi's own clocks shortened (a host is marked dead after 10 s, not 600 s), so that
    # XAPI's word joins the faults within a schedule's half minute.
    spec = PoolSpec(hosts=hosts, vms=hosts * 3, seed=seed % 1000, vm_start_seconds=0.5,
                    fuse_seconds=3.0, boot_seconds=5.0, host_heartbeat_interval=2.0,
                    host_assumed_dead_interval=10.0, db_gc_interval=2.0,
                    base_address=base_address,
                    # A protected VM on its host's local SR (down until that host is back,
                    # then started there again) and an anti-affinity pair.
                    local_vms=1 if storage else 0, groups=1 if storage else 0)
    # A VM.start lost in a partition is given up after 10 s, not a real boot's 300 s, so
    # that it fits the bound (xapi.timeout stays the testbed's 2 s).
    with Testbed(spec, workdir, overrides={"recovery": {"start_timeout": 10.0}},
                 self_fence=self_fence, watchdog_timeout=6) as bed:
        samples: list[tuple[float, dict[str, bool]]] = []
        bed.wait_for(lambda: len({n for n, _ in bed.events_named("quorum.gained")}) == hosts,
                     60, what="every daemon in contact")
        running = bed.vm_hosts()
        # Protected: xapi's "restart" priority. Best-effort VMs may give up, by design.
        protected = {vm for vm, rec in bed.vm_records().items()
                     if rec["protection"] == "restart" and running.get(vm)}
        if bmc != "ok":
            for name in names:
                bed.bmc_mode(name, bmc)
        groups = _groups(bed)
        homes = {vm: on[0] for vm, on in running.items() if vm.startswith("local") and on}
        placed: list[placement_checks.Sample] = []
        started = time.monotonic()
        pending = list(outcome.faults)
        while pending or time.monotonic() - started < pending_end(outcome.faults):
            now = time.monotonic() - started
            while pending and pending[0].at <= now:
                fault = pending.pop(0)
                halted: set[str] = set()
                if fault.kind == "shutdown":
                    # A clean shutdown halts its VMs on purpose (as xapi's does): they are
                    # the operator's to start again, not ours.
                    halted = _halted_by_shutdown(bed, fault.hosts[0]) & protected
                    protected -= halted
                outcome.timeline.append(fault.describe() + _apply(bed, fault) + (
                    f" (halts {', '.join(sorted(halted))})" if halted else ""))
            _check_runs(bed, outcome)
            samples.append((time.monotonic(), _healthy(bed, names)))
            placed.append(_placement_sample(bed, groups))
            time.sleep(0.2)
        outcome.timeline.append(f"+{time.monotonic() - started:5.1f}s heal all, boot all")
        _heal_all(bed, names, bmc)
        healed, healed_wall = time.monotonic(), time.time()
        while time.monotonic() < healed + SETTLE_SECONDS:
            _check_runs(bed, outcome)
            samples.append((time.monotonic(), _healthy(bed, names)))
            placed.append(_placement_sample(bed, groups))
            truth = bed.truth()
            # A host whose watchdog fires after the heal (it lost quorum before) reboots then,
            # as the others did at the heal: the pool is whole again only once it is back,
            # and the bound counts from its reset (self-fence soak seed 2612008014).
            since = time.monotonic() - healed - _reset_since(truth, healed_wall)
            if outcome.recovered_in is None and not checks.not_running(
                    truth, _expected(truth, protected, homes)):
                outcome.recovered_in = since
            if since > RECOVERY_BOUND and outcome.recovered_in is None:
                break
            if not checks.masters(truth) and outcome.recovered_in is not None and since > 15:
                break
            time.sleep(0.2)
        outcome.checks += 4
        outcome.violations += checks.masters(bed.truth())
        outcome.violations += placement_checks.anti_affinity_spread(groups, placed)
        fences = [(at, name) for name, b in (bed.bmcs.bmcs.items() if bed.bmcs else ())
                  for at, kind in b.resets if kind != "On"]
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


def at_wall(stamp: str | None) -> float:
    """A log line's timestamp (UTC, ISO 8601 with microseconds) as Unix time."""
    if stamp is None:
        return 0.0
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def _expected(truth: dict[str, Any], protected: set[str], homes: dict[str, str]) -> set[str]:
    """The protected VMs that must run again: a VM on its host's local SR only while that
    host is powered (a fence that lands after the heal leaves a host off, and nothing but
    that host can run it; xenhad says so and does not try)."""
    off = {n for n, h in truth["hosts"].items() if not h["powered"]}
    return {vm for vm in protected if homes.get(vm) not in off}


def _groups(bed: Testbed) -> dict[str, tuple[str, ...]]:
    """Anti-affinity groups by name -> their members' names, from the master's database."""
    pool = bed.pool
    with pool.lock:
        db = pool.master_db()
        return {g["name_label"]: tuple(sorted(db.tables["VM"][v]["name_label"]
                                              for v in g["VMs"]))
                for g in db.tables["VM_group"].values() if g["placement"] == "anti_affinity"}


def _placement_sample(bed: Testbed, groups: dict[str, tuple[str, ...]],
                      now: float | None = None) -> placement_checks.Sample:
    """Where each group member runs, and which hosts could take one: powered, xapi up,
    live and enabled in the master's database, in two-way reach of the master, with room."""
    from xenhad.sim.model import host_free_memory, vm_memory

    pool = bed.pool
    members = {m for ms in groups.values() for m in ms}
    with pool.lock:
        master = pool.current_master()
        db = master.db
        need = max((vm_memory(rec) for rec in db.tables["VM"].values()
                    if rec["name_label"] in members), default=0)
        receiving = set()
        for h in pool.hosts:
            rec = db.tables["host"].get(h.ref)
            if rec is None or not (h.powered and h.xapi == "up" and not h.emergency):
                continue
            metrics = db.tables["host_metrics"].get(rec["metrics"])
            if not (rec["enabled"] and metrics and metrics["live"]):
                continue
            if h is not master and (pool.network.blocked(master.uuid, h.uuid)
                                    or pool.network.blocked(h.uuid, master.uuid)):
                continue
            if host_free_memory(db, h.ref) >= need:
                receiving.add(h.name)
        names = {h.uuid: h.name for h in pool.hosts}
        uuids = {rec["uuid"]: rec["name_label"] for rec in db.tables["VM"].values()
                 if rec["name_label"] in members}
        where = {uuids[v]: tuple(sorted(names[u] for u in on))
                 for v, on in pool.domains.items() if v in uuids}
        by_ref = {h.ref: h.name for h in pool.hosts}
        scheduled = {rec["name_label"]: by_ref[rec["scheduled_to_be_resident_on"]]
                     for rec in db.tables["VM"].values()
                     if rec["name_label"] in members
                     and rec["scheduled_to_be_resident_on"] in by_ref}
    at = time.monotonic() if now is None else now
    return placement_checks.Sample(at, where, frozenset(receiving), scheduled)


def _healthy(bed: Testbed, names: list[str]) -> dict[str, bool]:
    """Which hosts are healthy now: powered, their daemon running, and in two-way reach of
    a majority of the pool's hosts whose daemons run (themselves included)."""
    pool = bed.pool
    with pool.lock:
        up = {h.name: h.uuid for h in pool.hosts
              if h.powered and bed.daemon_alive(h.name)}
        reach = {a: sum(1 for b, ub in up.items() if b == a or (
            not pool.network.blocked(ua, ub) and not pool.network.blocked(ub, ua)))
            for a, ua in up.items()}
    return {n: n in up and reach[n] * 2 > len(names) for n in names}


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
    elif kind == "heartbeat-replay" and bed.relay is not None:
        others = [h for h in bed.daemons if h != hosts[0]]
        bed.relay.replay(hosts[0], others, 1.8, since=time.monotonic())
    return ""


def _heal_all(bed: Testbed, names: list[str], bmc: str) -> None:
    bed.pool.clear_faults()
    if bed.relay is not None:
        for name in names:
            bed.relay.stop_replay(name)
    for name in names:
        bed.bmc_mode(name, bmc)
        if not bed.truth()["hosts"][name]["powered"]:
            bed.boot(name)


def main(*, schedules: int, seed: int, hosts: int, budget_minutes: float, bmc: str,
         keep: Path | None, replay: Sequence[int] = (), jobs: int = 1,
         self_fence: bool = False) -> int:
    seeds = list(replay) or [schedule_seed(seed, i) for i in range(schedules)]
    if replay and keep is None:
        keep = Path(tempfile.mkdtemp(prefix="xh-replay-"))
    deadline = time.monotonic() + budget_minutes * 60
    ran: list[Outcome] = []

    def show(outcome: Outcome) -> None:
        ran.append(outcome)
        mark = "ok" if not outcome.violations else f"{len(outcome.violations)} VIOLATION(S)"
        back = "" if outcome.recovered_in is None else f", VMs back {outcome.recovered_in:.1f}s"
        print(f"schedule seed {outcome.seed}: {len(outcome.faults)} faults, "
              f"{outcome.checks} checks{back}, {mark}", flush=True)

    def spent() -> bool:
        return bool(ran) and time.monotonic() > deadline

    if jobs == 1:
        for one in seeds:
            if spent():
                break
            show(run_one(one, hosts=hosts, bmc=bmc, keep=keep, self_fence=self_fence))
    else:
        # Each worker process takes one loopback range for its whole life (_take_slot).
        context = multiprocessing.get_context("spawn")
        slots = context.Queue()
        for slot in range(jobs):
            slots.put(slot)
        with concurrent.futures.ProcessPoolExecutor(
                jobs, mp_context=context, initializer=_take_slot, initargs=(slots,)) as pool:
            todo = iter(seeds)
            running: set[concurrent.futures.Future[Outcome]] = set()
            while True:
                while len(running) < jobs and not spent():
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    running.add(pool.submit(_run_in_slot, nxt, hosts, bmc, keep,
                                            self_fence))
                if not running:
                    break
                done, running = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    show(future.result())
        ran.sort(key=lambda o: seeds.index(o.seed))
    if len(ran) < len(seeds):
        print(f"budget of {budget_minutes:g} min spent: {len(ran)} of {len(seeds)} run")
    _report(ran)
    return 1 if any(o.violations for o in ran) else 0


_slot = 0


def _take_slot(slots: multiprocessing.Queue[int]) -> None:
    global _slot
    _slot = slots.get()


def _run_in_slot(seed: int, hosts: int, bmc: str, keep: Path | None,
                 self_fence: bool) -> Outcome:
    return run_one(seed, hosts=hosts, bmc=bmc, keep=keep, base_address=f"127.1.{_slot}.2",
                   self_fence=self_fence)


def _report(ran: list[Outcome]) -> None:
    kinds = collections.Counter(f.kind for o in ran for f in o.faults)
    print("\n| schedules | faults | checks | violations |\n|---|---|---|---|")
    print(f"| {len(ran)} | {sum(kinds.values())} | {sum(o.checks for o in ran)} | "
          f"{sum(len(o.violations) for o in ran)} |")
    back = sorted(o.recovered_in for o in ran if o.recovered_in is not None)
    if back:
        print(f"\nprotected VMs all running again after the heal: median "
              f"{back[len(back) // 2]:.1f}s, slowest {back[-1]:.1f}s "
              f"(bound {RECOVERY_BOUND:g}s)")
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


def _reset_since(truth: dict[str, Any], healed_wall: float) -> float:
    """Seconds after the heal at which the last host lost its power (a watchdog's reset, a
    crash), 0 if none did."""
    losses = [t for host in truth["hosts"].values() for t in host.get("power_losses", [])
              if t > healed_wall]
    return max(losses, default=healed_wall) - healed_wall


def _halted_by_shutdown(bed: Testbed, host: str) -> set[str]:
    """The VMs a clean shutdown of `host` halts: those whose domain runs there, and those the
    master's database says run there (what xapi-domains shuts down and unprotects), which
    differ while a start or a resync is under way (soak seed 2712008230: a VM resident on
    the host in the database, its domain not yet there, halted on purpose and expected to
    run again)."""
    pool = bed.pool
    names = {vm for vm, on in bed.vm_hosts().items() if on == [host]}
    with pool.lock:
        db = pool.master_db()
        ref = pool.host(host).ref
        names |= {rec["name_label"] for rec in db.tables["VM"].values()
                  if rec["resident_on"] == ref and not rec["is_control_domain"]}
    return names
