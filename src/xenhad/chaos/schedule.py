"""A seeded fault schedule: the same seed and pool size give the same faults at the same
offsets. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass

KINDS = (
    "crash", "hang", "shutdown", "boot", "partition", "one-way-cut", "heal", "latency",
    "xapi-errors", "bmc-down", "daemon-kill", "sighup", "master-crash", "two-crash",
)


@dataclass(frozen=True)
class Fault:
    at: float
    """Seconds after the schedule starts."""
    kind: str
    hosts: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()
    value: float = 0.0

    def describe(self) -> str:
        what = ", ".join(self.hosts) if self.hosts else ""
        if self.groups:
            what = " | ".join(",".join(g) for g in self.groups)
        extra = f" {self.value:g}s" if self.value else ""
        return f"+{self.at:5.1f}s {self.kind} {what}{extra}".rstrip()


SELF_FENCE_KINDS = (*KINDS, "heartbeat-replay")
"""With self-fencing: the heartbeats others sent a host from the fault on are delivered to
it late, again and again, whatever the partition (issue 24: they once kept a cut-off host
quorate past its peers' deadline for it). A separate tuple: adding a kind to KINDS would
give every seed that once failed another schedule."""


def generate(seed: int, hosts: list[str], *, duration: float = 24.0,
             kinds: tuple[str, ...] = KINDS) -> list[Fault]:
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = rng.uniform(2.0, 4.0)
    while t < duration:
        kind = rng.choice(kinds)
        one = (rng.choice(hosts),)
        if kind in ("crash", "hang", "shutdown", "boot", "bmc-down", "daemon-kill", "sighup",
                    "heartbeat-replay"):
            faults.append(Fault(t, kind, one))
        elif kind == "latency":
            faults.append(Fault(t, kind, one, value=round(rng.uniform(0.2, 3.0), 1)))
        elif kind == "xapi-errors":
            faults.append(Fault(t, kind, one, value=float(rng.randint(1, 5))))
        elif kind == "partition":
            shuffled = hosts[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(hosts) - 1)
            faults.append(Fault(t, kind, groups=(tuple(sorted(shuffled[:cut])),
                                                 tuple(sorted(shuffled[cut:])))))
        elif kind == "one-way-cut":
            src, dst = rng.sample(hosts, 2)
            faults.append(Fault(t, kind, (src, dst)))
        elif kind == "two-crash":
            faults.append(Fault(t, kind, tuple(sorted(rng.sample(hosts, 2)))))
        else:  # heal, master-crash: no target drawn
            faults.append(Fault(t, kind))
        t += rng.uniform(0.5, 4.0)
    return faults
