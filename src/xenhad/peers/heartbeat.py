"""One heartbeat on the wire: b"XHB1" + HMAC-SHA256(secret, payload) + payload (JSON).

The MAC is checked before the payload is parsed: bytes from a stranger are never decoded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any

from xenhad.model import HostId

MAGIC = b"XHB1"
_MAC = 32
MAX_SIZE = 65507


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
    last_heard: tuple[tuple[HostId, float], ...] | None = None
    """(peer, seconds since the sender last accepted a heartbeat from it) for every peer its
    table holds, however long ago: what lets a receiver bound how recently a peer it cannot
    hear itself may have been quorate (table.py). None from a daemon that predates it."""
    epoch: int = 0
    """pool.other_config:xenhad_epoch in the database the sender's xapi serves: which
    promotion it follows. Of two masters, the one promoted later has the higher epoch."""
    promoting: bool = False
    """The sender called emergency_transition_to_master and its xapi is not master yet
    (Xapi_fuse): until then it answers as the old master's slave."""

    def heard_ago(self, host: HostId) -> float | None:
        """Seconds before sending that the sender last heard `host`; None if never."""
        for peer, age in self.last_heard or ():
            if peer == host:
                return age
        return None


def _check_secret(secret: bytes) -> None:
    if len(secret) < 16:
        raise ValueError("the pool secret must be at least 16 bytes")


def encode(hb: Heartbeat, secret: bytes) -> bytes:
    _check_secret(secret)
    payload = json.dumps(
        {
            "pool": hb.pool, "from": hb.sender, "boot": hb.boot, "seq": hb.seq,
            "t": hb.sent_at, "master": hb.master, "heard": list(hb.heard),
            "quorate": hb.quorate, "armed": hb.armed, "prio": hb.priority,
            "vote": list(hb.vote) if hb.vote else None, "epoch": hb.epoch,
            "promoting": hb.promoting,
            **({} if hb.last_heard is None else {"ages": dict(hb.last_heard)}),
        },
        separators=(",", ":"), sort_keys=True,
    ).encode()
    return MAGIC + hmac.new(secret, payload, hashlib.sha256).digest() + payload


def decode(data: bytes, secret: bytes) -> Heartbeat:
    _check_secret(secret)
    if not data.startswith(MAGIC):
        raise HeartbeatError("not a xenhad heartbeat (bad magic)")
    if len(data) <= len(MAGIC) + _MAC or len(data) > MAX_SIZE:
        raise HeartbeatError(f"a heartbeat of {len(data)} bytes is truncated or oversized")
    mac, payload = data[len(MAGIC):len(MAGIC) + _MAC], data[len(MAGIC) + _MAC:]
    if not hmac.compare_digest(mac, hmac.new(secret, payload, hashlib.sha256).digest()):
        raise HeartbeatError("bad MAC: another pool secret, or tampered")
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise HeartbeatError("authenticated payload is not JSON") from None
    if not isinstance(raw, dict):
        raise HeartbeatError("authenticated payload is not an object")
    return Heartbeat(
        pool=_field(raw, "pool", str),
        sender=_field(raw, "from", str),
        boot=_field(raw, "boot", str),
        seq=_field(raw, "seq", int),
        sent_at=float(_field(raw, "t", (int, float))),
        master=_field(raw, "master", str),
        heard=tuple(_strings(raw, "heard")),
        quorate=_field(raw, "quorate", bool),
        armed=_field({"armed": raw.get("armed", False)}, "armed", bool),
        priority=_field({"prio": raw.get("prio", 0)}, "prio", int),
        vote=_vote(raw.get("vote")),
        last_heard=_ages(raw.get("ages")),
        epoch=_field({"epoch": raw.get("epoch", 0)}, "epoch", int),
        promoting=_field({"promoting": raw.get("promoting", False)}, "promoting", bool),
    )


def _vote(value: object) -> tuple[HostId, HostId] | None:
    # Absent or null from a daemon that casts no vote (or predates votes).
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, str) for v in value)):
        raise HeartbeatError("field 'vote' must be [dead master, candidate] or null")
    return (value[0], value[1])


def _ages(value: object) -> tuple[tuple[HostId, float], ...] | None:
    # Absent from a daemon that predates it: the table then treats the sender's report as
    # "heard everyone just now", which can only delay a self-fence conclusion.
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(age, (int, float)) and not isinstance(age, bool)
        and math.isfinite(age) and age >= 0
        for age in value.values()
    ):
        raise HeartbeatError("field 'ages' must map host uuids to seconds >= 0")
    return tuple(sorted((host, float(age)) for host, age in value.items()))


def _field(raw: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HeartbeatError(f"field {key!r} is missing or of the wrong type")
    return value


def _strings(raw: dict[str, Any], key: str) -> list[str]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HeartbeatError(f"field {key!r} must be a list of host uuids")
    return value
