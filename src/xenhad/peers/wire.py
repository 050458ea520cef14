"""Every wire version of a heartbeat, read and written: the choice by magic and by peer.

Reading: version 3 (compact.py) by its magic, versions 1 and 2 (heartbeat.py) by theirs.
Writing: version 3 to a peer whose latest heartbeat says it reads it, version 2 to any
other (heartbeat.py's docstring: a rolling upgrade, or a rollback, keeps contact).
"""

from __future__ import annotations

from xenhad.peers import compact, heartbeat
from xenhad.peers.heartbeat import Heartbeat

READS = compact.VERSION
"""The highest wire version this daemon reads: said in every heartbeat it sends."""


class Reader:
    """Decodes heartbeats of any version; one per receiving daemon (it keeps compact.py's
    roster cache)."""

    def __init__(self) -> None:
        self._compact = compact.Decoder()

    def decode(self, data: bytes, secret: bytes) -> Heartbeat:
        if data[:len(compact.MAGIC)] == compact.MAGIC:
            heartbeat.check_secret(secret)
            return self._compact.decode(data, secret)
        return heartbeat.decode(data, secret)


def encode(hb: Heartbeat, secret: bytes, version: int) -> bytes:
    """`hb` in wire `version` (3, or 2 for JSON); in version 2 when version 3 cannot carry
    it (compact.CannotPack)."""
    if version >= compact.VERSION:
        heartbeat.check_secret(secret)
        try:
            return compact.encode(hb, secret)
        except compact.CannotPack:
            pass
    return heartbeat.encode(hb, secret)
