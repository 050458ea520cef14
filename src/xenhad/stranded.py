"""Protected VMs that no other host could run: protected in name only, said before the day.

Pure, from one PoolView. For a VM running on (or last seen on) host H, every host of the
pool but H is asked, whether live, enabled or not, memory aside: could it boot the VM
(placement.can_run: a plugged PBD of each of its SRs, a PIF on each of its networks, no
passthrough device of H)? None can: its disk is on H's local SR, or a network or device only
H has. xapi's own HA calls such a VM not agile (agility.ml) and pins it to a host
(xapi_ha_vm_failover.ml host_of_non_agile_vm); xenhad will not attempt it after H dies, and
`xenhad status`, `xenhad plan` and the daemon's log (once, at warning) say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenhad.model import HostId, PoolView, Protection, VmId, VmView
from xenhad.placement import Candidate, HostCapacity, can_run, stranded_reason


@dataclass(frozen=True)
class Stranded:
    vm: VmId
    name: str
    host: HostId | None
    """Where it runs: the host whose death would leave it down."""
    reason: str


def stranded(view: PoolView) -> list[Stranded]:
    """Protected VMs of `view` that no host but their own could run, by name then uuid."""
    hosts = [HostCapacity(h.uuid, 0, h.srs, h.networks) for h in view.hosts.values()]
    if all(h.srs is None and h.networks is None for h in hosts):
        return []  # storage not read (a slave's view): nothing to judge by
    cache: dict[tuple[frozenset[str], frozenset[str], str, HostId | None], str | None] = {}
    found: list[Stranded] = []
    for vm in view.vms.values():
        if vm.protection is Protection.OFF:
            continue
        key = (vm.srs, vm.networks, vm.pinned, vm.resident_on)
        if key not in cache:
            cache[key] = _why(vm, [h for h in hosts if h.uuid != vm.resident_on], view)
        reason = cache[key]
        if reason is not None:
            found.append(Stranded(vm.uuid, vm.name, vm.resident_on, reason))
    return sorted(found, key=lambda s: (s.name, s.vm))


def _why(vm: VmView, others: list[HostCapacity], view: PoolView) -> str | None:
    if not others:
        return None  # a pool of one host restarts nothing anyway
    c = Candidate(vm.uuid, vm.memory, None, vm.order, vm.protection, vm.srs, vm.networks,
                  vm.pinned, vm.group)
    if any(can_run(c, h) for h in others):
        return None
    labels = {**view.labels, **{h.uuid: h.name for h in view.hosts.values()}}
    return stranded_reason(c, others, labels)
