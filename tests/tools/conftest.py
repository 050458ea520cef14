"""Fixtures of the operator-command tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short path: UNIX socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="xh-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)

