"""What would happen to a host's VMs if it died now: pure, from one snapshot.

The same choices the daemon makes when it opens an incident (daemon.py `_open_incident`:
the VMs XAPI shows running on the host) and when it places them (recovery/machine.py
`_capacity`: placement.plan over the live, enabled survivors' free memory), made once over
every wave. The daemon measures free memory again before each wave, so later waves of a
real incident may land elsewhere (or fit where this plan says they do not); the order of
the waves does not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from xenhad import placement
from xenhad.errors import XenhadError
from xenhad.model import HostId, HostView, PoolView, Protection
from xenhad.monitor import ProtectionWarning
from xenhad.stranded import Stranded, stranded


class UnknownHost(XenhadError):
    """HOST names no host of the pool, or more than one."""


@dataclass(frozen=True)
class Target:
    uuid: HostId
    name: str
    free_memory: int
    free_after: int
    """What is left once this plan's VMs run there."""


@dataclass(frozen=True)
class Restart:
    uuid: str
    name: str
    memory: int
    protection: Protection
    wave: int
    """1-based: wave N+1 starts once wave N is done."""
    order: int
    """The wave's VM `order` (placement.NEGATIVE_ORDER_WAVE for all negative orders)."""
    host: HostId
    host_name: str


@dataclass(frozen=True)
class NotPlaced:
    uuid: str
    name: str
    memory: int
    protection: Protection
    reason: str


@dataclass(frozen=True)
class Unprotected:
    uuid: str
    name: str
    why: str


@dataclass(frozen=True)
class WhatIf:
    host: HostView
    is_master: bool
    targets: tuple[Target, ...]
    restarts: tuple[Restart, ...]
    not_placed: tuple[NotPlaced, ...]
    unprotected: tuple[Unprotected, ...]
    notes: tuple[str, ...]
    cannot_run: tuple[NotPlaced, ...] = ()
    """This host's protected VMs that no survivor could run: never attempted."""
    pool_stranded: tuple[Stranded, ...] = ()
    """Every protected VM of the pool that no host but its own could run."""


def find_host(view: PoolView, wanted: str) -> HostView:
    """The host whose name_label or uuid is `wanted`; UnknownHost (one line) otherwise."""
    by_uuid = view.hosts.get(wanted.lower())
    if by_uuid is not None:
        return by_uuid
    named = [h for h in view.hosts.values() if h.name == wanted]
    if len(named) == 1:
        return named[0]
    if named:
        uuids = ", ".join(sorted(h.uuid for h in named))
        raise UnknownHost(f"{len(named)} hosts are named {wanted!r} ({uuids}): give the uuid")
    known = ", ".join(sorted(h.name for h in view.hosts.values()))
    raise UnknownHost(
        f"no host {wanted!r} in the pool: give a name_label or uuid; known hosts: {known}"
    )


def candidate_targets(view: PoolView, dead: HostView) -> list[HostView]:
    """Survivors a restart may use: live and enabled (daemon.py `_placement_targets`)."""
    return sorted(
        (h for h in view.hosts.values()
         if h.uuid != dead.uuid and h.live and h.enabled and not h.maintenance),
        key=lambda h: (h.name, h.uuid),
    )


def what_if(
    view: PoolView,
    dead: HostView,
    free: Mapping[HostId, int | None],
    warnings: Sequence[ProtectionWarning] = (),
) -> WhatIf:
    """`free`: host.compute_free_memory of each candidate target; None if unreadable."""
    names = {h.uuid: h.name for h in view.hosts.values()}
    vms = sorted((vm for vm in view.vms_on(dead.uuid) if vm.running), key=lambda v: v.uuid)
    by_uuid = {vm.uuid: vm for vm in vms}
    measured = {uuid: m for uuid, m in free.items() if m is not None}
    # As the executor reads it for recovery/machine.py: what every other host sees, the
    # hosts not receiving now included, and where each group's members run.
    hosts = [placement.HostCapacity(uuid=h, free_memory=m, srs=view.hosts[h].srs,
                                    networks=view.hosts[h].networks)
             for h, m in sorted(measured.items())]
    hosts += [placement.HostCapacity(uuid=h.uuid, free_memory=0, srs=h.srs,
                                     networks=h.networks, receiving=False)
              for h in sorted(view.hosts.values(), key=lambda h: h.uuid)
              if h.uuid != dead.uuid and h.uuid not in measured
              and h.srs is not None and h.networks is not None]
    grouped: dict[str, dict[HostId, int]] = {}
    for other in view.vms.values():
        if other.group is not None and other.running and other.resident_on not in (
                None, dead.uuid):
            per_host = grouped.setdefault(other.group, {})
            per_host[other.resident_on] = per_host.get(other.resident_on, 0) + 1
    result = placement.plan(
        [
            placement.Candidate(uuid=vm.uuid, memory=vm.memory, affinity=vm.affinity,
                                order=vm.order, protection=vm.protection, srs=vm.srs,
                                networks=vm.networks, pinned=vm.pinned, group=vm.group)
            for vm in vms
        ],
        hosts,
        grouped=grouped,
        labels={**view.labels, **names},
    )
    used: dict[HostId, int] = {}
    restarts: list[Restart] = []
    for number, wave in enumerate(result.waves, start=1):
        for p in wave.placements:
            vm = by_uuid[p.vm]
            used[p.host] = used.get(p.host, 0) + vm.memory
            restarts.append(Restart(vm.uuid, vm.name, vm.memory, vm.protection, number,
                                    wave.order, p.host, names.get(p.host, p.host)))
    misread = {w.vm: w.message for w in warnings}
    return WhatIf(
        host=dead,
        is_master=view.master == dead.uuid,
        targets=tuple(
            Target(h, names.get(h, h), m, m - used.get(h, 0)) for h, m in measured.items()
        ),
        restarts=tuple(restarts),
        not_placed=tuple(
            NotPlaced(u.vm, by_uuid[u.vm].name, by_uuid[u.vm].memory, u.protection, u.reason)
            for u in result.unplaced
        ),
        unprotected=tuple(
            Unprotected(u, by_uuid[u].name, misread.get(u, "protection off"))
            for u in sorted(result.skipped, key=lambda u: (by_uuid[u].name, u))
        ),
        notes=tuple(_notes(view, dead, free)),
        cannot_run=tuple(
            NotPlaced(u.vm, by_uuid[u.vm].name, by_uuid[u.vm].memory, u.protection, u.reason)
            for u in result.stranded
        ),
        pool_stranded=tuple(stranded(view)),
    )


def _notes(view: PoolView, dead: HostView, free: Mapping[HostId, int | None]) -> list[str]:
    notes: list[str] = []
    if not dead.enabled:
        notes.append(
            f"{dead.name} is disabled: xenhad never confirms a disabled host down "
            "(maintenance), so nothing would be restarted; the plan shows what would happen "
            "were it enabled"
        )
    if not dead.live:
        notes.append(f"XAPI already calls {dead.name} not live")
    if view.master == dead.uuid:
        notes.append(
            f"{dead.name} is the pool master: the survivors first promote a new master "
            "(failover), which then restarts these VMs"
        )
    for h in sorted(view.hosts.values(), key=lambda h: (h.name, h.uuid)):
        if h.uuid == dead.uuid:
            continue
        if not (h.live and h.enabled):
            why = "not live" if not h.live else "disabled"
            notes.append(f"{h.name} receives nothing: {why}")
        elif free.get(h.uuid) is None:
            notes.append(f"{h.name} receives nothing: its free memory could not be read")
    return notes
