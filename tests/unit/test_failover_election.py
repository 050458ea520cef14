"""The choice of a new master and the pool-wide lock: pure, so tested without a pool."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenhad.failover.election import Elector, Vote, best_candidate, elected
from xenhad.failover.lock import Lock as PoolLock
from xenhad.failover.lock import Step, decide, decode

HOSTS = ["a", "b", "c", "d", "e"]


def test_priority_first_then_the_lowest_uuid() -> None:
    assert best_candidate({"c": 0, "b": 0, "d": 0}) == "b"
    assert best_candidate({"c": 5, "b": 0, "d": 5}) == "c"
    with pytest.raises(ValueError):
        best_candidate({})


def test_the_dead_master_is_never_a_candidate_and_votes_stick() -> None:
    elector = Elector("c", stall=10)
    assert elector.choose("a", {"a": 9, "b": 0, "c": 0}, now=0) == Vote("a", "b")
    # "a" is back in view at a higher priority: the vote stays with b while b is there.
    assert elector.choose("a", {"a": 9, "b": 0, "c": 0, "d": 5}, now=1) == Vote("a", "b")
    # b is gone from view: the vote moves on.
    assert elector.choose("a", {"c": 0, "d": 5}, now=2) == Vote("a", "d")


def test_a_vote_without_a_majority_is_cast_afresh_after_the_stall() -> None:
    elector = Elector("c", stall=10)
    assert elector.choose("a", {"b": 0, "c": 0, "d": 9}, now=0).candidate == "d"
    elector.choose("a", {"b": 0, "c": 0, "d": 9}, now=5)
    # The sticky vote for d outlives d's priority drop until the stall...
    assert elector.choose("a", {"b": 0, "c": 0, "d": -1}, now=9).candidate == "d"
    # ...then it follows what this host sees now.
    assert elector.choose("a", {"b": 0, "c": 0, "d": -1}, now=10.5).candidate == "b"


def test_a_majority_of_the_pool_is_needed_not_of_the_voters() -> None:
    vote = Vote("a", "b")
    members = set(HOSTS)
    assert not elected(vote, {"b": vote, "c": vote}, members)
    assert elected(vote, {"b": vote, "c": vote, "d": vote}, members)
    assert not elected(vote, {"b": vote, "c": vote, "x": vote}, members), "x is no member"
    assert not elected(vote, {"b": vote, "c": Vote("a", "c"), "d": None}, members)


@given(st.lists(st.sampled_from(HOSTS[1:]), min_size=5, max_size=5))
def test_two_candidates_never_both_win(choices: list[str]) -> None:
    # Each member casts one vote: whatever they chose, at most one candidate has a majority.
    ballots = {voter: Vote("a", choice) for voter, choice in zip(HOSTS, choices)}
    winners = [c for c in set(choices) if elected(Vote("a", c), ballots, set(HOSTS))]
    assert len(winners) <= 1


def test_lock_round_trip_and_unreadable_values() -> None:
    lock = PoolLock("h1", 3, 1000.0)
    assert decode(lock.encode()) == lock
    assert decode("whatever") is None
    assert decode("holder=h1;epoch=x;expires=1") is None


@pytest.mark.parametrize(("value", "me", "epoch", "now", "step"), [
    (None, "h1", 0, 100.0, Step.TAKE),
    ("holder=h1;epoch=0;expires=140", "h1", 0, 100.0, Step.HELD),
    ("holder=h1;epoch=0;expires=110", "h1", 0, 100.0, Step.RENEW),
    ("holder=h2;epoch=0;expires=130", "h1", 0, 100.0, Step.WAIT),
    ("holder=h2;epoch=0;expires=90", "h1", 0, 100.0, Step.TAKE_OVER),
    # From the old master's database copy: an older epoch is taken over whatever its expiry.
    ("holder=h2;epoch=1;expires=900", "h1", 2, 100.0, Step.TAKE_OVER),
    # Our own lock from before our promotion is renewed into the new epoch.
    ("holder=h1;epoch=1;expires=900", "h1", 2, 100.0, Step.TAKE_OVER),
    ("garbage", "h1", 0, 100.0, Step.TAKE_OVER),
])
def test_lock_decisions(value: str | None, me: str, epoch: int, now: float, step: Step) -> None:
    assert decide(value, me=me, epoch=epoch, now=now, ttl=60).step is step


def test_only_one_of_two_contenders_ever_acts() -> None:
    # Two daemons read the same value; add_to_other_config lets only the first add win.
    for value, (first, second) in itertools.product(
        [None, "holder=h3;epoch=0;expires=50"], [("h1", "h2"), ("h2", "h1")]
    ):
        a = decide(value, me=first, epoch=0, now=100.0, ttl=60)
        b = decide(value, me=second, epoch=0, now=100.0, ttl=60)
        assert a.step is b.step  # both try; xapi's MAP_DUPLICATE_KEY refuses the second
        won = PoolLock(first, 0, 160.0).encode()
        assert decide(won, me=second, epoch=0, now=101.0, ttl=60).step is Step.WAIT
