"""XAPI messages: what each incident step says, and a stream that never floods or blocks."""

from __future__ import annotations

import asyncio
from typing import Any

from xenhad import messages as msg
from xenhad.clock import ManualClock
from xenhad.model import Protection
from xenhad.recovery import events as ev
from xenhad.recovery.incident import Incident, Settings, VmSnapshot
from xenhad.recovery.machine import open_incident, step
from xenhad.xapi.errors import XapiUnreachable

NAMES = {"dead": "host2", "h1": "host1", "h3": "host3"}


def vm(name: str, protection: Protection = Protection.RESTART) -> VmSnapshot:
    return VmSnapshot(uuid=f"uuid-{name}", name=name, protection=protection, memory=1 << 30,
                      affinity=None, order=0)


def run(incident: Incident, *events: ev.Event) -> tuple[Incident, list[msg.Message]]:
    out: list[msg.Message] = []
    for event in events:
        after = step(incident, event, Settings()).incident
        out += msg.incident_messages(incident, after, NAMES, "pool-uuid")
        incident = after
    return incident, out


def test_a_recovered_host_says_fenced_restarted_and_closed() -> None:
    incident = open_incident(ev.Opened("inc", "dead", "host2", 100.0,
                                       (vm("web"), vm("tmp", Protection.OFF)), False)).incident
    _, out = run(incident,
                 ev.FenceDone(101.0, True, "redfish", "power off"),
                 ev.ResetDone(101.5, "uuid-web", True),
                 ev.ResetDone(101.5, "uuid-tmp", True),
                 ev.CapacityMeasured(101.6, (("h1", 8 << 30),)),
                 ev.StartDone(103.0, "uuid-web", "h1", ev.StartOutcome.STARTED))
    assert [(m.name, m.cls, m.obj_uuid, int(m.priority)) for m in out] == [
        ("XENHAD_HOST_FENCED", msg.Subject.HOST, "dead", 4),
        ("XENHAD_VM_RESTARTED", msg.Subject.VM, "uuid-web", 4),
        ("XENHAD_INCIDENT_CLOSED", msg.Subject.HOST, "dead", 4),
    ]
    assert out[0].body == "host2 is off: fenced by redfish; restarting its protected VMs (1)"
    assert out[1].body == "web restarted on host1 after host2 failed"
    assert out[2].body.startswith("host2: incident inc done in 3.0 s; fenced by redfish; "
                                  "1 restarted (web on host1); 0 given up")


def test_no_room_is_said_on_the_vm_and_a_failed_fence_on_the_host() -> None:
    incident = open_incident(ev.Opened("inc", "dead", "host2", 100.0, (vm("db"),),
                                       False)).incident
    incident, out = run(incident, ev.FenceDone(101.0, False, "redfish", "BMC unreachable"))
    assert [(m.name, m.priority, m.repeat_key) for m in out] == [
        ("XENHAD_HOST_FENCE_FAILED", msg.Priority.MAJOR, "fence:dead")]
    assert "BMC unreachable" in out[0].body and "\n" not in out[0].body
    incident, out = run(incident, ev.Wake(200.0), ev.FenceDone(201.0, True, "redfish", ""),
                        ev.ResetDone(201.5, "uuid-db", True),
                        ev.CapacityMeasured(201.6, (("h1", 1 << 20),)))
    assert [m.name for m in out] == ["XENHAD_HOST_FENCED", "XENHAD_VM_NO_ROOM"]
    assert out[0].body.startswith("host2 is off: fenced by redfish after 2 attempts")
    assert out[1].cls is msg.Subject.VM and out[1].repeat_key == "room:uuid-db"
    assert "db (protected) cannot be restarted anywhere: needs 1024 MiB" in out[1].body


class FakeXapi:
    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = fail

    async def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        if self.fail:
            self.fail -= 1
            raise XapiUnreachable("connection refused", sent=False)
        self.calls.append((method, *args))
        return "OpaqueRef:x"


def test_repeats_are_bounded_and_the_stream_is_capped() -> None:
    async def scenario() -> tuple[FakeXapi, msg.PoolMessages]:
        clock, xapi = ManualClock(), FakeXapi()
        poster = msg.PoolMessages(lambda: xapi, clock, repeat=60.0)  # type: ignore[arg-type, return-value]
        waiting = msg.make(msg.HOST_NOT_FENCED, msg.Subject.HOST, "dead", "no fence",
                           repeat_key="fence:dead")
        for _ in range(30):  # one retry every 5 s for 150 s
            poster.post(waiting)
            clock.advance(5.0)
        for n in range(500):  # a host with 500 VMs
            poster.post(msg.make(msg.VM_RESTARTED, msg.Subject.VM, f"vm{n}", "back"))
        await poster.drain(5.0)
        return xapi, poster

    xapi, poster = asyncio.run(scenario())
    fence = [c for c in xapi.calls if c[1] == "XENHAD_HOST_FENCE_FAILED"]
    assert len(fence) == 3  # at 0, 60 and 120 s
    assert fence[0] == ("message.create", "XENHAD_HOST_FENCE_FAILED", "2", "Host", "dead",
                        "no fence")
    restarted = len(xapi.calls) - len(fence)
    assert restarted == msg.BURST  # the bucket was full again after 150 s
    assert poster.suppressed == 27 + 500 - restarted


def test_an_unreachable_xapi_drops_the_message_after_a_while() -> None:
    async def scenario() -> tuple[FakeXapi, msg.PoolMessages, ManualClock]:
        clock, xapi = ManualClock(), FakeXapi(fail=1000)
        poster = msg.PoolMessages(lambda: xapi, clock)  # type: ignore[arg-type, return-value]
        poster.post(msg.make(msg.HOST_FAILED, msg.Subject.HOST, "dead", "down"))
        await poster.drain(5.0)
        return xapi, poster, clock

    _, poster, clock = asyncio.run(scenario())
    assert poster.dropped == 1 and poster.posted == 0
    assert clock.monotonic() - 1000.0 <= msg.GIVE_UP_SECONDS
