"""The pool database as xapi keeps it: tables of records keyed by OpaqueRef.

Each simulated host holds its own `Db`: the master's is authoritative and mutated by API
calls; a slave's is a read-only copy pushed by the master (pool_db_sync_interval, or at
once on pool.sync_database), the copy xapi restarts on after emergency_transition_to_master.
Every change bumps a generation, which is what event.from tokens count (xapi_event.ml).
"""

from __future__ import annotations

import random
import uuid as uuidlib
import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from xenhad.sim.spec import GiB, PoolSpec

NULL_REF = "OpaqueRef:NULL"
CLASSES = ("pool", "host", "host_metrics", "VM")
"""Table names as xapi spells them (the event class is the lower-case form)."""

Record = dict[str, Any]


class XapiFailure(Exception):
    """An xapi Server_error: `code` from api_errors.ml and its string params."""

    def __init__(self, code: str, params: list[str] | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.params = [str(p) for p in (params or [])]

    def description(self) -> list[str]:
        return [self.code, *self.params]


class I32(int):
    """An int xapi marshals as an XML-RPC int (int32), not as an int64 string."""


def _copy_record(rec: Record) -> Record:
    return {k: (v.copy() if isinstance(v, (dict, list)) else v) for k, v in rec.items()}


class Db:
    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Record]] = {c: {} for c in CLASSES}
        self.class_of: dict[str, str] = {}
        self.created: dict[str, int] = {}
        self.modified: dict[str, int] = {}
        self.deleted: list[tuple[int, str, str]] = []
        self.generation = 0
        self.sessions: dict[str, Record] = {}

    def copy(self) -> Db:
        other = Db()
        other.tables = {c: {r: _copy_record(rec) for r, rec in t.items()}
                        for c, t in self.tables.items()}
        other.class_of = dict(self.class_of)
        other.created = dict(self.created)
        other.modified = dict(self.modified)
        other.deleted = list(self.deleted)
        other.generation = self.generation
        other.sessions = {r: dict(s) for r, s in self.sessions.items()}
        return other

    def add(self, cls: str, ref: str, rec: Record) -> None:
        self.generation += 1
        self.tables[cls][ref] = rec
        self.class_of[ref] = cls
        self.created[ref] = self.generation
        self.modified[ref] = self.generation

    def get(self, cls: str, ref: str) -> Record:
        rec = self.tables[cls].get(ref)
        if rec is None:
            # api_errors.ml HANDLE_INVALID [class; ref]
            raise XapiFailure("HANDLE_INVALID", [cls, ref])
        return rec

    def set(self, ref: str, field: str, value: Any) -> None:
        rec = self.tables[self.class_of[ref]][ref]
        if rec.get(field) == value:
            return
        old = rec.get(field)
        self.generation += 1
        rec[field] = value
        self.modified[ref] = self.generation
        if self.class_of[ref] == "VM" and field in _PLACES_VM:
            # A VM arriving on or leaving a host changes that host's derived fields
            # (resident_VMs, and its metrics' memory_free, which render() computes): xapi's
            # database emits a "mod" event for the other end of a reference too, and
            # its memory monitor rewrites memory_free. Event readers must see both.
            for host_ref in (old, value):
                host = self.tables["host"].get(host_ref) if isinstance(host_ref, str) else None
                if host is not None and isinstance(host_ref, str):
                    self.touch(host_ref)
                    metrics = host.get("metrics")
                    if isinstance(metrics, str) and metrics in self.tables["host_metrics"]:
                        self.touch(metrics)

    def touch(self, ref: str) -> None:
        self.generation += 1
        self.modified[ref] = self.generation

    def by_uuid(self, cls: str, uuid: str) -> str:
        for ref, rec in self.tables[cls].items():
            if rec["uuid"] == uuid:
                return ref
        raise XapiFailure("UUID_INVALID", [cls, uuid])

    def pool_ref(self) -> str:
        return next(iter(self.tables["pool"]))

    def pool(self) -> Record:
        return self.tables["pool"][self.pool_ref()]


@dataclass(frozen=True)
class SeedHost:
    name: str
    uuid: str
    ref: str
    metrics_ref: str
    dom0_ref: str
    address: str


def _now_datetime(wall: float) -> xmlrpc.client.DateTime:
    import time

    return xmlrpc.client.DateTime(time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime(wall)))


class Ids:
    """Seeded uuids and refs, so the same spec always builds the same pool."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"xenhad-sim-ids-{seed}")

    def uuid(self) -> str:
        return str(uuidlib.UUID(int=self._rng.getrandbits(128), version=4))

    def ref(self) -> str:
        return f"OpaqueRef:{self.uuid()}"


def vm_record(uuid: str, name: str, *, memory: int, power_state: str = "Halted",
              resident_on: str = NULL_REF, affinity: str = NULL_REF,
              is_control_domain: bool = False, is_a_template: bool = False,
              ha_restart_priority: str = "", ha_always_run: bool = False, order: int = 0,
              start_delay: int = 0, domid: int = -1, description: str = "") -> Record:
    # Field names and shapes from idl/datamodel_vm.ml (the subset xenhad and tools read).
    return {
        "uuid": uuid, "name_label": name, "name_description": description,
        "power_state": power_state, "resident_on": resident_on,
        "scheduled_to_be_resident_on": NULL_REF, "affinity": affinity,
        "is_control_domain": is_control_domain, "is_a_template": is_a_template,
        "is_default_template": is_a_template, "is_a_snapshot": False,
        "snapshot_of": NULL_REF, "snapshots": [],
        "ha_restart_priority": ha_restart_priority, "ha_always_run": ha_always_run,
        "order": order, "start_delay": start_delay, "shutdown_delay": 0,
        "memory_static_max": memory, "memory_static_min": min(memory, 512 * 1024**2),
        "memory_dynamic_max": memory, "memory_dynamic_min": memory,
        "memory_target": memory if power_state == "Running" else 0, "memory_overhead": 0,
        "VCPUs_max": 2, "VCPUs_at_startup": 2, "domid": domid,
        "other_config": {}, "current_operations": {},
        "allowed_operations": [] if is_control_domain else ["start", "hard_shutdown"],
        "blocked_operations": {}, "tags": [], "user_version": 1,
        "domain_type": "pv" if is_control_domain else "hvm",
        "metrics": NULL_REF, "guest_metrics": NULL_REF, "appliance": NULL_REF,
        "VBDs": [], "VIFs": [], "consoles": [], "platform": {}, "HVM_boot_policy": "",
        "PV_bootloader": "", "xenstore_data": {}, "recommendations": "",
        "last_booted_record": "",
    }


def boot_record(rec: Record) -> str:
    """What a start leaves in last_booted_record: the whole VM record as it booted, an
    s-expression, with its own last_booted_record blanked (helpers.ml set_boot_record). It
    makes a running VM's record several times the size of a halted one's, as in xapi."""

    def sexpr(value: Any) -> str:
        if isinstance(value, dict):
            return "(" + "".join(f"({sexpr(k)} {sexpr(v)})" for k, v in value.items()) + ")"
        if isinstance(value, list):
            return "(" + " ".join(sexpr(v) for v in value) + ")"
        return f"'{str(value).lower() if isinstance(value, bool) else value}'"

    return sexpr({**rec, "last_booted_record": ""})


def build_pool(spec: PoolSpec, wall: float) -> tuple[Db, list[SeedHost]]:
    """The seeded initial database: hosts host1..hostN (host1 master), one dom0 each,
    a couple of templates and guest VMs vm001.. spread so that they fit."""
    ids = Ids(spec.seed)
    rng = random.Random(f"xenhad-sim-content-{spec.seed}")
    db = Db()
    hosts: list[SeedHost] = []
    for i in range(spec.hosts):
        hosts.append(SeedHost(name=f"host{i + 1}", uuid=ids.uuid(), ref=ids.ref(),
                              metrics_ref=ids.ref(), dom0_ref=ids.ref(),
                              address=spec.address(i)))
    pool_ref = ids.ref()
    db.add("pool", pool_ref, {
        # idl/datamodel_pool.ml
        "uuid": ids.uuid(), "name_label": spec.pool_name, "name_description": "",
        "master": hosts[0].ref, "default_SR": NULL_REF, "ha_enabled": spec.ha_enabled,
        "ha_configuration": {}, "ha_statefiles": [], "ha_host_failures_to_tolerate": 0,
        "ha_plan_exists_for": 0, "ha_allow_overcommit": False, "ha_overcommitted": False,
        "other_config": {}, "current_operations": {}, "allowed_operations": [],
        "tags": [], "gui_config": {},
    })
    stamp = _now_datetime(wall)
    for h in hosts:
        db.add("host", h.ref, {
            # idl/datamodel_host.ml; resident_VMs is filled in when a record is read
            "uuid": h.uuid, "name_label": h.name, "name_description": "", "address": h.address,
            "hostname": h.name, "enabled": True, "memory_overhead": spec.host_memory_overhead,
            "metrics": h.metrics_ref, "control_domain": h.dom0_ref,
            "API_version_major": 2, "API_version_minor": 21, "API_version_vendor": "XenSource",
            "software_version": {"product_brand": "XCP-ng", "product_version": "8.3.0",
                                 "platform_name": "XCP", "xapi": "24.19"},
            "other_config": {}, "current_operations": {}, "allowed_operations": [],
            "capabilities": [], "cpu_info": {"cpu_count": "32"}, "host_CPUs": [], "PBDs": [],
            "PIFs": [], "edition": "xcp-ng", "power_on_mode": "", "power_on_config": {},
            "tags": [],
        })
        db.add("host_metrics", h.metrics_ref, {
            # idl/datamodel_host.ml (host_metrics); memory_free is filled in when read
            "uuid": ids.uuid(), "memory_total": spec.host_memory, "memory_free": 0,
            "live": True, "last_updated": stamp, "other_config": {},
        })
        db.add("VM", h.dom0_ref, vm_record(
            ids.uuid(), f"Control domain on host: {h.name}", memory=spec.dom0_memory,
            power_state="Running", resident_on=h.ref, affinity=h.ref,
            is_control_domain=True, domid=0, description="The domain which manages physical "
            "devices and manages other domains"))
    template_names = ["Debian Bookworm 12", "Windows Server 2022 (64-bit)",
                      "Rocky Linux 9", "Ubuntu Noble Numbat 24.04"]
    for t in range(spec.templates):
        db.add("VM", ids.ref(), vm_record(
            ids.uuid(), template_names[t % len(template_names)], memory=2 * GiB,
            is_a_template=True))
    guest_capacity = spec.host_memory - spec.dom0_memory - spec.host_memory_overhead
    free = [guest_capacity] * spec.hosts
    sizes = [1 * GiB, 2 * GiB, 2 * GiB, 4 * GiB, 4 * GiB, 8 * GiB, 16 * GiB]
    for v in range(spec.vms):
        name = f"vm{v + 1:03d}"
        memory = rng.choice(sizes)
        priority = rng.choices(["restart", "best-effort", ""], weights=[5, 3, 2])[0]
        order = rng.choices([0, 1, 2, 3], weights=[6, 2, 1, 1])[0]
        start_delay = rng.choices([0, 5, 10], weights=[8, 1, 1])[0]
        slot = v % spec.hosts
        affinity = hosts[slot].ref if rng.random() < 0.3 else NULL_REF
        halted = rng.random() < 0.1 or free[slot] < memory
        rec = vm_record(ids.uuid(), name, memory=memory, affinity=affinity,
                        ha_restart_priority=priority,
                        # Halted at the start means shut down on purpose (xapi_vm.ml clears
                        # the flag on every shutdown through the API).
                        ha_always_run=priority == "restart" and not halted,
                        order=order, start_delay=start_delay)
        if not halted:
            free[slot] -= memory
            rec.update(power_state="Running", resident_on=hosts[slot].ref,
                       domid=v + 1, memory_target=memory)
            rec["last_booted_record"] = boot_record(rec)
        db.add("VM", ids.ref(), rec)
    return db, hosts


def is_guest(rec: Record) -> bool:
    return not (rec["is_control_domain"] or rec["is_a_template"] or rec["is_a_snapshot"])


def vm_memory(rec: Record) -> int:
    return int(rec["memory_static_max"])


def host_free_memory(db: Db, host_ref: str) -> int:
    """host.compute_free_memory: total minus overhead minus what resident and scheduled VMs
    hold, from the database alone (memory_check.ml, with every VM at dynamic_min)."""
    host = db.tables["host"][host_ref]
    total = int(db.tables["host_metrics"][host["metrics"]]["memory_total"])
    used = int(host["memory_overhead"])
    for rec in db.tables["VM"].values():
        if rec["resident_on"] == host_ref or rec["scheduled_to_be_resident_on"] == host_ref:
            used += int(rec["memory_dynamic_min"])
    return max(0, total - used)


_PLACES_VM = ("resident_on", "scheduled_to_be_resident_on")


def render(db: Db, cls: str, ref: str) -> Record:
    """A record as get_record returns it, with its derived fields filled in."""
    rec = dict(db.get(cls, ref))
    if cls == "host":
        rec["resident_VMs"] = [r for r, v in db.tables["VM"].items()
                               if v["resident_on"] == ref]
    elif cls == "host_metrics":
        for href, host in db.tables["host"].items():
            if host["metrics"] == ref:
                rec["memory_free"] = host_free_memory(db, href)
                break
    return rec
