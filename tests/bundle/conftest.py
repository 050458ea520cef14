"""Fixtures of the bundle tests: the artefacts `make bundle` leaves in dist/, an empty
chroot holding only the unpacked tarball, and an RPM root.

`make test` builds the bundle before pytest runs, so in CI (CI=true) a missing artefact or
tool is a failure, never a skip. Elsewhere a test skips only when what it needs cannot be
had here: the bundle not built yet, or not running as root (chroot, mount).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "packaging" / "bundle"))

PREFIX = "/opt/xenhad"


def require(condition: object, why: str) -> None:
    """Skip when `condition` is false, except in CI, where it is a failure."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI=true: the bundle tests may not skip)")
    pytest.skip(why)


def version() -> str:
    text = (REPO / "src" / "xenhad" / "__init__.py").read_text()
    found = re.search(r'__version__ = "([^"]+)"', text)
    assert found
    return found.group(1)


@dataclass(frozen=True)
class Bundle:
    tarball: Path
    rpm: Path


@pytest.fixture(scope="session")
def bundle() -> Bundle:
    dist = REPO / "dist"
    found = Bundle(dist / f"xenhad-{version()}-x86_64.tar.gz",
                   dist / f"xenhad-{version()}-1.x86_64.rpm")
    require(found.tarball.exists() and found.rpm.exists(),
            f"no {found.tarball.name} / {found.rpm.name} in dist/: run `make bundle`")
    return found


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,  # type: ignore[call-overload, no-any-return]
                          **kwargs)


@dataclass
class Chroot:
    """A directory with nothing but the unpacked bundle, /proc, /dev/null and /tmp."""

    root: Path

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def inside(self, outside: Path | str) -> str:
        """The chroot's name for a path under it."""
        return "/" + str(Path(outside).relative_to(self.root))

    def command(self, *args: str) -> list[str]:
        return ["chroot", str(self.root), f"{PREFIX}/bin/xenhad", *args]

    def run(self, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return run(self.command(*args), env=env if env is not None else clean_env())


def clean_env() -> dict[str, str]:
    """What systemd gives a service: no PYTHONPATH, no venv, no LD_LIBRARY_PATH."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "en_US.UTF-8"}


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
