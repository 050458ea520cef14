"""Where recovered VMs land: invariants read from samples of the simulator's truth.

No anti-affinity pair shares a host after a recovery when the pool had room: a member that
starts on the host its partner runs on, while another host that ran fewer of its group could
have taken it all along, is placed as xapi's own planner would not place it
(xapi_ha_vm_failover.ml compute_spread_evenly_plan). "All along" is SETTLED_FOR seconds of
samples before the start: a host that has just come back is not yet a target for the
daemon (its detector holds it until it has stayed up), nor for xapi (enabled only once it
has rejoined).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SETTLED_FOR = 6.0
"""Seconds a host must have been able to take a member before a start for it to count as a
host with room that was passed over."""


@dataclass(frozen=True)
class Sample:
    at: float
    where: Mapping[str, tuple[str, ...]]
    """Group member (VM name) -> the hosts its domain runs on."""
    receiving: frozenset[str]
    """Hosts that could take a member now: powered, xapi up, live and enabled in the
    master's database, in two-way reach of the master, with room for the member."""


def anti_affinity_spread(groups: Mapping[str, Sequence[str]],
                         samples: Sequence[Sample]) -> list[str]:
    """Starts of a group member (name -> its member VMs) on a host that ran more of its
    group than another host that could have taken it for SETTLED_FOR seconds before."""
    found: list[str] = []
    for i in range(1, len(samples)):
        before, now = samples[i - 1], samples[i]
        window = [s for s in samples[:i + 1] if now.at - SETTLED_FOR <= s.at <= now.at]
        if not window or window[0].at > now.at - SETTLED_FOR + 1.0:
            continue  # too little history to judge (the run has just begun)
        for group, members in groups.items():
            for vm in members:
                on = now.where.get(vm, ())
                if len(on) != 1 or before.where.get(vm, ()) == on:
                    continue
                host = on[0]
                shared = _count(members, vm, host, before)
                if not shared:
                    continue
                better = sorted(
                    h for h in frozenset.intersection(*(s.receiving for s in window))
                    if h != host and _count(members, vm, h, before) < shared)
                if better:
                    found.append(
                        f"anti-affinity group {group}: {vm} started at {now.at:.1f} on {host} "
                        f"beside {shared} of its group while {', '.join(better)} had room "
                        f"and ran fewer")
    return found


def _count(members: Sequence[str], vm: str, host: str, sample: Sample) -> int:
    """How many of `vm`'s group (itself aside) run on `host` in `sample`."""
    return sum(1 for m in members if m != vm and host in sample.where.get(m, ()))
