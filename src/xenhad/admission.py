"""Admission control, as a question asked continuously: could the pool absorb N host failures?

Pure: one PoolView, each host's free memory (host.compute_free_memory), N (recovery.tolerate)
-> an `Absorb` answer. For every set of N hosts that could fail (live, enabled, not in
maintenance: xenhad confirms no other host down), the protected ("restart") VMs running on
them are placed with placement.plan onto the hosts left, exactly as an incident would place
them (`xenhad plan HOST` shows the same for one host). The pool can absorb N failures when
every such VM finds room in every such set.

How xapi does it for native HA (ocaml/xapi/xapi_ha_vm_failover.ml, binpack.ml), and where
we differ:
- xapi keeps `pool.ha_host_failures_to_tolerate` (set by the administrator) and
  `ha_plan_exists_for` (what its planner found), recomputes them on every change of VM
  placement and host state (update_pool_status), and *refuses* operations that would break
  the plan (assert_vm_placement_preserves_ha_plan, assert_host_disable_preserves_ha_plan).
  xenhad refuses nothing: it sits beside xapi and only warns (log, XAPI message, metric).
- xapi posts HA_POOL_OVERCOMMITTED (priority 3) when the plan drops below the tolerance
  (mark_pool_as_overcommitted), and HA_POOL_DROP_IN_PLAN_EXISTS_FOR when it shrinks; it
  posts no message when room returns (it clears `ha_overcommitted`). We post
  XENHAD_POOL_OVERCOMMITTED on the change to "cannot", and XENHAD_POOL_OVERCOMMIT_CLEARED
  on the change back, so the administrator's list says when it was fixed.
- xapi's binpacker (plan_always_possible) simulates the failures one after another, in
  every order (nCr combinations, each permuted), packing each host's VMs
  biggest-first (biggest_fit_decreasing), and past a size falls back to an approximation
  that assumes every VM as big as the biggest and the biggest hosts failing
  (simulate_failure_approximation). We take the N failures as simultaneous (what a
  rack or a power feed does) and place with the incident's own placement (waves by
  priority and `order`, affinity first); past MAX_SCENARIOS sets we keep only the hosts
  carrying the most protected memory (the sets most likely to fail) and say so.
- xapi counts a VM's memory with its overhead (vm_memory: memory_overhead plus
  memory_static_max for a non-ballooning VM); we count memory_static_max, as the incident
  does, against compute_free_memory (which already holds each host's own overheads).
- xapi's compute_max_host_failures_to_tolerate bisects for the largest N that works; we
  answer for the configured N only (a second question per tick is not worth its cost).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from xenhad import placement
from xenhad.model import HostId, HostView, PoolView, Protection, VmView

MAX_SCENARIOS = 5000
"""Sets of failing hosts examined at most per check (C(64, 2) = 2016 fit; C(64, 3) does not)."""


@dataclass(frozen=True)
class Absorb:
    tolerate: int
    ok: bool
    scenarios: int
    """Sets of failing hosts examined."""
    failed: tuple[str, ...] = ()
    """Names of the first set of hosts whose failure could not be absorbed."""
    stranded: tuple[tuple[str, str], ...] = ()
    """(VM name, why) of the protected VMs that would find no room then."""
    approximate: bool = False
    """Too many sets: only those of the hosts with the most protected memory were tried."""

    def line(self) -> str:
        """One line for logs, status and the XAPI message."""
        hosts = "host" if self.tolerate == 1 else "hosts"
        if self.ok:
            return (f"the pool can absorb the failure of any {self.tolerate} {hosts}: every "
                    f"protected VM finds room ({self.scenarios} cases checked"
                    + (", largest hosts only" if self.approximate else "") + ")")
        who = " and ".join(self.failed) if self.failed else f"{self.tolerate} {hosts}"
        vms = "; ".join(f"{vm} ({why})" for vm, why in self.stranded[:5])
        more = f" and {len(self.stranded) - 5} more" if len(self.stranded) > 5 else ""
        return (f"the pool can no longer absorb the failure of {self.tolerate} {hosts}: "
                f"if {who} failed, {len(self.stranded)} protected "
                f"VM{'' if len(self.stranded) == 1 else 's'} would find no room: "
                f"{vms}{more}")


def can_absorb(view: PoolView, free: Mapping[HostId, int | None], tolerate: int) -> Absorb:
    """Whether every protected VM would find room if any `tolerate` hosts failed at once.
    `free`: host.compute_free_memory of each host (None or absent: unreadable, it receives
    nothing, as in `xenhad plan`)."""
    hosts = sorted((h for h in view.hosts.values()
                    if h.live and h.enabled and not h.maintenance),
                   key=lambda h: (h.name, h.uuid))
    protected = {h.uuid: [vm for vm in view.vms_on(h.uuid)
                          if vm.running and vm.protection is Protection.RESTART]
                 for h in hosts}
    if tolerate <= 0:
        return Absorb(tolerate, True, 0)
    if len(hosts) <= tolerate:
        # binpack.ml plan_trivially_never_possible: no host would be left to receive them.
        stranded = tuple((vm.name, "no host left") for vms in protected.values() for vm in vms)
        return Absorb(tolerate, not stranded, 0, tuple(h.name for h in hosts), stranded)
    pool = hosts
    approximate = math.comb(len(hosts), tolerate) > MAX_SCENARIOS
    if approximate:
        # Keep the hosts whose failure strands the most memory, as few as still give
        # MAX_SCENARIOS sets or fewer.
        keep = tolerate
        while math.comb(keep + 1, tolerate) <= MAX_SCENARIOS and keep < len(hosts):
            keep += 1
        heavy = sorted(hosts, key=lambda h: (-sum(vm.memory for vm in protected[h.uuid]),
                                             h.name))[:keep]
        pool = sorted(heavy, key=lambda h: (h.name, h.uuid))
    scenarios = 0
    for failing in itertools.combinations(pool, tolerate):
        scenarios += 1
        stranded = _stranded(failing, hosts, protected, free)
        if stranded:
            return Absorb(tolerate, False, scenarios, tuple(h.name for h in failing),
                          stranded, approximate)
    return Absorb(tolerate, True, scenarios, approximate=approximate)


def _stranded(failing: tuple[HostView, ...], hosts: list[HostView],
              protected: Mapping[HostId, list[VmView]],
              free: Mapping[HostId, int | None]) -> tuple[tuple[str, str], ...]:
    gone = {h.uuid for h in failing}
    vms = [vm for h in failing for vm in protected[h.uuid]]
    if not vms:
        return ()
    targets = [placement.HostCapacity(h.uuid, m) for h in hosts
               if h.uuid not in gone and (m := free.get(h.uuid)) is not None]
    result = placement.plan(
        [placement.Candidate(uuid=vm.uuid, memory=vm.memory, affinity=vm.affinity,
                             order=vm.order, protection=vm.protection)
         for vm in vms],
        targets,
    )
    names = {vm.uuid: vm.name for vm in vms}
    return tuple((names[u.vm], u.reason) for u in result.unplaced)
