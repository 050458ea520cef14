"""`xenhad demo`: a simulated pool with a real daemon per host loses a slave and recovers.

Everything here is real but the hardware: XAPI semantics come from the simulator, every
daemon is a separate `xenhad run` process talking XML-RPC over its host's local socket.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from xenhad.log import LogLine
from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

# The log events a reader of the timeline cares about, and how to say each in a line.
_TIMELINE = {
    "host.suspect": lambda f: f"{f.get('host')} missed a tick ({f.get('reason')})",
    "host.down": lambda f: f"{f.get('host')} confirmed down after {f.get('misses')} missed ticks",
    "incident.opened": lambda f: (
        f"incident {f.get('incident')}: {f.get('vms')} VMs were on {f.get('host')}, "
        f"{f.get('protected')} protected"
    ),
    "incident.step": lambda f: f"incident step: {f.get('phase')}",
    "fence.off": lambda f: (
        f"{f.get('host')} fenced: {f.get('backend')} says the power is off "
        f"({f.get('elapsed_s')} s)"
    ),
    "fence.chain_failed": lambda f: f"could not prove {f.get('host')} off: {f.get('tried')}",
    "incident.waiting_fence": lambda f: f"waiting for proof {f.get('host')} is off: {f.get('why')}",
    "vm.restarted": lambda f: f"{f.get('vm')} running again on {f.get('host')}",
    "vm.failed": lambda f: f"{f.get('vm')} could not be restarted: {f.get('why')}",
    "incident.closed": lambda f: (
        f"incident closed ({f.get('phase')}) in {f.get('took_s')} s: "
        f"{len(f.get('restarted') or {})} restarted, {len(f.get('failed') or {})} failed"
    ),
}


def run_demo(
    *, hosts: int = 3, vms: int = 8, seed: int = 7, keep: Path | None = None,
    out: TextIO = sys.stdout,
) -> int:
    workdir = keep or Path(tempfile.mkdtemp(prefix="xenhad-demo-"))
    spec = PoolSpec(hosts=hosts, vms=vms, seed=seed, vm_start_seconds=1.0)
    say = _Printer(out)
    say.line(f"xenhad demo: a {hosts}-host simulated pool, {vms} VMs, one xenhad per host")
    try:
        with Testbed(spec, workdir) as bed:
            return _scenario(bed, say)
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say.line(f"configs, journals and daemon logs kept in {workdir}")


def _scenario(bed: Testbed, say: _Printer) -> int:
    names = {h["uuid"]: h["name"] for h in bed.info["hosts"]}
    master = names[bed.info["master"]]
    bed.wait_for(lambda: _all_ready(bed), 60, what="every daemon to report ready")
    before = bed.vm_hosts()
    protection = _protection(bed)
    say.line(f"pool master: {master}; daemons ready on {', '.join(sorted(bed.daemons))}")
    victim = _victim(before, protection, master)
    on_victim = sorted(vm for vm, hs in before.items() if hs == [victim])
    say.line(f"{victim} runs {', '.join(on_victim) or 'no VM'}")
    say.line("")
    say.line(f"crashing {victim}: its power goes off, its VMs die with it")
    say.start()
    bed.crash(victim)
    seen = 0
    deadline = time.monotonic() + 90
    closed = False
    while time.monotonic() < deadline and not closed:
        events = bed.events_named_any(_TIMELINE)
        for host, line in events[seen:]:
            say.event(host, line)
            closed = closed or line.event == "incident.closed"
        seen = len(events)
        time.sleep(0.2)
    say.line("")
    after = bed.vm_hosts()
    doubles = bed.pool.double_runs()
    say.table(before, after, protection, victim)
    if doubles:
        say.line(f"FAILURE: {len(doubles)} VM(s) ran on two hosts at once: {doubles}")
        return 1
    if not closed:
        say.line("FAILURE: the incident did not close within 90 s; see the daemon logs")
        return 1
    lost = [vm for vm in on_victim if protection.get(vm) != "off" and not after.get(vm)]
    if lost:
        say.line(f"FAILURE: protected VMs still down: {', '.join(lost)}")
        return 1
    say.line("no VM ever ran on two hosts; every protected VM of the dead host runs again")
    say.line("")
    _list_messages(bed, say)
    return 0


PRIORITIES = {1: "Critical", 2: "Major", 3: "Warning", 4: "Minor", 5: "Info"}
"""api_messages.ml's names of the priorities, as XenCenter shows them."""


def _list_messages(bed: Testbed, say: _Printer) -> None:
    """The pool's messages (message.get_all_records on the master), newest first, as Xen
    Orchestra lists a pool's alarms: when, how urgent, on what, which, and its body."""
    deadline = time.monotonic() + 10
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        session = bed.xapi()
        try:
            x = session.xenapi
            records = list(x.message.get_all_records().values())
            names = {("Host", r["uuid"]): r["name_label"]
                     for r in x.host.get_all_records().values()}
            names.update({("VM", r["uuid"]): r["name_label"]
                          for r in x.VM.get_all_records().values()})
            names.update({("Pool", r["uuid"]): r["name_label"] or "pool"
                          for r in x.pool.get_all_records().values()})
        finally:
            session.xenapi.session.logout()
        if any(r["name"] == "XENHAD_INCIDENT_CLOSED" for r in records):
            break  # posting is in the background: the summary is the last to come
        time.sleep(0.3)
    say.line(f"the pool now holds {len(records)} messages (message.get_all_records, newest "
             "first), as Xen Orchestra lists them:")
    rows = [("TIME (UTC)", "PRIORITY", "OBJECT", "NAME", "BODY")]
    for r in records:
        stamp = str(r["timestamp"])
        when = f"{stamp[9:17]}" if len(stamp) >= 17 else stamp
        level = int(r["priority"])
        obj = f"{r['cls']} {names.get((r['cls'], r['obj_uuid']), r['obj_uuid'])}"
        rows.append((when, f"{level} {PRIORITIES.get(level, '')}", obj, r["name"], r["body"]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        say.line("  " + "  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])


def _all_ready(bed: Testbed) -> bool:
    ready = {n for n, _ in bed.events_named("daemon.ready")}
    return ready >= set(bed.daemons)


def _protection(bed: Testbed) -> dict[str, str]:
    return {name: str(rec["protection"]) for name, rec in bed.vm_records().items()}


def _victim(before: Mapping[str, list[str]], protection: Mapping[str, str], master: str) -> str:
    count: dict[str, int] = {}
    for vm, hosts in before.items():
        for h in hosts:
            if h != master and protection.get(vm) != "off":
                count[h] = count.get(h, 0) + 1
    if not count:
        raise SystemExit("xenhad demo: no slave runs a protected VM; try another --seed")
    return max(sorted(count), key=lambda h: count[h])


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._t0 = time.monotonic()

    def line(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def event(self, host: str, line: LogLine) -> None:
        render = _TIMELINE.get(line.event)
        if render is None:
            return
        t = time.monotonic() - self._t0
        self.line(f"  +{t:5.1f}s  [{host}] {render(line.fields)}")

    def table(
        self,
        before: Mapping[str, list[str]],
        after: Mapping[str, list[str]],
        protection: Mapping[str, str],
        victim: str,
    ) -> None:
        self.line(f"{'VM':<10} {'protection':<12} {'before':<10} {'after':<10}")
        for vm in sorted(before):
            was = ",".join(before[vm]) or "-"
            now = ",".join(after.get(vm, [])) or "-"
            mark = "  <- restarted" if was == victim and now not in ("-", victim) else ""
            self.line(f"{vm:<10} {protection.get(vm, '') or '-':<12} {was:<10} {now:<10}{mark}")

