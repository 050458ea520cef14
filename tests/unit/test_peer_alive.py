"""PeerTable.alive skips a peer's word when it can name no one new (issue 23): the answer
must be the one the full reading gives, for heartbeats of every wire version."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xenhad.model import HostId
from xenhad.peers import wire
from xenhad.peers.heartbeat import Heartbeat
from xenhad.peers.table import PeerTable, vouched

SECRET = bytes(range(32))
HOSTS = ("me", "h1", "h2", "h3", "h4", "h5")


def full_reading(t: PeerTable, now: float, within: float, vouched_within: float | None,
                 vouched_age: float | None) -> frozenset[HostId]:
    """alive() as its docstring defines it: every peer's word read, none skipped."""
    since = now - within
    since_vouched = now - (2 * within if vouched_within is None else vouched_within)
    alive: set[HostId] = set()
    for peer in HOSTS:
        last = t.latest(peer)
        via = t.contact_at(peer)
        if last is None or via is None:
            continue
        if via >= since:
            alive.add(peer)
        if last.proven and via - since_vouched >= 0:
            limit = via - since_vouched
            alive.update(vouched(last.proven, limit if vouched_age is None
                                 else min(limit, vouched_age)))
    alive.discard("me")
    return frozenset(alive)


beat = st.tuples(
    st.sampled_from(HOSTS[1:]),  # the sender
    st.integers(0, 9),  # which of our heartbeats it echoes (sent at 10 + n)
    st.sets(st.sampled_from(HOSTS), min_size=1),  # whom it names
    st.dictionaries(st.sampled_from(HOSTS), st.floats(0, 6, allow_nan=False)),  # vouches
    st.sampled_from((2, 3)),  # the wire version
)


@settings(max_examples=300, deadline=None)
@given(beats=st.lists(beat, max_size=12), now=st.floats(18, 26),
       within=st.floats(0.5, 5), vouched_within=st.none() | st.floats(0.5, 10),
       vouched_age=st.none() | st.floats(0, 6))
def test_skipping_a_word_that_names_no_one_new_changes_no_answer(
    beats: list[tuple[str, int, set[str], dict[str, float], int]], now: float, within: float,
    vouched_within: float | None, vouched_age: float | None,
) -> None:
    t = PeerTable("me", "pool", window=4.0)
    for n in range(10):
        t.sending(n, 10.0 + n)
    reader = wire.Reader()
    for seq, (sender, echoed, named, vouches, version) in enumerate(beats, start=1):
        roster = sorted((named | {"me"}) - {sender})
        proven = {h: a for h, a in vouches.items() if h in roster}
        hb = Heartbeat(
            "pool", sender, "boot", seq, 1000.0, "me", tuple(roster), True,
            last_heard=dict.fromkeys(roster, 0.5), echo={**dict.fromkeys(roster, 1),
                                                         "me": echoed},
            boot_started=900.0, proven=proven, reads=3)
        data = wire.encode(hb, SECRET, version)
        t.receive(reader.decode(data, SECRET), 19.0, 1000.0)
    assert t.alive(now, within, vouched_within, vouched_age) == full_reading(
        t, now, within, vouched_within, vouched_age)
