"""Where recovered VMs land: invariants read from samples of the simulator's truth.

No anti-affinity pair shares a host after a recovery when the pool had room: a member that
starts on the host its partner runs on, while another host that ran fewer of its group could
have taken it all along, is placed as xapi's own planner would not place it
(xapi_ha_vm_failover.ml compute_spread_evenly_plan). "All along" is SETTLED_FOR seconds of
samples before the start was asked for: a host that has just come back is not yet a target
for the daemon (its detector holds it until it has stayed up), nor for xapi (enabled only
once it has rejoined).

A start is judged when it was asked for, not when its domain appeared: a placement can only
be judged by the hosts there were when it was made. The ask is the first of the samples just
before the domain appeared in which the master's database has the VM scheduled to be
resident on that host (xapi_vm.ml start sets `scheduled_to_be_resident_on` before it boots
the domain). A start that waited for a free slot, or a slow boot, is therefore not measured
against hosts that came back while it waited (virtual chaos seed 8000403: asked for at
45.7 s, the domain up at 46.2 s, the other hosts receiving since 41 s).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
    scheduled: Mapping[str, str] = field(default_factory=dict)
    """Group member -> the host a start under way is to put it on (the master's database's
    `scheduled_to_be_resident_on`)."""


def anti_affinity_spread(groups: Mapping[str, Sequence[str]],
                         samples: Sequence[Sample]) -> list[str]:
    """Starts of a group member (name -> its member VMs) on a host that ran more of its
    group than another host that could have taken it for SETTLED_FOR seconds before the
    start was asked for."""
    found: list[str] = []
    for i in range(1, len(samples)):
        before, now = samples[i - 1], samples[i]
        for group, members in groups.items():
            for vm in members:
                on = now.where.get(vm, ())
                if len(on) != 1 or before.where.get(vm, ()) == on:
                    continue
                host = on[0]
                shared = _count(members, vm, host, before)
                if not shared:
                    continue
                asked = _asked(samples, i, vm, host)
                window = [s for s in samples[:i + 1] if asked - SETTLED_FOR <= s.at <= asked]
                if not window or window[0].at > asked - SETTLED_FOR + 1.0:
                    continue  # too little history to judge (the run has just begun)
                better = sorted(
                    h for h in frozenset.intersection(*(s.receiving for s in window))
                    if h != host and _count(members, vm, h, before) < shared)
                if better:
                    found.append(
                        f"anti-affinity group {group}: {vm} started at {now.at:.1f} on {host} "
                        f"beside {shared} of its group while {', '.join(better)} had room "
                        f"and ran fewer")
    return found


def _asked(samples: Sequence[Sample], i: int, vm: str, host: str) -> float:
    """When the start that put `vm` on `host` at samples[i] was asked for: the first sample
    of the unbroken run just before i that has it scheduled there, else samples[i] itself
    (a start quicker than the samples)."""
    asked = samples[i].at
    for sample in reversed(samples[:i]):
        if sample.scheduled.get(vm) != host:
            break
        asked = sample.at
    return asked


def _count(members: Sequence[str], vm: str, host: str, sample: Sample) -> int:
    """How many of `vm`'s group (itself aside) run on `host` in `sample`."""
    return sum(1 for m in members if m != vm and host in sample.where.get(m, ()))
