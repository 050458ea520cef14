"""A host's disk in memory, for its journal (journal.py `Disk`), that fails on demand.

Files are byte arrays by path; a descriptor points at the file it opened (an inode), so a
rename over an open file leaves the descriptor on the old one, as POSIX does, and
journal.py's compaction is exercised as on a real disk. `fail("write")` or `fail("fsync")`
makes every such call raise EIO until `heal()` (issue 21: a journal write or fsync that
fails); `full=True` makes writes raise ENOSPC. What was written stays written: a failed
fsync here loses nothing, which is the kinder half of a real disk's behaviour and leaves
journal.py's own cut-back to do what it promises.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from xenhad.journal import Disk

OPS = ("write", "fsync", "open", "truncate")
"""The operations a fault may make fail."""


@dataclass
class _File:
    data: bytearray = field(default_factory=bytearray)


class MemoryDisk(Disk):
    def __init__(self) -> None:
        self._files: dict[str, _File] = {}
        self._dirs: set[str] = set()
        self._fds: dict[int, tuple[_File, int]] = {}
        self._next_fd = 3
        self.failing: set[str] = set()
        self.failures = 0
        """Calls refused so far (a test asserts the fault was met)."""

    # -- faults -------------------------------------------------------------------------

    def fail(self, op: str) -> None:
        if op not in OPS:
            raise ValueError(f"{op!r}: a disk fault is one of {', '.join(OPS)}")
        self.failing.add(op)

    def heal(self, op: str | None = None) -> None:
        """`op` works again (every operation: None)."""
        if op is None:
            self.failing.clear()
        else:
            self.failing.discard(op)

    def _refuse(self, op: str, path: object = None) -> None:
        if op in self.failing:
            self.failures += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO), None if path is None else str(path))

    # -- what a journal reads back --------------------------------------------------------

    def read(self, path: Path) -> bytes:
        f = self._files.get(str(path))
        return bytes(f.data) if f is not None else b""

    # -- journal.Disk ---------------------------------------------------------------------

    def open(self, path: Path, flags: int, mode: int = 0o777) -> int:
        self._refuse("open", path)
        key = str(path)
        f = self._files.get(key)
        if f is not None and flags & os.O_CREAT and flags & os.O_EXCL:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), key)
        if f is None:
            if not flags & os.O_CREAT:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), key)
            f = self._files[key] = _File()
        if flags & os.O_TRUNC:
            del f.data[:]
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = (f, flags)
        return fd

    def _file(self, fd: int) -> _File:
        try:
            return self._fds[fd][0]
        except KeyError:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None

    def close(self, fd: int) -> None:
        self._file(fd)
        del self._fds[fd]

    def write(self, fd: int, data: memoryview) -> int:
        self._refuse("write")
        f = self._file(fd)
        f.data += bytes(data)  # every journal descriptor appends (O_APPEND or a new file)
        return len(data)

    def fsync(self, fd: int) -> None:
        self._file(fd)
        self._refuse("fsync")

    def fsync_dir(self, path: Path) -> None:
        self._refuse("fsync", path)

    def size(self, fd: int) -> int:
        return len(self._file(fd).data)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        return bytes(self._file(fd).data[offset:offset + n])

    def ftruncate(self, fd: int, length: int) -> None:
        self._refuse("truncate")
        f = self._file(fd)
        del f.data[length:]

    def fchmod(self, fd: int, mode: int) -> None:
        self._file(fd)

    def replace(self, src: Path, dst: Path) -> None:
        f = self._files.pop(str(src), None)
        if f is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(src))
        self._files[str(dst)] = f

    def exists(self, path: Path) -> bool:
        return str(path) in self._files

    def unlink(self, path: Path) -> None:
        if self._files.pop(str(path), None) is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))

    def make_dir(self, path: Path) -> None:
        self._dirs.add(str(path))
