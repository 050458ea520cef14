"""The pool as xenhad sees it in one tick: plain, frozen values shared by every module.

The XAPI facade produces these from records; the detector, the recovery state machine and
placement consume them. Nothing here performs I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

HostId = str
"""A host's uuid. Refs are session-scoped in spirit; uuids survive a master transition."""

VmId = str
"""A VM's uuid."""


class PowerState(enum.Enum):
    HALTED = "Halted"
    PAUSED = "Paused"
    RUNNING = "Running"
    SUSPENDED = "Suspended"

    @classmethod
    def parse(cls, value: str) -> PowerState:
        # xapi spells power states capitalised on the wire (datamodel_vm.ml, vm_power_state).
        for state in cls:
            if state.value.lower() == value.lower():
                return state
        raise ValueError(f"unknown VM power state {value!r}")


class Protection(enum.Enum):
    """Whether xenhad brings a VM back after its host dies.

    RESTART is retried until it runs or no capacity exists; BEST_EFFORT is tried a bounded
    number of times after every RESTART VM of the same incident has been placed.
    """

    RESTART = "restart"
    BEST_EFFORT = "best-effort"
    OFF = "off"


@dataclass(frozen=True)
class HostView:
    uuid: HostId
    ref: str
    name: str
    address: str
    enabled: bool
    live: bool
    """host_metrics.live as the master's database has it (slow: up to 600 s stale)."""
    memory_total: int = 0
    memory_free: int = 0
    maintenance: bool = False
    """Marked by `xenhad maintenance on` (host.other_config): never recovered, even once
    xapi re-enables it after a reboot."""
    srs: frozenset[str] | None = None
    """uuids of the SRs with a currently_attached PBD here; None: storage was not read."""
    networks: frozenset[str] | None = None
    """uuids of the networks with a PIF here; None: networks were not read."""


@dataclass(frozen=True)
class VmView:
    uuid: VmId
    ref: str
    name: str
    power_state: PowerState
    resident_on: HostId | None
    affinity: HostId | None
    memory: int
    """Bytes a start needs on a host, as VM.start counts them (memory_check.ml
    vm_compute_start_memory: dynamic_min, or static_max for pv_in_pvh, plus the overhead)."""
    protection: Protection
    order: int = 0
    start_delay: int = 0
    busy: bool = False
    """An operation (start, migrate...) is in progress: xapi's current_operations is not empty."""
    always_run: bool = False
    """ha_always_run: set by VM.start for a "restart" VM, cleared by every shutdown through
    the API (xapi_vm.ml). Halted with it set, the VM died without anyone asking."""
    srs: frozenset[str] = frozenset()
    """uuids of the SRs of its disks (non-empty VBDs' VDIs): a host must see each."""
    networks: frozenset[str] = frozenset()
    """uuids of its VIFs' networks that have PIFs: a host must have a PIF on each."""
    pinned: str = ""
    """Why it can run on no other host (a passthrough device of its host); "" if none."""
    group: str | None = None
    """uuid of its anti-affinity VM group (datamodel_vm_group.ml)."""

    @property
    def running(self) -> bool:
        return self.power_state in (PowerState.RUNNING, PowerState.PAUSED)


@dataclass(frozen=True)
class PoolView:
    """One consistent snapshot of the pool, taken at `taken_at` (monotonic seconds)."""

    pool_ref: str
    master: HostId
    ha_enabled: bool
    hosts: Mapping[HostId, HostView]
    vms: Mapping[VmId, VmView]
    """Only guest VMs: control domains, templates and snapshots are filtered out."""
    other_config: Mapping[str, str] = field(default_factory=dict)
    taken_at: float = 0.0
    pool_uuid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    """name_label of each SR and network by uuid, for the operator's messages."""

    def vms_on(self, host: HostId) -> list[VmView]:
        return [vm for vm in self.vms.values() if vm.resident_on == host]
