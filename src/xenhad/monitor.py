"""One `PoolView` per tick, from four XAPI calls whatever the size of the pool.

pool, host, host_metrics and VM `get_all_records`, issued concurrently: per-object calls
would grow a tick with the pool and multiply the chances of one hanging.

A record xenhad cannot read fails the whole snapshot with one `XapiReplyError` line naming
the object and the field, rather than a half-understood view the detector would act on.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from xenhad.model import HostId, HostView, PoolView, PowerState, Protection, VmId, VmView
from xenhad.xapi.client import RecordClass
from xenhad.xapi.errors import XapiReplyError, shown

NULL_REF = "OpaqueRef:NULL"
MAINTENANCE_KEY = "xenhad_maintenance"
"""host.other_config key set by `xenhad maintenance on`."""

_PROTECTION_WORDS = {
    "restart": Protection.RESTART,
    "best-effort": Protection.BEST_EFFORT,
    "off": Protection.OFF,
}

# datamodel_vm.ml: ha_restart_priority is "restart", "best-effort" or "" (unprotected).
_HA_RESTART_PRIORITY = {
    "restart": Protection.RESTART,
    "best-effort": Protection.BEST_EFFORT,
    "": Protection.OFF,
}


FIELDS: Mapping[str, frozenset[str]] = {
    "pool": frozenset({"uuid", "master", "ha_enabled", "other_config"}),
    "host": frozenset({"uuid", "name_label", "address", "enabled", "metrics", "other_config"}),
    "host_metrics": frozenset({"uuid", "live", "memory_total", "memory_free"}),
    "vm": frozenset({
        "uuid", "name_label", "power_state", "resident_on", "affinity", "memory_static_max",
        "ha_restart_priority", "ha_always_run", "order", "start_delay", "current_operations",
        "other_config", "is_control_domain", "is_a_template", "is_a_snapshot",
    }),
}
"""Every field build_snapshot reads, by lower-cased class: all a cache of records keeps. A
real VM record has about a hundred more (last_booted_record alone is a whole serialised
record), which a 1,000-VM pool would otherwise hold in memory for nothing."""


class RecordSource(Protocol):
    """What snapshot() needs from the facade (`xenhad.xapi.Xapi` is one)."""

    async def get_all_records(self, cls: RecordClass) -> dict[str, dict[str, Any]]: ...


@dataclass(frozen=True)
class ProtectionWarning:
    """A VM whose protection setting we do not understand: it is treated as off."""

    vm: str
    name: str
    field: str
    """"other_config:<key>" or "ha_restart_priority"."""
    value: str

    @property
    def message(self) -> str:
        return (
            f"VM {shown(self.name)} ({self.vm}) has {shown(self.field)} = {shown(self.value)}, "
            'which xenhad does not understand: it is NOT protected; set it to "restart", '
            '"best-effort" or "off"'
        )


@dataclass(frozen=True)
class Snapshot:
    view: PoolView
    warnings: tuple[ProtectionWarning, ...] = ()


@dataclass(frozen=True)
class ReusableVms:
    """A snapshot built from the very VM records the next build_snapshot is given.

    Only a caller that follows events can know the records are the same (no VM event since
    `snapshot` was built); build_snapshot checks the rest of what a VM view depends on.
    """

    snapshot: Snapshot
    protection_key: str
    """The key `snapshot` was built with."""


async def snapshot(xapi: RecordSource, *, protection_key: str, now: float) -> PoolView:
    """The pool as XAPI describes it now (4 calls). See `read_snapshot` for the warnings."""
    return (await read_snapshot(xapi, protection_key=protection_key, now=now)).view


async def read_snapshot(xapi: RecordSource, *, protection_key: str, now: float) -> Snapshot:
    """The view plus the VMs whose protection value is not understood (log them)."""
    pools, hosts, metrics, vms = await asyncio.gather(
        xapi.get_all_records("pool"),
        xapi.get_all_records("host"),
        xapi.get_all_records("host_metrics"),
        xapi.get_all_records("VM"),
    )
    return build_snapshot(pools, hosts, metrics, vms, protection_key=protection_key, now=now)


def build_snapshot(
    pools: Mapping[str, Mapping[str, Any]],
    hosts: Mapping[str, Mapping[str, Any]],
    metrics: Mapping[str, Mapping[str, Any]],
    vms: Mapping[str, Mapping[str, Any]],
    *,
    protection_key: str,
    now: float,
    reuse: ReusableVms | None = None,
) -> Snapshot:
    """Pure: the four get_all_records answers (ref -> record) to a Snapshot.

    With `reuse`, its VM views and warnings are taken as they are when building them again
    would give the same: the same protection_key, and every host ref resolving to the same
    uuid (resident_on, affinity). A pool at rest sees events about the pool and its hosts
    only, and rebuilding 1,000 VM views for each was most of what reading it cost.
    """
    if len(pools) != 1:
        raise XapiReplyError(
            f"xapi pool.get_all_records returned {len(pools)} pools, expected exactly one"
        )
    pool_ref, pool_record = next(iter(pools.items()))
    pool = _Record("pool", pool_ref, pool_record)

    host_views: dict[HostId, HostView] = {}
    uuid_of: dict[str, HostId] = {}
    for ref, record in hosts.items():
        host = _host(ref, _Record("host", ref, record), metrics)
        host_views[host.uuid] = host
        uuid_of[ref] = host.uuid

    master_ref = pool.ref("master")
    if master_ref not in uuid_of:
        raise XapiReplyError(
            f"xapi pool {pool.ident}: field master = {master_ref!r} is not a host in "
            "host.get_all_records"
        )

    vm_views: Mapping[VmId, VmView]
    warnings: tuple[ProtectionWarning, ...]
    if (
        reuse is not None
        and reuse.protection_key == protection_key
        and _host_uuids(reuse.snapshot.view) == uuid_of
    ):
        # _vm's checks passed on these same records with this same mapping, so they would
        # pass again; a VM resident_on a host that has since vanished cannot slip through,
        # as the host's going changes the mapping and the rebuild below fails the tick.
        vm_views, warnings = reuse.snapshot.view.vms, reuse.snapshot.warnings
    else:
        vm_views, warnings = _vms(vms, uuid_of, protection_key)

    return Snapshot(
        PoolView(
            pool_ref=pool_ref,
            pool_uuid=pool.uuid(),
            master=uuid_of[master_ref],
            ha_enabled=pool.flag("ha_enabled"),
            hosts=host_views,
            vms=vm_views,
            other_config=pool.mapping("other_config"),
            taken_at=now,
        ),
        warnings,
    )


def _host_uuids(view: PoolView) -> dict[str, HostId]:
    # The ref -> uuid mapping the view's VMs were resolved with. Should two refs share a
    # uuid, the view keeps one of them: this then differs from any mapping and nothing is
    # reused, the safe side.
    return {host.ref: uuid for uuid, host in view.hosts.items()}


def _vms(
    vms: Mapping[str, Mapping[str, Any]], uuid_of: Mapping[str, HostId], protection_key: str
) -> tuple[dict[VmId, VmView], tuple[ProtectionWarning, ...]]:
    vm_views: dict[VmId, VmView] = {}
    warnings: list[ProtectionWarning] = []
    for ref, record in vms.items():
        vm = _Record("VM", ref, record)
        if vm.flag("is_control_domain") or vm.flag("is_a_template") or vm.flag("is_a_snapshot"):
            continue
        view, warning = _vm(ref, vm, uuid_of, protection_key)
        vm_views[view.uuid] = view
        if warning is not None:
            warnings.append(warning)
    return vm_views, tuple(warnings)


def _host(ref: str, host: _Record, metrics: Mapping[str, Mapping[str, Any]]) -> HostView:
    metrics_ref = host.ref("metrics")
    record = metrics.get(metrics_ref)
    if record is None:
        # A host without a metrics object (or whose metrics vanished between our calls) has
        # no liveness to report: count it as not live, the safe reading for a detector that
        # also needs the host's own xapi to be silent before it acts.
        live, total, free = False, 0, 0
    else:
        m = _Record("host_metrics", metrics_ref, record, owner=f"host {host.ident}")
        live, total, free = m.flag("live"), m.integer("memory_total"), m.integer("memory_free")
    return HostView(
        uuid=host.uuid(),
        ref=ref,
        name=host.text("name_label"),
        address=host.text("address"),
        enabled=host.flag("enabled"),
        live=live,
        memory_total=total,
        memory_free=free,
        maintenance=MAINTENANCE_KEY in host.mapping("other_config", {}),
    )


def _vm(
    ref: str, vm: _Record, uuid_of: Mapping[str, HostId], protection_key: str
) -> tuple[VmView, ProtectionWarning | None]:
    uuid = vm.uuid()
    name = vm.text("name_label")
    resident_ref = vm.ref("resident_on")
    resident: HostId | None = None
    if resident_ref != NULL_REF:
        if resident_ref not in uuid_of:
            # Fail the tick rather than believe the VM runs nowhere.
            raise XapiReplyError(
                f"xapi VM {vm.ident}: field resident_on = {resident_ref!r} is not a host in "
                "host.get_all_records (pool changed between calls?)"
            )
        resident = uuid_of[resident_ref]
    # An affinity to a host that is gone is only a stale hint.
    affinity = uuid_of.get(vm.ref("affinity"))
    try:
        power_state = PowerState.parse(vm.text("power_state"))
    except ValueError:
        raise vm.bad("power_state", "is not a VM power state") from None
    protection, warning = _protection(vm, uuid, name, protection_key)
    view = VmView(
        uuid=uuid,
        ref=ref,
        name=name,
        power_state=power_state,
        resident_on=resident,
        affinity=affinity,
        memory=vm.integer("memory_static_max"),
        protection=protection,
        order=vm.integer("order", default=0),
        start_delay=vm.integer("start_delay", default=0),
        busy=bool(vm.mapping("current_operations", default={})),
        always_run=vm.flag("ha_always_run", default=False),
    )
    return view, warning


def _protection(
    vm: _Record, uuid: str, name: str, protection_key: str
) -> tuple[Protection, ProtectionWarning | None]:
    other_config = vm.mapping("other_config", default={})
    if protection_key in other_config:
        value = other_config[protection_key]
        word = _PROTECTION_WORDS.get(value.strip().lower())
        if word is not None:
            return word, None
        return Protection.OFF, ProtectionWarning(
            uuid, name, f"other_config:{protection_key}", value
        )
    value = vm.text("ha_restart_priority", default="")
    word = _HA_RESTART_PRIORITY.get(value)
    if word is not None:
        return word, None
    return Protection.OFF, ProtectionWarning(uuid, name, "ha_restart_priority", value)


_MISSING = object()


class _Record:
    """Typed reads of one XAPI record; every failure names the object and the field."""

    def __init__(self, kind: str, ref: str, record: Mapping[str, Any], *, owner: str = "") -> None:
        if not isinstance(ref, str):
            raise XapiReplyError(f"xapi {kind} {shown(ref)}: the ref is not a string")
        if not isinstance(record, Mapping):
            raise XapiReplyError(
                f"xapi {kind} {_short(ref)}: record is {type(record).__name__}, not a map of "
                "fields"
            )
        self.kind = kind
        self.record = record
        uuid = record.get("uuid")
        self.ident = f"{_short(uuid)} ({_short(ref)})" if isinstance(uuid, str) and uuid \
            else _short(ref)
        if owner:
            self.ident += f" of {owner}"

    def bad(self, field: str, problem: str) -> XapiReplyError:
        value = self.record.get(field, None)
        return XapiReplyError(
            f"xapi {self.kind} {self.ident}: field {field} = {shown(value)} {problem}"
        )

    def _get(self, field: str, default: Any) -> Any:
        value = self.record.get(field, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise XapiReplyError(f"xapi {self.kind} {self.ident}: field {field} is missing")
            return default
        return value

    def uuid(self) -> str:
        value = self.text("uuid")
        if not value:
            raise self.bad("uuid", "is empty")
        if len(value) > 128:  # a uuid is 36 characters: this one would fill every log line
            raise self.bad("uuid", "is not a uuid")
        return value.lower()

    def text(self, field: str, default: Any = _MISSING) -> str:
        value = self._get(field, default)
        if not isinstance(value, str):
            raise self.bad(field, "is not a string")
        return value

    def ref(self, field: str) -> str:
        value = self.text(field)
        if not value.startswith("OpaqueRef:"):
            raise self.bad(field, "is not an object reference")
        return value

    def flag(self, field: str, default: Any = _MISSING) -> bool:
        value = self._get(field, default)
        if isinstance(value, bool):
            return value
        # Tolerate the spelling some proxies use.
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise self.bad(field, "is not a boolean")

    def integer(self, field: str, default: Any = _MISSING) -> int:
        value = self._get(field, default)
        # int64 travels as a decimal string in XML-RPC (XAPI-FACTS): plain ASCII digits,
        # which int() alone would widen to "1_000", "١٢" or a 4,000-digit number.
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _INT64_TEXT.fullmatch(value.strip()):
            number = int(value.strip())
        if number is None or not _INT64_MIN <= number <= _INT64_MAX:
            raise self.bad(field, "is not a 64-bit integer")
        return number

    def mapping(self, field: str, default: Any = _MISSING) -> dict[str, str]:
        value = self._get(field, default)
        if not isinstance(value, Mapping):
            raise self.bad(field, "is not a map")
        # XAPI's maps are (string -> string) or (string -> enum): a nested value is not
        # xapi's, and str() of one a million levels deep would never come back.
        if not all(isinstance(v, _SCALARS) for v in value.values()):
            raise self.bad(field, "is not a map of strings")
        return {str(k): str(v) for k, v in value.items()}


_SCALARS = (str, int, float, bool)
_INT64_TEXT = re.compile(r"[+-]?[0-9]{1,19}")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."
