"""Peer heartbeats: the codec refuses what it must, the table tells mutual contact apart."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenhad.peers.heartbeat import Heartbeat, HeartbeatError, decode, encode
from xenhad.peers.table import PeerTable, Verdict

SECRET = b"0123456789abcdef0123456789abcdef"


def hb(sender: str, seq: int = 1, *, heard: tuple[str, ...] = (), boot: str = "b1",
       sent_at: float = 1000.0, pool: str = "pool", armed: bool = True) -> Heartbeat:
    return Heartbeat(pool, sender, boot, seq, sent_at, "m", heard, True, armed)


def test_a_heartbeat_round_trips_and_a_tampered_one_is_refused() -> None:
    data = encode(hb("a", heard=("b", "c")), SECRET)
    assert decode(data, SECRET) == hb("a", heard=("b", "c"))
    with pytest.raises(HeartbeatError, match="bad MAC"):
        decode(data.replace(b'"seq":1', b'"seq":9'), SECRET)
    with pytest.raises(HeartbeatError, match="bad MAC"):
        decode(data, b"another-secret-of-the-pool")
    with pytest.raises(HeartbeatError, match="magic"):
        decode(b"GET / HTTP/1.0\r\n", SECRET)
    with pytest.raises(ValueError):
        encode(hb("a"), b"short")


@given(st.binary(max_size=300))
def test_garbage_never_escapes_as_another_error(data: bytes) -> None:
    for candidate in (data, b"XHB1" + data):
        with pytest.raises(HeartbeatError):
            decode(candidate, SECRET)


def test_mutual_contact_needs_both_directions() -> None:
    t = PeerTable("me", "pool", window=2.0)
    assert t.receive(hb("a", heard=("me",)), 10.0, 1000.0) is Verdict.ACCEPTED
    assert t.receive(hb("b"), 10.0, 1000.0) is Verdict.ACCEPTED  # b does not hear me
    assert t.heard(10.0) == {"a", "b"}
    assert t.mutual(10.0) == {"a"}
    assert t.mutual(12.5) == frozenset()  # the window passed


def test_quorum_is_a_strict_majority_in_mutual_contact() -> None:
    t = PeerTable("me", "pool", window=2.0)
    t.receive(hb("a", heard=("me",)), 10.0, 1000.0)
    assert t.quorate(10.0, ["me", "a", "b"])
    assert not t.quorate(10.0, ["me", "a", "b", "c"])  # 2 of 4 is no majority
    t.receive(hb("b", heard=("me",)), 10.0, 1000.0)
    assert t.quorate(10.0, ["me", "a", "b", "c"])


def test_replays_and_stale_boots_are_refused() -> None:
    t = PeerTable("me", "pool", window=2.0)
    assert t.receive(hb("a", 5), 10.0, 1000.0) is Verdict.ACCEPTED
    assert t.receive(hb("a", 5), 11.0, 1001.0) is Verdict.REPLAY
    assert t.receive(hb("a", 4), 11.0, 1001.0) is Verdict.REPLAY
    # A restarted daemon (new boot) is accepted when its clock is near ours...
    assert t.receive(hb("a", 1, boot="b2", sent_at=1002.0), 12.0, 1002.0) is Verdict.ACCEPTED
    # ...an old boot's message replayed long after is not.
    old = hb("a", 9, boot="b1", sent_at=1000.0)
    assert t.receive(old, 200.0, 1190.0) is Verdict.STALE
    assert t.receive(hb("x", pool="other"), 10.0, 1000.0) is Verdict.FOREIGN
    assert t.receive(hb("me"), 10.0, 1000.0) is Verdict.SELF


def test_only_a_peer_in_mutual_contact_vouches_for_others() -> None:
    t = PeerTable("me", "pool", window=2.0)
    assert t.evidence("x", 10.0) is None
    t.receive(hb("b", heard=("x",)), 10.0, 1000.0)  # b does not hear me: cannot vouch
    assert t.evidence("x", 10.0) is None
    t.receive(hb("a", heard=("me", "x")), 11.0, 1001.0)
    assert t.evidence("x", 11.0) == 11.0
    t.receive(hb("x", heard=()), 12.0, 1002.0)
    assert t.evidence("x", 12.0) == 12.0


def test_the_armed_flag_travels() -> None:
    disarmed = dataclasses.replace(hb("a"), armed=False)
    assert decode(encode(disarmed, SECRET), SECRET).armed is False


def test_priority_vote_epoch_and_promoting_travel_and_older_heartbeats_still_decode() -> None:
    hb = Heartbeat(pool="p", sender="a", boot="b1", seq=1, sent_at=1.0, master="m",
                   heard=("m",), quorate=True, priority=5, vote=("m", "a"), epoch=3,
                   promoting=True)
    back = decode(encode(hb, SECRET), SECRET)
    assert back.priority == 5 and back.vote == ("m", "a") and back.epoch == 3
    assert back.promoting
    # A heartbeat without the fields (an older daemon) casts no vote, at priority 0, and
    # follows no promotion (epoch 0) and makes none.
    payload = json.dumps({"pool": "p", "from": "a", "boot": "b", "seq": 1, "t": 1.0,
                           "master": "m", "heard": [], "quorate": True}).encode()
    data = b"XHB1" + hmac.new(SECRET, payload, hashlib.sha256).digest() + payload
    old = decode(data, SECRET)
    assert old.vote is None and old.priority == 0 and old.epoch == 0 and not old.promoting


def test_how_long_ago_each_peer_was_heard_travels_and_is_checked() -> None:
    beat = dataclasses.replace(hb("a"), last_heard=(("b", 0.5), ("c", 40.0)))
    back = decode(encode(beat, SECRET), SECRET)
    assert back.last_heard == {"b": 0.5, "c": 40.0}
    assert back.heard_ago("c") == 40.0 and back.heard_ago("x") is None
    assert decode(encode(hb("a"), SECRET), SECRET).last_heard is None  # an older daemon
    # Whole seconds (none of ours sends them) count as floats.
    whole = decode(signed_with_ages('{"c":2,"b":0.5}'), SECRET).last_heard
    assert whole == {"b": 0.5, "c": 2.0} and type(whole["c"]) is float
    assert decode(signed_with_ages("{}"), SECRET).last_heard == {}
    for bad in ('{"b":-1}', '["b"]', '{"b":"soon"}', '{"b":true}', '{"b":0.5,"c":false}',
                '{"b":NaN}', '{"b":Infinity}', '{"b":-Infinity}', '{"b":0.5,"c":-0.01}',
                '{"b":1e400}', '{"b":1' + "0" * 400 + "}", '{"b":null}', '{"b":[1]}'):
        with pytest.raises(HeartbeatError, match="ages"):
            decode(signed_with_ages(bad), SECRET)


def signed_with_ages(ages: str) -> bytes:
    """A heartbeat with `ages` as written, authenticated: what a buggy peer could send."""
    payload = json.dumps({"pool": "p", "from": "a", "boot": "b", "seq": 1, "t": 1.0,
                          "master": "m", "heard": [], "quorate": True}
                         ).replace("}", f',"ages":{ages}}}').encode()
    return b"XHB1" + hmac.new(SECRET, payload, hashlib.sha256).digest() + payload


@given(st.floats(min_value=0.0, max_value=1e7))
def test_ages_go_out_floored_to_a_hundredth_of_a_second_never_rounded_up(age: float) -> None:
    beat = dataclasses.replace(hb("a"), last_heard=(("b", age),))
    data = encode(beat, SECRET)
    sent = json.loads(data[4 + 32:])["ages"]["b"]  # after the magic and the MAC
    back = decode(data, SECRET).heard_ago("b")
    assert back == sent
    # The largest hundredth not above the age: short to send, and never more than it was.
    hundredths = round(sent * 100)
    assert hundredths / 100 == sent <= age < (hundredths + 1) / 100


def test_a_floored_age_places_the_contact_later_never_earlier() -> None:
    # a heard x 3.007 s before its heartbeat, received at 13.5: the contact was at 10.493,
    # and the table, told 3.0, takes it for 10.5, which can only delay a self-fence.
    t = PeerTable("me", "pool", window=2.0)
    t.receive(hb("x", heard=("me",)), 5.0, 1000.0)
    t.receive(hb("a", 1, heard=("me",)), 5.0, 1000.0)
    late = dataclasses.replace(hb("a", 2, heard=("me",)),
                               last_heard=(("me", 0.0), ("x", 3.007)))
    t.receive(decode(encode(late, SECRET), SECRET), 13.5, 1008.0)
    assert t.evidence("x", 13.5) == 10.5


def test_a_peer_that_stopped_listing_a_host_still_says_when_it_last_heard_it() -> None:
    # a heard x at 10.5 (ages say 3 s before its heartbeat of 13.5) but no longer lists it:
    # our evidence of x is 10.5, not the older time we last heard x ourselves.
    t = PeerTable("me", "pool", window=2.0)
    t.receive(hb("x", heard=("me",)), 5.0, 1000.0)
    t.receive(hb("a", 1, heard=("me",)), 5.0, 1000.0)
    late = dataclasses.replace(hb("a", 2, heard=("me",)), last_heard=(("me", 0.0), ("x", 3.0)))
    t.receive(late, 13.5, 1008.0)
    assert t.evidence("x", 13.5) == 10.5
    # The bound: 2 windows and a delivery delay after that contact, plus how stale a's
    # report may be (received now, so one delivery delay).
    assert t.latest_feed("x", 13.5, since=0.0, interval=0.5, max_delay=1.0) == 10.5 + 4 + 1 + 1


def test_an_older_daemon_or_a_restarted_one_holds_the_evidence_up() -> None:
    t = PeerTable("me", "pool", window=2.0)
    t.receive(hb("x", heard=("me",)), 5.0, 1000.0)
    # No ages: it may have heard x until it sent, so x counts as heard then.
    t.receive(hb("a", heard=("me",)), 20.0, 1015.0)
    assert t.evidence("x", 20.0) == 20.0
    # A new boot that never heard x: the previous boot may have, until this one started.
    new = dataclasses.replace(hb("a", 1, boot="b2", heard=("me",), sent_at=1020.0),
                              last_heard=(("me", 0.0),))
    t.receive(new, 25.0, 1020.0)
    later = dataclasses.replace(new, seq=2, sent_at=1030.0)
    t.receive(later, 35.0, 1030.0)
    assert t.evidence("x", 35.0) == 25.0


@pytest.mark.parametrize(("key", "bad"), [
    ("pool", None), ("from", 7), ("boot", ["b"]), ("seq", True), ("seq", 1.0), ("t", "now"),
    ("t", False), ("master", None), ("quorate", 1), ("armed", "yes"), ("prio", False),
    ("epoch", 2.0), ("promoting", 0),
])
def test_a_field_of_the_wrong_type_is_named_whichever_way_it_is_decoded(key: str,
                                                                        bad: object) -> None:
    # decode checks ours (exact types) in one comparison, then field by field: both must
    # refuse the same things, with the field named.
    fields = json.loads(encode(hb("a"), SECRET)[36:])
    fields[key] = bad
    payload = json.dumps(fields).encode()
    data = b"XHB1" + hmac.new(SECRET, payload, hashlib.sha256).digest() + payload
    with pytest.raises(HeartbeatError, match=repr(key)):
        decode(data, SECRET)


def test_a_whole_number_timestamp_is_still_a_time() -> None:
    fields = json.loads(encode(hb("a"), SECRET)[36:])
    fields["t"] = 1000
    payload = json.dumps(fields).encode()
    data = b"XHB1" + hmac.new(SECRET, payload, hashlib.sha256).digest() + payload
    assert decode(data, SECRET) == hb("a")


@pytest.mark.parametrize("payload", [
    b'{"pool":"p","from":"a","boot":"b","seq":1,"t":1' + b"0" * 400 + b',"master":"m",'
    b'"heard":[],"quorate":true}',
    b"[" * 30_000 + b"]" * 30_000,
])
def test_a_time_beyond_any_float_or_json_nested_past_any_stack_is_refused(payload: bytes) -> None:
    data = b"XHB1" + hmac.new(SECRET, payload, hashlib.sha256).digest() + payload
    with pytest.raises(HeartbeatError):
        decode(data, SECRET)


# -- wire version 2: contact proven by echoes (issue 24) ----------------------------------


def v2(sender: str, seq: int, *, echo: dict[str, int], boot: str = "b1",
       sent_at: float = 1000.0, boot_started: float = 900.0) -> Heartbeat:
    return dataclasses.replace(hb(sender, seq, heard=tuple(echo), boot=boot, sent_at=sent_at),
                               echo=tuple(sorted(echo.items())), boot_started=boot_started,
                               last_heard=tuple((h, 0.0) for h in sorted(echo)))


def test_echo_and_boot_start_travel_and_a_version_1_reader_ignores_them() -> None:
    beat = v2("a", 7, echo={"me": 41, "b": 3})
    back = decode(encode(beat, SECRET), SECRET)
    assert back.echo == {"b": 3, "me": 41} and back.boot_started == 900.0
    assert back.echo_of("me") == 41 and back.echo_of("x") is None
    fields = json.loads(encode(beat, SECRET)[36:])
    assert fields["v"] == 2 and sorted(fields["heard"]) == ["b", "me"]  # version 1 reads it
    for bad in ({"me": -1}, {"me": 1.5}, {"me": True}, ["me"], {"me": 1 << 63}):
        fields["echo"] = bad
        payload = json.dumps(fields).encode()
        data = b"XHB1" + hmac.new(SECRET, payload, hashlib.sha256).digest() + payload
        with pytest.raises(HeartbeatError, match="echo"):
            decode(data, SECRET)


def test_a_heartbeat_delivered_late_proves_no_contact_however_recently_it_arrived() -> None:
    # Issue 24: heartbeats captured during the first seconds of a cut and re-delivered later
    # kept a cut-off host quorate, feeding its watchdog past its peers' deadline for it.
    t = PeerTable("me", "pool", window=2.0)
    t.sending(100, 0.0)
    t.sending(101, 1.0)
    t.receive(v2("a", 1, echo={"me": 100}), 1.0, 1000.0)
    assert t.mutual(1.0) == {"a"} and t.contact_at("a") == 0.0
    for n in range(102, 115):
        t.sending(n, n - 100.0)
    # a's heartbeats of then, delivered now: a newer sequence number, an old echo.
    t.receive(v2("a", 2, echo={"me": 101}), 15.0, 1014.0)
    assert t.heard(15.0) == {"a"}  # it arrived...
    assert t.mutual(15.0) == frozenset()  # ...but proves nothing of now
    assert t.fresh(15.0, within=5.0) == frozenset()
    # A genuine one echoes what we sent lately.
    t.receive(v2("a", 3, echo={"me": 114}), 15.0, 1015.0)
    assert t.mutual(15.0) == {"a"} and t.contact_at("a") == 14.0


def test_an_echo_of_a_number_we_never_sent_recently_counts_for_nothing() -> None:
    t = PeerTable("me", "pool", window=2.0)
    t.sending(5_000, 10.0)
    t.receive(v2("a", 1, echo={"me": 17}), 10.0, 1000.0)  # another boot's number
    assert t.mutual(10.0) == frozenset() and t.contact_at("a") is None


def test_boots_are_ordered_so_replaying_two_old_ones_in_turn_gains_nothing() -> None:
    # Issue 24: heartbeats of two boots of a crashed host, replayed alternately, vouched for
    # it for 30 s.
    t = PeerTable("me", "pool", window=2.0)
    t.sending(1, 10.0)
    old = v2("x", 50, echo={}, boot="b1", boot_started=900.0)
    new = v2("x", 3, echo={}, boot="b2", boot_started=950.0)
    assert t.receive(old, 10.0, 1000.0) is Verdict.ACCEPTED
    assert t.receive(new, 11.0, 1001.0) is Verdict.ACCEPTED
    at = t.heard_at("x")
    assert t.receive(dataclasses.replace(old, seq=51), 12.0, 1002.0) is Verdict.STALE
    assert t.receive(new, 13.0, 1003.0) is Verdict.REPLAY
    assert t.heard_at("x") == at  # the replays moved nothing
    # A boot whose clock went back is taken once it echoes us: it is alive now.
    t.sending(2, 14.0)
    back = v2("x", 1, echo={"me": 2}, boot="b3", boot_started=10.0)
    assert t.receive(back, 14.5, 1004.0) is Verdict.ACCEPTED


def test_our_heartbeat_echoes_the_last_number_accepted_from_each_peer() -> None:
    t = PeerTable("me", "pool", window=2.0)
    t.receive(v2("a", 9, echo={}), 1.0, 1000.0)
    t.receive(v2("b", 4, echo={}), 1.0, 1000.0)
    t.receive(v2("a", 8, echo={}), 1.0, 1000.0)  # late and older: refused
    assert t.echoes() == {"a": 9, "b": 4}


def test_with_echoes_the_deadline_needs_no_delivery_allowance() -> None:
    # x was last heard by us at 5; a (in contact, its latest report echoing our heartbeat
    # of 12.0) last heard x at 10.5. Every feed of x is at most 10.5 + window; a's report
    # may miss what it heard after 12.0, so the bound counts from then: +1.5 (now - 12.0).
    t = PeerTable("me", "pool", window=2.0)
    for n in range(10):
        t.sending(n, 5.0 + n)
    t.receive(v2("x", 1, echo={"me": 0}), 5.0, 1000.0)
    t.receive(v2("a", 1, echo={"me": 0}), 5.0, 1000.0)
    late = dataclasses.replace(v2("a", 2, echo={"me": 7, "x": 1}),
                               last_heard=(("me", 0.0), ("x", 3.0)))
    t.receive(late, 13.5, 1008.0)
    assert t.evidence("x", 13.5) == 10.5
    assert t.latest_feed("x", 13.5, since=0.0, interval=0.5) == 10.5 + 2 + 1.5


def test_a_host_cut_off_from_us_one_way_is_alive_on_the_word_of_a_peer_in_contact() -> None:
    # A chaos soak with self-fencing: a one-way cut master -> host2 left host2 unable to
    # echo the master's heartbeats, and the master fenced it though host3 heard it fine.
    t = PeerTable("me", "pool", window=2.0)
    for n in range(10):
        t.sending(n, 10.0 + n)
    # host2's heartbeats arrive but echo nothing of ours (it does not hear us).
    t.receive(v2("host2", 1, echo={}), 19.0, 1000.0)
    assert t.contact_at("host2") is None and t.alive(19.0, 2.0) == frozenset()
    # host3 hears us (echoes our heartbeat of 18) and has proven contact with host2 since
    # 0.4 s before it sent: host2 was alive at 18 - 0.4 = 17.6, or later.
    vouch = dataclasses.replace(v2("host3", 1, echo={"me": 8}), proven=(("host2", 0.4),))
    t.receive(vouch, 19.0, 1000.0)
    assert t.alive_at("host2") == 17.6
    assert t.alive(19.0, 2.0) == {"host2", "host3"}
    assert t.alive(19.7, 2.0, vouched_within=2.0) == {"host3"}  # as old as it was
    # A peer's word is two round trips old (our contact with host3, host3's with host2), so
    # it counts for twice as long as our own contact (self-fence soak seed 2612007945: with
    # one window for both, host2 went unvouched for 2 s on end, and was fenced healthy).
    assert t.alive(20.1, 2.0) == {"host2"}
    assert t.alive(21.5, 2.0) == {"host2"} and t.alive(21.7, 2.0) == frozenset()
    assert t.mutual(19.0) == {"host3"}  # quorum needs contact of our own
    assert decode(encode(vouch, SECRET), SECRET).proven == {"host2": 0.4}


def test_a_peers_word_counts_as_heard_only_for_a_round_trip_but_proves_life_for_longer() -> None:
    # Peers vouch for contact proven within the whole window (daemon: vouch_within); what
    # counts as heard caps a peer's word at a round trip (vouched_age), as when peers
    # vouched for no more, while the host is still known alive (beats_slowly, alive_at).
    t = PeerTable("me", "pool", window=4.0)
    t.sending(7, 10.0)
    vouch = dataclasses.replace(hb("a", heard=("me", "x")), echo={"me": 7}, last_heard={},
                                proven={"x": 3.0}, boot_started=900.0)
    assert t.receive(vouch, 11.0, 1001.0) is Verdict.ACCEPTED
    assert t.alive_at("x") == 7.0  # a proved contact 3 s before it sent, after 10.0
    assert "x" not in t.alive(11.0, within=2.75, vouched_age=2.75)
    assert "x" in t.alive(11.0, within=2.75)
    assert "x" in t.alive(11.0, within=4.0) and "a" in t.alive(11.0, within=4.0)
    fresher = dataclasses.replace(vouch, seq=2, proven={"x": 2.0})
    assert t.receive(fresher, 11.5, 1001.5) is Verdict.ACCEPTED
    assert "x" in t.alive(11.5, within=2.75, vouched_age=2.75)
