"""Running `xenhad` as an operator would, and what a refused command must look like."""

from __future__ import annotations

import subprocess
import sys


def xenhad(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`xenhad ARGS` as a real process, as an operator would run it."""
    return subprocess.run(
        [sys.executable, "-m", "xenhad", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (exit 2, no traceback)."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]
