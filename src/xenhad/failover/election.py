"""Which surviving host becomes master, agreed by a majority before anyone acts.

Pure. Every quorate survivor that has confirmed the master down votes for one candidate:
among the hosts it is in mutual contact with (itself included, the old master excluded), the
highest configured priority, then the lowest uuid. Votes travel in heartbeats. The candidate
promotes itself only once a strict majority of the pool's hosts vote for it, so two
candidates can never both be elected for the same dead master: each host holds one vote.

A vote is sticky while its candidate stays in contact: a candidate that is already
promoting (its xapi restarting) must not lose its majority to a host that only just came
into view. A vote that has gathered no majority after `stall` seconds is cast afresh, so
voters that saw different contact sets at first converge once their views agree.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from xenhad.model import HostId


@dataclass(frozen=True)
class Vote:
    old_master: HostId
    candidate: HostId


def best_candidate(eligible: Mapping[HostId, int]) -> HostId:
    """Highest priority first, then the lowest uuid: the same answer on every host that
    sees the same hosts."""
    if not eligible:
        raise ValueError("no eligible host")
    return min(eligible, key=lambda host: (-eligible[host], host))


def elected(vote: Vote, ballots: Mapping[HostId, Vote | None], members: Collection[HostId]) -> bool:
    """Whether a strict majority of the pool's members cast exactly this vote."""
    yes = sum(1 for voter, cast in ballots.items() if cast == vote and voter in members)
    return yes * 2 > len(members)


def choose(
    current: Vote | None, cast_at: float, me: HostId, old_master: HostId,
    eligible: Mapping[HostId, int], now: float, *, stall: float,
) -> tuple[Vote, float]:
    """My vote for replacing `old_master`, and when it was cast, from the hosts I can count
    on (with their priorities); `eligible` must include me. `current`, `cast_at`: my vote
    so far and when it was cast."""
    if me not in eligible:
        raise ValueError("the voter must be eligible itself")
    candidates = {h: p for h, p in eligible.items() if h != old_master}
    if (
        current is not None
        and current.old_master == old_master
        and current.candidate in candidates
        and now - cast_at < stall
    ):
        return current, cast_at
    vote = Vote(old_master, best_candidate(candidates))
    if vote != current:
        cast_at = now
    elif now - cast_at >= stall:
        cast_at = now  # the same choice again: its stall clock starts over
    return vote, cast_at


class Elector:
    def __init__(self, me: HostId, *, stall: float) -> None:
        self.me = me
        self.stall = stall
        self._vote: Vote | None = None
        self._cast_at = 0.0

    @property
    def vote(self) -> Vote | None:
        return self._vote

    def choose(self, old_master: HostId, eligible: Mapping[HostId, int], now: float) -> Vote:
        """My vote for replacing `old_master` (see choose())."""
        self._vote, self._cast_at = choose(self._vote, self._cast_at, self.me, old_master,
                                           eligible, now, stall=self.stall)
        return self._vote

    def withdraw(self) -> None:
        self._vote = None
