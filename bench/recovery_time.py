"""Time to recover, by phase, against the floor configuration and physics allow.

Run: .venv/bin/python bench/recovery_time.py [--pools 3x10 16x200] [--vm-start 2.0]
         [--flat] [--concurrency N] [--tick SECONDS] [--heartbeat SECONDS]
         [--contact-seconds S] [--xapi-timeout S] [--crash slave|master|both]
One real daemon per simulated host (the testbed's settings: tick 0.5 s, heartbeats every
0.5 s, a host confirmed down after 3 misses spanning 2 s; for big pools `--tick T` makes
the confirmation span 4T and `--heartbeat H` the heartbeats' window 4H), Redfish fencing
through each host's simulated BMC, a modelled VM start time. A slave crash and a master
crash per pool.

Floor = detection threshold + fence time (0 here: a simulated BMC answers at once) + one VM
start (the modelled start: a VM's start_delay is slept inside VM.start after its domain
runs, so it delays only what starts after it), plus, for a master crash, xapi's own
restarts: the new master's after emergency_transition_to_master (Xapi_fuse), then each
slave's after pool.recover_slaves told it the new master (xapi_pool.ml
emergency_reset_master restarts xapi to take it into account), since no VM of the old
master is reset before the slaves have rejoined and said what they run. The detection
threshold is the silence a host needs before its first miss (a round trip of echoes:
daemon.heard_within) plus confirm_seconds, less how long before the crash the silence may
have begun: the victim's last proven contact can lie up to two heartbeat intervals and a
read batch before it (`contact_lag`; one interval for the code from before echoes), and the
floor takes the luckiest case. The "waves" floor is what the VMs'
configuration allows on top: restart-priority VMs before best-effort ones, each `order`
after the last (xapi_ha_vm_failover.ml), at most recovery.concurrency starts at a time,
each start taking the modelled start plus the VM's start_delay, but for the last round's,
whose domains run before their delays are slept. `--flat` gives every VM order 0, no
start_delay and, if protected at all, the restart priority, so that with `--concurrency` at
least the VMs lost only the mechanism stands between the crash and the floor. "xapi HA's
restart" is what native HA would take to restart the same VMs once it has decided, from the
same starts: restart_auto_run_vms (xapi_ha_vm_failover.ml) starts one VM after another.
Phases are seconds after the crash, read from the daemons' own log lines. Prints numbers;
asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenhad.peers.link import batch_seconds
from xenhad.sim import PoolSpec
from xenhad.testbed import DEFAULT_DAEMON, Testbed

try:
    from xenhad.daemon import heard_within

    def contact_lag(interval: float) -> float:
        """How long before the crash the victim's last proven contact may lie: its last
        heartbeat, sent at most an interval before it died, echoes the newest of ours it had
        read, sent at most an interval and a batch before that (peers/table.py)."""
        return 2 * interval + batch_seconds(interval)
except ImportError:  # the code from before issue 18, measured for comparison
    def heard_within(interval: float) -> float:
        return 2 * interval + 0.1

    def contact_lag(interval: float) -> float:
        """Contact was stamped on arrival: the victim's last heartbeat arrived at most an
        interval before it died."""
        return interval

FUSE = 3.0
XAPI_RESTART = 2.0


@dataclass(frozen=True)
class Settings:
    tick: float
    heartbeat: float
    concurrency: int
    flat: bool
    contact_seconds: float = 180.0
    xapi_timeout: float = float(DEFAULT_DAEMON["xapi"]["timeout"])
    confirm_seconds: float | None = None
    """None: 4 ticks (the testbed's proportion)."""
    window: float | None = None
    """None: 4 heartbeat intervals."""
    probe_timeout: float | None = None
    watchdog: int = 0
    """The self-fence watchdog's timeout, 0: none. With it, the victim's BMC dies with it
    (a total power loss), so the watchdog's deadline is the only proof of power-off."""
    margin: float = 15.0

    @property
    def confirm(self) -> float:
        return 4 * self.tick if self.confirm_seconds is None else self.confirm_seconds

    @property
    def heartbeat_window(self) -> float:
        return 4 * self.heartbeat if self.window is None else self.window

    @property
    def proof(self) -> float:
        """With the watchdog alone: from the last contact, the window (every feed is at most
        that after it), up to a round trip of echoes (how stale a peer's report may be,
        peers/table.py latest_feed), the timeout and the margin. Else 0: a simulated BMC
        answers at once."""
        if not self.watchdog:
            return 0.0
        # The deadline runs from the victim's last heartbeat heard (table.evidence), which
        # arrived at most an interval before the crash.
        return (self.heartbeat_window + heard_within(self.heartbeat) + self.watchdog
                + self.margin - self.heartbeat)

    @property
    def detection(self) -> float:
        """The silence before a host is confirmed down: no proven contact for
        daemon.heard_within (a round trip of echoes) makes a miss, misses for
        confirm_seconds a confirmation."""
        return heard_within(self.heartbeat) + self.confirm - contact_lag(self.heartbeat)

    def overrides(self) -> dict[str, dict[str, Any]]:
        probe = min(0.8 * self.tick, 1.5) if self.probe_timeout is None else self.probe_timeout
        overrides: dict[str, dict[str, Any]] = {
            "detector": {"interval": self.tick, "confirm_seconds": self.confirm,
                         "probe_timeout": probe},
            "peers": {"interval": self.heartbeat, "window": self.heartbeat_window},
            "recovery": {"concurrency": self.concurrency},
            "xapi": {"timeout": self.xapi_timeout},
        }
        return overrides


PRODUCTION = dict(tick=2.0, heartbeat=1.0, confirm_seconds=10.0, window=4.0, probe_timeout=1.5,
                  xapi_timeout=10.0)
"""etc/xenhad.toml's defaults (with self-fencing: its example, timeout 60, margin 15)."""


DEFAULTS = Settings(tick=float(DEFAULT_DAEMON["detector"]["interval"]), heartbeat=0.5,
                    concurrency=int(DEFAULT_DAEMON["recovery"]["concurrency"]), flat=False)
assert DEFAULTS.confirm == DEFAULT_DAEMON["detector"]["confirm_seconds"]


def at(stamp: str | None) -> float:
    assert stamp is not None
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def first(bed: Testbed, event: str, since: float) -> float | None:
    found = [t for _, e in bed.events_named(event) if (t := at(e.timestamp)) >= since]
    return min(found) if found else None


def wave_key(rank: int, order: int) -> tuple[int, bool, int]:
    """Restart before best-effort, then `order` ascending with negative orders last."""
    return (rank, order < 0, order)


def flatten(bed: Testbed) -> None:
    """Every VM in one `order`, with no start_delay and, if protected, the restart priority,
    in every host's copy of the database."""
    with bed.pool.lock:
        for host in bed.pool.hosts:
            for ref, rec in host.db.tables["VM"].items():
                host.db.set(ref, "order", 0)
                host.db.set(ref, "start_delay", 0)
                if rec.get("ha_restart_priority") == "best-effort":
                    # As VM.set_ha_restart_priority does (xapi_vm.ml): "restart" runs always.
                    host.db.set(ref, "ha_restart_priority", "restart")
                    host.db.set(ref, "ha_always_run", rec.get("power_state") == "Running")
                other = dict(rec.get("other_config") or {})
                if other.get("xenhad") == "best-effort":
                    host.db.set(ref, "other_config", {**other, "xenhad": "restart"})


def run(hosts: int, vms: int, vm_start: float, victim: str,
        settings: Settings) -> dict[str, float | None]:
    spec = PoolSpec(hosts=hosts, vms=vms, seed=4, vm_start_seconds=vm_start,
                    fuse_seconds=FUSE, xapi_restart_seconds=XAPI_RESTART, boot_seconds=600.0)
    workdir = Path(tempfile.mkdtemp(prefix="xh-bench-"))
    overrides = settings.overrides()
    margin: dict[str, Any] = {}
    if "self_fence_margin" in inspect.signature(Testbed).parameters:
        margin["self_fence_margin"] = settings.margin
    elif settings.watchdog:  # the testbed from before issue 18 sets a margin of 2 s
        raise SystemExit("recovery_time: this testbed cannot set the self-fence margin")
    with Testbed(spec, workdir, overrides=overrides, self_fence=bool(settings.watchdog),
                 watchdog_timeout=settings.watchdog or 6, **margin) as bed:
        bed.wait_for(lambda: len({n for n, _ in bed.events_named("quorum.gained")}) == hosts,
                     settings.contact_seconds, what="every daemon in contact")
        if settings.flat:
            flatten(bed)
        time.sleep(2 + 2 * settings.tick)
        hosts_of = bed.vm_hosts()
        records = bed.vm_records()
        lost = [vm for vm, rec in records.items()
                if hosts_of.get(vm) == [victim] and rec["protection"] != "off"]
        db = {r["name_label"]: r for r in bed.pool.master_db().tables["VM"].values()}
        delays = {vm: float(int(db[vm].get("start_delay", 0) or 0)) for vm in lost}
        waves: dict[tuple[int, bool, int], list[float]] = {}
        for vm in lost:
            rank = 0 if records[vm]["protection"] == "restart" else 1
            waves.setdefault(wave_key(rank, int(db[vm].get("order", 0) or 0)),
                             []).append(delays[vm])
        if settings.watchdog:
            bed.wait_for(lambda: all(h["watchdog_deadline"] is not None
                                     for h in bed.truth()["hosts"].values()),
                         60, what="every watchdog armed")
        crashed = time.time()
        if settings.watchdog:
            bed.power_loss(victim)
        else:
            bed.crash(victim)

        def back() -> bool:
            now = bed.vm_hosts()
            return all(now.get(vm) and victim not in now[vm] for vm in lost)

        bed.wait_for(back, 300 + settings.proof, what="every protected VM back", step=0.1)
        done = time.time()
        bed.wait_for(lambda: bool(bed.events_named("incident.closed")), 60,
                     what="incident closed")
        fenced = [at(e.timestamp) for _, e in bed.events_named("incident.step")
                  if e.fields.get("phase") == "resetting"]
        phases: dict[str, float | None] = {
            "detected": first(bed, "failover.master_suspect" if victim == "host1"
                              else "host.suspect", crashed),
            "confirmed": first(bed, "failover.master_down" if victim == "host1"
                               else "host.down", crashed),
            "promoted": first(bed, "failover.promoted", crashed),
            "slaves recovered": first(bed, "failover.slaves_recovered", crashed),
            "fenced": min(fenced) if fenced else None,
            "last VM running": done,
        }
        result = {k: (None if v is None else round(v - crashed, 2)) for k, v in phases.items()}
        result["VMs"] = float(len(lost))
        result["slowest start"] = vm_start if lost else 0.0
        ordered = [waves[k] for k in sorted(waves)]
        result["waves"] = sum(
            math.ceil(len(w) / settings.concurrency) * (vm_start + max(w)) for w in ordered
        ) - (max(ordered[-1]) if ordered else 0.0)
        # One after another, in the same order: every start but the last one's delay.
        one_by_one = [d for w in ordered for d in sorted(w)]
        result["sequential"] = sum(vm_start + d for d in one_by_one) - (
            one_by_one[-1] if one_by_one else 0.0)
        return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pools", nargs="+", default=["3x10", "16x200"],
                    help="HOSTSxVMS, e.g. 64x1000")
    ap.add_argument("--vm-start", type=float, default=2.0)
    ap.add_argument("--flat", action="store_true",
                    help="every VM order 0 and no start_delay")
    ap.add_argument("--concurrency", type=int, default=DEFAULTS.concurrency)
    ap.add_argument("--tick", type=float, default=DEFAULTS.tick,
                    help="detector tick; a host is confirmed down after 4 ticks of misses")
    ap.add_argument("--heartbeat", type=float, default=DEFAULTS.heartbeat,
                    help="peers' heartbeat interval")
    ap.add_argument("--contact-seconds", type=float, default=DEFAULTS.contact_seconds,
                    help="how long the daemons may take to be all in contact")
    ap.add_argument("--xapi-timeout", type=float, default=DEFAULTS.xapi_timeout,
                    help="xapi.timeout (production: 10)")
    ap.add_argument("--crash", choices=["slave", "master", "both"], default="both",
                    help="which host to crash in each pool")
    ap.add_argument("--production", action="store_true",
                    help="etc/xenhad.toml's defaults: tick 2 s, confirmed after 10 s, heartbeats "
                    "every 1 s in a 4 s window, probes 1.5 s, xapi.timeout 10 s")
    ap.add_argument("--proof", choices=["bmc", "watchdog"], default="bmc",
                    help="watchdog: self-fencing on, and the victim loses its BMC with its "
                    "power, so only its watchdog's deadline proves it off")
    ap.add_argument("--watchdog", type=int, default=60, help="self_fence.timeout (--proof "
                    "watchdog)")
    ap.add_argument("--margin", type=float, default=15.0, help="self_fence.margin")
    args = ap.parse_args()
    base: dict[str, Any] = dict(tick=args.tick, heartbeat=args.heartbeat,
                                xapi_timeout=args.xapi_timeout)
    if args.production:
        base = dict(PRODUCTION)
    settings = Settings(**base, concurrency=args.concurrency, flat=args.flat,
                        contact_seconds=args.contact_seconds,
                        watchdog=args.watchdog if args.proof == "watchdog" else 0,
                        margin=args.margin)
    print(f"tick {settings.tick:g} s, heartbeats every {settings.heartbeat:g} s, confirmed "
          f"after {settings.confirm:g} s of misses (detection threshold "
          f"{settings.detection:g} s), concurrency {settings.concurrency}, "
          f"{'flat' if settings.flat else 'seeded'} order and start_delay, VM start "
          f"{args.vm_start:g} s, proof of power-off: "
          + (f"the watchdog alone ({settings.watchdog} s + margin {settings.margin:g} s)"
             if settings.watchdog else "the BMC") + "\n")
    cols = ["detected", "confirmed", "promoted", "slaves recovered", "fenced",
            "last VM running"]
    print("| crash | pool | VMs to restart | " + " | ".join(cols)
          + " | floor | ratio | waves floor | ratio | xapi HA's restart |")
    print("|---" * (len(cols) + 8) + "|")
    for pool in args.pools:
        hosts, vms = (int(x) for x in pool.split("x"))
        for victim, kind in (("host2", "slave"), ("host1", "master")):
            if args.crash not in (kind, "both"):
                continue
            try:
                r = run(hosts, vms, args.vm_start, victim, settings)
            except TimeoutError as exc:
                raise SystemExit(f"recovery_time: {kind} crash, {hosts} hosts: {exc}; give "
                                 "them longer with --contact-seconds") from None
            # With the watchdog alone, the proof runs from the last contact, in parallel
            # with detection (and promotion): whichever ends last.
            fixed = max(settings.detection + (FUSE + XAPI_RESTART if kind == "master" else 0.0),
                        settings.proof)
            floor = fixed + (r["slowest start"] or 0.0)
            waves = fixed + (r["waves"] or 0.0)
            total = r["last VM running"] or float("nan")
            cells = " | ".join("-" if r[c] is None else f"{r[c]:.1f}" for c in cols)
            print(f"| {kind} | {hosts} hosts, {vms} VMs | {int(r['VMs'] or 0)} | {cells} | "
                  f"{floor:.1f} | {total / floor:.2f}x | {waves:.1f} | {total / waves:.2f}x | "
                  f"{r['sequential'] or 0.0:.1f} |", flush=True)


if __name__ == "__main__":
    main()
