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

from xenhad.sim.spec import GiB, MiB, PoolSpec

NULL_REF = "OpaqueRef:NULL"
CLASSES = ("pool", "host", "host_metrics", "VM", "SR", "PBD", "VDI", "VBD", "network", "PIF",
           "VIF", "VM_group", "task")
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

    def remove(self, cls: str, ref: str) -> None:
        if self.tables[cls].pop(ref, None) is not None:
            self.generation += 1
            self.deleted.append((self.generation, cls, ref))
            self.class_of.pop(ref, None)
            self.created.pop(ref, None)
            self.modified.pop(ref, None)

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

    def __init__(self, seed: int, kind: str = "ids") -> None:
        self._rng = random.Random(f"xenhad-sim-{kind}-{seed}")

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
    rec: Record = {
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
        "last_booted_record": "", "HVM_shadow_multiplier": 1.0, "VGPUs": [], "VUSBs": [],
        "attached_PCIs": [], "groups": [], "suspend_VDI": NULL_REF,
    }
    # xapi_vm_helpers.ml update_memory_overhead: kept current whenever memory changes.
    rec["memory_overhead"] = vm_memory_overhead(rec)
    return rec


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
    storage = _seed_storage(db, spec, hosts)
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
        vref = ids.ref()
        db.add("VM", vref, rec)
        storage.attach(db, vref, storage.shared_sr, storage.pool_network)
    _seed_pinned(db, spec, hosts, storage, free)
    return db, hosts


@dataclass
class _Storage:
    """The seeded SRs and networks, and how to give a VM a disk and a VIF on them (its own
    id stream, so a spec seeds the same hosts and VMs as before storage was modelled)."""

    ids: Ids
    shared_sr: str = NULL_REF
    local_sr: dict[str, str] | None = None
    """host ref -> its local SR."""
    pool_network: str = NULL_REF

    def attach(self, db: Db, vm_ref: str, sr: str, network: str) -> None:
        # idl/datamodel_storage.ml (VDI), datamodel_vm.ml's VBD and VIF: a VM's disk is a
        # VBD onto a VDI that lives on an SR; its NIC a VIF onto a network.
        vm = db.tables["VM"][vm_ref]
        vdi, vbd, vif = self.ids.ref(), self.ids.ref(), self.ids.ref()
        db.add("VDI", vdi, {
            "uuid": self.ids.uuid(), "name_label": f"{vm['name_label']} disk 0",
            "name_description": "", "SR": sr, "VBDs": [vbd], "virtual_size": 20 * GiB,
            "type": "user", "sharable": False, "read_only": False, "other_config": {},
            "current_operations": {}, "allowed_operations": [], "tags": []})
        db.tables["SR"][sr]["VDIs"].append(vdi)
        db.add("VBD", vbd, {
            "uuid": self.ids.uuid(), "VM": vm_ref, "VDI": vdi, "device": "xvda",
            "userdevice": "0", "bootable": True, "mode": "RW", "type": "Disk",
            "empty": False, "currently_attached": vm["power_state"] == "Running",
            "other_config": {}, "current_operations": {}, "allowed_operations": []})
        vm["VBDs"].append(vbd)
        db.add("VIF", vif, {
            "uuid": self.ids.uuid(), "VM": vm_ref, "network": network, "device": "0",
            "MAC": "", "MTU": 1500, "currently_attached": vm["power_state"] == "Running",
            "other_config": {}, "current_operations": {}, "allowed_operations": []})
        vm["VIFs"].append(vif)
        db.tables["network"][network]["VIFs"].append(vif)


def _seed_storage(db: Db, spec: PoolSpec, hosts: list[SeedHost]) -> _Storage:
    """A shared SR plugged on every host, a local SR on each, a network with a PIF on every
    host and one ("eth1 on host1") with a PIF on the first host only."""
    ids = Ids(spec.seed, "storage")
    st = _Storage(ids, local_sr={})

    def sr(name: str, shared: bool, on: list[SeedHost], kind: str) -> str:
        # idl/datamodel_storage.ml SR and PBD; a PBD is the SR as one host sees it.
        ref = ids.ref()
        db.add("SR", ref, {
            "uuid": ids.uuid(), "name_label": name, "name_description": "", "shared": shared,
            "type": kind, "content_type": "", "PBDs": [], "VDIs": [],
            "physical_size": 2048 * GiB, "physical_utilisation": 0, "virtual_allocation": 0,
            "other_config": {}, "sm_config": {}, "current_operations": {},
            "allowed_operations": [], "tags": []})
        for h in on:
            pbd = ids.ref()
            db.add("PBD", pbd, {"uuid": ids.uuid(), "host": h.ref, "SR": ref,
                                "device_config": {}, "currently_attached": True,
                                "other_config": {}})
            db.tables["SR"][ref]["PBDs"].append(pbd)
            db.tables["host"][h.ref]["PBDs"].append(pbd)
        return ref

    def network(name: str, bridge: str, device: str, on: list[SeedHost]) -> str:
        # idl/datamodel_network.ml; a PIF is the network's NIC on one host.
        ref = ids.ref()
        db.add("network", ref, {
            "uuid": ids.uuid(), "name_label": name, "name_description": "", "bridge": bridge,
            "MTU": 1500, "managed": True, "PIFs": [], "VIFs": [], "other_config": {},
            "current_operations": {}, "allowed_operations": [], "tags": []})
        for h in on:
            pif = ids.ref()
            db.add("PIF", pif, {"uuid": ids.uuid(), "host": h.ref, "network": ref,
                                "device": device, "currently_attached": True,
                                "management": device == "eth0", "VLAN": -1,
                                "bond_slave_of": NULL_REF, "other_config": {}})
            db.tables["network"][ref]["PIFs"].append(pif)
            db.tables["host"][h.ref]["PIFs"].append(pif)
        return ref

    st.shared_sr = sr("Shared NFS", True, hosts, "nfs")
    for h in hosts:
        assert st.local_sr is not None
        st.local_sr[h.ref] = sr(f"Local storage on {h.name}", False, [h], "ext")
    st.pool_network = network("Pool-wide network associated with eth0", "xenbr0", "eth0",
                              hosts)
    network("eth1 on host1", "xenbr1", "eth1", hosts[:1])
    return st


def _seed_pinned(db: Db, spec: PoolSpec, hosts: list[SeedHost], storage: _Storage,
                 free: list[int]) -> None:
    """`local_vms` protected VMs with their disk on their host's local SR (local001..), and
    `groups` anti-affinity VM groups of two protected VMs each (aa01a, aa01b, ...), both
    members on one host. Slots start at host2: the master is not the usual victim."""
    ids = storage.ids

    def slot(i: int) -> int:
        return 1 + i % (len(hosts) - 1) if len(hosts) > 1 else 0

    def protected(name: str, at: int, sr: str) -> str:
        memory = 2 * GiB
        rec = vm_record(ids.uuid(), name, memory=memory, ha_restart_priority="restart",
                        ha_always_run=True)
        rec.update(power_state="Running", resident_on=hosts[at].ref, memory_target=memory,
                   domid=500 + len(db.tables["VM"]))
        rec["last_booted_record"] = boot_record(rec)
        free[at] -= memory
        ref = ids.ref()
        db.add("VM", ref, rec)
        storage.attach(db, ref, sr, storage.pool_network)
        return ref

    assert storage.local_sr is not None
    for i in range(spec.local_vms):
        at = slot(i)
        protected(f"local{i + 1:03d}", at, storage.local_sr[hosts[at].ref])
    for g in range(spec.groups):
        at = slot(g)
        gref = ids.ref()
        members = [protected(f"aa{g + 1:02d}{m}", at, storage.shared_sr) for m in "ab"]
        # idl/datamodel_vm_group.ml: placement anti_affinity; VMs is the other end of
        # VM.groups.
        db.add("VM_group", gref, {"uuid": ids.uuid(), "name_label": f"anti-affinity {g + 1}",
                                  "name_description": "", "placement": "anti_affinity",
                                  "VMs": members})
        for m in members:
            db.tables["VM"][m]["groups"] = [gref]


def task_record(uuid: str, name: str, description: str, host: str, wall: float) -> Record:
    # idl/datamodel.ml task: status pending -> success | failure | cancelled; result is the
    # call's value as an XML-RPC <value> ("" for void); error_info the failure.
    return {"uuid": uuid, "name_label": name, "name_description": description,
            "status": "pending", "progress": 0.0, "result": "", "error_info": [],
            "created": _now_datetime(wall), "finished": _now_datetime(0.0),
            "resident_on": host, "type": "", "subtask_of": NULL_REF, "subtasks": [],
            "other_config": {}, "allowed_operations": ["cancel"],
            "current_operations": {}, "backtrace": "()"}


def is_guest(rec: Record) -> bool:
    return not (rec["is_control_domain"] or rec["is_a_template"] or rec["is_a_snapshot"])


def _mib_used(n: int) -> int:
    # memory.ml mib_of_bytes_used / mib_of_pages_used: divide rounding up.
    return -(-n // MiB)


def vm_memory_overhead(rec: Record) -> int:
    """VM.compute_memory_overhead: memory_check.ml vm_compute_memory_overhead, with the
    models of xapi-idl/memory/memory.ml (HVM/PVH: 1 MiB internal + 1 MiB external extra,
    Linux PV: 1 MiB external; shadow for vCPUs and the p2m; 38 pages a vCPU)."""
    static_max_mib = _mib_used(int(rec["memory_static_max"]))
    vcpus = int(rec["VCPUs_max"])
    multiplier = float(rec.get("HVM_shadow_multiplier", 1.0))
    pv = rec.get("domain_type") == "pv"
    # shadow_mib: 256 pages a vCPU, and a page per MiB each for the p2m and shadow.
    shadow_pages = 256 * vcpus + 2 * static_max_mib
    shadow_mib = max(1, int(_mib_used(shadow_pages * 4096) * multiplier))
    extra = 1 if pv else 2
    return (extra + shadow_mib + _mib_used(38 * vcpus * 4096)) * MiB


def vm_memory(rec: Record) -> int:
    """Bytes VM.start needs free on a host: xapi_vm_helpers.ml assert_enough_memory_
    available, memory_check.ml vm_compute_start_memory with the Dynamic_min policy (hvm,
    pv, pvh; pv_in_pvh counts static_max): the target in MiB plus the overhead, shadow
    included (memory.ml footprint_mib)."""
    policy = "memory_static_max" if rec.get("domain_type") == "pv_in_pvh" \
        else "memory_dynamic_min"
    target_mib = _mib_used(int(rec[policy]))
    return target_mib * MiB + vm_memory_overhead(rec)


def host_free_memory(db: Db, host_ref: str) -> int:
    """host.compute_free_memory: total minus overhead minus what resident and scheduled VMs
    hold, from the database alone (memory_check.ml host_compute_free_memory_with_maximum_
    compression: every VM at dynamic_min plus its memory_overhead, vm_compute_used_memory)."""
    host = db.tables["host"][host_ref]
    total = int(db.tables["host_metrics"][host["metrics"]]["memory_total"])
    used = int(host["memory_overhead"])
    for rec in db.tables["VM"].values():
        if rec["resident_on"] == host_ref or rec["scheduled_to_be_resident_on"] == host_ref:
            used += int(rec["memory_dynamic_min"]) + int(rec["memory_overhead"])
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
