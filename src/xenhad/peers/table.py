"""What the heartbeats received say: who is in mutual contact, quorum, evidence of life.

Pure: `now` (monotonic) and `wall` are arguments.

Contact is proven, not assumed. A heartbeat's arrival says only that the sender was alive
at some time before it arrived: a network that buffers, delays or replays datagrams can
hand us one sent long ago. So mutual contact with a peer P rests on an echo: every
heartbeat carries the last sequence number its sender accepted from each peer (wire version
2, heartbeat.py), and we remember when we sent each of ours. P's latest heartbeat echoing
our number n, sent at t_n on our clock, proves that P heard us at some time after t_n, and
that P was alive then; nothing delayed or replayed can echo a number we sent after it was
captured. P is in mutual contact with us at `now` while now - t_n <= window. `contact_at`
is that t_n: the time, on our clock, since which P has provably been alive.

A peer whose daemon predates echoes (wire version 1, a pool in the middle of a rolling
upgrade) is judged as version 1 judged it: its heartbeat arrived within the window and lists
us. Its contact then rests on timely delivery, and the self-fence deadline says so
(`latest_feed`).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from typing import NamedTuple

from xenhad.model import HostId
from xenhad.peers.compact import Ages
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


class _Last(NamedTuple):
    """A tuple, not a frozen dataclass: one is made for each heartbeat received, 63 a
    second in a 64-host pool, and a frozen dataclass takes four times as long to make."""

    hb: Heartbeat
    at: float
    """When we accepted it (read it from the socket): never earlier than it arrived."""
    boot_at: float
    """When we accepted the first heartbeat of the sender's current boot."""
    proven_at: float | None
    """When we sent the sequence number of ours that `hb` echoes (None: it echoes none we
    remember): the sender heard us, and was alive, after that."""


class PeerTable:
    def __init__(self, me: HostId, pool: str, *, window: float, max_skew: float = 30.0):
        self.me = me
        self.pool = pool
        self.window = window
        self.max_skew = max_skew
        self._last: dict[HostId, _Last] = {}
        self._sent: deque[tuple[int, float]] = deque()
        """(sequence number, when sent) of our own recent heartbeats, oldest first."""
        self._legacy_at = -math.inf
        """When we last accepted a version 1 heartbeat (see latest_feed)."""
        self._rosters: dict[HostId, frozenset[HostId] | None] = {}
        """Each peer's latest roster: every host its word can name (None: version 2,
        whose `proven` names hosts freely)."""
        self._named: frozenset[HostId] | None = frozenset()
        """Every host any peer's word can name, for `alive` (None: not known, or a peer
        of version 2)."""

    # -- our own heartbeats ----------------------------------------------------------

    def sending(self, seq: int, now: float) -> None:
        """Record that our heartbeat `seq` leaves now. Called before it is sent, so the time
        recorded is never later than the sending: a proof resting on it is never early."""
        self._sent.append((seq, now))
        # An echo older than the window proves nothing we use: forget it (a few spare).
        while len(self._sent) > 4 and now - self._sent[1][1] > self.window:
            self._sent.popleft()

    def echoes(self) -> dict[HostId, int]:
        """What our next heartbeat echoes: the last sequence number accepted from each peer."""
        return {h: last.hb.seq for h, last in self._last.items()}

    def _sent_at(self, seq: int | None) -> float | None:
        if seq is None or not self._sent:
            return None
        first = self._sent[0][0]
        index = seq - first
        if 0 <= index < len(self._sent) and self._sent[index][0] == seq:
            return self._sent[index][1]
        return None

    # -- receiving ---------------------------------------------------------------------

    def receive(self, hb: Heartbeat, now: float, wall: float) -> Verdict:
        if hb.pool != self.pool:
            return Verdict.FOREIGN
        if hb.sender == self.me:
            return Verdict.SELF
        last = self._last.get(hb.sender)
        proven_at = self._sent_at(hb.echo_of(self.me))
        same_boot = last is not None and last.hb.boot == hb.boot
        if last is not None and same_boot:
            if hb.seq <= last.hb.seq:
                return Verdict.REPLAY
        elif not self._new_boot_allowed(last, hb, wall, proven_at):
            return Verdict.STALE
        if not hb.echoes:
            self._legacy_at = now
        roster = hb.proven.hosts_named if isinstance(hb.proven, Ages) else None
        if roster is None or self._rosters.get(hb.sender) is not roster:
            # A sender's roster is one object for as long as its hosts stay the same
            # (compact.Decoder), so at rest this is one identity check a heartbeat.
            self._rosters[hb.sender] = roster
            self._named = None if roster is None else self._named_union()
        self._last[hb.sender] = _Last(
            hb, now, last.boot_at if last is not None and same_boot else now, proven_at
        )
        return Verdict.ACCEPTED

    def _new_boot_allowed(
        self, last: _Last | None, hb: Heartbeat, wall: float, proven_at: float | None
    ) -> bool:
        """Whether a heartbeat of another boot than the one we hold (or the first we see)
        may replace it. One that echoes a heartbeat we sent lately is alive now, whatever its
        clock says. Otherwise it must be recent (an old boot's message replayed is not),
        and, when both boots say when they began, begin after the one we hold: replaying two
        old boots' heartbeats in turn then gains nothing."""
        if proven_at is not None:
            return True
        if abs(hb.sent_at - wall) > self.max_skew:
            return False
        held = last.hb.boot_started if last is not None else None
        return held is None or hb.boot_started is None or hb.boot_started > held

    def _named_union(self) -> frozenset[HostId] | None:
        rosters = [r for r in self._rosters.values() if r is not None]
        if len(rosters) < len(self._rosters):
            return None
        return frozenset().union(*rosters)

    # -- what the table says ----------------------------------------------------------

    def ages(self, now: float) -> dict[HostId, float]:
        """Seconds since we last heard each peer we ever heard: a heartbeat's `last_heard`."""
        return {h: max(0.0, now - last.at) for h, last in self._last.items()}

    def heard(self, now: float, within: float | None = None) -> frozenset[HostId]:
        """Peers whose heartbeat arrived in the last `within` seconds (default: the window),
        fresh or not: what version 1 readers take our `heard` list for."""
        limit = self.window if within is None else within
        return frozenset(h for h, last in self._last.items() if now - last.at <= limit)

    def heard_at(self, host: HostId) -> float | None:
        """When the last heartbeat from `host` arrived (None: never)."""
        last = self._last.get(host)
        return last.at if last is not None else None

    def contact_at(self, host: HostId) -> float | None:
        """Since when, on our clock, `host`'s daemon is proven alive and hearing us: when we
        sent the heartbeat its latest one echoes (version 1: when that one arrived, if it
        lists us). None when nothing proves it."""
        last = self._last.get(host)
        if last is None:
            return None
        if last.hb.echoes:
            return last.proven_at
        return last.at if self.me in last.hb.heard else None

    def proven_ages(self, now: float, within: float) -> dict[HostId, float]:
        """What our next heartbeat vouches for: each peer in proven contact within `within`
        seconds, and how long ago that contact was proven (heartbeat.proven)."""
        return {
            h: now - at for h in self._last
            if (at := self.contact_at(h)) is not None and now - at <= within
        }

    def alive_at(self, host: HostId) -> float | None:
        """Since when, on our clock, `host`'s daemon is proven alive: our own proven contact
        with it, or a peer's in proven contact with us. A peer P vouches that it had proven
        contact with `host` some `age` before it sent; it sent after contact_at(P), so
        `host` was alive at contact_at(P) - age or later. So a host cut off from us in one
        direction only (it hears us not, or we it not) but heard by the others is alive,
        and nothing delayed or replayed can make this time later than it was."""
        times = [at] if (at := self.contact_at(host)) is not None else []
        for peer, last in self._last.items():
            if peer == host or (via := self.contact_at(peer)) is None:
                continue
            ago = last.hb.proven_ago(host)
            if ago is not None:
                times.append(via - ago)
        return max(times, default=None)

    def alive(
        self, now: float, within: float, vouched_within: float | None = None,
        vouched_age: float | None = None,
    ) -> frozenset[HostId]:
        """Peers proven alive (alive_at) within the last `within` seconds by our own contact,
        or within `vouched_within` (default: twice `within`) on a peer's word: whose daemon
        beats, whatever their xapi or the network between us says.

        Why a peer's word gets twice as long: it is two round trips old. Our contact with
        the peer P may be a round trip old (`within`), and P vouches for a host only while
        its own contact with it counts at most a round trip old (`vouched_age`), so a
        host P hears as well as we would is placed up to two round trips back. With the
        same `within` for both, a host cut off from us one way only and heard by every other
        host went without a word often enough to be confirmed down and fenced, healthy
        (self-fence soak seed 2612007945). A dead host costs no more than that: P stops
        vouching for it within a round trip, as we would, and says so in its next heartbeat.
        Erring towards alive only delays a recovery; it never runs a VM twice.

        `vouched_age`: a peer's word counts only for contact it proved at most this long
        before it sent (default: whatever it vouches for). Peers vouch for the whole quorum
        window, so that a host beating slowly is known alive (daemon._beating_slowly); the
        daemon holds what counts as heard to a round trip, as when peers vouched for no
        more, so a dead host is not heard any longer than it was."""
        # alive_at(h) >= since for some time it takes the maximum of: one pass over what
        # each peer vouches for, not alive_at for each host (63 x 63 lookups a tick).
        since = now - within
        since_vouched = now - (2 * within if vouched_within is None else vouched_within)
        contacts = [(last, via) for peer, last in self._last.items()
                    if (via := self.contact_at(peer)) is not None]
        # Our own contact first, then the peers' word for whom it leaves out. At rest every
        # peer is in our own contact and each one's word names no one new: a peer whose
        # roster is all known alive already is skipped unread. The word of 63 peers on 63
        # hosts, read in full twice a tick, was the largest part of a 64-host master's
        # tick (py-spy on bench/footprint.py, issue 23).
        alive: set[HostId] = {last.hb.sender for last, via in contacts if via >= since}
        alive.add(self.me)
        if self._named is not None and self._named <= alive:
            contacts = []  # no peer's word can name a host not known alive already
        for last, via in contacts:
            proven = last.hb.proven
            if not proven or via - since_vouched < 0:
                continue
            if isinstance(proven, Ages) and proven.hosts_named <= alive:
                continue
            limit = via - since_vouched
            alive.update(vouched(proven, limit if vouched_age is None
                                 else min(limit, vouched_age)))
        alive.discard(self.me)
        return frozenset(alive)

    def fresh(self, now: float, within: float | None = None) -> frozenset[HostId]:
        """Peers in proven contact within the last `within` seconds (default: the window)."""
        limit = self.window if within is None else within
        return frozenset(
            h for h in self._last
            if (at := self.contact_at(h)) is not None and now - at <= limit
        )

    def mutual(self, now: float) -> frozenset[HostId]:
        return self.fresh(now)

    def reads(self, host: HostId) -> int:
        """The highest wire version `host`'s latest heartbeat says it reads (2 when we have
        none: every daemon that echoes reads version 2)."""
        last = self._last.get(host)
        return last.hb.reads if last is not None else 2

    def legacy(self, host: HostId) -> bool:
        """Whether `host`'s latest heartbeat is of wire version 1."""
        last = self._last.get(host)
        return last is not None and not last.hb.echoes

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

        The rule every daemon feeds by (daemon.py, at the instant of each feed): feed only
        while, together with us, a strict majority of the pool is in mutual contact, judged
        at that instant by `mutual`.

        Why the answer is safe, with no assumption on how late a heartbeat arrives. Say
        `host` fed at f. Its majority then and our quorate majority now (us and our mutual
        peers) share a member P. P counted for `host` at f, so P's heartbeat echoed a number
        `host` sent at some t >= f - window; P echoes only what it accepted, so P received
        that heartbeat at some r >= t, and P's time of last hearing `host` is at least r.
        Hence f <= r + window <= (P's last hearing of `host`) + window.

        What P last heard of `host` we know from P's reports (`evidence`: P's `last_heard`
        age taken back from our receipt, which can only place it later; P's earlier boots
        bounded by when we heard its current one start). P's latest report to us echoes a
        number of ours sent at `contact_at(P)`, so P sent that report after then, and every
        hearing of P up to contact_at(P) is in it. Let T be the earliest contact_at over our
        mutual peers (now, if we have none; we speak for ourselves as of now), and C the
        latest hearing any of us reports. Every feed up to T is at most F = C + window. If
        F + timeout <= T, `host` did not feed in (F, T], a whole timeout, so its watchdog
        reset it by T and it fed no more. Returning F + (now - T) makes "now minus this
        exceeds the timeout" exactly that condition.

        `since` (when this table started) bounds what our own earlier boot heard.

        A peer of wire version 1, or a `host` of it, feeds on heartbeats that arrived within
        a window, which proves nothing of when they were sent. For them the bound is version
        1's, which assumes a heartbeat is handled by its receiver at most `max_delay`
        seconds (default: one `interval`) after it was sent: F = C + 2 * window + max_delay,
        and a peer's report is up to (how long ago we received it) + max_delay old. It is
        used while any version 1 heartbeat arrived within the last LEGACY_HORIZON seconds.

        A majority counted with a witness's vote (daemon.py) is outside this argument: the
        witness reports nothing about `host`."""
        evidence = self.evidence(host, now)
        contact = since if evidence is None else max(since, evidence)
        mutual = self.mutual(now)
        proven = [self.contact_at(p) for p in mutual]
        stalest = max([0.0, *(now - at for at in proven if at is not None)])
        echoed = contact + self.window + stalest
        if not self._legacy_in_play(host, now):
            return echoed
        delay = interval if max_delay is None else max_delay
        stalest_v1 = max([0.0, *(now - self._last[p].at + delay for p in mutual)])
        return max(echoed, contact + 2 * self.window + delay + stalest_v1)

    def _legacy_in_play(self, host: HostId, now: float) -> bool:
        return self.legacy(host) or now - self._legacy_at <= LEGACY_HORIZON


def vouched(proven: Mapping[HostId, float], limit: float) -> Iterable[HostId]:
    """The hosts `proven` says were in proven contact at most `limit` seconds before."""
    if isinstance(proven, Ages):
        return proven.at_most(limit)
    return (h for h, ago in proven.items() if ago <= limit)


LEGACY_HORIZON = 600.0
"""Seconds after the last version 1 heartbeat during which self-fence deadlines keep version
1's delivery allowance: a rolling upgrade's old daemons may still be feeding on contact
judged by arrival, and one cut off from us is not heard."""
