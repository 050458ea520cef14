"""What the integration scenarios ask of a testbed: which VMs a host runs, and when they
are back. Physical truth (the simulator's domains) joined with what XAPI says."""

from __future__ import annotations

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
