"""Fixtures of the bundle tests (see bundle_env.py)."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from bundle_env import REPO, Bundle, Chroot, require, run, version


@pytest.fixture(scope="session")
def bundle() -> Bundle:
    dist = REPO / "dist"
    found = Bundle(dist / f"xenhad-{version()}-x86_64.tar.gz",
                   dist / f"xenhad-{version()}-1.x86_64.rpm")
    require(found.tarball.exists() and found.rpm.exists(),
            f"no {found.tarball.name} / {found.rpm.name} in dist/: run `make bundle`")
    return found


@pytest.fixture(scope="session")
def chroot(bundle: Bundle) -> Iterator[Chroot]:
    require(os.geteuid() == 0, "chroot and mount need root")
    require(shutil.which("chroot"), "no chroot command")
    root = Path(tempfile.mkdtemp(prefix="xh-root-"))
    with tarfile.open(bundle.tarball) as tar:
        tar.extractall(root, filter="tar")
    for folder in ("proc", "dev", "tmp"):
        (root / folder).mkdir()
    (root / "tmp").chmod(0o1777)
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "dev" / "null").chmod(0o666)
    mounted = run(["mount", "-t", "proc", "proc", str(root / "proc")])
    require(mounted.returncode == 0, f"cannot mount /proc in a chroot: {mounted.stderr}")
    try:
        yield Chroot(root)
    finally:
        run(["umount", "-l", str(root / "proc")])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def rpm_root() -> Iterator[Path]:
    require(shutil.which("rpm"), "no rpm command: scripts/install-bundle-deps installs it")
    root = Path(tempfile.mkdtemp(prefix="xh-rpm-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
