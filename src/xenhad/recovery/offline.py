"""Protected VMs that are Halted though nobody shut them down: xapi's "offline protected
VMs", which its HA restarts (xapi_ha_vm_failover.ml restart_auto_run_vms). Pure.

A VM is protected by xapi's HA when ha_restart_priority is "restart" and ha_always_run is
set (helpers.ml vm_should_always_run). VM.start sets the flag for such a VM; every shutdown
through the API clears it (xapi_vm.ml). So a protected VM Halted with the flag still set
died without anyone asking: its host crashed and booted again before it was confirmed
down, or came back while its fence could not reach it (xapi resyncs its VMs Halted on
boot), or the whole pool lost power, or the guest shut itself down. Nothing else would
ever start it again.

Starting one is safe only when XAPI's "Halted" is the whole truth: every host up and
joined to this master, which the daemon checks before it asks (each xapi resyncs its own
domains into the master's database when it joins), so no domain runs that the database
does not show; and VM.start refuses a VM that is not Halted.
"""

from __future__ import annotations

from xenhad.model import PoolView, PowerState, Protection
from xenhad.recovery.incident import VmSnapshot

OFFLINE = "offline"
"""The incident key for these VMs: they belong to no dead host (the journal's "host")."""


def offline_protected(view: PoolView) -> tuple[VmSnapshot, ...]:
    # Filtered before sorting: the master asks every tick of a quiet pool, and finds none.
    found = [
        vm for vm in view.vms.values()
        if vm.power_state is PowerState.HALTED
        and vm.protection is Protection.RESTART
        and vm.always_run
        and not vm.busy
    ]
    return tuple(VmSnapshot.of(vm) for vm in sorted(found, key=lambda v: (v.name, v.uuid)))
