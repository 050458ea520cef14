"""packaging/prometheus: the alert rules load, and fire when their unit tests say."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "packaging" / "prometheus"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is missing: run scripts/install-test-deps (Debian "
    "package prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_rules_are_valid() -> None:
    result = promtool("check", "rules", "xenhad-rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_the_rules_fire_as_their_unit_tests_say() -> None:
    result = promtool("test", "rules", "xenhad-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_names_a_series_the_daemon_exports() -> None:
    from xenhad.metrics import Metrics

    metrics = Metrics()
    # A master's document: the admission check's answer is exported once it is known.
    metrics.publish({"role": "master", "absorb": {"tolerate": 1, "ok": True, "line": ""}})
    exported = {family.name for family in metrics.collect()}
    rules = (RULES / "xenhad-rules.yml").read_text()

    used = set(re.findall(r"\b(xenhad_[a-z_]+)", rules))
    # Counters are exported as NAME_total; the family is named without it.
    assert {u.removesuffix("_total") for u in used} <= exported, used
