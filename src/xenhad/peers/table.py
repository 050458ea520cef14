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
    boot_at: float
    """When we accepted the first heartbeat of the sender's current boot."""


class PeerTable:
    def __init__(self, me: HostId, pool: str, *, window: float, max_skew: float = 30.0):
        self.me = me
        self.pool = pool
        self.window = window
        self.max_skew = max_skew
        self._last: dict[HostId, _Last] = {}

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
        same_boot = last is not None and last.hb.boot == hb.boot
        self._last[hb.sender] = _Last(hb, now, last.boot_at if last and same_boot else now)
        return Verdict.ACCEPTED

    def ages(self, now: float) -> tuple[tuple[HostId, float], ...]:
        """Seconds since we last heard each peer we ever heard: a heartbeat's `last_heard`."""
        return tuple(sorted((h, max(0.0, now - last.at)) for h, last in self._last.items()))

    def heard(self, now: float, within: float | None = None) -> frozenset[HostId]:
        """Peers whose heartbeat arrived in the last `within` seconds (default: the window)."""
        limit = self.window if within is None else within
        return frozenset(h for h, last in self._last.items() if now - last.at <= limit)

    def heard_at(self, host: HostId) -> float | None:
        """When the last heartbeat from `host` arrived (None: never)."""
        last = self._last.get(host)
        return last.at if last is not None else None

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
        """The latest local time `host` may have been heard by us, or by a peer in mutual
        contact with us as of that peer's latest heartbeat; None when nothing says so.

        A peer's report is its `last_heard` age of `host` taken back from when we received
        it, which can only place the contact later than it was. A peer without that field (an
        older daemon) may have heard `host` up to the moment it sent, so it counts as "just
        now". Earlier boots of a peer, whose reports died with them, heard it at the latest
        before we saw the current boot's first heartbeat."""
        own = self._last.get(host)
        times = [own.at] if own is not None else []
        for peer in self.mutual(now) - {host}:
            last = self._last[peer]
            times.append(last.boot_at)
            if last.hb.last_heard is None:
                times.append(last.at)
            else:
                ago = last.hb.heard_ago(host)
                if ago is not None:
                    times.append(last.at - ago)
        return max(times, default=None)

    def latest_feed(
        self, host: HostId, now: float, *, since: float, interval: float,
        max_delay: float | None = None,
    ) -> float:
        """The time from which `host`'s watchdog timeout is measured: once it lies more than
        the timeout in the past, `host` has not fed its watchdog for a whole timeout and has
        been reset. Only a quorate table's answer proves that.

        Why it is safe. `host` feeds only while a majority is in mutual contact with it, and
        while we are quorate our mutual peers and we are a majority too, so any majority
        `host` used includes one of us, say P. P vouched for `host` by listing it in a
        heartbeat sent at some s, which needs P to have heard `host` within one window
        before s; `host` received that heartbeat by s + max_delay and stays quorate on it
        for one more window. So a feed of `host` that rests on P's heartbeats up to P's
        latest one to us happened by P's last contact with `host` (as P reported it, see
        `evidence`) + 2 * window + max_delay. P's latest report is at most
        `stalest` = (how long ago we received it) + max_delay old, and we speak for
        ourselves as of now. Let S = now - stalest. Every feed up to S is bounded as above,
        by C + 2 * window + max_delay =: F where C is the latest contact any of us reports.
        If F + timeout <= S, then `host` did not feed in (F, S], a whole timeout, so its
        watchdog reset it by S and it fed no more. Returning F + stalest makes "now minus
        this exceeds the timeout" exactly that condition.

        The evidence of one peer alone is not enough: the peer that kept `host` quorate may
        be one whose heartbeats to us were lost while it heard `host`, and which no longer
        lists it now; that is why reports carry how long ago, not just whether.

        A majority counted with a witness's vote (daemon.py) is outside this argument: the
        witness reports nothing about `host`.

        Assumes a heartbeat is handled by its receiver at most `max_delay` seconds (default:
        one `interval`) after it was sent, or never. `since` (when this table started)
        bounds what our own earlier boot heard."""
        delay = interval if max_delay is None else max_delay
        evidence = self.evidence(host, now)
        contact = since if evidence is None else max(since, evidence)
        stalest = max([0.0, *(now - self._last[p].at + delay for p in self.mutual(now))])
        return contact + 2 * self.window + delay + stalest
