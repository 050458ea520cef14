"""One `PoolView` per tick, from one XAPI call per class whatever the size of the pool.

pool, host, host_metrics and VM `get_all_records`, and what says where a VM can run (SR,
PBD, VDI, VBD, network, PIF, VIF, VM_group), issued concurrently: per-object calls would
grow a tick with the pool and multiply the chances of one hanging. The daemon itself reads
them all through event.from (pool_cache.py), one call a tick.

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
        "memory_dynamic_min", "VCPUs_max", "HVM_shadow_multiplier", "domain_type", "groups",
        "VUSBs", "attached_PCIs",
    }),
    "sr": frozenset({"uuid", "name_label", "shared"}),
    "pbd": frozenset({"host", "SR", "currently_attached"}),
    "vdi": frozenset({"SR"}),
    "vbd": frozenset({"VM", "VDI", "empty"}),
    "network": frozenset({"uuid", "name_label"}),
    "pif": frozenset({"host", "network"}),
    "vif": frozenset({"VM", "network"}),
    "vm_group": frozenset({"uuid", "name_label", "placement"}),
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


STORAGE: tuple[RecordClass, ...] = (
    "SR", "PBD", "VDI", "VBD", "network", "PIF", "VIF", "VM_group")
"""What says where a VM can run (xapi_vm_helpers.ml assert_can_boot_here)."""


async def read_snapshot(xapi: RecordSource, *, protection_key: str, now: float) -> Snapshot:
    """The view plus the VMs whose protection value is not understood (log them)."""
    pools, hosts, metrics, vms, *storage = await asyncio.gather(
        xapi.get_all_records("pool"),
        xapi.get_all_records("host"),
        xapi.get_all_records("host_metrics"),
        xapi.get_all_records("VM"),
        *(xapi.get_all_records(cls) for cls in STORAGE),
    )
    return build_snapshot(pools, hosts, metrics, vms, protection_key=protection_key, now=now,
                          storage={cls.lower(): t for cls, t in zip(STORAGE, storage)})


def build_snapshot(
    pools: Mapping[str, Mapping[str, Any]],
    hosts: Mapping[str, Mapping[str, Any]],
    metrics: Mapping[str, Mapping[str, Any]],
    vms: Mapping[str, Mapping[str, Any]],
    *,
    protection_key: str,
    now: float,
    reuse: ReusableVms | None = None,
    storage: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    where: Where | None = None,
) -> Snapshot:
    """Pure: the get_all_records answers (ref -> record) to a Snapshot.

    `storage`: the records of STORAGE's classes by lower-cased class; without them (a
    slave's read) hosts see every SR and network and VMs need none. `where`: what `storage`
    says, read already (the pool cache keeps it while no storage record changes).

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

    if where is None and storage:
        where = Where(storage)
    host_views: dict[HostId, HostView] = {}
    uuid_of: dict[str, HostId] = {}
    for ref, record in hosts.items():
        host = _host(ref, _Record("host", ref, record), metrics, where)
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
        vm_views, warnings = _vms(vms, uuid_of, protection_key, where)

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
            labels=where.labels if where is not None else {},
        ),
        warnings,
    )


def _host_uuids(view: PoolView) -> dict[str, HostId]:
    # The ref -> uuid mapping the view's VMs were resolved with. Should two refs share a
    # uuid, the view keeps one of them: this then differs from any mapping and nothing is
    # reused, the safe side.
    return {host.ref: uuid for uuid, host in view.hosts.items()}


def _vms(
    vms: Mapping[str, Mapping[str, Any]], uuid_of: Mapping[str, HostId], protection_key: str,
    where: Where | None = None,
) -> tuple[dict[VmId, VmView], tuple[ProtectionWarning, ...]]:
    vm_views: dict[VmId, VmView] = {}
    warnings: list[ProtectionWarning] = []
    for ref, record in vms.items():
        vm = _Record("VM", ref, record)
        if vm.flag("is_control_domain") or vm.flag("is_a_template") or vm.flag("is_a_snapshot"):
            continue
        view, warning = _vm(ref, vm, uuid_of, protection_key, where)
        vm_views[view.uuid] = view
        if warning is not None:
            warnings.append(warning)
    return vm_views, tuple(warnings)


def _host(ref: str, host: _Record, metrics: Mapping[str, Mapping[str, Any]],
          where: Where | None = None) -> HostView:
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
        srs=where.host_srs.get(ref, frozenset()) if where is not None else None,
        networks=where.host_networks.get(ref, frozenset()) if where is not None else None,
    )


def _vm(
    ref: str, vm: _Record, uuid_of: Mapping[str, HostId], protection_key: str,
    where: Where | None = None,
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
        memory=start_memory(vm),
        protection=protection,
        order=vm.integer("order", default=0),
        start_delay=vm.integer("start_delay", default=0),
        busy=bool(vm.mapping("current_operations", default={})),
        always_run=vm.flag("ha_always_run", default=False),
        srs=where.vm_srs.get(ref, frozenset()) if where is not None else frozenset(),
        networks=where.vm_networks.get(ref, frozenset()) if where is not None else frozenset(),
        pinned=_pinned(vm),
        group=where.group_of(vm) if where is not None else None,
    )
    return view, warning


_MIB = 1024 * 1024


def _mib_used(n: int) -> int:
    return -(-n // _MIB)


def start_memory(vm: _Record) -> int:
    """Bytes VM.start wants free on its host (xapi_vm_helpers.ml assert_enough_memory_
    available): memory_check.ml vm_compute_start_memory, dynamic_min (static_max for
    pv_in_pvh) in whole MiB, plus the overhead of xapi-idl/memory/memory.ml: 2 MiB of extra
    (1 for PV), the shadow (256 pages a vCPU and 2 pages a MiB of static_max, times the
    shadow multiplier) and 38 pages a vCPU. Fields an old xapi lacks take their defaults."""
    static_max = vm.integer("memory_static_max")
    domain_type = vm.text("domain_type", default="hvm")
    base = static_max if domain_type == "pv_in_pvh" else vm.integer(
        "memory_dynamic_min", default=static_max)
    vcpus = max(1, vm.integer("VCPUs_max", default=1))
    multiplier = vm.number("HVM_shadow_multiplier", default=1.0)
    if domain_type == "pv":
        multiplier = 1.0  # memory.ml Linux.shadow_multiplier_default
    shadow_pages = 256 * vcpus + 2 * _mib_used(static_max)
    shadow = max(1, int(_mib_used(shadow_pages * 4096) * multiplier))
    extra = 1 if domain_type == "pv" else 2
    shim = 23 + _mib_used(static_max) // 90 if domain_type == "pv_in_pvh" else 0
    overhead = extra + shadow + _mib_used(38 * vcpus * 4096) + shim
    return (_mib_used(max(0, base)) + overhead) * _MIB


def _pinned(vm: _Record) -> str:
    # Passthrough of a physical device of its host: no other host has that device
    # (xapi_vm_helpers.ml assert_usbs_available; PCI passthrough by other_config:pci).
    if vm.record.get("VUSBs"):
        return "has a USB device of its host passed through (VUSB)"
    if vm.record.get("attached_PCIs") or "pci" in vm.mapping("other_config", default={}):
        return "has a PCI device of its host passed through"
    return ""


class Where:
    """Which SRs and networks each host sees and each VM needs, from the storage records.

    A host sees an SR through a currently_attached PBD (assert_can_see_SRs), a network
    through any PIF (assert_can_see_named_networks). A VM needs the SRs of its non-empty
    VBDs' VDIs and the networks of its VIFs that have PIFs; a network without PIFs
    (internal) is left out: xapi pins it to where the VMs on it run, which a refusal
    (VM_REQUIRES_NETWORK) then shows, and the next host is tried.
    """

    def __init__(self, storage: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
        def table(cls: str) -> Mapping[str, Mapping[str, Any]]:
            return storage.get(cls, {})

        sr_uuid = {ref: str(r.get("uuid", ref)) for ref, r in table("sr").items()}
        net_uuid = {ref: str(r.get("uuid", ref)) for ref, r in table("network").items()}
        self.labels: dict[str, str] = {}
        for cls, uuids in (("sr", sr_uuid), ("network", net_uuid)):
            for ref, rec in table(cls).items():
                self.labels[uuids[ref]] = str(rec.get("name_label", "")) or uuids[ref]
        self.host_srs: dict[str, frozenset[str]] = {}
        srs: dict[str, set[str]] = {}
        for rec in table("pbd").values():
            if rec.get("currently_attached") is True and rec.get("SR") in sr_uuid:
                srs.setdefault(str(rec.get("host")), set()).add(sr_uuid[rec["SR"]])
        self.host_srs = {h: frozenset(v) for h, v in srs.items()}
        nets: dict[str, set[str]] = {}
        with_pifs: set[str] = set()
        for rec in table("pif").values():
            if rec.get("network") in net_uuid:
                nets.setdefault(str(rec.get("host")), set()).add(net_uuid[rec["network"]])
                with_pifs.add(rec["network"])
        self.host_networks = {h: frozenset(v) for h, v in nets.items()}
        vdi_sr = {ref: r.get("SR") for ref, r in table("vdi").items()}
        vm_srs: dict[str, set[str]] = {}
        for rec in table("vbd").values():
            if rec.get("empty") is True:
                continue
            sr = vdi_sr.get(str(rec.get("VDI")))
            if sr in sr_uuid:
                vm_srs.setdefault(str(rec.get("VM")), set()).add(sr_uuid[sr])
        # One object for each distinct set: 1,000 VMs need a few sets of SRs and networks
        # between them (the shared SR, a host's local one), not 2,000 sets held at rest.
        shared: dict[frozenset[str], frozenset[str]] = {}

        def one(items: set[str]) -> frozenset[str]:
            made = frozenset(items)
            return shared.setdefault(made, made)

        self.vm_srs = {v: one(s) for v, s in vm_srs.items()}
        vm_nets: dict[str, set[str]] = {}
        for rec in table("vif").values():
            if rec.get("network") in with_pifs:
                vm_nets.setdefault(str(rec.get("VM")), set()).add(net_uuid[rec["network"]])
        self.vm_networks = {v: one(n) for v, n in vm_nets.items()}
        self._anti = {ref: str(r.get("uuid", ref)) for ref, r in table("vm_group").items()
                      if r.get("placement") == "anti_affinity"}

    def group_of(self, vm: _Record) -> str | None:
        # xapi_vm_helpers.ml vm_has_anti_affinity: the first of its groups that is one.
        groups = vm.record.get("groups") or []
        if not isinstance(groups, list):
            raise vm.bad("groups", "is not a set of references")
        for g in groups:
            if g in self._anti:
                return self._anti[g]
        return None


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

    def number(self, field: str, default: Any = _MISSING) -> float:
        value = self._get(field, default)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.bad(field, "is not a number")
        try:
            number = float(value)
        except ValueError:
            raise self.bad(field, "is not a number") from None
        if not 0 <= number <= 1e6:
            raise self.bad(field, "is out of range")
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
    # A uuid or ref as it is, unless a reply put a newline or another control character in
    # it: then quoted, so that an error stays one line (tests/xapi/test_xapi_replies.py).
    if not text.isprintable():
        return shown(text)
    return text if len(text) <= 80 else text[:77] + "..."
