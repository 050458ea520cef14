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

Memory is in bytes, as XAPI counts it (VM memory_static_max, host.compute_free_memory).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
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
    """Bytes the VM needs to start (memory_static_max)."""
    affinity: HostId | None
    order: int
    protection: Protection


@dataclass(frozen=True)
class HostCapacity:
    """A host that may receive VMs: live and enabled, with host.compute_free_memory bytes."""

    uuid: HostId
    free_memory: int


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


def plan(candidates: Sequence[Candidate], hosts: Sequence[HostCapacity]) -> Plan:
    """Place `candidates` on `hosts`, consuming free memory as VMs are placed.

    Raises ValueError (one line) for a VM or host listed twice or a negative VM memory.
    """
    seen: set[VmId] = set()
    for c in candidates:
        if c.uuid in seen:
            raise ValueError(f"VM {c.uuid} is listed twice: pass each VM once")
        if c.memory < 0:
            raise ValueError(f"VM {c.uuid} needs {c.memory} bytes: memory must be >= 0")
        seen.add(c.uuid)
    free = _Free(hosts)

    skipped = tuple(sorted(c.uuid for c in candidates if c.protection is Protection.OFF))
    groups: dict[tuple[int, float], list[Candidate]] = {}
    for c in candidates:
        if c.protection is Protection.OFF:
            continue
        rank = 0 if c.protection is Protection.RESTART else 1
        groups.setdefault((rank, _wave_key(c.order)), []).append(c)

    waves: list[Wave] = []
    unplaced: list[Unplaced] = []
    for (_, key), members in sorted(groups.items()):
        members.sort(key=lambda c: (-c.memory, c.uuid))
        placed: list[Placement] = []
        for c in members:
            host = _choose(c, free)
            if host is None:
                unplaced.append(Unplaced(c.uuid, _why_not(c, free), c.protection))
            else:
                free.take(host, c.memory)
                placed.append(Placement(c.uuid, host))
        if placed:
            order = int(key) if key != _LAST else NEGATIVE_ORDER_WAVE
            waves.append(Wave(order, tuple(placed), members[0].protection))
    return Plan(tuple(waves), tuple(unplaced), skipped)


def _choose(c: Candidate, free: _Free) -> HostId | None:
    if c.affinity is not None and free.free.get(c.affinity, -1) >= c.memory:
        return c.affinity
    best = free.roomiest()
    if best is not None and best[1] >= c.memory:
        return best[0]
    return None


def _why_not(c: Candidate, free: _Free) -> str:
    best = free.roomiest()
    if best is None:
        return f"needs {_mib_up(c.memory)} MiB, no live, enabled host to receive it"
    return f"needs {_mib_up(c.memory)} MiB, largest free {_mib_down(best[1])} MiB"
