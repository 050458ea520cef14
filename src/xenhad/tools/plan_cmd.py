"""`xenhad plan HOST`: which VMs would restart where if HOST died now; touches nothing.

It logs in as the daemon does (`open_xapi`), reads one snapshot (4 get_all_records) and
asks host.compute_free_memory of each survivor, as the executor does before placing: all
read-only calls. The decision itself is tools/plan.py, pure.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from xenhad.config import Config, load
from xenhad.errors import XenhadError
from xenhad.model import HostId
from xenhad.monitor import Snapshot, read_snapshot
from xenhad.placement import MIB
from xenhad.tools.plan import WhatIf, candidate_targets, find_host, what_if
from xenhad.xapi import Xapi, XapiError, XapiUnreachable
from xenhad.xapi.connect import open_xapi


def run_plan(
    config_path: Path, host: str, *, as_json: bool = False, out: TextIO = sys.stdout
) -> int:
    config = load(config_path)
    try:
        result = asyncio.run(_read(config, host))
    except XapiUnreachable as exc:
        raise XenhadError(
            f"{exc}: is xapi running? check [xapi] url/socket in {config_path}"
        ) from None
    if as_json:
        print(json.dumps(to_json(result), indent=2), file=out)
    else:
        print(render(result), file=out)
    return 0


async def _read(config: Config, wanted: str) -> WhatIf:
    xapi = await open_xapi(config)
    try:
        snap = await read_snapshot(
            xapi, protection_key=config.recovery.protection_key, now=time.monotonic()
        )
        dead = find_host(snap.view, wanted)
        free = await _free_memory(xapi, snap, [h.uuid for h in candidate_targets(snap.view, dead)])
        return what_if(snap.view, dead, free, snap.warnings)
    finally:
        await xapi.close()


async def _free_memory(xapi: Xapi, snap: Snapshot, hosts: list[HostId]) -> dict[HostId, int | None]:
    async def one(host: HostId) -> int | None:
        try:
            return await xapi.host_compute_free_memory(snap.view.hosts[host].ref)
        except (XapiError, XapiUnreachable):
            # As the executor does: a host whose memory cannot be read receives nothing.
            return None

    values = await asyncio.gather(*(one(h) for h in hosts))
    return dict(zip(hosts, values))


def _mib(n: int) -> str:
    return f"{n // MIB} MiB"


def render(w: WhatIf) -> str:
    running = len(w.restarts) + len(w.not_placed) + len(w.unprotected) + len(w.cannot_run)
    role = "pool master" if w.is_master else "slave"
    lines = [
        f"if {w.host.name} ({w.host.uuid}, {role}) died now:",
        f"  {running} VMs run there: {running - len(w.unprotected)} protected, "
        f"{len(w.unprotected)} not",
    ]
    if w.targets:
        lines.append("  targets (live, enabled; free memory now -> after):")
        lines.extend(f"    {t.name:<20} {_mib(t.free_memory):>12} -> {_mib(t.free_after)}"
                     for t in w.targets)
    else:
        lines.append("  targets: none (no other live, enabled host)")
    if w.restarts:
        lines.append("  restarts, in order (a wave starts once the one before is done):")
        wave = 0
        for r in w.restarts:
            if r.wave != wave:
                wave = r.wave
                order = "negative orders" if r.order < 0 else f"order {r.order}"
                lines.append(f"    wave {wave} ({r.protection.value}, {order}):")
            lines.append(f"      {r.name:<24} {_mib(r.memory):>10} -> {r.host_name}")
    if w.not_placed:
        lines.append(f"  would not fit ({len(w.not_placed)}):")
        lines.extend(f"    {n.name} ({n.protection.value}): {n.reason}" for n in w.not_placed)
    if w.cannot_run:
        lines.append(f"  no other host can run them, not attempted ({len(w.cannot_run)}):")
        lines.extend(f"    {n.name} ({n.protection.value}): {n.reason}" for n in w.cannot_run)
    if w.unprotected:
        lines.append(f"  not protected, left alone ({len(w.unprotected)}):")
        lines.extend(
            f"    {u.name}" + ("" if u.why == "protection off" else f": {u.why}")
            for u in w.unprotected
        )
    if w.pool_stranded:
        lines.append(f"protected VMs of the pool that no other host can run "
                     f"({len(w.pool_stranded)}):")
        names = {t.uuid: t.name for t in w.targets}
        names[w.host.uuid] = w.host.name
        lines.extend(f"  {s.name} on {names.get(s.host or '', s.host)}: {s.reason}"
                     for s in w.pool_stranded)
    if w.notes:
        lines.append("  notes:")
        lines.extend(f"    {n}" for n in w.notes)
    return "\n".join(lines)


def to_json(w: WhatIf) -> dict[str, Any]:
    return {
        "host": {"name": w.host.name, "uuid": w.host.uuid, "master": w.is_master,
                 "live": w.host.live, "enabled": w.host.enabled},
        "targets": [{"name": t.name, "uuid": t.uuid, "free_memory": t.free_memory,
                     "free_after": t.free_after} for t in w.targets],
        "restarts": [{"vm": r.name, "uuid": r.uuid, "memory": r.memory,
                      "protection": r.protection.value, "wave": r.wave, "order": r.order,
                      "host": r.host_name, "host_uuid": r.host} for r in w.restarts],
        "not_placed": [{"vm": n.name, "uuid": n.uuid, "memory": n.memory,
                        "protection": n.protection.value, "reason": n.reason}
                       for n in w.not_placed],
        "unprotected": [{"vm": u.name, "uuid": u.uuid, "why": u.why} for u in w.unprotected],
        "cannot_run": [{"vm": n.name, "uuid": n.uuid, "protection": n.protection.value,
                        "reason": n.reason} for n in w.cannot_run],
        "pool_cannot_restart_elsewhere": [{"vm": s.name, "uuid": s.vm, "host_uuid": s.host,
                                           "why": s.reason} for s in w.pool_stranded],
        "notes": list(w.notes),
    }
