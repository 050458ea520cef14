"""Whom to beat to before the pool is read: the pool's uuid and its hosts, kept on disk.

A daemon learns its pool and its peers' addresses from its first read of the pool. A
daemon restarted (killed, upgraded, crashed) while its xapi cannot answer that read (slower
than xapi.timeout; its host cut one way from the master, so the forwarded read never
returns) was silent until it could, and its host, whose xapi the master could not reach
either, was fenced with its VMs running (virtual chaos seeds 1000131, 1000067; rule 2).
So what the heartbeat link needs is written here after each read that changed it, and a
restarted daemon beats from its start to the peers it names.

It says who the peers were, nothing more: a daemon that has not read the pool since it
started names no master, claims no quorum, casts no vote (daemon._beat), and its watchdog
is not armed on it (daemon._feed_watchdog judges quorum on a view read).

The file is replaced atomically (a temporary file fsynced, renamed over it, the directory
fsynced), through the journal's `Disk`, so a pool run in one process keeps it on each
host's disk in memory (xenhad.virtual.disk). One that cannot be used is a RosterError
with a one-line reason: the daemon says so and starts as it did before the file existed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from xenhad.errors import XenhadError
from xenhad.journal import Disk, OsDisk, replace_with
from xenhad.model import HostId, PoolView
from xenhad.peers.link import Peer

VERSION = 1
_MAX_BYTES = 1 << 20
"""Far above a 64-host pool's roster (about 6 kB): anything larger is not ours."""


class RosterError(XenhadError):
    """The roster cannot be read, used or written; the message says why in one line."""


@dataclass(frozen=True)
class Roster:
    pool: str
    """The pool's uuid: the heartbeats' `pool`, which every peer checks."""
    me: HostId
    """The host that wrote it: a state directory copied to another host is not its own."""
    hosts: tuple[Peer, ...]
    """Every host of the pool (this one included, which the link skips), by uuid."""


def roster_of(view: PoolView, me: HostId) -> Roster | None:
    """What a read of the pool says the link beats to; None when this host is not in it."""
    if me not in view.hosts:
        return None
    hosts = sorted((Peer(h.uuid, h.address) for h in view.hosts.values()),
                   key=lambda p: p.uuid)
    return Roster(view.pool_uuid, me, tuple(hosts))


def encode(roster: Roster) -> bytes:
    return json.dumps({
        "version": VERSION, "pool": roster.pool, "me": roster.me,
        "hosts": [[p.uuid, p.address] for p in roster.hosts],
    }, separators=(",", ":")).encode() + b"\n"


def decode(data: bytes) -> Roster:
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RosterError("not JSON (a torn or foreign file)") from None
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        raise RosterError(f"not a version {VERSION} roster")
    pool, me, hosts = raw.get("pool"), raw.get("me"), raw.get("hosts")
    if not isinstance(pool, str) or not isinstance(me, str) or not me:
        raise RosterError("'pool' and 'me' must be strings")
    if not isinstance(hosts, list) or not all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(v, str) for v in h)
            for h in hosts):
        raise RosterError("'hosts' must be a list of [uuid, address]")
    return Roster(pool, me, tuple(Peer(uuid, address) for uuid, address in hosts))


class RosterFile:
    def __init__(self, path: Path, *, disk: Disk | None = None) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".new")
        self._disk: Disk = disk if disk is not None else OsDisk()

    def load(self) -> Roster | None:
        """The roster last saved; None when there is none (a host's first start)."""
        disk = self._disk
        try:
            fd = disk.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RosterError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            size = disk.size(fd)
            if size > _MAX_BYTES:
                raise RosterError(f"{self.path} is {size} bytes: not a roster")
            data = disk.pread(fd, size, 0)
        except OSError as exc:
            raise RosterError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        finally:
            disk.close(fd)
        try:
            return decode(data)
        except RosterError as exc:
            raise RosterError(f"{self.path}: {exc}") from None

    def save(self, roster: Roster) -> None:
        """Replace the file with `roster`: a crash at any instant leaves the old one or the
        new one, never a mixture."""
        disk = self._disk
        try:
            disk.make_dir(self.path.parent)
            replace_with(disk, self._tmp, self.path, encode(roster))
            disk.fsync_dir(self.path.parent)
        except OSError as exc:
            raise RosterError(f"cannot write {self.path}: {exc.strerror or exc}") from None
