"""One actor pool-wide: an incident lock in pool.other_config.

The value is "holder=<host uuid>;epoch=<n>;expires=<unix time>". It is taken with
pool.add_to_other_config, which xapi's master applies atomically (MAP_DUPLICATE_KEY when the
key exists: a compare-and-set), and renewed by its holder before it expires. A lock whose
holder stopped renewing is taken over once expired.

The epoch counts promotions: each new master raises pool.other_config[EPOCH_KEY] before it
acts. A promoted master starts from its own copy of the database, up to a sync interval old
(xapi's pool_db_sync_interval), which may hold a lock its old master took after that copy
or before: an epoch below the pool's current one marks such a lock as resurrected, and it
is taken over at once whatever its expiry says.

Pure: what to do with the lock as read, given the time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from xenhad.model import HostId

LOCK_KEY = "xenhad_lock"
EPOCH_KEY = "xenhad_epoch"


@dataclass(frozen=True)
class Lock:
    holder: HostId
    epoch: int
    expires: float

    def encode(self) -> str:
        return f"holder={self.holder};epoch={self.epoch};expires={self.expires:.0f}"


def decode(value: str) -> Lock | None:
    """The lock a pool.other_config value describes; None if it is not one of ours (an
    operator's edit): such a value is treated as expired, and replaced."""
    fields = dict(part.partition("=")[::2] for part in value.split(";") if "=" in part)
    try:
        return Lock(fields["holder"], int(fields["epoch"]), float(fields["expires"]))
    except (KeyError, ValueError):
        return None


def current_epoch(other_config: dict[str, str] | None) -> int:
    try:
        return int((other_config or {}).get(EPOCH_KEY, "0"))
    except ValueError:
        return 0


class Step(enum.Enum):
    HELD = "held"
    """Ours, with time left: act."""
    TAKE = "take"
    """Nobody's: add it."""
    RENEW = "renew"
    """Ours, past half its life: replace it with a fresh expiry, then act."""
    TAKE_OVER = "take-over"
    """Someone's, but expired or from an older epoch: remove it, then add ours."""
    WAIT = "wait"
    """Someone else holds it: do not act."""


@dataclass(frozen=True)
class Decision:
    step: Step
    why: str
    current: Lock | None


def decide(value: str | None, *, me: HostId, epoch: int, now: float, ttl: float) -> Decision:
    if value is None:
        return Decision(Step.TAKE, "no lock", None)
    lock = decode(value)
    if lock is None:
        return Decision(Step.TAKE_OVER, f"unreadable lock value {value!r}", None)
    if lock.epoch < epoch:
        return Decision(Step.TAKE_OVER, f"lock of {lock.holder} is from epoch {lock.epoch}, "
                        f"before promotion {epoch}: resurrected from an old database", lock)
    if lock.holder == me:
        if lock.epoch == epoch and lock.expires - now > ttl / 2:
            return Decision(Step.HELD, "held", lock)
        return Decision(Step.RENEW, "renewing", lock)
    if lock.expires <= now:
        return Decision(Step.TAKE_OVER, f"lock of {lock.holder} expired "
                        f"{now - lock.expires:.0f}s ago", lock)
    return Decision(Step.WAIT, f"held by {lock.holder} for {lock.expires - now:.0f}s more", lock)
