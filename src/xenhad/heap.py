"""Give the heap's free pages back to the kernel after a read's short-lived peak.

A full read of a 64-host, 1,000-VM pool is a 6 MiB reply, parsed in a XAPI thread into
records of which a few fields are kept: the rest is freed at once, but glibc keeps freed
pages in its arenas (one per thread that allocated) and the resident size stays at the
peak. malloc_trim(0) returns every arena's free pages (glibc >= 2.8 releases those inside
the heap too, not only its top). Called after each full read (every 10 minutes, and on
start), it costs a few milliseconds.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
_looked = False


def release() -> bool:
    """Return the heap's free pages to the kernel; False where the C library has no
    malloc_trim (not glibc)."""
    global _trim, _looked
    if not _looked:
        _looked = True
        try:
            _trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _trim = None
    if _trim is None:
        return False
    _trim(0)
    return True
