"""A small filesystem of the test's own: a tmpfs mounted (as root, as CI runs) on a directory,
to fill up or make read-only for real, so the journal meets ENOSPC and EROFS from the kernel
and not from a patched call. Skips the test where mounting is not allowed."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def small_disk(where: Path, *, kib: int = 64) -> Iterator[Path]:
    """A tmpfs of `kib` KiB mounted on `where` (created), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    where.mkdir(parents=True, exist_ok=True)
    done = _mount("-t", "tmpfs", "-o", f"size={kib}k,mode=0700", "xenhad-test", str(where))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        _mount("-o", "remount,rw", str(where))  # a busy read-only mount unmounts all the same
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def remount(where: Path, *, read_only: bool) -> None:
    """Make the small disk read-only or writable again (nothing may hold a file open for
    writing on it when it is made read-only: the kernel refuses with EBUSY)."""
    done = _mount("-o", "remount," + ("ro" if read_only else "rw"), str(where))
    if done.returncode != 0:
        raise RuntimeError(f"remount of {where} failed: {done.stderr.strip()}")


def fill(where: Path, name: str = "filler", *, slack_of: Path | None = None) -> Path:
    """Take every free byte of the disk `where` is on; delete the returned file to free it.

    A full disk still takes bytes into the last block of a file that has room there: with
    `slack_of` (a journal), that room is taken too, with blank lines (which replay ignores),
    so that the file's next record meets ENOSPC."""
    filler = where / name
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0")
    if slack_of is not None:
        fd = os.open(slack_of, os.O_WRONLY | os.O_APPEND)
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\n")
        finally:
            os.close(fd)
    return filler
