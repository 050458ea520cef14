"""The pool as XAPI describes it, kept up to date by event.from instead of re-read.

Reading every VM record each tick costs the master's xapi (and us) in proportion to the
pool's size; at rest nothing changes. So the first read is event.from with an empty token
(xapi answers with every object as an "add"), and each later tick asks only for what
changed since the last token, without waiting (timeout 0): one call, a few bytes when the
pool is quiet. build_snapshot turns the cached records into the same PoolView as before;
when no VM event came since the last build, it is offered that build's VM views to reuse
(our own pool-lock renewal alone writes pool.other_config every few seconds).

The whole pool is read again at once when the reply's valid_ref_counts disagree with what
we hold (a missed deletion); the cache is dropped on any error (xapi_event.ml raises
EVENTS_LOST when a token is too old, and a new master's tokens mean nothing to us), and
re-read every `full_every` seconds regardless. An empty token asks xapi_event.ml for every
object of the classes, so the first read is one call too. Of each record only the fields
build_snapshot reads are kept (monitor.FIELDS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from xenhad.monitor import FIELDS, STORAGE, ReusableVms, Snapshot, Where, build_snapshot
from xenhad.xapi.errors import XapiReplyError, shown

CLASSES: tuple[str, ...] = ("pool", "host", "host_metrics", "VM", *STORAGE)
"""What a PoolView is made of, as event.from and get_all_records name them: the VMs, and
what says where each can run (a 1,000-VM pool adds a VBD, VDI and VIF or so per VM, kept
to the few fields monitor.FIELDS names; bench/RESULTS.md has the cost)."""

_VM_INPUTS = frozenset({"vm", "vbd", "vdi", "vif", "vm_group", "network", "pif", "sr"})
"""Classes a VM view is built from: an event of one of them rebuilds the VM views (a PBD
changes only what a host sees)."""
_STORAGE = frozenset(cls.lower() for cls in STORAGE)
"""Classes monitor.Where reads: an event of one of them has it read again."""

WITHOUT_VMS: tuple[str, ...] = ("pool", "host", "host_metrics")
"""What a slave's daemon reads (PoolCache.read with vms=False): it acts on no VM until it is
master, and after a change of master 63 full reads at once through the new master's xapi
were more than it could serve at 64 hosts and 1,000 VMs (bench/RESULTS.md)."""


class EventSource(Protocol):
    logins: int
    """Sessions opened so far: a new one may be on another xapi (a new master, a restart),
    whose tokens and objects are not ours."""

    async def event_from(
        self, classes: Sequence[str], token: str, timeout: float
    ) -> Mapping[str, Any]: ...


class PoolCache:
    def __init__(self, *, full_every: float = 600.0) -> None:
        self.full_every = full_every
        self._records: dict[str, dict[str, dict[str, Any]]] = {}
        self._token: str | None = None
        self._full_at = float("-inf")
        self.calls = 0
        self.full_reads = 0
        self._logins = -1
        self._master: str | None = None
        self._built: Snapshot | None = None
        self._built_key = ""
        self._changed = True
        self._vms_changed = True
        self._where: Where | None = None
        """What the storage records say, while none of them changes: at rest the pool's
        events are about hosts and their metrics, and reading 10,000 storage records again
        for each was the largest part of a tick's CPU at 64 hosts (py-spy, bench/RESULTS.md)."""
        self._classes = CLASSES

    def reset(self) -> None:
        """Forget everything: the next read is a full one (after an error, a new master)."""
        self._token = None
        self._records = {}
        self._master = None
        self._built, self._changed, self._vms_changed = None, True, True
        self._where = None

    async def read(self, xapi: EventSource, *, protection_key: str, now: float,
                   vms: bool = True) -> Snapshot:
        """The pool as XAPI has it now. With `vms` false, a view without any VM (what a
        slave's daemon needs); a read with them after one without starts over."""
        classes = CLASSES if vms else WITHOUT_VMS
        if classes != self._classes:
            self._classes = classes
            self._token = None
        if xapi.logins != self._logins:
            self._token = None
        if self._token is None or now - self._full_at >= self.full_every:
            self.reset()
            self._full_at = now
            self.full_reads += 1
        try:
            try:
                await self._fetch(xapi)
            except _Drifted:
                # A deletion we never heard of, or an object we never saw: read it all.
                self.reset()
                self.full_reads += 1
                try:
                    await self._fetch(xapi)
                except _Drifted as e:
                    # A full read that contradicts itself is no reply to build a view on.
                    raise XapiReplyError(
                        f"event.from: {e} right after a full read: the read is skipped"
                    ) from None
            # A reloaded config may name another protection_key: every VM's protection
            # must then be read again, however quiet the pool.
            same_key = protection_key == self._built_key
            if self._built is not None and not self._changed and same_key:
                # A quiet pool: the same view, taken now (no need to rebuild 1,000 VMs).
                view = dataclasses.replace(self._built.view, taken_at=now)
                return Snapshot(view, self._built.warnings)
            reuse = None
            if self._built is not None and not self._vms_changed:
                reuse = ReusableVms(self._built, self._built_key)
            records = {cls: self._records.get(cls.lower(), {}) for cls in CLASSES}
            storage = {cls.lower(): records[cls] for cls in STORAGE} if vms else None
            if storage and self._where is None:
                self._where = Where(storage)
            snap = build_snapshot(records["pool"], records["host"], records["host_metrics"],
                                  records["VM"], protection_key=protection_key, now=now,
                                  reuse=reuse, storage=storage,
                                  where=self._where if storage else None)
        except BaseException:
            self.reset()
            raise
        if self._master is not None and snap.view.master != self._master:
            # The pool changed masters under the same session: our token and objects may
            # be another database's. Read it all again, now.
            self.reset()
            return await self.read(xapi, protection_key=protection_key, now=now, vms=vms)
        self._master = snap.view.master
        self._built, self._built_key = snap, protection_key
        self._changed = self._vms_changed = False
        return snap

    async def _fetch(self, xapi: EventSource) -> None:
        self._logins = xapi.logins
        reply = await xapi.event_from(list(self._classes), self._token or "", 0.0)
        self.calls += 1
        self._apply(reply)

    def _apply(self, reply: Mapping[str, Any]) -> None:
        events = reply.get("events")
        token = reply.get("token")
        if not isinstance(events, list) or not isinstance(token, str):
            raise XapiReplyError("event.from answered without events and a token")
        if self._token and token < self._token:
            # Tokens are the database's generation, zero-padded to compare as strings
            # (xapi_event.ml): one that went back comes from another database (a restarted
            # xapi, a new master), and our records may miss what changed in it.
            raise _Drifted(f"event.from token went back from {self._token} to {token}")
        if events:
            self._changed = True
        for event in events:
            if not isinstance(event, dict):
                raise XapiReplyError("event.from answered an event that is not a struct")
            cls, ref = event.get("class", ""), event.get("ref", "")
            if not isinstance(cls, str) or not isinstance(ref, str):
                raise XapiReplyError(
                    f"event.from answered an event whose class ({shown(cls)}) or ref "
                    f"({shown(ref)}) is not a string: the read is skipped"
                )
            cls = cls.lower()
            if cls in _VM_INPUTS:
                self._vms_changed = True
            if cls in _STORAGE:
                self._where = None
            table = self._records.setdefault(cls, {})
            if event.get("operation") == "del":
                table.pop(ref, None)
                continue
            snapshot = event.get("snapshot")
            if not isinstance(snapshot, dict):
                raise XapiReplyError(f"event.from: the {cls} event for {ref} has no snapshot")
            keep = FIELDS.get(cls)
            table[ref] = snapshot if keep is None else {
                k: v for k, v in snapshot.items() if k in keep}
        counts = reply.get("valid_ref_counts")
        if isinstance(counts, dict):
            for cls in self._classes:
                expected = _count(cls, counts.get(cls.lower()))
                held = len(self._records.get(cls.lower(), {}))
                if expected is not None and expected != held:
                    raise _Drifted(f"xapi counts {expected} {cls} objects, the cache {held}")
        self._token = token


def _count(cls: str, value: object) -> int | None:
    """A valid_ref_counts entry: an int, or int64's decimal string (XML-RPC has no 64-bit
    integer, XAPI-FACTS); None when xapi gave none. Anything else fails the read with one
    line: believed, a garbage count would make every tick a full read, or none."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and 0 < len(value) <= 19 and value.isascii() and value.isdigit():
        return int(value)
    raise XapiReplyError(
        f"event.from answered valid_ref_counts[{cls.lower()}] = {shown(value)}, not a count "
        "of objects: the read is skipped"
    )


class _Drifted(Exception):
    pass
