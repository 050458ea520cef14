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


VIRTUAL_KINDS = (*KINDS, "heartbeat-delay", "heartbeat-duplicate", "heartbeat-reorder",
                 "clock-jump", "daemon-pause", "journal-write", "journal-fsync", "xapi-restart")
"""`xenhad chaos --virtual`: what a pool run in one process can also do (issue 21, item 3).
The heartbeat kinds and the journal's last for `value` seconds; a clock jump steps one
host's wall clock by `value` seconds; a pause stops a daemon (SIGSTOP) for `value` seconds;
a xapi restart keeps it down `value` seconds."""

_TIMED = {
    # kind: (low, high) of its value, drawn after its host
    "daemon-pause": (1.0, 8.0),
    "journal-write": (1.0, 10.0),
    "journal-fsync": (1.0, 10.0),
    "xapi-restart": (0.5, 3.0),
    "clock-jump": (-60.0, 60.0),
}


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
        elif kind in _TIMED:
            low, high = _TIMED[kind]
            faults.append(Fault(t, kind, one, value=round(rng.uniform(low, high), 1)))
        elif kind.startswith("heartbeat-") and kind != "heartbeat-replay":
            faults.append(Fault(t, kind, value=round(rng.uniform(2.0, 10.0), 1)))
        elif kind == "two-crash":
            faults.append(Fault(t, kind, tuple(sorted(rng.sample(hosts, 2)))))
        else:  # heal, master-crash: no target drawn
            faults.append(Fault(t, kind))
        t += rng.uniform(0.5, 4.0)
    return faults
