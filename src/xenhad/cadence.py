"""When to read the pool, whom to probe each tick, how fast to tick, and when the offline
sweep may run. Pure: the daemon passes what it knows and the time; nothing here waits,
reads or probes.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from xenhad.model import HostId

PROBE_HEARD_EVERY = 60
"""A host whose heartbeats arrive is probed only every this many ticks (2 min at the default
tick): its heartbeats already say it lives, so the probe only refreshes whom its xapi
follows and notices a wedged xapi. Whenever that must be fresh, every host is probed every
tick instead: while who follows whom changes (Failover.wants_fresh_probes), and before the
offline sweep starts a VM (sweep()). A probe costs ~1 ms of CPU over TLS
(bench/probe_cost.py): in a 64-host pool the probes were the master's largest cost at
rest."""

READ_BACKOFF_TICKS = 8
"""After failed reads of the pool, a slave waits up to this many ticks (jittered, doubling
from one) before the next: every slave's read goes to the master's xapi, and a master
that is slow to answer must not get every slave's full read again every tick."""

READ_SPREAD_TICKS = 4
"""A slave whose xapi has just rejoined a new master reads the pool within this many ticks,
at random: it acts on nothing, and the new master is at its busiest."""

URGENT_TICK = 0.5
"""Seconds between ticks, at most, while a master's failover is under way: as a slave whose
master is in doubt (voters confirm it, and the candidate counts their ballots, within this
of each other), while our xapi restarts as the new master, and as that new master while
the slaves rejoin it."""


def tick_interval(interval: float, *, urgent: bool) -> float:
    """Seconds from one tick's start to the next. `urgent`: the master may be dead, our
    xapi comes back as master any moment, or the slaves rejoin us: the sooner a tick sees
    it, the sooner the dead master's VMs run again."""
    return min(interval, URGENT_TICK) if urgent else interval


@dataclass(frozen=True)
class ReadCadence:
    """What decides whether this tick reads the pool."""

    now: float
    urgent: bool
    """Our master is in doubt, or our xapi is being promoted: our xapi may have become a
    master, or a slave of a new one (which, while the master is in doubt, the daemon asks
    it first)."""
    next_read: float
    """Before this, a read backs off after failed reads (read_backoff)."""
    slave_watching: bool
    """We read as a slave, through heartbeats (a view, peers, slave_interval > 0)."""
    last_read: float
    slave_interval: float
    last_read_ok: bool
    masters_named: Collection[HostId] = ()
    """Whom our mutual peers' heartbeats say they follow."""
    master: HostId = ""
    """Whom our last view says the master is."""


def read_due(c: ReadCadence) -> bool:
    """A slave reads the pool only now and then: every read goes to its master's xapi, and
    heartbeats already say whether the master lives (and whom peers follow)."""
    if c.urgent:
        return True
    if c.now < c.next_read:
        return False  # backing off after failed reads
    if not c.slave_watching:
        return True
    if c.now - c.last_read >= c.slave_interval or not c.last_read_ok:
        return True
    return any(m != c.master for m in c.masters_named)


def read_backoff(failures: int, interval: float, draw: float) -> float:
    """Seconds until a slave's next read after `failures` failed ones in a row; `draw` in
    [0.5, 1.0): jittered, so that slaves that failed together do not all come back
    together."""
    ticks: int = min(READ_BACKOFF_TICKS, 2 ** (failures - 1))
    return interval * ticks * draw


@dataclass(frozen=True)
class Host:
    """What the probe cadence needs to know of one other host."""

    uuid: HostId
    live: bool
    """XAPI says it is live."""


REST_PROBE_EVERY = 2
"""With no peers configured (so no host is heard by heartbeat), a host whose xapi answered
its last probe, and that XAPI says is live, is probed only every this many ticks, in turn
with the others (on_turn), at most: every other tick at the default tick and confirmation
(rest_every). Probes were a daemon's largest cost at rest with no peers: 31 a second in a
64-host pool (bench/footprint.py --alone, issue 23). A host that dies is then first missed
up to one tick later; once it misses it is probed every tick, as is every host not known to
answer."""


def rest_every(interval: float, confirm_seconds: float) -> int:
    """Ticks between two probes of a host at rest: REST_PROBE_EVERY, or fewer so that a
    host is probed at least twice within `confirm_seconds`. Quorum without peers is counted
    from each host's last answer (daemon.py), so an answer may be up to this many ticks
    old: a majority lost is seen within half the confirmation, before any host of it can
    be confirmed down (and a fence checks quorum again: recovery/executor.may_fence)."""
    return max(1, min(REST_PROBE_EVERY, int(confirm_seconds // (2 * interval))))


def on_turn(host: HostId, tick: int, every: int) -> bool:
    """Whether `host` is probed at rest on `tick`, one tick in `every`. Its turn is fixed
    by its uuid (crc32: the same in every process, so a run on virtual time repeats), so
    a host is never two turns without a probe, whoever joins or leaves the pool."""
    return every <= 1 or zlib.crc32(host.encode()) % every == tick % every


def probe_everyone(tick: int, *, sweep_wants_probes: bool) -> bool:
    """Every PROBE_HEARD_EVERY ticks, or when the offline sweep asks for fresh probes."""
    return tick % PROBE_HEARD_EVERY == 0 or sweep_wants_probes


def to_probe(others: Iterable[Host], *, everyone: bool, fresh: bool,
             settled: Collection[HostId], heard: Collection[HostId],
             answered: Mapping[HostId, bool], tick: int = 0, every: int = 1
             ) -> list[Host]:
    """Whom the master probes this tick. A host answers when its xapi does, or when its
    daemon's heartbeat reached us: a host heard this tick needs no probe to count as up.
    `fresh` (who follows whom changes): every host not `settled` (already seen following
    us since we last told the slaves to: not asked again while the others rejoin, every
    urgent tick, the new master's xapi is at its busiest). A heard host whose xapi did not
    answer its last probe, or that XAPI says is not live, is asked each tick: whether its
    xapi is hung (HUNG, said at once) or back is the detector's to know now, not at the
    next round of probes two minutes later. A host not heard, whose xapi answered and that
    is live, is probed on its turn (on_turn, one tick in `every`: rest_every)."""
    return [h for h in others
            if everyone or (fresh and h.uuid not in settled) or not h.live
            or not answered.get(h.uuid, False)
            or (h.uuid not in heard and on_turn(h.uuid, tick, every))]


class Sweep(enum.Enum):
    """What the offline sweep (recovery/offline.py) may do this tick."""

    HOLDING = "holding"
    """Every host joined, but not for recover_hold_seconds yet (as of this view), or the
    last sweep's backoff runs."""
    OPEN = "open"
    """It may look for protected VMs found Halted (start_halted says what then)."""
    PROBE_FIRST = "probe_first"
    """VMs to start, but not every host was probed this tick: probe them all first."""
    NOTHING = "nothing"
    """No protected VM found Halted."""
    RUN = "run"
    """Start them."""


def sweep_gate(*, now: float, all_joined_since: float, view_taken_at: float, hold: float,
               next_sweep: float) -> Sweep:
    """Once every host is up and joined (since `all_joined_since`): held for a while, and
    seen in a snapshot read after that: a host that has just joined may not have resynced
    its VMs yet, and this view may predate its join."""
    if now < next_sweep or view_taken_at < all_joined_since + hold:
        return Sweep.HOLDING
    return Sweep.OPEN


def start_halted(*, now: float, vms_found: bool, probed_all_at: float) -> Sweep:
    """A heard host is probed only now and then (PROBE_HEARD_EVERY): whether every xapi
    follows us is asked again, of every host, and the next tick acts on it."""
    if vms_found and probed_all_at != now:
        return Sweep.PROBE_FIRST
    return Sweep.RUN if vms_found else Sweep.NOTHING
