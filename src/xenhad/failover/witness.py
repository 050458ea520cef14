"""A tie-breaker for a pool with an even number of hosts (above all, two): a lease in a
file on storage every host mounts, in the spirit of native HA's statefile on a shared SR.

The witness counts as one more member of the pool, and its vote belongs to whoever holds
the lease. One host holds it at a time and renews it every tick; another takes it only
once it has expired by more than `skew` (the hosts' wall clocks differ). So when two hosts
lose each other but both still reach the storage, the holder keeps its quorum and the
other loses it (it acts on nothing and starves its watchdog); when the holder dies, the
survivor takes the lease after it expires, and with it a majority.

Writes are a temporary file and a rename, which is atomic on local file systems and NFS.
Two hosts that both find the lease expired both write it; each reads it back after
`settle` seconds, and only the last writer finds its own name there.

`decide` is pure; `Witness` keeps the lease in a `LeaseStore`: `FileLease` does the file
I/O in a thread, so a hung mount costs a timeout, never the loop (xenhad.virtual has one in
memory, shared by a pool run in one process). Any failure to read or write means "not held".
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from xenhad.model import HostId

log = structlog.get_logger("xenhad.witness")

WITNESS: HostId = "witness"
"""The witness's name among the pool's members when votes and quorum are counted."""

LEASE_FILE = "xenhad-witness.lease"


@dataclass(frozen=True)
class Lease:
    holder: HostId
    expires: float
    """Unix time, by the holder's clock."""


def decide(current: Lease | None, *, me: HostId, now: float, ttl: float,
           skew: float) -> Lease | None:
    """The lease to write now, or None to leave the one there alone."""
    if current is None or current.holder == me or now > current.expires + skew:
        return Lease(me, now + ttl)
    return None


def parse(text: str) -> Lease | None:
    try:
        raw = json.loads(text)
        return Lease(str(raw["holder"]), float(raw["expires"]))
    except (ValueError, KeyError, TypeError):
        return None  # torn or foreign content: treated as no lease, and rewritten


Decide = Callable[["Lease | None"], "Lease | None"]


class LeaseStore(Protocol):
    """Where the lease lives. `exchange` reads it, writes what `decide` makes of it (if
    anything), and says whether we hold it now: a renewal (`held`) holds at once; a take is
    read back after `settle` seconds, and held only if our write is still there. Raises
    OSError when the store cannot be used."""

    where: str

    async def exchange(self, decide: Decide, *, me: HostId, held: bool,
                       settle: float) -> bool: ...


class FileLease:
    """The lease in a file on storage every host mounts (the module's docstring)."""

    def __init__(self, directory: Path, me: HostId) -> None:
        self.path = directory / LEASE_FILE
        self.where = str(self.path)
        self._me = me

    async def exchange(self, decide: Decide, *, me: HostId, held: bool,
                       settle: float) -> bool:
        return await asyncio.to_thread(self._exchange, decide, held, settle)

    def _exchange(self, decide: Decide, held: bool, settle: float) -> bool:
        wanted = decide(self._read())
        if wanted is None:
            return False
        tmp = self.path.with_name(f".{LEASE_FILE}.{self._me}")
        tmp.write_text(json.dumps({"holder": wanted.holder, "expires": wanted.expires}))
        os.replace(tmp, self.path)
        if held:
            return True  # a renewal: nobody may write while our lease runs
        # A take: another host may have found it expired at the same moment.
        time.sleep(settle)
        back = self._read()
        return back is not None and back.holder == self._me

    def _read(self) -> Lease | None:
        try:
            return parse(self.path.read_text())
        except FileNotFoundError:
            return None


class Witness:
    def __init__(self, directory: Path, me: HostId, *, ttl: float, skew: float,
                 settle: float, timeout: float, store: LeaseStore | None = None) -> None:
        self.store: LeaseStore = store if store is not None else FileLease(directory, me)
        self.path = self.store.where
        self.me = me
        self.ttl = ttl
        self.skew = skew
        self.settle = settle
        self.timeout = timeout
        self.held = False
        self.held_since = 0.0
        """When we last took the lease (monotonic). Whoever held it before stopped counting
        its vote before then: its lease had expired, and it renews before each use."""
        self._valid_until = 0.0
        """Monotonic time until which the lease we last wrote is ours (see held_at)."""
        self._problem = ""

    def held_at(self, monotonic: float) -> bool:
        """Whether we hold the lease at `monotonic`, not only as of the last poll: the lease
        we wrote runs `ttl` from the moment `poll` was given, and a slow tick that polls late
        must not count a vote another host may already have taken (it takes it `skew` after
        the expiry written, by its own clock)."""
        return self.held and monotonic < self._valid_until

    async def poll(self, now: float, monotonic: float) -> bool:
        """Take or renew the lease if we may (`now` is wall time, written in the lease);
        whether we hold it now. `monotonic` dates `held_since`."""
        try:
            held = await asyncio.wait_for(self._poll(now), self.timeout)
            self._say("")
        except asyncio.TimeoutError:
            held = False
            self._say(f"the witness {self.path} did not answer within {self.timeout:g}s")
        except OSError as exc:
            held = False
            self._say(f"the witness {self.path} cannot be used: {exc.strerror or exc}")
        if held != self.held:
            (log.info if held else log.warning)(
                "witness.held" if held else "witness.lost", path=str(self.path))
            if held:
                self.held_since = monotonic
        if held:
            # `now` and `monotonic` were read together, before the lease was written.
            self._valid_until = monotonic + self.ttl
        self.held = held
        return held

    async def _poll(self, now: float) -> bool:
        def wanted(current: Lease | None) -> Lease | None:
            return decide(current, me=self.me, now=now, ttl=self.ttl, skew=self.skew)

        return await self.store.exchange(wanted, me=self.me, held=self.held,
                                         settle=self.settle)

    def _say(self, problem: str) -> None:
        if problem and problem != self._problem:
            log.error("witness.unreachable", why=problem,
                      effect="this host does not count the witness's vote")
        self._problem = problem
