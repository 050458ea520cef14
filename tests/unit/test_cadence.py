"""When a daemon reads the pool, whom it probes, how fast it ticks, and when the offline
sweep may start VMs: each rule as a scenario, time as a number."""

from __future__ import annotations

from dataclasses import replace

import pytest

from xenhad.cadence import (
    PROBE_HEARD_EVERY,
    READ_BACKOFF_TICKS,
    REST_PROBE_EVERY,
    URGENT_TICK,
    Host,
    ReadCadence,
    Sweep,
    probe_everyone,
    read_backoff,
    read_due,
    rest_every,
    start_halted,
    sweep_gate,
    tick_interval,
    to_probe,
)

QUIET_SLAVE = ReadCadence(now=100.0, urgent=False, next_read=float("-inf"),
                          slave_watching=True, last_read=90.0, slave_interval=30.0,
                          last_read_ok=True, masters_named=("m", "m"), master="m")
"""A slave that read the pool 10 s ago, whose peers all follow its master."""


def test_a_quiet_slave_reads_only_every_slave_interval() -> None:
    assert not read_due(QUIET_SLAVE)
    assert read_due(replace(QUIET_SLAVE, now=120.0))


@pytest.mark.parametrize("why", [
    {"urgent": True},  # our master in doubt, or our xapi promoted: read at once
    {"last_read_ok": False},  # the last read failed
    {"masters_named": ("m", "new")},  # a peer follows another master
    {"slave_watching": False},  # the master reads every tick
])
def test_a_read_is_due_at_once(why: dict[str, object]) -> None:
    assert read_due(replace(QUIET_SLAVE, **why))  # type: ignore[arg-type]


def test_failed_reads_back_off_unless_urgent() -> None:
    backing_off = replace(QUIET_SLAVE, last_read_ok=False, next_read=105.0)
    assert not read_due(backing_off)
    assert read_due(replace(backing_off, urgent=True))
    assert read_due(replace(backing_off, now=105.0))


def test_the_backoff_doubles_up_to_its_cap_and_is_jittered() -> None:
    assert [read_backoff(n, 2.0, 1.0) for n in (1, 2, 3, 4, 5, 9)] == \
        [2.0, 4.0, 8.0, 16.0, 2.0 * READ_BACKOFF_TICKS, 2.0 * READ_BACKOFF_TICKS]
    assert read_backoff(2, 2.0, 0.5) == 2.0


def test_ticks_are_urgent_while_a_failover_is_under_way() -> None:
    assert tick_interval(2.0, urgent=False) == 2.0
    assert tick_interval(2.0, urgent=True) == URGENT_TICK
    assert tick_interval(0.2, urgent=True) == 0.2


HOSTS = [Host("a", True), Host("b", True), Host("c", True)]
ANSWERED = {"a": True, "b": True, "c": True}


def probed(**kw: object) -> list[str]:
    args: dict[str, object] = {"everyone": False, "fresh": False, "settled": frozenset(),
                               "heard": frozenset({"a", "b", "c"}), "answered": ANSWERED}
    args.update(kw)
    return [h.uuid for h in to_probe(HOSTS, **args)]  # type: ignore[arg-type]


def test_a_heard_host_whose_xapi_answers_is_not_probed_every_tick() -> None:
    assert probed() == []
    assert probe_everyone(PROBE_HEARD_EVERY, sweep_wants_probes=False)
    assert not probe_everyone(PROBE_HEARD_EVERY + 1, sweep_wants_probes=False)
    assert probe_everyone(7, sweep_wants_probes=True)
    assert probed(everyone=True) == ["a", "b", "c"]


def test_a_silent_host_or_a_silent_xapi_is_probed_every_tick() -> None:
    assert probed(heard=frozenset({"a", "b"})) == ["c"]
    assert probed(answered={"a": True, "b": False}) == ["b", "c"]
    assert [h.uuid for h in to_probe([Host("a", False)], everyone=False, fresh=False,
                                     settled=(), heard={"a"}, answered=ANSWERED)] == ["a"]


def test_with_no_heartbeats_an_answering_host_is_probed_every_other_tick_in_turn() -> None:
    # A daemon with no peers hears no one: each host whose xapi answered is probed on its
    # turn, about half of them a tick, and each at least every REST_PROBE_EVERY ticks.
    hosts = [Host(f"host{i}", True) for i in range(64)]
    answered = {h.uuid: True for h in hosts}
    every = rest_every(2.0, 10.0)
    assert every == REST_PROBE_EVERY == 2
    rounds = [{h.uuid for h in to_probe(hosts, everyone=False, fresh=False, settled=(),
                                        heard=(), answered=answered, tick=tick, every=every)}
              for tick in range(1, 7)]
    assert all(20 <= len(r) <= 44 for r in rounds)
    for tick in range(len(rounds) - 1):
        assert rounds[tick] | rounds[tick + 1] == set(answered)
    # One that did not answer, or that XAPI says is not live, is probed every tick.
    silent = {**answered, "host3": False}
    hosts[5] = Host("host5", False)
    for tick in range(1, 5):
        chosen = {h.uuid for h in to_probe(hosts, everyone=False, fresh=False, settled=(),
                                           heard=(), answered=silent, tick=tick, every=every)}
        assert {"host3", "host5"} <= chosen


def test_a_short_confirmation_keeps_every_tick_probes() -> None:
    # Quorum alone is counted from each host's last answer: it may be at most half the
    # confirmation old, so a majority lost is known before any host of it is confirmed.
    assert rest_every(2.0, 10.0) == 2
    assert rest_every(2.0, 7.9) == 1
    assert rest_every(1.0, 2.0) == 1  # the chaos soaks' settings: as before
    assert rest_every(0.5, 60.0) == REST_PROBE_EVERY


def test_while_slaves_rejoin_only_those_not_yet_back_are_probed() -> None:
    assert probed(fresh=True, settled=frozenset({"a"})) == ["b", "c"]


def test_the_offline_sweep_waits_for_its_hold_in_a_later_view() -> None:
    gate = {"now": 50.0, "all_joined_since": 10.0, "hold": 30.0, "next_sweep": 0.0}
    assert sweep_gate(view_taken_at=35.0, **gate) is Sweep.HOLDING
    assert sweep_gate(view_taken_at=40.0, **gate) is Sweep.OPEN
    assert sweep_gate(view_taken_at=40.0, **{**gate, "next_sweep": 60.0}) is Sweep.HOLDING


def test_the_offline_sweep_probes_every_host_before_it_starts_a_vm() -> None:
    assert start_halted(now=5.0, vms_found=True, probed_all_at=4.0) is Sweep.PROBE_FIRST
    assert start_halted(now=5.0, vms_found=True, probed_all_at=5.0) is Sweep.RUN
    assert start_halted(now=5.0, vms_found=False, probed_all_at=4.0) is Sweep.NOTHING
