"""Admission control: could the pool absorb `tolerate` host failures now?"""

from __future__ import annotations

from xenhad import admission
from xenhad.model import HostView, PoolView, PowerState, Protection, VmView

GIB = 1024**3


def pool(hosts: dict[str, int], vms: list[tuple[str, str, int, Protection]]) -> PoolView:
    return PoolView(
        pool_ref="p", master="h1", ha_enabled=False,
        hosts={h: HostView(uuid=h, ref=h, name=h, address="", enabled=True, live=True)
               for h in hosts},
        vms={name: VmView(uuid=name, ref=name, name=name, power_state=PowerState.RUNNING,
                          resident_on=host, affinity=None, memory=mem * GIB,
                          protection=protection)
             for name, host, mem, protection in vms},
    )


def test_one_failure_fits_two_do_not() -> None:
    view = pool({"h1": 0, "h2": 0, "h3": 0}, [
        ("a", "h1", 8, Protection.RESTART), ("b", "h2", 8, Protection.RESTART),
        ("c", "h3", 8, Protection.RESTART), ("tmp", "h3", 64, Protection.OFF),
    ])
    free = {"h1": 10 * GIB, "h2": 10 * GIB, "h3": 10 * GIB}
    one = admission.can_absorb(view, free, 1)
    assert one.ok and one.scenarios == 3
    two = admission.can_absorb(view, free, 2)
    assert not two.ok and two.failed == ("h1", "h2")
    assert two.stranded == (("b", "needs 8192 MiB, largest free 2048 MiB"),)
    assert two.line().startswith("the pool can no longer absorb the failure of 2 hosts: "
                                 "if h1 and h2 failed, 1 protected VM would find no room")


def test_no_host_left_to_receive_is_never_absorbed() -> None:
    view = pool({"h1": 0}, [("a", "h1", 1, Protection.RESTART)])
    assert not admission.can_absorb(view, {"h1": 10 * GIB}, 1).ok
    assert admission.can_absorb(view, {"h1": 10 * GIB}, 0).ok


def test_a_large_pool_checks_the_heaviest_hosts_only() -> None:
    hosts = {f"h{i:02d}": 0 for i in range(64)}
    vms = [(f"vm{i}", f"h{i:02d}", 1 + i % 4, Protection.RESTART) for i in range(64)]
    result = admission.can_absorb(pool(hosts, vms), {h: 64 * GIB for h in hosts}, 3)
    assert result.ok and result.approximate
    assert result.scenarios <= admission.MAX_SCENARIOS
