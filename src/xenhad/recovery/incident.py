"""What an incident is: the recovery of one confirmed-down host, as plain frozen values.

The state is a fold of events (see machine.py): the journal stores the events, and replaying
them rebuilds exactly this state after a crash of the daemon.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from xenhad.model import HostId, Protection, VmId, VmView


class Phase(enum.Enum):
    FENCING = "fencing"
    WAITING_FENCE = "waiting-fence"
    """No proof the host is off: nothing is touched; fencing is retried with backoff."""
    RESETTING = "resetting"
    RESTARTING = "restarting"
    DONE = "done"
    ABORTED = "aborted"
    """Closed without restarting anything: the host came back, or XAPI contradicted the fence."""

    @property
    def closed(self) -> bool:
        return self in (Phase.DONE, Phase.ABORTED)


class VmStatus(enum.Enum):
    PENDING = "pending"
    """Still marked running on the dead host: its power state has not been reset yet."""
    RESET = "reset"
    """Halted in XAPI, waiting for a start (or for its retry time)."""
    STARTING = "starting"
    UNKNOWN = "unknown"
    """A start timed out after it was sent, or the daemon died during it: XAPI must say."""
    RUNNING = "running"
    FAILED = "failed"
    LEFT = "left"
    """Not protected: reset so the database tells the truth, but not restarted."""
    STRANDED = "stranded"
    """No other host can run it (its disk on the dead host's local SR, a network or device
    no survivor has, refused by every host that could): not attempted, and said why."""

    @property
    def final(self) -> bool:
        return self in (VmStatus.RUNNING, VmStatus.FAILED, VmStatus.LEFT, VmStatus.STRANDED)


@dataclass(frozen=True)
class VmSnapshot:
    """A VM as it was on the host when the incident opened (journaled: XAPI changes later)."""

    uuid: VmId
    name: str
    protection: Protection
    memory: int
    affinity: HostId | None = None
    order: int = 0
    start_delay: int = 0
    """Seconds before the next `order` starts once this VM runs (VM.start_delay)."""
    srs: frozenset[str] = frozenset()
    networks: frozenset[str] = frozenset()
    pinned: str = ""
    group: str | None = None
    """Where it can run (model.VmView): journals from before these were kept have none."""

    @classmethod
    def of(cls, vm: VmView) -> VmSnapshot:
        return cls(uuid=vm.uuid, name=vm.name, protection=vm.protection, memory=vm.memory,
                   affinity=vm.affinity, order=vm.order, start_delay=vm.start_delay,
                   srs=vm.srs, networks=vm.networks, pinned=vm.pinned, group=vm.group)


@dataclass(frozen=True)
class VmTask:
    vm: VmSnapshot
    status: VmStatus = VmStatus.PENDING
    host: HostId | None = None
    """Where it runs now (RUNNING) or is being started (STARTING)."""
    attempts: int = 0
    retry_at: float = 0.0
    last_error: str = ""
    refused: frozenset[HostId] = frozenset()
    """Hosts that refused to start it for a reason of their own: placed elsewhere next."""


@dataclass(frozen=True)
class Settings:
    """The knobs of recovery that the pure machine needs (from config.recovery)."""

    best_effort_attempts: int = 3
    retry_backoff: float = 5.0
    retry_backoff_max: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1-based): doubles from retry_backoff, capped."""
        return float(min(self.retry_backoff_max, self.retry_backoff * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class Incident:
    id: str
    host: HostId
    host_name: str
    opened_at: float
    unsafe: bool
    """trust-liveness: the host is treated as off on XAPI's word alone."""
    phase: Phase = Phase.FENCING
    vms: Mapping[VmId, VmTask] = field(default_factory=dict)
    fence_attempts: int = 0
    fenced_by: str = ""
    retry_at: float = 0.0
    capacity_pending: bool = False
    """A capacity measurement was asked for and its answer has not come back."""
    next_wave_at: float = 0.0
    """The next wave starts no earlier: a VM of this one was seen running before our start
    of it answered, and its start_delay is counted from then (machine._observed)."""
    closed_at: float | None = None
    note: str = ""

    def tasks(self, *statuses: VmStatus) -> list[VmTask]:
        return [t for t in self.vms.values() if t.status in statuses]
