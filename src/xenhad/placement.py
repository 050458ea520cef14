"""Pure placement: which surviving host restarts which VM, in which wave.

The order follows xapi's own HA restart (ocaml/xapi/xapi_ha_vm_failover.ml):

- `order_f` maps a VM's `order` to itself, except that every negative order maps to the
  largest integer: negative orders come last, and all of them together form one group.
- `map_parallel` groups VMs by that key, ascending (helpers.ml, group_by), starts each
  group's VMs in parallel and begins the next group only when the previous one is
  done. Here a group is a `Wave`.
- Protected (RESTART) VMs are restarted before best-effort ones, so every RESTART wave
  comes before every BEST_EFFORT wave. OFF VMs are never placed; they are listed in
  `Plan.skipped` so the caller can say so.

Within a wave, VMs are placed biggest first onto the host with the most free memory left,
as xapi's binpacker does (`biggest_fit_decreasing`, ocaml/xapi/binpack.ml): large VMs get
the room while it exists, and the load spreads over the survivors. A VM whose affinity host
can take it goes there instead. Ties are broken by uuid (xapi also sorts hosts and VMs by
uuid for determinism, compute_restart_plan), so equal input gives an equal plan whatever
the order of the input sequences.

Memory is in bytes, as XAPI counts it: a VM's start memory (memory_check.ml, its target
plus its overhead) against host.compute_free_memory.

A VM runs only on a host that can boot it (xapi_vm_helpers.ml assert_can_boot_here): one
with a plugged PBD of every SR its disks are on (VM_REQUIRES_SR), a PIF on every network of
its VIFs (VM_REQUIRES_NETWORK), and not one that already refused it for a reason of its own
(a GPU, pCPUs, CPU features). A VM pinned by a physical device of its old host (PCI or USB
passthrough) runs nowhere else. A VM that no host given could ever run is *stranded*: it is
not attempted, and `Plan.stranded` says why, so the operator hears it before the day. A VM
that only a host not receiving now (disabled, not live) could run waits in `unplaced`.

An anti-affinity VM (datamodel_vm_group.ml, placement anti_affinity) goes to the fitting
host running the fewest VMs of its group, counting those placed by this plan, then the
roomiest (xapi_ha_vm_failover.ml compute_spread_evenly_plan, xapi_vm_helpers.ml
rank_hosts_by_placement): two members share a host only when no other host has room.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from xenhad.model import HostId, Protection, VmId

MIB = 1024 * 1024

NEGATIVE_ORDER_WAVE = -1
"""The `order` reported for the one wave holding every VM with a negative order."""

_LAST = float("inf")


@dataclass(frozen=True)
class Candidate:
    uuid: VmId
    memory: int
    """Bytes the VM needs to start: its start memory with the overhead (memory_check.ml)."""
    affinity: HostId | None
    order: int
    protection: Protection
    srs: frozenset[str] = frozenset()
    """SRs of its disks: a host must have a plugged PBD of each."""
    networks: frozenset[str] = frozenset()
    """Networks of its VIFs that have PIFs: a host must have a PIF on each."""
    pinned: str = ""
    """Why it runs on no other host (a passthrough device of its old host); "" if free."""
    group: str | None = None
    """Its anti-affinity VM group."""
    refused: frozenset[HostId] = frozenset()
    """Hosts that refused to start it for a reason of their own: not tried again."""


@dataclass(frozen=True)
class HostCapacity:
    """A host with host.compute_free_memory bytes; `receiving`: live and enabled now."""

    uuid: HostId
    free_memory: int
    srs: frozenset[str] | None = None
    """SRs with a currently_attached PBD here; None: not known (seen as every SR)."""
    networks: frozenset[str] | None = None
    """Networks with a PIF here; None: not known (seen as every network)."""
    receiving: bool = True
    """False: not live or not enabled now, so it takes no VM, but a VM only it could run
    waits for it rather than being called stranded."""


@dataclass(frozen=True)
class Placement:
    vm: VmId
    host: HostId


@dataclass(frozen=True)
class Wave:
    """VMs started in parallel; the next wave starts once this one is done."""

    order: int
    """The VMs' `order`, or NEGATIVE_ORDER_WAVE for the wave of all negative orders."""
    placements: tuple[Placement, ...]
    protection: Protection = Protection.RESTART


@dataclass(frozen=True)
class Unplaced:
    vm: VmId
    reason: str
    protection: Protection = Protection.RESTART


@dataclass(frozen=True)
class Plan:
    waves: tuple[Wave, ...]
    unplaced: tuple[Unplaced, ...]
    """VMs to restart that fit on no host, with why: the caller retries them later."""
    skipped: tuple[VmId, ...] = ()
    """Protection OFF: never restarted by xenhad."""
    stranded: tuple[Unplaced, ...] = ()
    """VMs that no host given can run, whatever its memory (a disk on an SR, a network or
    a device no host has, or refused by every host that could): not attempted."""

    def host_of(self, vm: VmId) -> HostId | None:
        for wave in self.waves:
            for p in wave.placements:
                if p.vm == vm:
                    return p.host
        return None

    @property
    def placements(self) -> tuple[Placement, ...]:
        return tuple(p for wave in self.waves for p in wave.placements)


def _wave_key(order: int) -> float:
    # xapi_ha_vm_failover.ml, order_f: negative orders become Int64.max_int (last, one group).
    return order if order >= 0 else _LAST


def _mib_up(n: int) -> int:
    return -(-n // MIB)


def _mib_down(n: int) -> int:
    return max(0, n) // MIB


class _Free:
    """Free memory per host, with the roomiest host found in O(log hosts).

    The heap holds (-free, uuid) entries; an entry whose free no longer matches the host's
    current free is stale and skipped, so updating a host is a push, never a search.
    """

    def __init__(self, hosts: Iterable[HostCapacity]) -> None:
        self.free: dict[HostId, int] = {}
        for h in hosts:
            if h.uuid in self.free:
                raise ValueError(f"host {h.uuid} is listed twice: pass each host once")
            self.free[h.uuid] = h.free_memory
        self._heap = [(-free, uuid) for uuid, free in self.free.items()]
        heapq.heapify(self._heap)

    def roomiest(self) -> tuple[HostId, int] | None:
        heap = self._heap
        while heap:
            neg, uuid = heap[0]
            if self.free[uuid] == -neg:
                return uuid, -neg
            heapq.heappop(heap)
        return None

    def take(self, host: HostId, memory: int) -> None:
        self.free[host] -= memory
        heapq.heappush(self._heap, (-self.free[host], host))


def plan(
    candidates: Sequence[Candidate],
    hosts: Sequence[HostCapacity],
    *,
    grouped: Mapping[str, Mapping[HostId, int]] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Plan:
    """Place `candidates` on the receiving `hosts`, consuming free memory as VMs are placed.

    `grouped`: for each anti-affinity group, how many of its VMs already run on each host.
    `labels`: names of SRs, networks and hosts for the reasons given (uuids otherwise).
    Raises ValueError (one line) for a VM or host listed twice or a negative VM memory.
    """
    seen: set[VmId] = set()
    for c in candidates:
        if c.uuid in seen:
            raise ValueError(f"VM {c.uuid} is listed twice: pass each VM once")
        if c.memory < 0:
            raise ValueError(f"VM {c.uuid} needs {c.memory} bytes: memory must be >= 0")
        seen.add(c.uuid)
    receiving = [h for h in hosts if h.receiving]
    free = _Free(receiving)
    every = {h.uuid: h for h in hosts}
    if len(every) != len(hosts):
        raise ValueError("a host is listed twice: pass each host once")
    fit = _Fit(receiving, list(every.values()))
    counts: dict[str, dict[HostId, int]] = {
        g: dict(per_host) for g, per_host in (grouped or {}).items()}
    names = labels or {}

    skipped = tuple(sorted(c.uuid for c in candidates if c.protection is Protection.OFF))
    groups: dict[tuple[int, float], list[Candidate]] = {}
    stranded: list[Unplaced] = []
    for c in candidates:
        if c.protection is Protection.OFF:
            continue
        if not fit.anywhere(c):
            stranded.append(Unplaced(c.uuid, stranded_reason(c, hosts, names), c.protection))
            continue
        rank = 0 if c.protection is Protection.RESTART else 1
        groups.setdefault((rank, _wave_key(c.order)), []).append(c)

    waves: list[Wave] = []
    unplaced: list[Unplaced] = []
    for (_, key), members in sorted(groups.items()):
        members.sort(key=lambda c: (-c.memory, c.uuid))
        placed: list[Placement] = []
        for c in members:
            able = fit.receiving(c)
            host = _choose(c, free, able, counts)
            if host is None:
                unplaced.append(Unplaced(c.uuid, _why_not(c, free, able, names),
                                         c.protection))
            else:
                free.take(host, c.memory)
                if c.group is not None:
                    per_host = counts.setdefault(c.group, {})
                    per_host[host] = per_host.get(host, 0) + 1
                placed.append(Placement(c.uuid, host))
        if placed:
            order = int(key) if key != _LAST else NEGATIVE_ORDER_WAVE
            waves.append(Wave(order, tuple(placed), members[0].protection))
    stranded.sort(key=lambda u: u.vm)
    return Plan(tuple(waves), tuple(unplaced), skipped, tuple(stranded))


def can_run(c: Candidate, host: HostCapacity) -> bool:
    """Whether `host` could boot `c`, memory aside (assert_can_boot_here's SR, network and
    device checks, and no refusal of its own)."""
    if c.pinned or host.uuid in c.refused:
        return False
    if host.srs is not None and not c.srs <= host.srs:
        return False
    return host.networks is None or c.networks <= host.networks


def stranded_reason(c: Candidate, hosts: Sequence[HostCapacity],
                    labels: Mapping[str, str] | None = None) -> str:
    """Why no host of `hosts` can run `c`, naming the SR, network or device: one line."""
    names = labels or {}

    def name(key: str) -> str:
        return names.get(key, key)

    if c.pinned:
        return c.pinned
    for sr in sorted(c.srs):
        if not any(h.srs is None or sr in h.srs for h in hosts):
            return f"its disk is on SR {name(sr)}, which no other host sees"
    for net in sorted(c.networks):
        if not any(h.networks is None or net in h.networks for h in hosts):
            return f"its VIF is on network {name(net)}, which no other host has"
    if c.refused and all(h.uuid in c.refused for h in hosts if can_run(
            Candidate(c.uuid, c.memory, c.affinity, c.order, c.protection, c.srs,
                      c.networks), h)):
        refused = ", ".join(sorted(name(h) for h in c.refused))
        return f"refused by every host that sees its SRs and networks ({refused})"
    return "no other host sees all of its SRs and networks"


class _Fit:
    """Which hosts can run a VM, memory aside: computed once per distinct need (a pool's
    VMs share a few SRs and networks), not once per VM and host."""

    def __init__(self, receiving: Sequence[HostCapacity], every: Sequence[HostCapacity]) -> None:
        self._receiving = receiving
        self._every = every
        self._cache: dict[tuple[frozenset[str], frozenset[str], bool, frozenset[HostId]],
                          tuple[list[HostId], bool]] = {}

    def _lookup(self, c: Candidate) -> tuple[list[HostId], bool]:
        key = (c.srs, c.networks, bool(c.pinned), c.refused)
        hit = self._cache.get(key)
        if hit is None:
            able = [h.uuid for h in self._receiving if can_run(c, h)]
            # With no host at all there is nothing to judge by: it waits, not stranded.
            anywhere = bool(able) or not self._every or any(
                can_run(c, h) for h in self._every)
            hit = self._cache[key] = (able, anywhere)
        return hit

    def receiving(self, c: Candidate) -> list[HostId]:
        return self._lookup(c)[0]

    def anywhere(self, c: Candidate) -> bool:
        return self._lookup(c)[1]


def _choose(c: Candidate, free: _Free, able: list[HostId],
            counts: Mapping[str, Mapping[HostId, int]]) -> HostId | None:
    if not able:
        return None
    everywhere = len(able) == len(free.free)
    if c.affinity is not None and free.free.get(c.affinity, -1) >= c.memory and (
            everywhere or c.affinity in able):
        return c.affinity
    if c.group is not None:
        per_host = counts.get(c.group, {})
        best: tuple[int, int, HostId] | None = None
        for h in able:
            room = free.free[h]
            if room < c.memory:
                continue
            key = (per_host.get(h, 0), -room, h)
            if best is None or key < best:
                best = key
        return best[2] if best is not None else None
    if everywhere:
        top = free.roomiest()
        return top[0] if top is not None and top[1] >= c.memory else None
    roomiest: tuple[int, HostId] | None = None
    for h in able:
        pair = (-free.free[h], h)
        if roomiest is None or pair < roomiest:
            roomiest = pair
    if roomiest is not None and -roomiest[0] >= c.memory:
        return roomiest[1]
    return None


def _why_not(c: Candidate, free: _Free, able: list[HostId],
             labels: Mapping[str, str]) -> str:
    if not free.free:
        return f"needs {_mib_up(c.memory)} MiB, no live, enabled host to receive it"
    if not able:
        return f"only a host not receiving VMs now could run it (needs {_mib_up(c.memory)} MiB)"
    if len(able) == len(free.free):
        best = free.roomiest()
        if best is None:
            return f"needs {_mib_up(c.memory)} MiB, no live, enabled host to receive it"
        return f"needs {_mib_up(c.memory)} MiB, largest free {_mib_down(best[1])} MiB"
    largest = max(free.free[h] for h in able)
    return (f"needs {_mib_up(c.memory)} MiB, largest free on a host that can run it "
            f"{_mib_down(largest)} MiB")
