"""The incident journal: append-only JSON lines, each fsynced before `append` returns.

A step is written here before it is acted on, so after a kill -9 or a power cut the
journal holds every step that was (or may have been) performed. The journal does not know
what the records mean (recovery/history.py does); it only guarantees:

- one record a line: JSON objects, UTF-8, ending in "\\n";
- `append` returns only after the line is on disk (file fsync, plus a directory fsync
  when the file is created, so the file itself survives a power cut);
- a torn last line (a crash mid-write, no final newline) is never a record: the append
  that wrote it had not returned, so nothing was acted on. It is reported by `replay` and
  cut away when the file is opened, so the next append starts on a clean line;
- an append that fails (a full disk, a read-only or failing one: ENOSPC, EROFS, EIO)
  raises JournalError and leaves the file as it was before it: what it wrote is cut back
  at once, or, if even that fails, before the next write, which is refused until it can
  be. A later append never lands glued to the torn tail of a failed one (issue 25).
  `failure` says why the last write failed, until one succeeds;
- a corrupt line elsewhere (disk trouble, a hand edit) is skipped and reported, never fatal;
- `compact` rewrites the file atomically: a crash at any instant leaves either the old
  file or the new one at `path`, never a mixture.

The file is opened with O_APPEND and kept 0600; its directory is created 0700 if missing.
The file is opened on first use, not by the constructor, so building a Journal costs
nothing and cannot fail.

Every file operation goes through a `Disk` (the OS's, `OsDisk`, unless given): a pool run in
one process keeps each host's journal in memory, on a disk that fails on demand
(xenhad.virtual.disk), and this module's guarantees are what it tests.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from xenhad.errors import XenhadError

_EXCERPT = 80
_PROBE_BYTES = 4096


class JournalError(XenhadError):
    """The journal cannot be opened or written, or a record is not a JSON object."""


class ProblemKind(enum.Enum):
    TORN = "torn"
    """The last line had no newline: a write that never completed. Cut away."""
    CORRUPT = "corrupt"
    """A whole line that is not a JSON object. Skipped (compaction drops it)."""


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    line: int
    """1-based line number in the file as it was read."""
    detail: str
    excerpt: str

    def __str__(self) -> str:
        what = (
            "torn last line (a write interrupted by a crash), ignored and cut away"
            if self.kind is ProblemKind.TORN
            else f"corrupt line skipped: {self.detail}"
        )
        return f"journal line {self.line}: {what}: {self.excerpt!r}"


@dataclass(frozen=True)
class ReplayReport:
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class CompactResult:
    kept: int
    dropped: int
    """Records `keep` rejected, plus corrupt lines (which cannot be kept)."""


def encode(record: Mapping[str, object]) -> bytes:
    """One journal line for `record`, or JournalError saying why it cannot be one."""
    if not isinstance(record, Mapping):
        raise JournalError(
            f"journal record must be a dict, not {type(record).__name__}: wrap it in a dict"
        )
    bad = [k for k in record if not isinstance(k, str)]
    if bad:
        raise JournalError(
            f"journal record key {bad[0]!r} is not a string: JSON objects have string keys"
        )
    try:
        text = json.dumps(dict(record), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise JournalError(
            f"journal record is not JSON-serialisable ({exc}): store plain str, int, float, "
            "bool, None, list and dict values"
        ) from None
    # json.dumps escapes control characters, so the text never contains a raw newline.
    return text.encode("utf-8") + b"\n"


def _excerpt(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "..."


def _parse(data: bytes) -> tuple[list[dict[str, Any]], list[Problem], int]:
    """Records and problems in `data`, and the length of its whole-lines prefix."""
    records: list[dict[str, Any]] = []
    problems: list[Problem] = []
    # Split on b"\n" only: str.splitlines would also split inside a record at U+2028.
    whole = data.rfind(b"\n") + 1
    lines = data[:whole].split(b"\n")[:-1] if whole else []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            problems.append(Problem(ProblemKind.CORRUPT, number, f"not JSON ({exc})",
                                    _excerpt(raw)))
            continue
        if not isinstance(value, dict):
            problems.append(Problem(ProblemKind.CORRUPT, number,
                                    f"a JSON {type(value).__name__}, not an object",
                                    _excerpt(raw)))
            continue
        records.append(value)
    if whole < len(data):
        problems.append(Problem(ProblemKind.TORN, len(lines) + 1, "no final newline",
                                _excerpt(data[whole:])))
    return records, problems, whole


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Disk(Protocol):
    """The file operations a journal makes, with the os module's signatures and errors
    (OSError with an errno)."""

    def open(self, path: Path, flags: int, mode: int = 0o777) -> int: ...
    def close(self, fd: int) -> None: ...
    def write(self, fd: int, data: memoryview) -> int: ...
    def fsync(self, fd: int) -> None: ...
    def fsync_dir(self, path: Path) -> None: ...
    def size(self, fd: int) -> int: ...
    def pread(self, fd: int, n: int, offset: int) -> bytes: ...
    def ftruncate(self, fd: int, length: int) -> None: ...
    def fchmod(self, fd: int, mode: int) -> None: ...
    def replace(self, src: Path, dst: Path) -> None: ...
    def exists(self, path: Path) -> bool: ...
    def unlink(self, path: Path) -> None: ...
    def make_dir(self, path: Path) -> None:
        """Create `path` (and its parents) 0700 if it is not a directory yet."""


def write_all(disk: Disk, fd: int, data: bytes) -> None:
    """Write every byte of `data` at `fd` (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[disk.write(fd, view):]


def replace_with(disk: Disk, tmp: Path, path: Path, data: bytes) -> None:
    """Put `data` at `path` whole or not at all: written to `tmp` (mode 0600, whatever an
    earlier `tmp` had), fsynced, renamed over `path`. The caller fsyncs the directory when
    the rename must outlive a crash. Raises OSError; `path` is then as it was."""
    fd = disk.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        disk.fchmod(fd, 0o600)
        write_all(disk, fd, data)
        disk.fsync(fd)
    finally:
        disk.close(fd)
    disk.replace(tmp, path)


class OsDisk:
    """The host's file system."""

    def open(self, path: Path, flags: int, mode: int = 0o777) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fsync_dir(self, path: Path) -> None:
        _fsync_dir(path)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        return os.pread(fd, n, offset)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def fchmod(self, fd: int, mode: int) -> None:
        os.fchmod(fd, mode)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def exists(self, path: Path) -> bool:
        return os.path.lexists(path)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def make_dir(self, path: Path) -> None:
        if not path.is_dir():
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
            self.fsync_dir(path.parent)


class Journal:
    def __init__(self, path: Path, *, disk: Disk | None = None) -> None:
        self.path = Path(path)
        self._disk: Disk = disk if disk is not None else OsDisk()
        self._tmp = self.path.with_name(self.path.name + ".compacting")
        self._fd: int | None = None
        self._torn: Problem | None = None
        self._whole_at: int | None = None
        """The file's length before an append that failed and could not be cut back."""
        self.failure: str | None = None
        """Why the last write failed (one line, with the fix); None once one succeeds."""
        # The daemon appends from one event loop, but executors may use threads.
        self._lock = threading.RLock()

    # -- public API --------------------------------------------------------------------

    def append(self, record: Mapping[str, object]) -> None:
        """Write `record` as one line; return only once it is on disk."""
        line = encode(record)
        with self._lock:
            self._write(line, keep=True)

    def check(self) -> str | None:
        """Why an append would fail now, or None: for a daemon whose last append failed
        and that has nothing to write, to learn when the disk is back. A failed append's
        bytes are cut back first; then a block's worth of blank lines (which replay
        ignores: a crash leaves nothing that matters) is written, fsynced and cut away
        again. A block, not a byte: a full disk still takes a byte in the file's last
        block."""
        with self._lock:
            try:
                self._write(b"\n" * _PROBE_BYTES, keep=False)
            except JournalError as exc:
                return str(exc)
            return None

    def replay(self) -> ReplayReport:
        """Every whole record in file order, and each line that could not be used."""
        with self._lock:
            fd = self._open()
            records, problems, _ = _parse(self._read_all(fd))
            if self._torn is not None:
                problems.append(self._torn)
            return ReplayReport(records, problems)

    def compact(self, keep: Callable[[dict[str, Any]], bool]) -> CompactResult:
        """Rewrite the journal with only the records `keep` accepts, atomically.

        Steps: write a temporary file beside the journal, fsync it, rename it over the
        journal, fsync the directory. A crash before the rename leaves the old journal
        (the temporary file is removed at the next open); after it, the new one.
        """
        with self._lock:
            fd = self._open()
            records, problems, _ = _parse(self._read_all(fd))
            kept = [r for r in records if keep(r)]
            data = b"".join(encode(r) for r in kept)
            disk = self._disk
            try:
                replace_with(disk, self._tmp, self.path, data)
            except OSError as exc:
                raise JournalError(
                    f"cannot compact the journal {self.path}: {exc.strerror or exc}; the old "
                    "journal is intact, check the disk holding it"
                ) from None
            # Our descriptor still points at the old, now unlinked, file.
            self._close()
            self._torn = None
            disk.fsync_dir(self.path.parent)
            self._open()
            corrupt = sum(1 for p in problems if p.kind is ProblemKind.CORRUPT)
            return CompactResult(kept=len(kept), dropped=len(records) - len(kept) + corrupt)

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _close(self) -> None:
        if self._fd is not None:
            self._disk.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        try:
            self._fd = self._open_file()
        except OSError as exc:
            raise JournalError(
                f"cannot open the journal {self.path}: {exc.strerror or exc}; "
                "check daemon.state_dir exists and is writable by root"
            ) from None
        return self._fd

    def _open_file(self) -> int:
        disk = self._disk
        directory = self.path.parent
        disk.make_dir(directory)
        if disk.exists(self._tmp):
            # A compaction that crashed before its rename: the journal itself is intact.
            disk.unlink(self._tmp)
        flags = os.O_RDWR | os.O_APPEND
        try:
            fd = disk.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = disk.open(self.path, flags)
            created = False
        try:
            disk.fchmod(fd, 0o600)
            if created:
                disk.fsync(fd)
                disk.fsync_dir(directory)
            else:
                self._cut_torn_tail(fd)
        except BaseException:
            disk.close(fd)
            raise
        return fd

    def _write(self, data: bytes, *, keep: bool) -> None:
        """Append `data` and fsync it; on any failure leave the file as it was before."""
        try:
            fd = self._open()
        except JournalError as exc:
            self.failure = str(exc)
            raise
        disk = self._disk
        whole: int | None = None
        try:
            self._cut_failed_append(fd)
            whole = disk.size(fd)
            write_all(disk, fd, data)
            disk.fsync(fd)
            if not keep:
                disk.ftruncate(fd, whole)
                disk.fsync(fd)
        except OSError as exc:
            if whole is not None:
                self._whole_at = whole
                # Cut back now if the disk lets us (a full one does), else before the
                # next write: bytes of a failed append never prefix a record.
                with contextlib.suppress(OSError):
                    self._cut_failed_append(fd)
            self.failure = (
                f"cannot write the journal {self.path}: {exc.strerror or exc}; free space "
                f"on, or remount read-write, the disk holding {self.path.parent} "
                "(daemon.state_dir)"
            )
            raise JournalError(self.failure) from None
        self.failure = None

    def _cut_failed_append(self, fd: int) -> None:
        """Cut what a failed append may have left after the last whole record."""
        if self._whole_at is None:
            return
        if self._disk.size(fd) != self._whole_at:
            self._disk.ftruncate(fd, self._whole_at)
        self._disk.fsync(fd)
        self._whole_at = None

    def _cut_torn_tail(self, fd: int) -> None:
        data = self._read_all(fd)
        _, problems, whole = _parse(data)
        if whole == len(data):
            return
        torn = [p for p in problems if p.kind is ProblemKind.TORN]
        self._torn = torn[0] if torn else None
        self._disk.ftruncate(fd, whole)
        self._disk.fsync(fd)

    def _read_all(self, fd: int) -> bytes:
        size = self._disk.size(fd)
        chunks: list[bytes] = []
        offset = 0
        while offset < size:
            chunk = self._disk.pread(fd, size - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
