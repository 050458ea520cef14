"""The witness lease on a real directory: one holder at a time, taken over only once
expired (plus the skew allowance), and the moment it was taken is remembered."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from xenhad.failover.witness import Lease, Witness, decide, parse


def test_decide_leaves_a_live_lease_of_another_alone() -> None:
    theirs = Lease("b", expires=100.0)
    assert decide(theirs, me="a", now=99.0, ttl=10, skew=2) is None
    assert decide(theirs, me="a", now=101.0, ttl=10, skew=2) is None  # within the skew
    assert decide(theirs, me="a", now=102.5, ttl=10, skew=2) == Lease("a", 112.5)
    assert decide(Lease("a", 100.0), me="a", now=99.0, ttl=10, skew=2) == Lease("a", 109.0)
    assert decide(None, me="a", now=5.0, ttl=10, skew=2) == Lease("a", 15.0)
    assert parse("{not json") is None and parse('{"holder": "a"}') is None


def test_one_holder_and_a_takeover_after_expiry(tmp_path: Path) -> None:
    def witness(me: str) -> Witness:
        return Witness(tmp_path, me, ttl=0.4, skew=0.1, settle=0.02, timeout=2.0)

    async def scenario() -> None:
        a, b = witness("a"), witness("b")
        assert await a.poll(time.time(), 1.0)
        assert not await b.poll(time.time(), 1.0)
        assert await a.poll(time.time(), 2.0), "renewed"
        assert a.held_since == 1.0
        await asyncio.sleep(0.6)  # a stops renewing (cut off from the storage, or dead)
        assert await b.poll(time.time(), 3.0)
        assert b.held_since == 3.0
        assert not await a.poll(time.time(), 4.0), "a finds b's lease and backs off"

    asyncio.run(scenario())


def test_an_unusable_directory_means_not_held(tmp_path: Path) -> None:
    w = Witness(tmp_path / "missing", "a", ttl=1, skew=0.1, settle=0.01, timeout=1.0)
    assert not asyncio.run(w.poll(time.time(), 0.0))
