"""What the heartbeats received say: who is in mutual contact, quorum, evidence of life.

Pure: `now` (monotonic) and `wall` are arguments. Mutual contact means both directions
work: I received your heartbeat within the window, and your latest heartbeat lists me.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from xenhad.model import HostId
from xenhad.peers.heartbeat import Heartbeat


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    REPLAY = "replay"
    STALE = "stale"
    FOREIGN = "foreign"
    SELF = "self"

    @property
    def accepted(self) -> bool:
        return self is Verdict.ACCEPTED

    @property
    def worth_logging(self) -> bool:
        # A replay can be a duplicate datagram; a foreign pool or a stale boot is a setup
        # problem the operator should hear of.
        return self in (Verdict.FOREIGN, Verdict.STALE)


@dataclass(frozen=True)
class _Last:
    hb: Heartbeat
    at: float


class PeerTable:
    def __init__(self, me: HostId, pool: str, *, window: float, max_skew: float = 30.0):
        self.me = me
        self.pool = pool
        self.window = window
        self.max_skew = max_skew
        self._last: dict[HostId, _Last] = {}
        self._vouched: dict[HostId, float] = {}

    def receive(self, hb: Heartbeat, now: float, wall: float) -> Verdict:
        if hb.pool != self.pool:
            return Verdict.FOREIGN
        if hb.sender == self.me:
            return Verdict.SELF
        last = self._last.get(hb.sender)
        if last is not None and last.hb.boot == hb.boot:
            if hb.seq <= last.hb.seq:
                return Verdict.REPLAY
        elif abs(hb.sent_at - wall) > self.max_skew:
            # A new boot (or the first we see) must be recent: an old one replayed is not.
            return Verdict.STALE
        self._last[hb.sender] = _Last(hb, now)
        self._vouched[hb.sender] = now
        if self.me in hb.heard:
            # Only a peer in contact both ways can vouch for others.
            for other in hb.heard:
                if other not in (self.me, hb.sender):
                    self._vouched[other] = max(self._vouched.get(other, now), now)
        return Verdict.ACCEPTED

    def heard(self, now: float) -> frozenset[HostId]:
        return frozenset(h for h, last in self._last.items() if now - last.at <= self.window)

    def mutual(self, now: float) -> frozenset[HostId]:
        return frozenset(
            h for h, last in self._last.items()
            if now - last.at <= self.window and self.me in last.hb.heard
        )

    def quorate(self, now: float, members: Collection[HostId]) -> bool:
        others = (self.mutual(now) & set(members)) - {self.me}
        return (1 + len(others)) * 2 > len(members)

    def latest(self, host: HostId) -> Heartbeat | None:
        """The last heartbeat accepted from `host` (whatever its age)."""
        last = self._last.get(host)
        return last.hb if last is not None else None

    def evidence(self, host: HostId, now: float) -> float | None:
        """The latest local time a heartbeat vouched for `host`: its own, or one from a
        peer in mutual contact with us that listed it as heard."""
        return self._vouched.get(host)

    def latest_feed(self, host: HostId, now: float, *, since: float, interval: float) -> float:
        """The latest local time `host` may still have fed its watchdog, going by what we
        heard: vouched for at some time, it may stay quorate (and feed) one window and one
        heartbeat interval longer before its own table lapses. `since` stands in for a host
        never vouched for (when this table started listening)."""
        evidence = self.evidence(host, now)
        vouched = evidence if evidence is not None else since
        return vouched + self.window + interval
