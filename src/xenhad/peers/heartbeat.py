"""One heartbeat on the wire: b"XHB1" + HMAC-SHA256(secret, payload) + payload (JSON).

The MAC is checked before the payload is parsed: bytes from a stranger are never decoded.

Wire versions. Version 1 (no "v" key) said whom the sender heard (`heard`) and how long ago
(`ages`). Version 2 adds `echo`, the last sequence number the sender accepted from each peer,
and `bt`, when the sender's boot started: an echo proves, on the receiver's own clock, that
the sender heard one of the receiver's heartbeats (table.py), which a heartbeat delayed or
replayed by the network cannot fake. Version 2 keeps every field of version 1, and a version
1 reader ignores keys it does not know: old and new daemons stay in contact during a rolling
upgrade (the new ones treat an old one's contact as version 1 did, table.py).

Version 3 (compact.py) says what version 2 says in packed binary under its own magic.
A daemon that reads it says so in its JSON heartbeats ("rd": 3, ignored by older readers)
and in its version 3 ones; a sender sends version 3 only to a peer whose latest heartbeat
said so, and version 2 to every other (link.py), so daemons of every version stay in
contact through a rolling upgrade and a rollback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from xenhad.model import HostId

MAGIC = b"XHB1"
_MAC = 32
MAX_SIZE = 65507


UNREAD = ""
"""The master named by a daemon that has not read the pool since it started (peers/roster.py):
none. Receivers take it as no word on whom its host follows, and do not elect it
(daemon._contact): it knows nothing of the pool yet, only that it lives and whom it hears."""


class HeartbeatError(ValueError):
    """A datagram that is not a valid heartbeat of ours; the message says why in one line."""


@dataclass(frozen=True)
class Heartbeat:
    pool: str
    sender: HostId
    boot: str
    """Random per daemon start: a restarted daemon's sequence starts over."""
    seq: int
    sent_at: float
    master: HostId
    heard: tuple[HostId, ...]
    quorate: bool
    armed: bool = False
    """The sender holds a running watchdog (it stays true while the sender starves it)."""
    priority: int = 0
    """The sender's failover.priority: preference as the next master."""
    vote: tuple[HostId, HostId] | None = None
    """(dead master, candidate): whom the sender votes to replace its master with."""
    last_heard: Mapping[HostId, float] | None = None
    """peer -> seconds since the sender last accepted a heartbeat from it) for every peer its
    table holds, however long ago: what lets a receiver bound how recently a peer it cannot
    hear itself may have been quorate (table.py). None from a daemon that predates it."""
    epoch: int = 0
    """pool.other_config:xenhad_epoch in the database the sender's xapi serves: which
    promotion it follows. Of two masters, the one promoted later has the higher epoch."""
    promoting: bool = False
    """The sender called emergency_transition_to_master and its xapi is not master yet
    (Xapi_fuse): until then it answers as the old master's slave."""
    echo: Mapping[HostId, int] | None = None
    """peer -> the highest sequence number the sender accepted from that peer's current boot,
    for every peer it heard: a receiver finds its own number there and knows when it sent
    it. None from a version 1 daemon."""
    boot_started: float | None = None
    """Wall-clock time at which the sender's boot began: orders its boots, so an older one's
    heartbeats replayed after a newer one was heard are refused. None from version 1."""

    proven: Mapping[HostId, float] | None = None
    """peer -> seconds before sending since which the sender has proven contact with it (by
    echo), for the peers it is in proven contact with lately: lets a receiver that cannot
    hear a peer itself (a one-way cut) know it alive, timed on the receiver's own clock
    (table.alive_at). None from a version 1 daemon."""

    reads: int = 2
    """The highest wire version the sender reads (version 2 JSON of a daemon that reads
    version 3 says so in "rd"; 2 when it does not say: it reads JSON only)."""

    @property
    def unread(self) -> bool:
        """The sender has not read the pool since it started (UNREAD)."""
        return self.master == UNREAD

    @property
    def echoes(self) -> bool:
        """Version 2: its contact is proven by echoes, not by arrival time (table.py)."""
        return self.echo is not None

    def __post_init__(self) -> None:
        # (host, value) pairs are taken too, as a mapping: what callers built before the
        # fields were mappings (looked up by host, for every heartbeat received).
        for name in ("last_heard", "echo", "proven"):
            if isinstance(value := getattr(self, name), tuple):
                object.__setattr__(self, name, dict(value))

    def proven_ago(self, host: HostId) -> float | None:
        """Seconds before sending since which the sender has proven contact with `host`."""
        return self.proven.get(host) if self.proven is not None else None

    def echo_of(self, host: HostId) -> int | None:
        """The last sequence number of `host` the sender accepted; None if none."""
        return self.echo.get(host) if self.echo is not None else None

    def heard_ago(self, host: HostId) -> float | None:
        """Seconds before sending that the sender last heard `host`; None if never."""
        return self.last_heard.get(host) if self.last_heard is not None else None


def assembled(**fields: Any) -> Heartbeat:
    """A Heartbeat from every one of its fields, already of their types (mappings, not
    pairs): what a decoder has once it checked them. The frozen dataclass's own __init__
    sets each of the 17 fields through object.__setattr__ and then runs __post_init__,
    about 6 us of the 17 that decoding a version 3 heartbeat took, 63 times a second in a
    64-host pool (bench/heartbeat_cost.py, issue 23); one update of the instance's dict
    does the same."""
    hb = object.__new__(Heartbeat)
    hb.__dict__.update(fields)
    return hb


def check_secret(secret: bytes) -> None:
    if len(secret) < 16:
        raise ValueError("the pool secret must be at least 16 bytes")


def encode(hb: Heartbeat, secret: bytes) -> bytes:
    check_secret(secret)
    payload = json.dumps(
        {
            "pool": hb.pool, "from": hb.sender, "boot": hb.boot, "seq": hb.seq,
            "t": hb.sent_at, "master": hb.master, "heard": list(hb.heard),
            "quorate": hb.quorate, "armed": hb.armed, "prio": hb.priority,
            "vote": list(hb.vote) if hb.vote else None, "epoch": hb.epoch,
            "promoting": hb.promoting,
            **({} if hb.last_heard is None else {"ages": _floored(hb.last_heard)}),
            **({} if hb.echo is None else {"v": 2, "echo": dict(hb.echo)}),
            **({} if hb.boot_started is None else {"bt": hb.boot_started}),
            **({} if hb.proven is None else {"pv": _floored(hb.proven)}),
            **({} if hb.reads <= 2 else {"rd": hb.reads}),
        },
        separators=(",", ":"), sort_keys=True,
    ).encode()
    return MAGIC + hmac.new(secret, payload, hashlib.sha256).digest() + payload


def _floored(last_heard: Mapping[HostId, float]) -> dict[HostId, float]:
    # Ages go out floored to 0.01 s: "0.48" parses faster and takes fewer bytes than
    # "0.48735192300006747", and older daemons read it as any other float. Floored, never
    # rounded up: a receiver takes a peer's report of a host as (when it received the report)
    # - age (table.py, evidence()), so a smaller age places the contact later and every
    # self-fence deadline that rests on it later, which is the safe direction.
    ages: dict[HostId, float] = {}
    for host, age in last_heard.items():
        try:
            centis = math.floor(age * 100)
        except (OverflowError, ValueError):  # inf, nan: sent as is, and refused as before
            ages[host] = age
            continue
        # age * 100 is rounded: centis / 100 must be the largest hundredth not above age.
        if centis / 100 > age:
            centis -= 1
        elif (centis + 1) / 100 <= age:
            centis += 1
        ages[host] = centis / 100
    return ages


class _NonFinite(float):
    """NaN or +-Infinity as the parser reads them. Its own type lets the check of `ages`
    refuse them by type, with no test per value, while a field that takes any number (`t`)
    still takes them as a plain float, as it always did."""


_JSON = json.JSONDecoder(parse_constant=_NonFinite)
_NUMBERS = frozenset({int, float})
_STR = frozenset({str})
_AGES = "field 'ages' must map host uuids to seconds >= 0"
_PROVEN = "field 'pv' must map host uuids to seconds >= 0"


def decode(data: bytes, secret: bytes) -> Heartbeat:
    check_secret(secret)
    if not data.startswith(MAGIC):
        raise HeartbeatError("not a xenhad heartbeat (bad magic)")
    if len(data) <= len(MAGIC) + _MAC or len(data) > MAX_SIZE:
        raise HeartbeatError(f"a heartbeat of {len(data)} bytes is truncated or oversized")
    mac, payload = data[len(MAGIC):len(MAGIC) + _MAC], data[len(MAGIC) + _MAC:]
    if not hmac.compare_digest(mac, hmac.digest(secret, payload, "sha256")):
        raise HeartbeatError("bad MAC: another pool secret, or tampered")
    try:
        raw = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raw = _strict_json(payload)
    if not isinstance(raw, dict):
        raise HeartbeatError("authenticated payload is not an object")
    get = raw.get
    scalars: tuple[Any, ...] = (
        get("pool"), get("from"), get("boot"), get("seq"), get("master"), get("quorate"),
        get("armed", False), get("prio", 0), get("epoch", 0), get("promoting", False),
    )
    # Every heartbeat of ours passes this one comparison of exact types (bool is not int
    # here); anything else takes the checks field by field, which name the culprit.
    if tuple(map(type, scalars)) != _SCALAR_TYPES or type(get("t")) not in _NUMBERS:
        return _checked(raw)
    pool, sender, boot, seq, master, quorate, armed, priority, epoch, promoting = scalars
    return Heartbeat(
        pool=pool, sender=sender, boot=boot, seq=seq, sent_at=_time(raw["t"]), master=master,
        heard=tuple(_strings(raw, "heard")), quorate=quorate, armed=armed, priority=priority,
        vote=_vote(get("vote")), last_heard=_ages(get("ages")), epoch=epoch,
        promoting=promoting, echo=_echo(get("echo")), boot_started=_boot_started(get("bt")),
        proven=_ages(get("pv"), _PROVEN), reads=_reads(get("rd")),
    )


_SCALAR_TYPES = (str, str, str, int, str, bool, bool, int, int, bool)


def _checked(raw: dict[str, Any]) -> Heartbeat:
    return Heartbeat(
        pool=_field(raw, "pool", str),
        sender=_field(raw, "from", str),
        boot=_field(raw, "boot", str),
        seq=_field(raw, "seq", int),
        sent_at=_time(_field(raw, "t", (int, float))),
        master=_field(raw, "master", str),
        heard=tuple(_strings(raw, "heard")),
        quorate=_field(raw, "quorate", bool),
        armed=_field(raw, "armed", bool, False),
        priority=_field(raw, "prio", int, 0),
        vote=_vote(raw.get("vote")),
        last_heard=_ages(raw.get("ages")),
        epoch=_field(raw, "epoch", int, 0),
        promoting=_field(raw, "promoting", bool, False),
        echo=_echo(raw.get("echo")),
        boot_started=_boot_started(raw.get("bt")),
        proven=_ages(raw.get("pv"), _PROVEN),
        reads=_reads(raw.get("rd")),
    )


def _strict_json(payload: bytes) -> Any:
    """The standard library's reading of what orjson refused: NaN, a number too large for
    64 bits, a lone surrogate are JSON to it (and refused later, field by field, as they
    always were), and anything else is not JSON to either. orjson reads every heartbeat a
    daemon sends, at a third of the cost: 63 arrive each second in a 64-host pool."""
    try:
        # json.loads(payload) for bytes, minus building a decoder per call for parse_constant.
        return _JSON.decode(payload.decode(json.detect_encoding(payload), "surrogatepass"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HeartbeatError("authenticated payload is not JSON") from None


def _time(value: float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float
        raise HeartbeatError("field 't' is not a time") from None


def _vote(value: object) -> tuple[HostId, HostId] | None:
    # Absent or null from a daemon that casts no vote (or predates votes).
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, str) for v in value)):
        raise HeartbeatError("field 'vote' must be [dead master, candidate] or null")
    return (value[0], value[1])


def _ages(value: object, why: str = _AGES) -> Mapping[HostId, float] | None:
    # Absent from a daemon that predates it: the table then treats the sender's report as
    # "heard everyone just now", which can only delay a self-fence conclusion.
    if value is None:
        return None
    # By exact type: the parser makes no subclasses but bool (of int) and _NonFinite (of
    # float), and both are refused.
    if not isinstance(value, dict):
        raise HeartbeatError(why)
    kinds = set(map(type, value.values()))
    if not kinds <= _NUMBERS:
        raise HeartbeatError(why)
    ages: dict[HostId, float] = value
    if int in kinds:  # ours sends floats; an integer too large for one is refused too
        try:
            ages = {host: float(age) for host, age in value.items()}
        except OverflowError:
            raise HeartbeatError(why) from None
    # max: a number too large for a float (1e400) is read as inf.
    if ages and not (min(ages.values()) >= 0 and max(ages.values()) < math.inf):
        raise HeartbeatError(why)
    return ages


_ECHO = "field 'echo' must map host uuids to sequence numbers"
MAX_SEQ = 1 << 62
"""Sequence numbers stay below this: a boot starts at a random number under 2**52 and sends
one a second, so it would take a hundred million years to get here."""


def _echo(value: object) -> Mapping[HostId, int] | None:
    # Absent from a version 1 daemon: its contact is judged as version 1 judged it.
    if value is None:
        return None
    if not isinstance(value, dict) or not set(map(type, value.values())) <= {int}:
        raise HeartbeatError(_ECHO)
    echo: dict[HostId, int] = value
    if echo and not (min(echo.values()) >= 0 and max(echo.values()) < MAX_SEQ):
        raise HeartbeatError(_ECHO)
    return echo


def _boot_started(value: object) -> float | None:
    if value is None:
        return None
    if type(value) not in _NUMBERS:
        raise HeartbeatError("field 'bt' must be the time the sender's boot started")
    started = _time(value)  # type: ignore[arg-type]
    if not math.isfinite(started):
        raise HeartbeatError("field 'bt' must be the time the sender's boot started")
    return started


def _reads(value: object) -> int:
    if value is None:
        return 2
    if type(value) is not int or not 2 <= value < 256:
        raise HeartbeatError("field 'rd' must be the highest wire version the sender reads")
    return value


def _field(
    raw: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    value = raw.get(key, default)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise HeartbeatError(f"field {key!r} is missing or of the wrong type")
    return value


def _strings(raw: dict[str, Any], key: str) -> list[str]:
    value = raw.get(key)
    if not isinstance(value, list) or not set(map(type, value)) <= _STR:
        raise HeartbeatError(f"field {key!r} must be a list of host uuids")
    return value
