"""What can happen to an incident (events) and what it asks the world to do (actions).

Events are the journal's records: `encode` turns one into a JSON-ready dict and `decode`
turns it back, so replaying the journal feeds the machine exactly what it saw before.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from xenhad.model import HostId, Protection, VmId
from xenhad.recovery.incident import VmSnapshot


class StartOutcome(enum.Enum):
    STARTED = "started"
    ALREADY_RUNNING = "already-running"
    RETRY = "retry"
    """A condition that may pass: no memory, host disabled or offline, an operation in progress."""
    FAILED = "failed"
    """A condition that will not pass by waiting: the VM cannot be started by us."""
    REFUSED = "refused"
    """This host cannot run it (VM_REQUIRES_SR, VM_REQUIRES_GPU, HOST_NOT_ENOUGH_PCPUS...):
    another host that can is tried next."""
    UNKNOWN = "unknown"
    """The call may have happened (timeout after sending): XAPI's next snapshot decides."""


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    incident: str
    host: HostId
    host_name: str
    now: float
    vms: tuple[VmSnapshot, ...]
    unsafe: bool
    offline: bool = False
    """Protected VMs XAPI shows Halted though nobody shut them down (offline.py): no host
    to fence, nothing to reset; they are only started again. `host` is OFFLINE."""
    evidence: str = ""
    """Why the host was confirmed down, as the acting master saw it (missed ticks, its
    heartbeats, the quorum): for `xenhad history` and `xenhad status`. Journals written
    before this field read ""."""
    pool_hosts: tuple[tuple[HostId, str], ...] = ()
    """(uuid, name_label) of every host of the pool then, so `xenhad history` names the
    hosts VMs were restarted on. Journals written before this field read ()."""


@dataclass(frozen=True)
class FenceDone:
    now: float
    off: bool
    backend: str
    detail: str
    returned: bool = False
    """No fence was tried: the host was found back (its daemon beats, or its xapi answers)
    just before a retry (executor.py). Journals written before this field read False."""


@dataclass(frozen=True)
class ResetDone:
    now: float
    vm: VmId
    ok: bool
    code: str = ""
    detail: str = ""


@dataclass(frozen=True)
class CapacityMeasured:
    now: float
    hosts: tuple[tuple[HostId, int], ...]
    """(host uuid, free bytes) for each live, enabled host other than the dead one."""
    sees: tuple[tuple[HostId, tuple[str, ...], tuple[str, ...]], ...] = ()
    """(host uuid, SRs plugged, networks with a PIF) of every host but the dead one, those
    that receive no VM now included. Journals written before storage was read have none:
    every host is then taken to see everything."""
    grouped: tuple[tuple[str, HostId, VmId], ...] = ()
    """(anti-affinity group, host, VM) of every group member running on another host."""
    labels: tuple[tuple[str, str], ...] = ()
    """(uuid, name) of the hosts, SRs and networks named in a reason."""


@dataclass(frozen=True)
class StartDone:
    now: float
    vm: VmId
    host: HostId
    outcome: StartOutcome
    code: str = ""
    detail: str = ""


@dataclass(frozen=True)
class VmObserved:
    """What XAPI says of one of the incident's VMs in a fresh snapshot."""

    now: float
    vm: VmId
    running: bool
    resident_on: HostId | None
    busy: bool = False
    """An operation (such as a start) is in progress on it."""


@dataclass(frozen=True)
class HostReturned:
    now: float


@dataclass(frozen=True)
class Wake:
    """Time passed: retries whose time has come may go."""

    now: float


@dataclass(frozen=True)
class Resumed:
    """The daemon restarted with this incident open: whatever was in flight is in doubt."""

    now: float


Event = Union[
    Opened, FenceDone, ResetDone, CapacityMeasured, StartDone, VmObserved, HostReturned, Wake,
    Resumed,
]

# -- actions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FenceHost:
    host: HostId
    retry: bool = False
    """A waiting incident's later attempt: the host may have come back meanwhile."""


@dataclass(frozen=True)
class ResetVm:
    vm: VmId
    host: HostId
    """The dead host: a VM that XAPI now places anywhere else is not reset."""


@dataclass(frozen=True)
class MeasureCapacity:
    exclude: HostId


@dataclass(frozen=True)
class StartVm:
    vm: VmId
    host: HostId


Action = Union[FenceHost, ResetVm, MeasureCapacity, StartVm]

# -- journal codec -----------------------------------------------------------------------

_EVENT_TYPES: dict[str, type[Any]] = {
    "opened": Opened,
    "fence-done": FenceDone,
    "reset-done": ResetDone,
    "capacity": CapacityMeasured,
    "start-done": StartDone,
    "vm-observed": VmObserved,
    "host-returned": HostReturned,
    "wake": Wake,
    "resumed": Resumed,
}
_KIND_OF = {cls: kind for kind, cls in _EVENT_TYPES.items()}


class CodecError(ValueError):
    """A journal record that is not an event this version understands."""


def encode(event: Event) -> dict[str, Any]:
    record: dict[str, Any] = {"event": _KIND_OF[type(event)]}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif f.name == "vms":
            value = [_encode_vm(vm) for vm in value]
        elif f.name in ("hosts", "grouped", "labels", "pool_hosts"):
            value = [list(entry) for entry in value]
        elif f.name == "sees":
            value = [[h, list(srs), list(nets)] for h, srs, nets in value]
        record[f.name] = value
    return record


def decode(record: Mapping[str, Any]) -> Event:
    kind = record.get("event")
    cls = _EVENT_TYPES.get(str(kind))
    if cls is None:
        raise CodecError(f"unknown event kind {kind!r}")
    kwargs: dict[str, Any] = {}
    try:
        for f in dataclasses.fields(cls):
            if f.name not in record:
                continue
            value = record[f.name]
            if f.name == "vms":
                value = tuple(_decode_vm(v) for v in value)
            elif f.name == "hosts":
                value = tuple((str(h), int(m)) for h, m in value)
            elif f.name == "sees":
                value = tuple((str(h), tuple(map(str, srs)), tuple(map(str, nets)))
                              for h, srs, nets in value)
            elif f.name == "grouped":
                value = tuple((str(g), str(h), str(v)) for g, h, v in value)
            elif f.name == "labels":
                value = tuple((str(k), str(n)) for k, n in value)
            elif f.name == "pool_hosts":
                value = tuple((str(h), str(n)) for h, n in value)
            elif f.name == "outcome":
                value = StartOutcome(value)
            kwargs[f.name] = value
        event: Event = cls(**kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise CodecError(f"malformed {kind} event: {exc}") from exc
    return event


def _encode_vm(vm: VmSnapshot) -> dict[str, Any]:
    return {
        "uuid": vm.uuid,
        "name": vm.name,
        "protection": vm.protection.value,
        "memory": vm.memory,
        "affinity": vm.affinity,
        "order": vm.order,
        "start_delay": vm.start_delay,
        "srs": sorted(vm.srs),
        "networks": sorted(vm.networks),
        "pinned": vm.pinned,
        "group": vm.group,
    }


def _decode_vm(raw: Mapping[str, Any]) -> VmSnapshot:
    return VmSnapshot(
        uuid=str(raw["uuid"]),
        name=str(raw["name"]),
        protection=Protection(raw["protection"]),
        memory=int(raw["memory"]),
        affinity=raw.get("affinity"),
        order=int(raw.get("order", 0)),
        start_delay=int(raw.get("start_delay", 0)),  # absent from older journals
        srs=frozenset(map(str, raw.get("srs", ()))),
        networks=frozenset(map(str, raw.get("networks", ()))),
        pinned=str(raw.get("pinned", "")),
        group=None if raw.get("group") is None else str(raw["group"]),
    )
