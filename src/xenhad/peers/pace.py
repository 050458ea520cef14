"""How long a host's last proof of life holds it alive: the quorum window, or longer for a
host whose proofs keep coming, late.

Pure: `now` (monotonic) and the window are arguments; `Pace` only remembers what it was
shown.

A proof of life (PeerTable.alive_at) is dated when we sent the heartbeat it echoes, so it
is already a round trip old when it arrives, and older still when the network delays
heartbeats. The detector holds a host whose last proof is younger than the quorum window
(detector.Observation.beats_slowly). With heartbeats delayed about a window each way, each
proof reached us when the one before it had aged just past the window: the hold lapsed
between two proofs as the run of misses counted from the last one reached confirm_seconds,
and a healthy host was fenced (docs/virtual-time.md defect 8; virtual chaos seeds 1000130
and 3000239, golden scenarios `seed-*-slow-beats-window-edge`).

So the hold adapts to the host's own pace, as an accrual failure detector does (Hayashibara
et al., "The phi accrual failure detector", SRDS 2004; Cassandra's FailureDetector): what
counts as too long a silence is learned from how late this host's proofs have come lately,
not fixed. The measure is a renewal's *lateness*: how old the last proof had grown when a
later one arrived. A host whose proofs keep arriving, however late, is held while its last
proof is younger than FACTOR times the largest recent lateness, never less than the
window and never more than CAP_WINDOWS windows:

- at rest a host is heard (daemon._heard_lately) and its proofs are not sampled, so the
  hold is the window and a dead host is detected as fast as before;
- one late proof is not a pace: the hold grows only after MIN_RENEWALS renewals in the
  last MEMORY_WINDOWS windows, so the last word of a host that died at rest (a peer's,
  arriving after our own contact lapsed) does not stretch its hold;
- a dead host is never held forever: a proof is dated no later than the life it proves
  (peers/table.py), so a host dead at D has every proof dated D or earlier, and its hold
  lapses by D + CAP_WINDOWS windows, whatever was learned of its pace.

Erring towards alive only delays a recovery (the host is fenced before any VM of it is
started elsewhere); it never runs a VM twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from xenhad.model import HostId

FACTOR = 1.5
"""How much later than its latest-coming recent proof a host's next proof may come and the
host still be held. Seed 1000130's host4 had its proofs come 2.0 and 2.5 s late, and the
next 3.5 s late: at 1.2 it was still fenced (its last proof 3.0 s old at the tick that
confirmed it), at 1.25 not; 1.5 holds it 3.75 s, a tick and a half past that."""
CAP_WINDOWS = 3.0
"""The longest hold, in quorum windows: how much later than at rest a host that was beating
slowly, and died, may be confirmed down (two windows more, at most)."""
MIN_RENEWALS = 2
"""Late renewals needed in memory before the hold grows past the window."""
MEMORY_WINDOWS = 10.0
"""How long, in windows, a renewal's lateness is remembered."""
KEEP = 8
"""The most renewals remembered per host (the latest)."""


@dataclass(frozen=True)
class Hold:
    """Whether a host's last proof of life still holds it alive, and why."""

    held: bool
    within: float
    """How old its last proof may be and the host still held (seconds)."""
    reason: str


def hold_within(window: float, lateness: Sequence[float]) -> float:
    """How old a host's last proof may be while it is held: the window, or FACTOR times the
    largest lateness of its recent renewals once there are MIN_RENEWALS of them, at most
    CAP_WINDOWS windows."""
    if len(lateness) < MIN_RENEWALS:
        return window
    return min(CAP_WINDOWS * window, max(window, FACTOR * max(lateness)))


def judge(now: float, alive_at: float | None, window: float,
          lateness: Sequence[float]) -> Hold:
    """Whether a host proven alive at `alive_at` (None: nothing proves it) is held at `now`,
    given the lateness of its recent renewals."""
    within = hold_within(window, lateness)
    if alive_at is None:
        return Hold(False, within, "nothing proves its daemon alive")
    age = now - alive_at
    pace = (f"its proofs of life came up to {max(lateness):.1f} s late "
            f"({len(lateness)} lately), so {within:.1f} s of silence is its pace"
            if within > window else f"the quorum window, {window:g} s")
    if age <= within:
        return Hold(True, within, f"its daemon was proven alive {age:.1f} s ago, within "
                                  f"{pace}")
    return Hold(False, within, f"its daemon was last proven alive {age:.1f} s ago, past "
                               f"{pace}")


class Pace:
    """Per host, how late its proofs of life have come lately (renewals seen by `note`)."""

    def __init__(self) -> None:
        self._last: dict[HostId, float] = {}
        """The latest proof shown for each host not heard lately."""
        self._late: dict[HostId, deque[tuple[float, float]]] = {}
        """(when it was noted, its lateness) of each host's recent renewals, oldest first."""

    def note(self, host: HostId, now: float, alive_at: float | None) -> None:
        """What this tick knows of `host`: when its daemon was last proven alive, or None
        when it is heard lately (or nothing proves it). A proof later than the last one
        shown is a renewal, as late as the last one's age now. A host heard in between
        starts afresh: what it was last shown says nothing of how late this one came."""
        if alive_at is None:
            self._last.pop(host, None)
            return
        last = self._last.get(host)
        if last is not None and alive_at > last:
            late = self._late.setdefault(host, deque(maxlen=KEEP))
            late.append((now, now - last))
        self._last[host] = alive_at if last is None else max(last, alive_at)

    def lateness(self, host: HostId, now: float, window: float) -> list[float]:
        """The lateness of `host`'s renewals in the last MEMORY_WINDOWS windows."""
        late = self._late.get(host)
        if not late:
            return []
        while late and now - late[0][0] > MEMORY_WINDOWS * window:
            late.popleft()
        return [seconds for _, seconds in late]

    def paced(self) -> list[HostId]:
        """The hosts with a renewal remembered: the only ones whose hold may exceed the
        window (the others' is the window, which PeerTable.alive answers for all at once)."""
        return [h for h, late in self._late.items() if late]

    def hold(self, host: HostId, now: float, alive_at: float | None, window: float) -> Hold:
        """Whether `host`, last proven alive at `alive_at`, is held at `now` (judge)."""
        return judge(now, alive_at, window, self.lateness(host, now, window))

    def keep(self, hosts: Collection[HostId]) -> None:
        """Forget every host but `hosts` (the pool's others, this tick)."""
        for gone in [h for h in self._last if h not in hosts]:
            del self._last[gone]
        for gone in [h for h in self._late if h not in hosts]:
            del self._late[gone]
