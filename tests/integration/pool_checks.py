"""What the integration scenarios ask of a testbed: which VMs a host runs, and when they
are back. Physical truth (the simulator's domains) joined with what XAPI says."""

from __future__ import annotations

import time
from collections.abc import Callable

from xenhad.testbed import Testbed


def protected_on(bed: Testbed, host: str) -> list[str]:
    hosts, records = bed.vm_hosts(), bed.vm_records()
    return sorted(vm for vm, rec in records.items()
                  if hosts.get(vm) == [host] and rec["protection"] != "off")


def unprotected_on(bed: Testbed, host: str) -> list[str]:
    hosts, records = bed.vm_hosts(), bed.vm_records()
    return sorted(vm for vm, rec in records.items()
                  if hosts.get(vm) == [host] and rec["protection"] == "off")


def running_again(bed: Testbed, vms: list[str], dead: str) -> bool:
    hosts = bed.vm_hosts()
    return all(hosts.get(vm) and dead not in hosts[vm] for vm in vms)


def wait_all_logged(bed: Testbed, event: str, timeout: float = 60) -> None:
    """Until every daemon has logged `event` (daemon.ready, quorum.gained...)."""
    bed.wait_for(
        lambda: {n for n, _ in bed.events_named(event)} >= set(bed.daemons),
        timeout, what=f"every daemon to log {event}",
    )


def never_twice_until(bed: Testbed, done: Callable[[], object], timeout: float,
                      what: str) -> None:
    """Poll until `done()`, failing at once if a VM ever runs on two hosts meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert bed.pool.double_runs() == [], "a VM runs on two hosts"
        if done():
            return
        time.sleep(0.2)
    raise TimeoutError(f"waited {timeout:.0f}s for {what}\n{bed.dump_logs()[-6000:]}")
