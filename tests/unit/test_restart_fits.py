"""A daemon restarted by systemd must feed its watchdog again before it fires (issue 25,
finding 6): check-config and the daemon's start read the unit's RestartSec= and refuse, or
warn with the numbers, when the restart and the start cannot fit in the self-fence timeout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from xenhad import config
from xenhad.errors import ConfigError
from xenhad.unit import DEFAULT_RESTART_SEC, parse_timespan, restart_delay

HOST_UUID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
PACKAGED_UNIT = Path(__file__).parents[2] / "packaging" / "systemd" / "xenhad.service"


def test_timespans_read_as_systemd_reads_them() -> None:
    assert parse_timespan("5s") == 5.0
    assert parse_timespan("5") == 5.0
    assert parse_timespan("1min 30s") == 90.0
    assert parse_timespan("500ms") == 0.5
    assert parse_timespan("soon") is None
    assert parse_timespan("") is None


def units(tmp_path: Path) -> Path:
    directory = tmp_path / "units"
    directory.mkdir()
    shutil.copy(PACKAGED_UNIT, directory / "xenhad.service")
    return directory


def test_the_packaged_unit_restarts_after_5s_and_a_drop_in_wins(tmp_path: Path) -> None:
    directory = units(tmp_path)
    found = restart_delay({"SYSTEMD_UNIT_PATH": str(directory)})
    assert found is not None and found.seconds == 5.0
    dropins = directory / "xenhad.service.d"
    dropins.mkdir()
    (dropins / "slow.conf").write_text("[Service]\nRestartSec=1min\n")
    found = restart_delay({"SYSTEMD_UNIT_PATH": str(directory)})
    assert found is not None and (found.seconds, found.source) == (60.0, dropins / "slow.conf")


def test_no_unit_installed_checks_nothing(tmp_path: Path) -> None:
    assert restart_delay({"SYSTEMD_UNIT_PATH": str(tmp_path)}) is None
    (tmp_path / "xenhad.service").write_text("[Service]\nExecStart=/bin/true\n")
    found = restart_delay({"SYSTEMD_UNIT_PATH": str(tmp_path)})
    assert found is not None and found.seconds == DEFAULT_RESTART_SEC


def self_fenced(tmp_path: Path, timeout: int) -> Path:
    secret = tmp_path / "pool-secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    path = tmp_path / "xenhad.toml"
    path.write_text(
        f'[host]\nuuid = "{HOST_UUID}"\n'
        f'[peers]\nsecret_file = "{secret}"\n'
        f'[fencing]\nself_fence = {{ watchdog = "/dev/watchdog", timeout = {timeout} }}\n'
    )
    return path


@pytest.mark.parametrize(("timeout", "verdict"), [(60, "ok"), (20, "warning"), (6, "refused")])
def test_check_config_weighs_the_restart_against_the_self_fence_timeout(
    tmp_path: Path, timeout: int, verdict: str
) -> None:
    env = {"SYSTEMD_UNIT_PATH": str(units(tmp_path))}
    path = self_fenced(tmp_path, timeout)
    code, line = config.check_config(path, env=env)
    # RestartSec 5 + 2 to start + xapi.timeout 10 + peers.window 4 + interval 2 = 23 s.
    if verdict == "ok":
        assert (code, line) == (0, f"{path}: ok")
    elif verdict == "warning":
        assert code == 0 and "WARNING" in line and "= 23s" in line and "RestartSec=5s" in line
    else:
        assert code == 1 and "fencing.self_fence.timeout = 6 is invalid" in line
        assert "RestartSec=5s" in line and "above 23s" in line
    assert "\n" not in line


def test_without_self_fencing_the_restart_delay_does_not_matter(tmp_path: Path) -> None:
    cfg = config.parse(f'[host]\nuuid = "{HOST_UUID}"\n', source="t", env={})
    assert config.check_restart_fits(cfg, 3600.0, "unit") is None
    with pytest.raises(ConfigError):
        cfg = config.load(self_fenced(tmp_path, 6), env={})
        config.check_restart_fits(cfg, 5.0, "unit")
