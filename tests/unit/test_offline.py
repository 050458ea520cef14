"""offline_protected: the protected VMs xapi's HA would restart because nobody shut them
down (ha_always_run still set)."""

from __future__ import annotations

from xenhad.model import HostView, PoolView, PowerState, Protection, VmView
from xenhad.recovery.offline import offline_protected

GiB = 1024**3


def vm(name: str, state: PowerState, *, always_run: bool = True, busy: bool = False,
       protection: Protection = Protection.RESTART) -> VmView:
    return VmView(uuid=f"u-{name}", ref=f"OpaqueRef:{name}", name=name, power_state=state,
                  resident_on="h1" if state is not PowerState.HALTED else None,
                  affinity=None, memory=GiB, protection=protection, busy=busy,
                  always_run=always_run)


def test_only_halted_protected_vms_nobody_shut_down() -> None:
    host = HostView(uuid="h1", ref="OpaqueRef:h1", name="h1", address="", enabled=True,
                    live=True)
    vms = [
        vm("crashed", PowerState.HALTED),
        vm("shut-down", PowerState.HALTED, always_run=False),  # VM.clean_shutdown cleared it
        vm("running", PowerState.RUNNING),
        vm("suspended", PowerState.SUSPENDED),
        vm("best-effort", PowerState.HALTED, protection=Protection.BEST_EFFORT),
        vm("off", PowerState.HALTED, protection=Protection.OFF),
        vm("starting", PowerState.HALTED, busy=True),
        vm("another", PowerState.HALTED),
    ]
    view = PoolView(pool_ref="OpaqueRef:pool", master="h1", ha_enabled=False,
                    hosts={"h1": host}, vms={v.uuid: v for v in vms})
    assert [s.name for s in offline_protected(view)] == ["another", "crashed"]
