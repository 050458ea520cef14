"""Two masters back at once (the old one and the one promoted since, after both crashed):
exactly one of them gives way, even while a slave's heartbeat still names the old master
that its xapi no longer follows (chaos seed 7600023800054: both stepped down, and the pool
was left with no master)."""

from __future__ import annotations

import asyncio
from typing import cast

from xenhad.config import parse
from xenhad.detector import DetectorSettings
from xenhad.failover.actions import FailoverActions
from xenhad.failover.coordinator import (
    STEP_DOWN_HOLD,
    Contact,
    Failover,
    FailoverSettings,
    Joined,
)
from xenhad.failover.lock import EPOCH_KEY
from xenhad.failover.roles import Facts, Role, State, outvoted, rival_masters
from xenhad.model import HostView, PoolView
from xenhad.xapi.client import Xapi

OLD, SLAVE, NEW = "h1", "h2", "h3"
ADDRESS = {OLD: "10.0.0.1", SLAVE: "10.0.0.2", NEW: "10.0.0.3"}
EPOCH = {OLD: 0, NEW: 1}
"""The old master's database predates the promotion; the new master raised the epoch."""
UNUSED = cast(Xapi, None)  # a master that steps down writes nothing to the pool


def failover(me: str) -> Failover:
    config = parse("", source="t", env={})
    return Failover(me, FailoverSettings(), DetectorSettings(), FailoverActions(config),
                    wall=lambda: 0.0)


def view_of(me: str) -> PoolView:
    hosts = {h: HostView(h, f"ref-{h}", h, ADDRESS[h], True, True) for h in ADDRESS}
    return PoolView("pool", me, False, hosts, {}, other_config={EPOCH_KEY: str(EPOCH[me])})


def seen_by(me: str) -> tuple[Contact, dict[str, Joined]]:
    """The slave's daemon has not read the pool since the promotion: its heartbeat names
    the old master. Its xapi answers our probe as the new master's slave."""
    other = NEW if me == OLD else OLD
    contact = Contact(frozenset({SLAVE, other}), masters={SLAVE: OLD, other: other},
                      epochs={SLAVE: 0, other: EPOCH[other]})
    probes = {SLAVE: Joined(True, ADDRESS[NEW]), other: Joined(True, None)}
    return contact, probes


def facts(me: str, contact: Contact, probes: dict[str, Joined]) -> Facts:
    return Facts(me, 100.0, view_of(me), True, contact, probes=probes)


def test_the_new_master_stays_and_the_old_one_gives_way() -> None:
    settings = FailoverSettings()
    contact, probes = seen_by(NEW)
    assert outvoted(State(), facts(NEW, contact, probes), settings) is None
    # it acts on nothing meanwhile:
    assert rival_masters(facts(NEW, contact, probes), State(), settings)
    contact, probes = seen_by(OLD)
    assert rival_masters(facts(OLD, contact, probes), State(), settings)  # recovers no slave
    rejoin = outvoted(State(), facts(OLD, contact, probes), settings)
    assert rejoin is not None and rejoin[0] == NEW


def test_a_slave_whose_heartbeat_and_probe_agree_makes_a_majority() -> None:
    contact = Contact(frozenset({SLAVE, OLD}), masters={SLAVE: NEW, OLD: OLD},
                      epochs={SLAVE: 1, OLD: 0})
    probes = {SLAVE: Joined(True, ADDRESS[NEW]), OLD: Joined(True, None)}
    assert not rival_masters(facts(NEW, contact, probes), State(), FailoverSettings())
    assert outvoted(State(), facts(NEW, contact, probes), FailoverSettings()) is None


def test_a_master_stepping_down_names_the_one_it_rejoins() -> None:
    old = failover(OLD)
    contact, probes = seen_by(OLD)
    assert outvoted(old.state, facts(OLD, contact, probes), old.settings) is not None
    assert old.announced_master(OLD, 100.0) == OLD
    # No xapi here: the call fails and says so; the step-down is announced all the same,
    # for its hold (the other master must not count us as one meanwhile).
    assert not asyncio.run(old.as_master(UNUSED, view_of(OLD), 100.0, contact=contact,
                                         probes=probes, down=frozenset(), quorate=True))
    assert old.role is Role.STEPPING_DOWN
    assert old.announced_master(OLD, 101.0) == NEW
    assert old.announced_master(OLD, 100.0 + STEP_DOWN_HOLD) == OLD
