"""What the bundle tests share: where `make bundle` leaves its artefacts, the empty
chroot, and the rule that in CI nothing here may skip.

`make test` builds the bundle before pytest runs, so in CI (CI=true) a missing artefact or
tool is a failure, never a skip. Elsewhere a test skips only when what it needs cannot be
had here: the bundle not built yet, or not running as root (chroot, mount).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
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
