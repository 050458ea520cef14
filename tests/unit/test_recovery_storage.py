"""The recovery machine with storage, networks and groups: what cannot run elsewhere is not
attempted and is named; a host that refuses a VM is not the last word."""

from __future__ import annotations

from dataclasses import replace

from test_recovery_machine import SET, Drive, opened

from xenhad.model import Protection
from xenhad.recovery import events as ev
from xenhad.recovery.incident import VmSnapshot, VmStatus
from xenhad.recovery.machine import replay, summary

GiB = 1024**3
SHARED, LOCAL = "sr-shared", "sr-local-dead"
SEES = (("h1", (SHARED,), ("net0",)), ("h3", (SHARED,), ("net0",)))
ROOM = (("h1", 64 * GiB), ("h3", 32 * GiB))
LABELS = ((LOCAL, "Local storage on host2"),)


def vm(name: str, *, srs: tuple[str, ...] = (SHARED,), group: str | None = None) -> VmSnapshot:
    return VmSnapshot(uuid=f"uuid-{name}", name=name, protection=Protection.RESTART,
                      memory=2 * GiB, srs=frozenset(srs), networks=frozenset({"net0"}),
                      group=group)


def restarting(*vms: VmSnapshot) -> Drive:
    d = Drive(opened(*vms))
    d(ev.FenceDone(101, True, "redfish", "off"))
    for v in vms:
        d(ev.ResetDone(102, v.uuid, True))
    return d


def test_a_local_sr_vm_is_not_attempted_and_the_summary_says_why() -> None:
    d = restarting(vm("local", srs=(LOCAL,)), vm("agile"))
    actions = d(ev.CapacityMeasured(103, ROOM, SEES, (), LABELS))
    assert [a.vm for a in actions if isinstance(a, ev.StartVm)] == ["uuid-agile"]
    assert d.status("local") is VmStatus.STRANDED
    d(ev.StartDone(104, "uuid-agile", "h1", ev.StartOutcome.STARTED))
    assert d.incident.phase.closed
    facts = summary(d.incident)
    assert facts["cannot_run_elsewhere"] == {
        "local": "its disk is on SR Local storage on host2, which no other host sees"}
    assert facts["restarted"] == {"agile": "h1"}
    assert replay(d.events, SET) == d.incident


def test_a_pair_is_spread_over_two_hosts() -> None:
    d = restarting(vm("a", group="g"), vm("b", group="g"))
    actions = d(ev.CapacityMeasured(103, ROOM, SEES))
    hosts = sorted(a.host for a in actions if isinstance(a, ev.StartVm))
    assert hosts == ["h1", "h3"]


def test_a_member_avoids_where_its_partner_runs_already() -> None:
    d = restarting(vm("a", group="g"))
    actions = d(ev.CapacityMeasured(103, ROOM, SEES, (("g", "h1", "uuid-b"),)))
    assert [a.host for a in actions if isinstance(a, ev.StartVm)] == ["h3"]


def test_a_host_refusal_moves_the_vm_to_the_next_host_at_once() -> None:
    d = restarting(vm("v"))
    (start,) = d(ev.CapacityMeasured(103, ROOM, SEES))
    assert isinstance(start, ev.StartVm) and start.host == "h1"
    actions = d(ev.StartDone(104, "uuid-v", "h1", ev.StartOutcome.REFUSED,
                             "VM_REQUIRES_GPU", "uuid-v"))
    assert actions == (ev.MeasureCapacity(exclude="dead"),)
    (again,) = d(ev.CapacityMeasured(104, ROOM, SEES))
    assert isinstance(again, ev.StartVm) and again.host == "h3"
    d(ev.StartDone(105, "uuid-v", "h3", ev.StartOutcome.STARTED))
    assert summary(d.incident)["restarted"] == {"v": "h3"}
    assert replay(d.events, SET) == d.incident


def test_refused_by_every_host_is_named_not_retried_for_ever() -> None:
    d = restarting(vm("v"))
    d(ev.CapacityMeasured(103, ROOM, SEES))
    d(ev.StartDone(104, "uuid-v", "h1", ev.StartOutcome.REFUSED, "HOST_NOT_ENOUGH_PCPUS"))
    d(ev.CapacityMeasured(104, ROOM, SEES))
    d(ev.StartDone(105, "uuid-v", "h3", ev.StartOutcome.REFUSED, "HOST_NOT_ENOUGH_PCPUS"))
    d(ev.CapacityMeasured(105, ROOM, SEES))
    assert d.status("v") is VmStatus.STRANDED
    assert "refused by every host" in summary(d.incident)["cannot_run_elsewhere"]["v"]
    assert d.incident.phase.closed


def test_capacity_from_an_older_journal_sees_everything() -> None:
    d = restarting(replace(vm("v"), srs=frozenset({LOCAL})))
    (start,) = d(ev.CapacityMeasured(103, ROOM))
    assert isinstance(start, ev.StartVm)


def test_codec_round_trips_storage_fields() -> None:
    event = ev.CapacityMeasured(1.0, ROOM, SEES, (("g", "h1", "v"),), LABELS)
    assert ev.decode(ev.encode(event)) == event
    o = opened(vm("a", group="g"))
    assert ev.decode(ev.encode(o)) == o
