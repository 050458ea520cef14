"""The recovery state machine, scenario by scenario, then exhaustively with random worlds."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from xenhad.model import Protection
from xenhad.recovery import events as ev
from xenhad.recovery.incident import Incident, Phase, Settings, VmSnapshot, VmStatus
from xenhad.recovery.machine import open_incident, replay, step, summary

GiB = 1024**3
SET = Settings(best_effort_attempts=2, retry_backoff=5.0, retry_backoff_max=40.0)


def vm(name: str, protection: Protection = Protection.RESTART, *, order: int = 0,
       memory: int = 2 * GiB, affinity: str | None = None, start_delay: int = 0) -> VmSnapshot:
    return VmSnapshot(uuid=f"uuid-{name}", name=name, protection=protection, memory=memory,
                      affinity=affinity, order=order, start_delay=start_delay)


def opened(*vms: VmSnapshot, unsafe: bool = False, now: float = 100.0) -> ev.Opened:
    return ev.Opened("inc-1", "dead", "host2", now, tuple(vms), unsafe)


class Drive:
    """Feeds events one by one, keeping every event and action, as the runner does."""

    def __init__(self, first: ev.Opened) -> None:
        t = open_incident(first)
        self.incident: Incident = t.incident
        self.events: list[ev.Event] = [first]
        self.actions: list[ev.Action] = list(t.actions)
        self.last: tuple[ev.Action, ...] = t.actions

    def __call__(self, event: ev.Event) -> tuple[ev.Action, ...]:
        t = step(self.incident, event, SET)
        self.incident = t.incident
        self.events.append(event)
        self.actions.extend(t.actions)
        self.last = t.actions
        return t.actions

    def status(self, name: str) -> VmStatus:
        return self.incident.vms[f"uuid-{name}"].status


ROOM = (("h1", 64 * GiB), ("h3", 64 * GiB))


def test_fence_then_reset_then_restart_then_done() -> None:
    d = Drive(opened(vm("a"), vm("b", Protection.BEST_EFFORT), vm("c", Protection.OFF)))
    assert d.incident.phase is Phase.FENCING
    assert d.last == (ev.FenceHost("dead"),)

    actions = d(ev.FenceDone(101, True, "redfish", "PowerState Off"))
    assert d.incident.phase is Phase.RESETTING
    assert set(actions) == {ev.ResetVm(f"uuid-{n}", "dead") for n in "abc"}

    d(ev.ResetDone(102, "uuid-a", True))
    d(ev.ResetDone(102, "uuid-c", True))
    assert d.incident.phase is Phase.RESETTING
    actions = d(ev.ResetDone(102, "uuid-b", True))
    assert d.incident.phase is Phase.RESTARTING
    assert actions == (ev.MeasureCapacity(exclude="dead"),)
    assert d.status("c") is VmStatus.LEFT

    actions = d(ev.CapacityMeasured(103, ROOM))
    # RESTART before BEST_EFFORT: placement puts them in separate waves.
    started = [a for a in actions if isinstance(a, ev.StartVm)]
    assert [a.vm for a in started] == ["uuid-a"]
    d(ev.StartDone(110, "uuid-a", started[0].host, ev.StartOutcome.STARTED))
    assert d.last == (ev.MeasureCapacity(exclude="dead"),)
    actions = d(ev.CapacityMeasured(111, ROOM))
    (start_b,) = actions
    assert isinstance(start_b, ev.StartVm) and start_b.vm == "uuid-b"
    d(ev.StartDone(115, "uuid-b", start_b.host, ev.StartOutcome.STARTED))
    assert d.incident.phase is Phase.DONE
    facts = summary(d.incident)
    assert set(facts["restarted"]) == {"a", "b"}  # type: ignore[arg-type]
    assert facts["not_protected"] == ["c"]
    assert facts["took_s"] == 15.0


def test_no_proof_of_power_off_touches_nothing_and_retries_with_backoff() -> None:
    d = Drive(opened(vm("a")))
    d(ev.FenceDone(101, False, "redfish", "BMC 10.0.0.12 unreachable"))
    assert d.incident.phase is Phase.WAITING_FENCE
    assert d.incident.retry_at == 106
    assert d(ev.Wake(105)) == ()
    assert d(ev.Wake(106)) == (ev.FenceHost("dead", retry=True),)
    d(ev.FenceDone(107, False, "redfish", "still unreachable"))
    assert d.incident.retry_at == 107 + 10  # doubled
    assert not any(isinstance(a, (ev.ResetVm, ev.StartVm)) for a in d.actions)


def test_host_back_while_waiting_for_a_fence_aborts_untouched() -> None:
    d = Drive(opened(vm("a")))
    d(ev.FenceDone(101, False, "ipmi", "auth failed"))
    d(ev.HostReturned(130))
    assert d.incident.phase is Phase.ABORTED
    assert d(ev.Wake(1000)) == ()
    assert not any(isinstance(a, (ev.ResetVm, ev.StartVm)) for a in d.actions)


def test_host_back_during_a_fence_that_then_powers_it_off_goes_on() -> None:
    d = Drive(opened(vm("a")))
    d(ev.HostReturned(101))
    d(ev.FenceDone(102, True, "redfish", "off"))
    assert d.incident.phase is Phase.RESETTING


def test_host_back_during_a_fence_that_fails_aborts() -> None:
    d = Drive(opened(vm("a")))
    d(ev.HostReturned(101))
    d(ev.FenceDone(102, False, "redfish", "timeout"))
    assert d.incident.phase is Phase.ABORTED


def test_trust_liveness_resets_at_once() -> None:
    d = Drive(opened(vm("a"), unsafe=True))
    assert d.incident.phase is Phase.RESETTING
    assert d.incident.fenced_by == "trust-liveness"
    assert d.last == (ev.ResetVm("uuid-a", "dead"),)


def test_xapi_reaching_the_host_during_reset_aborts_before_any_start() -> None:
    d = Drive(opened(vm("a"), vm("b"), unsafe=True))
    d(ev.ResetDone(101, "uuid-a", True))
    d(ev.ResetDone(101, "uuid-b", False, "HOST_IS_LIVE", "OpaqueRef:h2"))
    assert d.incident.phase is Phase.ABORTED
    assert "not dead" in d.incident.note
    assert not any(isinstance(a, ev.StartVm) for a in d.actions)


def test_already_halted_counts_as_reset_and_failed_reset_is_retried() -> None:
    d = Drive(opened(vm("a"), vm("b"), unsafe=True))
    d(ev.ResetDone(101, "uuid-a", False, "VM_BAD_POWER_STATE", "x running halted"))
    assert d.status("a") is VmStatus.RESET
    d(ev.ResetDone(101, "uuid-b", False, "XAPI_UNREACHABLE", "timed out"))
    assert d.status("b") is VmStatus.PENDING
    assert d(ev.Wake(103)) == ()
    assert d(ev.Wake(106)) == (ev.ResetVm("uuid-b", "dead"),)
    assert d(ev.Wake(200)) == ()  # in flight: not re-issued
    d(ev.ResetDone(201, "uuid-b", True))
    assert d.incident.phase is Phase.RESTARTING


def test_orders_form_waves_started_one_after_another() -> None:
    d = Drive(opened(vm("late", order=2), vm("first", order=0), vm("also", order=0), unsafe=True))
    for name in ("late", "first", "also"):
        d(ev.ResetDone(101, f"uuid-{name}", True))
    first_wave = d(ev.CapacityMeasured(102, ROOM))
    assert sorted(a.vm for a in first_wave if isinstance(a, ev.StartVm)) == [
        "uuid-also", "uuid-first"]
    d(ev.StartDone(103, "uuid-first", "h1", ev.StartOutcome.STARTED))
    assert d.last == ()  # the wave is not finished
    d(ev.StartDone(104, "uuid-also", "h3", ev.StartOutcome.STARTED))
    assert d.last == (ev.MeasureCapacity(exclude="dead"),)
    (late,) = d(ev.CapacityMeasured(105, ROOM))
    assert isinstance(late, ev.StartVm) and late.vm == "uuid-late"


def test_best_effort_gives_up_after_its_attempts_restart_keeps_trying() -> None:
    d = Drive(opened(vm("gold"), vm("bronze", Protection.BEST_EFFORT), unsafe=True))
    d(ev.ResetDone(101, "uuid-gold", True))
    d(ev.ResetDone(101, "uuid-bronze", True))
    now = 102.0
    for _ in range(6):
        actions = d(ev.CapacityMeasured(now, ()))  # no room anywhere
        assert not any(isinstance(a, ev.StartVm) for a in actions)
        now = max(t.retry_at for t in d.incident.vms.values() if not t.status.final)
        d(ev.Wake(now))
    assert d.status("bronze") is VmStatus.FAILED
    assert d.status("gold") is VmStatus.RESET
    assert d.incident.phase is Phase.RESTARTING
    assert d.incident.vms["uuid-gold"].retry_at - now <= SET.retry_backoff_max


def test_start_in_doubt_is_settled_by_what_xapi_says() -> None:
    d = Drive(opened(vm("a"), vm("b"), unsafe=True))
    d(ev.ResetDone(101, "uuid-a", True))
    d(ev.ResetDone(101, "uuid-b", True))
    starts = d(ev.CapacityMeasured(102, ROOM))
    host_a = next(a.host for a in starts if isinstance(a, ev.StartVm) and a.vm == "uuid-a")
    d(ev.StartDone(112, "uuid-a", host_a, ev.StartOutcome.UNKNOWN, "XAPI_UNREACHABLE"))
    d(ev.StartDone(112, "uuid-b", "h3", ev.StartOutcome.UNKNOWN, "XAPI_UNREACHABLE"))
    assert d.status("a") is VmStatus.UNKNOWN
    # a did start; b did not.
    d(ev.VmObserved(113, "uuid-a", True, host_a))
    assert d.status("a") is VmStatus.RUNNING
    d(ev.VmObserved(113, "uuid-b", False, None, busy=True))
    assert d.status("b") is VmStatus.UNKNOWN  # an operation is still going on: wait
    d(ev.VmObserved(114, "uuid-b", False, None))
    assert d.status("b") is VmStatus.RESET


def test_a_vm_someone_else_started_is_never_started_again() -> None:
    d = Drive(opened(vm("a"), unsafe=True))
    d(ev.VmObserved(101, "uuid-a", True, "h3"))
    assert d.status("a") is VmStatus.RUNNING
    d(ev.ResetDone(101, "uuid-a", True))
    assert d.incident.phase is Phase.DONE
    assert not any(isinstance(a, ev.StartVm) for a in d.actions)


def test_a_vm_seen_running_elsewhere_before_the_fence_is_not_reset() -> None:
    d = Drive(opened(vm("a"), vm("b")))
    d(ev.VmObserved(101, "uuid-a", True, "h3"))
    actions = d(ev.FenceDone(102, True, "redfish", "off"))
    assert actions == (ev.ResetVm("uuid-b", "dead"),)
    d(ev.ResetDone(103, "uuid-b", True))
    d(ev.CapacityMeasured(104, ROOM))
    assert not any(isinstance(a, ev.StartVm) and a.vm == "uuid-a" for a in d.actions)


def test_already_running_answer_counts_as_running() -> None:
    d = Drive(opened(vm("a"), unsafe=True))
    d(ev.ResetDone(101, "uuid-a", True))
    d(ev.CapacityMeasured(102, ROOM))
    d(ev.StartDone(103, "uuid-a", "h1", ev.StartOutcome.ALREADY_RUNNING, "VM_BAD_POWER_STATE"))
    assert d.incident.phase is Phase.DONE


def test_resumed_reissues_what_was_in_flight() -> None:
    d = Drive(opened(vm("a"), vm("b")))
    assert step(d.incident, ev.Resumed(150), SET).actions == (ev.FenceHost("dead", retry=True),)
    d(ev.FenceDone(101, True, "redfish", "off"))
    d(ev.ResetDone(102, "uuid-a", True))
    resumed = step(d.incident, ev.Resumed(150), SET)
    assert resumed.actions == (ev.ResetVm("uuid-b", "dead"),)
    d(ev.ResetDone(103, "uuid-b", True))
    starts = d(ev.CapacityMeasured(104, ROOM))
    assert len(starts) == 2
    t = step(d.incident, ev.Resumed(150), SET)
    assert {x.status for x in t.incident.vms.values()} == {VmStatus.UNKNOWN}
    assert not any(isinstance(a, ev.StartVm) for a in t.actions)


def test_a_resumed_retry_waits_no_longer_than_the_longest_backoff_after_a_clock_step() -> None:
    # Virtual chaos seed 1000106: the wall clock ran 100 s ahead when a start failed and its
    # retry was journaled (at 1105 by that clock), then was stepped right and the daemon
    # restarted at 1000. The resumed incident must not wait out the step: no retry is ever
    # more than retry_backoff_max (40 s here) away.
    d = Drive(opened(vm("a"), unsafe=True))
    d(ev.ResetDone(1099, "uuid-a", True))
    (start,) = (a for a in d(ev.CapacityMeasured(1099, ROOM)) if isinstance(a, ev.StartVm))
    d(ev.StartDone(1100, "uuid-a", start.host, ev.StartOutcome.RETRY, "HOST_OFFLINE", ""))
    assert d.incident.vms["uuid-a"].retry_at == 1105
    d(ev.Resumed(1000))
    assert d(ev.Wake(1039.9)) == ()
    assert d(ev.Wake(1040)) == (ev.MeasureCapacity(exclude="dead"),)


def test_a_resumed_fence_retry_waits_no_longer_than_the_longest_backoff() -> None:
    d = Drive(opened(vm("a"), now=1000))
    for attempt in range(5):  # the backoff grows to its cap of 40 s
        d(ev.FenceDone(1000 + attempt, False, "redfish", "BMC unreachable"))
        d(ev.Wake(d.incident.retry_at))
    d(ev.FenceDone(1100, False, "redfish", "BMC unreachable"))
    assert d.incident.retry_at == 1140
    d(ev.Resumed(900))  # the clock stepped back 200 s while the daemon was down
    assert d(ev.Wake(939.9)) == ()
    assert d(ev.Wake(940)) == (ev.FenceHost("dead", retry=True),)


def test_a_running_retry_waits_no_longer_than_the_longest_backoff_after_a_clock_step() -> None:
    # Virtual chaos seed 1000881: the clock stepped back 200 s while the incident ran (no
    # restart in between): its retry comes at most retry_backoff_max (40 s) after the wake
    # that first sees the step.
    d = Drive(opened(vm("a"), now=1000))
    for attempt in range(5):
        d(ev.FenceDone(1000 + attempt, False, "redfish", "BMC unreachable"))
        d(ev.Wake(d.incident.retry_at))
    d(ev.FenceDone(1100, False, "redfish", "BMC unreachable"))
    assert d.incident.retry_at == 1140
    assert d(ev.Wake(900)) == ()
    assert d(ev.Wake(939.9)) == ()
    assert d(ev.Wake(940)) == (ev.FenceHost("dead", retry=True),)


def test_a_resumed_wait_that_the_clock_did_not_stretch_is_kept_whole() -> None:
    d = Drive(opened(vm("a"), unsafe=True))
    d(ev.ResetDone(101, "uuid-a", True))
    (start,) = (a for a in d(ev.CapacityMeasured(101, ROOM)) if isinstance(a, ev.StartVm))
    d(ev.StartDone(102, "uuid-a", start.host, ev.StartOutcome.RETRY, "HOST_OFFLINE", ""))
    d(ev.Resumed(103))
    assert d(ev.Wake(106.9)) == ()
    assert d(ev.Wake(107)) == (ev.MeasureCapacity(exclude="dead"),)


def test_a_resumed_wave_waits_no_longer_than_its_longest_start_delay() -> None:
    d = Drive(opened(vm("db", order=0, start_delay=30), vm("app", order=1), unsafe=True))
    d(ev.ResetDone(1001, "uuid-db", True))
    d(ev.ResetDone(1001, "uuid-app", True))
    (first,) = (a for a in d(ev.CapacityMeasured(1002, ROOM)) if isinstance(a, ev.StartVm))
    d(ev.VmObserved(1100, "uuid-db", True, first.host))  # seen by a clock 100 s ahead
    assert d.incident.next_wave_at == 1130
    d(ev.Resumed(1001))
    assert d(ev.Wake(1030.9)) == ()
    assert d(ev.Wake(1031)) == (ev.MeasureCapacity(exclude="dead"),)


def test_the_next_order_waits_out_the_start_delay_of_a_vm_seen_running() -> None:
    # VM.start answers once the VM's start_delay has passed after its domain came up; a
    # snapshot can show the domain first. The VM is running (final) at once, but the next
    # `order` waits out the delay, counted from the snapshot, as xapi's HA would.
    d = Drive(opened(vm("db", order=0, start_delay=30), vm("app", order=1), unsafe=True))
    d(ev.ResetDone(101, "uuid-db", True))
    d(ev.ResetDone(101, "uuid-app", True))
    (first,) = (a for a in d(ev.CapacityMeasured(102, ROOM)) if isinstance(a, ev.StartVm))
    assert first.vm == "uuid-db"
    assert d(ev.VmObserved(104, "uuid-db", True, first.host)) == ()
    assert d.status("db") is VmStatus.RUNNING
    assert d(ev.Wake(133.9)) == ()
    assert d(ev.Wake(134)) == (ev.MeasureCapacity(exclude="dead"),)
    # The start's answer, whenever it comes, changes nothing.
    d(ev.StartDone(135, "uuid-db", first.host, ev.StartOutcome.STARTED))
    assert d.status("db") is VmStatus.RUNNING


def test_after_a_resume_the_next_order_waits_for_a_vm_in_doubt_and_its_start_delay() -> None:
    # The daemon restarted while db's start was in flight: the start is in doubt (UNKNOWN)
    # until a snapshot shows db running, and VM.start may still be sleeping its start_delay
    # (issue 25, finding 7): the next order waits it out, as for a start not yet answered.
    d = Drive(opened(vm("db", order=0, start_delay=30), vm("app", order=1), unsafe=True))
    d(ev.ResetDone(101, "uuid-db", True))
    d(ev.ResetDone(101, "uuid-app", True))
    (first,) = (a for a in d(ev.CapacityMeasured(102, ROOM)) if isinstance(a, ev.StartVm))
    resumed = step(d.incident, ev.Resumed(103), SET)
    assert resumed.incident.vms["uuid-db"].status is VmStatus.UNKNOWN
    assert resumed.actions == ()  # app, of the next order, waits for db's fate
    d.incident = resumed.incident
    assert d(ev.VmObserved(104, "uuid-db", True, first.host)) == ()
    assert d.status("db") is VmStatus.RUNNING
    assert d(ev.Wake(133.9)) == ()
    assert d(ev.Wake(134)) == (ev.MeasureCapacity(exclude="dead"),)


def test_a_timed_out_start_seen_running_holds_the_next_order_too() -> None:
    # A start whose answer was lost holds the next order until a snapshot says whether
    # its VM runs, then for its start_delay.
    d = Drive(opened(vm("db", order=0, start_delay=30), vm("app", order=1), unsafe=True))
    d(ev.ResetDone(101, "uuid-db", True))
    d(ev.ResetDone(101, "uuid-app", True))
    (first,) = (a for a in d(ev.CapacityMeasured(102, ROOM)) if isinstance(a, ev.StartVm))
    assert d(ev.StartDone(110, "uuid-db", first.host, ev.StartOutcome.UNKNOWN, "",
                          "timed out")) == ()
    assert d(ev.Wake(110.5)) == ()  # in doubt: the next order waits for a snapshot
    assert d(ev.VmObserved(111, "uuid-db", True, first.host)) == ()
    assert d(ev.Wake(140.9)) == ()
    assert d(ev.Wake(141)) == (ev.MeasureCapacity(exclude="dead"),)


def test_an_answered_start_has_slept_its_delay_already() -> None:
    d = Drive(opened(vm("db", order=0, start_delay=30), vm("app", order=1), unsafe=True))
    d(ev.ResetDone(101, "uuid-db", True))
    d(ev.ResetDone(101, "uuid-app", True))
    (first,) = (a for a in d(ev.CapacityMeasured(102, ROOM)) if isinstance(a, ev.StartVm))
    assert d(ev.StartDone(133, "uuid-db", first.host, ev.StartOutcome.STARTED)) == (
        ev.MeasureCapacity(exclude="dead"),)
    assert d(ev.VmObserved(134, "uuid-db", True, first.host)) == ()


def test_a_journal_from_before_start_delay_reads_as_no_delay() -> None:
    raw = ev.encode(opened(vm("a")))
    for snapshot in raw["vms"]:
        del snapshot["start_delay"]
    decoded = ev.decode(raw)
    assert isinstance(decoded, ev.Opened) and decoded.vms[0].start_delay == 0


def test_journal_codec_round_trips_every_event() -> None:
    samples: list[ev.Event] = [
        opened(vm("a", affinity="h1", order=3, start_delay=10), vm("b", Protection.BEST_EFFORT)),
        ev.FenceDone(1, True, "redfish", "off"),
        ev.ResetDone(2, "v", False, "HOST_IS_LIVE", "x"),
        ev.CapacityMeasured(3, (("h1", 5), ("h2", 7))),
        ev.StartDone(4, "v", "h", ev.StartOutcome.UNKNOWN, "C", "d"),
        ev.VmObserved(5, "v", True, "h", busy=True),
        ev.HostReturned(6),
        ev.Wake(7),
        ev.Resumed(8),
    ]
    import json

    for sample in samples:
        assert ev.decode(json.loads(json.dumps(ev.encode(sample)))) == sample


# -- exhaustive: random worlds -----------------------------------------------------------


@dataclass
class World:
    """A random but consistent world answering the machine's actions."""

    unsafe: bool
    outstanding: list[ev.Action] = field(default_factory=list)
    now: float = 100.0
    running_on: dict[str, str] = field(default_factory=dict)


@settings(max_examples=400, deadline=None)
@given(
    n_vms=st.integers(min_value=0, max_value=4),
    unsafe=st.booleans(),
    choices=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=80),
)
def test_invariants_hold_in_any_world(n_vms: int, unsafe: bool, choices: list[int]) -> None:
    prots = [Protection.RESTART, Protection.BEST_EFFORT, Protection.OFF]
    vms = [vm(f"v{i}", prots[i % 3], order=i % 2) for i in range(n_vms)]
    d = Drive(opened(*vms, unsafe=unsafe))
    world = World(unsafe=unsafe, outstanding=list(d.last))
    fenced = unsafe
    reset_done: set[str] = set()
    starts_in_flight: set[str] = set()

    for choice in choices:
        world.now += choice % 7
        kind = choice % 5
        event: ev.Event
        if kind in (0, 1) and world.outstanding:
            action = world.outstanding.pop(choice % len(world.outstanding))
            if isinstance(action, ev.FenceHost):
                event = ev.FenceDone(world.now, choice % 3 != 0, "b", "")
            elif isinstance(action, ev.ResetVm):
                code = ["", "VM_BAD_POWER_STATE", "XAPI_UNREACHABLE", "HOST_IS_LIVE"][choice % 4]
                event = ev.ResetDone(world.now, action.vm, code == "", code)
            elif isinstance(action, ev.MeasureCapacity):
                event = ev.CapacityMeasured(world.now, ROOM if choice % 3 else ())
            else:
                outcome = list(ev.StartOutcome)[choice % len(ev.StartOutcome)]
                starts_in_flight.discard(action.vm)
                if outcome in (ev.StartOutcome.STARTED, ev.StartOutcome.ALREADY_RUNNING):
                    world.running_on[action.vm] = action.host
                event = ev.StartDone(world.now, action.vm, action.host, outcome)
        elif kind == 2 and vms:
            target = vms[choice % len(vms)].uuid
            host = world.running_on.get(target)
            event = ev.VmObserved(world.now, target, host is not None, host)
        elif kind == 3:
            event = ev.HostReturned(world.now)
        else:
            event = ev.Wake(world.now)

        if isinstance(event, ev.FenceDone) and event.off and d.incident.phase is Phase.FENCING:
            fenced = True
        if isinstance(event, ev.ResetDone) and (event.ok or event.code == "VM_BAD_POWER_STATE"):
            reset_done.add(event.vm)
        before = d.incident
        actions = d(event)
        world.outstanding.extend(actions)

        if before.phase.closed:
            assert actions == ()
        for a in actions:
            if isinstance(a, (ev.ResetVm, ev.StartVm)):
                assert fenced, "touched a VM of a host not proven off"
            if isinstance(a, ev.StartVm):
                assert a.vm in reset_done, "started a VM whose power state was never reset"
                assert a.vm not in starts_in_flight, "two starts of one VM in flight"
                assert a.vm not in world.running_on, "started a VM that already runs"
                assert a.host != "dead"
                starts_in_flight.add(a.vm)
                protection = d.incident.vms[a.vm].vm.protection
                assert protection is not Protection.OFF
        for uuid in world.running_on:
            task = d.incident.vms[uuid]
            assert task.status is not VmStatus.STARTING or uuid in starts_in_flight

    # Replaying the journal (the events) gives the very same state.
    assert replay(d.events, SET) == d.incident


def test_offline_protected_vms_are_started_without_fence_or_reset() -> None:
    first = ev.Opened("inc-2", "offline", "pool", 100.0, (vm("a"), vm("b", order=1)), False,
                      offline=True)
    d = Drive(first)
    assert d.incident.phase is Phase.RESTARTING and d.incident.fenced_by == ""
    assert d.last == (ev.MeasureCapacity(exclude="offline"),)
    actions = d(ev.CapacityMeasured(101, ROOM))
    assert [a.vm for a in actions if isinstance(a, ev.StartVm)] == ["uuid-a"]
    assert not any(isinstance(a, (ev.FenceHost, ev.ResetVm)) for a in d.actions)
    # Replayed from the journal, it is the same incident.
    assert replay(d.events, SET) == d.incident
    assert ev.decode(ev.encode(first)) == first


def test_a_host_found_back_before_a_fence_retry_ends_the_incident_untouched() -> None:
    # Issue 18: a waiting incident fenced the old master 2 s after a heal, before host.back
    # (which waits recover_hold_seconds), killing its VMs. The retry asks first.
    d = Drive(opened(vm("a")))
    d(ev.FenceDone(101, False, "redfish", "BMC unreachable"))
    assert d(ev.Wake(106)) == (ev.FenceHost("dead", retry=True),)
    assert d(ev.FenceDone(106.5, False, "none", "its daemon beats", returned=True)) == ()
    assert d.incident.phase is Phase.ABORTED
    assert "came back before it was fenced" in d.incident.note
    assert all(t.status is VmStatus.PENDING for t in d.incident.vms.values())
