"""A new master waits for every slave to rejoin before it trusts its database: a probe that
times out says nothing new, so it does not undo a rejoin already seen."""

from __future__ import annotations

import asyncio
from typing import cast

from xenhad.config import parse
from xenhad.detector import DetectorSettings
from xenhad.failover.actions import FailoverActions
from xenhad.failover.coordinator import REJOIN_WATCH, Failover, FailoverSettings, Joined
from xenhad.failover.lock import EPOCH_KEY
from xenhad.failover.roles import State
from xenhad.model import HostView, PoolView
from xenhad.xapi.client import Xapi

ME, A, B, C = "m", "a", "b", "c"
ADDRESS = {ME: "10.0.0.1", A: "10.0.0.2", B: "10.0.0.3", C: "10.0.0.4"}
UNUSED = cast(Xapi, None)  # nothing is written while a host is still awaited


def promoted_failover() -> Failover:
    config = parse("", source="t", env={})
    failover = Failover(ME, FailoverSettings(), DetectorSettings(), FailoverActions(config),
                        wall=lambda: 0.0)
    failover.state = State(promoted_at=100.0)  # as as_master records it, the tick our xapi
    # is master
    return failover


def view() -> PoolView:
    hosts = {h: HostView(h, f"ref-{h}", h, ADDRESS[h], True, True) for h in ADDRESS}
    return PoolView("pool", ME, False, hosts, {}, other_config={EPOCH_KEY: "1"})


def follows_us() -> Joined:
    return Joined(True, ADDRESS[ME])


def check(failover: Failover, now: float, probes: dict[str, Joined]) -> bool:
    return asyncio.run(failover.check_reconciled(UNUSED, view(), now, probes, frozenset()))


def test_a_timed_out_probe_does_not_undo_a_rejoin() -> None:
    failover = promoted_failover()
    silent = Joined(False, None)
    assert not check(failover, 101.0, {A: follows_us(), B: silent, C: silent})
    assert failover.rejoined == {A}
    # A's probe times out (every slave's xapi restarting at once): still rejoined.
    assert not check(failover, 101.5, {A: silent, B: follows_us(), C: silent})
    assert failover.rejoined == {A, B}
    assert failover.state.waiting_for == (C,)
    assert failover.awaits_rejoin(101.5)
    assert not failover.awaits_rejoin(100.0 + REJOIN_WATCH)


def test_a_host_seen_following_another_master_is_awaited_again() -> None:
    failover = promoted_failover()
    silent = Joined(False, None)
    assert not check(failover, 101.0, {A: follows_us(), B: follows_us(), C: silent})
    assert not check(failover, 101.5, {A: Joined(True, "10.0.0.9"), B: follows_us(),
                                       C: silent})
    assert failover.rejoined == {B}
    assert failover.state.waiting_for == (A, C)
