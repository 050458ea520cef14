"""Wire version 3: a heartbeat in packed binary, b"XHB3" + HMAC-SHA256 + payload.

Why: in a 64-host pool each daemon receives 63 heartbeats a second. A version 2 heartbeat
is JSON naming every host four times (`heard`, `ages`, `echo`, `pv`): about 9 kB to check
and parse, then a Python loop over every entry. Here each host is named once, in a roster,
and what is said of the hosts are arrays in roster order, read by `struct` where they lie;
a receiver finds the roster it read last time from the same sender in a cache, so
no host name is decoded again at rest.

Says exactly what version 2 says: the receiver builds the same `Heartbeat`, and the table
reads it as it reads version 2 (every proof in table.py holds unchanged). Two things are
sent more coarsely, both in the safe direction: ages go out as whole hundredths of a second,
floored, as version 2 sends them, and an age beyond MAX_CENTIS goes out as MAX_CENTIS
(smaller than it was: a contact placed later, a self-fence deadline later).

The MAC covers the magic too: a payload cannot be passed off as another version's.

Payload, little-endian:
  header   seq u64, sent_at f64, boot_started f64, epoch i64, priority i16, flags u8,
           reads u8 (the highest wire version the sender reads)
  strings  u16 byte length, then pool, sender, boot, master, and with FLAG_VOTE the dead
           master and the candidate, in UTF-8, each ended by a NUL byte
  roster   u16 byte length, then u16 count n, then n hosts: u8 0 + 16 bytes for a host id
           that is a canonical UUID (every XAPI host's), else u8 length + UTF-8
  arrays   n x u32 centiseconds (last_heard), n x u64 (echo), n x u8 (1: in `heard`),
           n x u32 centiseconds (proven; NOT_PROVEN for a host the sender does not vouch for)

What is said of the hosts is read on demand: the decoded heartbeat's mappings (`Ages`,
`Seqs`) look a host up by its place in the roster in the payload itself, so a receiver that
asks for its own echo and, each tick, a few ages builds no per-host object at all; only the
echoes' range is checked for all at once, on their bytes.
"""

from __future__ import annotations

import functools
import hmac
import math
import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import compress

from xenhad.model import HostId
from xenhad.peers.heartbeat import MAX_SEQ, MAX_SIZE, Heartbeat, HeartbeatError, assembled

MAGIC = b"XHB3"
VERSION = 3
_MAC = 32
_HEADER = struct.Struct("<QddqhBB")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_BELOW_MAX_SEQ = bytes(range(MAX_SEQ >> 56))
"""The top bytes (of eight, little-endian) that sequence numbers below MAX_SEQ may have."""
MAX_CENTIS = 0xFFFFFFFE
"""Ages are sent in hundredths of a second up to this (about 497 days)."""
NOT_PROVEN = 0xFFFFFFFF
FLAG_QUORATE, FLAG_ARMED, FLAG_PROMOTING, FLAG_VOTE = 1, 2, 4, 8
_FLAGS = FLAG_QUORATE | FLAG_ARMED | FLAG_PROMOTING | FLAG_VOTE
_INT64 = 1 << 63
_ROSTERS = 512
"""Rosters remembered by a decoder: one per sender at rest, plus a few as hosts come and go."""


class CannotPack(ValueError):
    """The heartbeat says something version 3 cannot carry (a version 1 heartbeat without
    echoes, a value out of range): send it as version 2."""


def encode(hb: Heartbeat, secret: bytes) -> bytes:
    """The heartbeat in version 3. Raises CannotPack when it does not fit (see there)."""
    if hb.echo is None or hb.last_heard is None or hb.boot_started is None:
        raise CannotPack("version 3 carries echoes, ages and the boot's start")
    if not (-_INT64 <= hb.epoch < _INT64 and -32768 <= hb.priority < 32768
            and 0 <= hb.seq < MAX_SEQ and math.isfinite(hb.boot_started)):
        raise CannotPack("a number out of version 3's range")
    ages = dict(hb.last_heard)
    echo = dict(hb.echo)
    if set(ages) != set(echo) or not set(hb.heard) <= set(ages):
        raise CannotPack("version 3 says ages and echoes of the same hosts")
    roster = sorted(ages)
    index = {h: i for i, h in enumerate(roster)}
    proven = dict(hb.proven or {})
    if not proven.keys() <= index.keys():
        raise CannotPack("version 3 vouches only for hosts on the roster")
    heard = set(hb.heard)
    flags = ((FLAG_QUORATE if hb.quorate else 0) | (FLAG_ARMED if hb.armed else 0)
             | (FLAG_PROMOTING if hb.promoting else 0) | (FLAG_VOTE if hb.vote else 0))
    echoes = [echo[h] for h in roster]
    if echoes and not (min(echoes) >= 0 and max(echoes) < MAX_SEQ):
        raise CannotPack("an echo out of range")
    names = _roster(roster)
    n = len(roster)
    parts = [
        _HEADER.pack(hb.seq, hb.sent_at, hb.boot_started, hb.epoch, hb.priority, flags,
                     VERSION),
        _strings((hb.pool, hb.sender, hb.boot, hb.master, *(hb.vote or ()))),
        _U16.pack(len(names)), names,
        struct.pack(f"<{n}I", *(_centis(ages[h]) for h in roster)),
        struct.pack(f"<{n}Q", *echoes),
        bytes(h in heard for h in roster),
        struct.pack(f"<{n}I", *(_centis(proven[h]) if h in proven else NOT_PROVEN
                                for h in roster)),
    ]
    payload = b"".join(parts)
    data = MAGIC + hmac.digest(secret, MAGIC + payload, "sha256") + payload
    if len(data) > MAX_SIZE:
        raise CannotPack(f"{len(data)} bytes is more than a datagram")
    return data


def _centis(age: float) -> int:
    # Floored, as version 2 floors (heartbeat._floored): never an age larger than it was.
    if not age >= 0:  # NaN too
        raise CannotPack("an age must be a number >= 0")
    if age >= MAX_CENTIS / 100:
        return MAX_CENTIS
    centis = math.floor(age * 100)
    # age * 100 is rounded: centis / 100 must be the largest hundredth not above age.
    if centis / 100 > age:
        centis -= 1
    elif (centis + 1) / 100 <= age:
        centis += 1
    return centis


def _strings(texts: Sequence[str]) -> bytes:
    if any("\0" in text for text in texts):
        raise CannotPack("a name with a NUL character")
    raw = "".join(text + "\0" for text in texts).encode()
    if len(raw) > 0xFFFF:
        raise CannotPack("names longer than 65,535 bytes")
    return _U16.pack(len(raw)) + raw


def _roster(hosts: Sequence[HostId]) -> bytes:
    if len(hosts) > 0xFFFF:
        raise CannotPack("more than 65,535 hosts")
    names = _U16.pack(len(hosts)) + b"".join(map(_host, hosts))
    if len(names) > 0xFFFF:
        raise CannotPack("a roster longer than 65,535 bytes")
    return names


@functools.lru_cache(maxsize=1024)
def _host(host: HostId) -> bytes:
    try:
        as_uuid = uuid.UUID(host)
    except ValueError:
        as_uuid = None
    if as_uuid is not None and str(as_uuid) == host:
        return b"\0" + as_uuid.bytes
    raw = host.encode()
    if not 0 < len(raw) < 256:
        raise CannotPack("a host id of 1 to 255 bytes")
    return bytes([len(raw)]) + raw


class Decoder:
    """Reads version 3 heartbeats, remembering the rosters it read (see the module's
    docstring): one per receiving daemon."""

    def __init__(self) -> None:
        self._rosters: dict[bytes, Roster] = {}
        self._strings: dict[bytes, list[str]] = {}

    def decode(self, data: bytes, secret: bytes) -> Heartbeat:
        if len(data) <= len(MAGIC) + _MAC or len(data) > MAX_SIZE:
            raise HeartbeatError(f"a heartbeat of {len(data)} bytes is truncated or oversized")
        mac, payload = data[len(MAGIC):len(MAGIC) + _MAC], data[len(MAGIC) + _MAC:]
        if not hmac.compare_digest(mac, hmac.digest(secret, MAGIC + payload, "sha256")):
            raise HeartbeatError("bad MAC: another pool secret, or tampered")
        # Authenticated: what follows was written by a daemon holding the pool secret, but
        # perhaps by another version's bug, so every length and value is still checked.
        try:
            return self._parse(payload)
        except (struct.error, IndexError, UnicodeDecodeError):
            raise HeartbeatError("version 3 payload truncated or malformed") from None

    def _parse(self, payload: bytes) -> Heartbeat:
        seq, sent_at, boot_started, epoch, priority, flags, reads = \
            _HEADER.unpack_from(payload)
        if flags & ~_FLAGS or seq >= MAX_SEQ or not math.isfinite(boot_started):
            raise HeartbeatError("version 3 header out of range")
        at = _HEADER.size
        (size,) = _U16.unpack_from(payload, at)
        raw = payload[at + 2:at + 2 + size]
        at += 2 + size
        strings = self._strings.get(raw)
        if strings is None:
            # A sender says the same names beat after beat (pool, itself, its boot, its
            # master): read once, like its roster.
            strings = raw.decode().split("\0")
            if len(strings) != (7 if flags & FLAG_VOTE else 5) or strings.pop():
                raise HeartbeatError("version 3 names malformed")
            if len(self._strings) >= _ROSTERS:
                self._strings.clear()
            self._strings[raw] = strings
        elif len(strings) != (6 if flags & FLAG_VOTE else 4):
            raise HeartbeatError("version 3 names malformed")
        (size,) = _U16.unpack_from(payload, at)
        names = payload[at + 2:at + 2 + size]
        at += 2 + size
        roster = self._rosters.get(names)
        if roster is None:
            roster = self._remember(names)
        n = len(roster.hosts)
        if at + 17 * n != len(payload):
            raise HeartbeatError("version 3 payload truncated or malformed")
        # The arrays are read where they lie, on demand (Ages, Seqs): a receiver looks up
        # its own echo and, at its tick, a few ages; unpacking all four for each of 63
        # heartbeats a second was most of their decoding (bench/heartbeat_cost.py).
        ages, echoes, heard, proven = at, at + 4 * n, at + 12 * n, at + 13 * n
        # Every echo below MAX_SEQ (2**62): the top byte of each little-endian one < 0x40.
        if payload[echoes + 7:heard:8].translate(None, _BELOW_MAX_SEQ):
            raise HeartbeatError("version 3 echo out of range")
        pool, sender, boot, master, *vote = strings
        return assembled(
            pool=pool, sender=sender, boot=boot, seq=seq, sent_at=sent_at, master=master,
            heard=roster.heard(payload[heard:proven]),
            quorate=bool(flags & FLAG_QUORATE),
            armed=bool(flags & FLAG_ARMED), priority=priority,
            vote=(vote[0], vote[1]) if vote else None,
            last_heard=Ages(roster, payload, ages), epoch=epoch,
            promoting=bool(flags & FLAG_PROMOTING), echo=Seqs(roster, payload, echoes),
            boot_started=boot_started, proven=Ages(roster, payload, proven), reads=reads,
        )

    def _remember(self, names: bytes) -> Roster:
        (n,) = _U16.unpack_from(names)
        hosts: list[HostId] = []
        at = 2
        for _ in range(n):
            size = names[at]
            if size == 0:
                raw = names[at + 1:at + 17]
                if len(raw) != 16:
                    raise HeartbeatError("version 3 roster truncated")
                hosts.append(str(uuid.UUID(bytes=raw)))
                at += 17
            else:
                hosts.append(names[at + 1:at + 1 + size].decode())
                at += 1 + size
        if at != len(names) or len(set(hosts)) != n or hosts != sorted(hosts):
            raise HeartbeatError("version 3 roster malformed (truncated, repeated or unsorted)")
        if len(self._rosters) >= _ROSTERS:
            self._rosters.clear()
        roster = self._rosters[names] = Roster(tuple(hosts))
        return roster


class Roster:
    """The hosts a sender names, in its order, and each one's place."""

    __slots__ = ("_heard", "ages", "echoes", "hosts", "index", "named")

    def __init__(self, hosts: tuple[HostId, ...]) -> None:
        self.hosts = hosts
        self.index = {h: i for i, h in enumerate(hosts)}
        self.named = frozenset(hosts)
        self._heard: tuple[bytes, tuple[HostId, ...]] = (b"", ())
        n = len(hosts)
        self.ages = struct.Struct(f"<{n}I")
        self.echoes = struct.Struct(f"<{n}Q")
        """What follows the roster: ages, echoes, heard (a byte each), proven (ages)."""


    def heard(self, flags: bytes) -> tuple[HostId, ...]:
        """The hosts whose byte in `flags` (roster order) is set: at rest the same as in
        the last heartbeat on this roster, and then the same tuple."""
        if flags != self._heard[0]:
            self._heard = (flags, tuple(compress(self.hosts, flags)))
        return self._heard[1]


class Ages(Mapping[HostId, float]):
    """host -> seconds, read from the roster-ordered hundredths at `at` in the payload on
    demand; a host with NOT_PROVEN is not in it."""

    __slots__ = ("_all", "_at", "_payload", "_roster")

    def __init__(self, roster: Roster, payload: bytes, at: int) -> None:
        self._roster = roster
        self._payload = payload
        self._at = at
        self._all: tuple[int, ...] | None = None

    def _centis(self) -> tuple[int, ...]:
        if self._all is None:
            self._all = self._roster.ages.unpack_from(self._payload, self._at)
        return self._all

    def __getitem__(self, host: HostId) -> float:
        centis: int = _U32.unpack_from(self._payload, self._at + 4 * self._roster.index[host])[0]
        if centis == NOT_PROVEN:
            raise KeyError(host)
        return centis / 100

    def __iter__(self) -> Iterator[HostId]:
        return compress(self._roster.hosts, (c != NOT_PROVEN for c in self._centis()))

    def __len__(self) -> int:
        centis = self._centis()
        return len(centis) - centis.count(NOT_PROVEN)

    @property
    def hosts_named(self) -> frozenset[HostId]:
        """Every host on the roster, vouched for or not: a superset of the keys."""
        return self._roster.named

    def at_most(self, seconds: float) -> Iterator[HostId]:
        """The hosts whose age is at most `seconds`: in one pass in C, for table.alive."""
        bound = _centis(seconds)  # the largest hundredth not above it: as __getitem__ reads
        return compress(self._roster.hosts, map(bound.__ge__, self._centis()))


class Seqs(Mapping[HostId, int]):
    """host -> sequence number, read from the roster-ordered array at `at` on demand."""

    __slots__ = ("_at", "_payload", "_roster")

    def __init__(self, roster: Roster, payload: bytes, at: int) -> None:
        self._roster = roster
        self._payload = payload
        self._at = at

    def __getitem__(self, host: HostId) -> int:
        (seq,) = _U64.unpack_from(self._payload, self._at + 8 * self._roster.index[host])
        return int(seq)

    def __iter__(self) -> Iterator[HostId]:
        return iter(self._roster.hosts)

    def __len__(self) -> int:
        return len(self._roster.hosts)


def readers(hosts: Iterable[tuple[HostId, int]]) -> frozenset[HostId]:
    """Of (host, the highest version its latest heartbeat says it reads), those reading 3."""
    return frozenset(h for h, reads in hosts if reads >= VERSION)
