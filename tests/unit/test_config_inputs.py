"""Whatever is in the config file, and whoever could have written it, xenhad accepts it whole
or refuses it in one line, at `check-config`, at start and on SIGHUP alike: absurd numbers,
files nested 100,000 deep, a file others may write, secrets nobody checked (issue 24)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from xenhad import cli, config
from xenhad import log as logsetup
from xenhad.clock import ManualClock
from xenhad.config import Config
from xenhad.daemon import Daemon
from xenhad.errors import ConfigError

HOST_UUID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"


def parse(text: str) -> Config:
    return config.parse(text, source="xenhad.toml", env={})


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def numeric_keys() -> list[tuple[str, str, type]]:
    """(section, key, int or float) for every numeric option of every section but [fencing]
    (which has its own tables, checked below)."""
    found = []
    for section, cls in config.SECTIONS.items():
        if section == "fencing":
            continue
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                found.append((section, f.name, type(default)))
    return found


NUMERIC = numeric_keys()


def test_the_numeric_options_are_all_found() -> None:
    assert len(NUMERIC) >= 24
    assert ("xapi", "timeout", float) in NUMERIC
    assert ("detector", "confirm_misses", int) in NUMERIC


@pytest.mark.parametrize(("section", "key", "kind"), NUMERIC,
                         ids=[f"{s}.{k}" for s, k, _ in NUMERIC])
def test_every_numeric_option_has_a_range_and_refuses_absurd_values(
    section: str, key: str, kind: type
) -> None:
    # Issue 24: xapi.timeout = 1e300 passed check-config and the daemon died with an
    # OverflowError at its first call; detector.confirm_misses = 10**20 confirmed nothing.
    huge = ["100000000000000000000", "1" + "0" * 400, "-100000000000000000000"]
    for value in huge if kind is int else ["1e300", "-1e300", *huge]:
        message = error_of(f"[{section}]\n{key} = {value}")
        assert message.startswith(f"xenhad.toml: {section}.{key} = ")
        assert " is invalid: expected " in message
        assert " from " in message and " to " in message  # the allowed range, in words
        assert len(message) < 200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[xapi]\ntimeout = 1e300", "xenhad.toml: xapi.timeout = 1e+300 is invalid: "
         "expected a number of seconds from 0.01 to 600"),
        ("[recovery]\nstart_timeout = 1e300", "xenhad.toml: recovery.start_timeout = 1e+300 is "
         "invalid: expected a number of seconds from 0.01 to 86400"),
        ("[detector]\nconfirm_misses = 100000000000000000000", "xenhad.toml: "
         "detector.confirm_misses = 100000000000000000000 is invalid: expected an integer "
         "from 1 to 1000"),
        ("[peers]\ninterval = 1e300", "xenhad.toml: peers.interval = 1e+300 is invalid: "
         "expected a number of seconds from 0.01 to 60"),
        ("[detector]\ninterval = 0.001", "xenhad.toml: detector.interval = 0.001 is invalid: "
         "expected a number of seconds from 0.01 to 300"),
    ],
)
def test_the_values_of_the_issue_are_refused_naming_key_value_and_range(
    text: str, message: str
) -> None:
    assert error_of(text) == message


FENCING_NUMBERS = [
    ('self_fence = { watchdog = "none", timeout = 100000 }', "fencing.self_fence.timeout"),
    ('self_fence = { watchdog = "none", margin = 1e300 }', "fencing.self_fence.margin"),
    *[
        (f'[[fencing.hosts]]\nhost = "h"\nchain = ["{kind}"]\n'
         f"{kind} = {{ {base}, {key} = 1e300 }}",
         f"fencing.hosts[0].{kind}.{key}")
        for kind, base in [
            ("redfish", 'url = "https://bmc", username = "a", password_file = "/p"'),
            ("ipmi", 'address = "bmc", username = "a", password_file = "/p"'),
            ("agent", 'command = "fence_ipmilan"'),
        ]
        for key in ("off_timeout", "poll_interval",
                    "timeout" if kind == "agent" else "request_timeout")
    ],
]


@pytest.mark.parametrize(("text", "key"), FENCING_NUMBERS, ids=[k for _, k in FENCING_NUMBERS])
def test_every_fencing_number_has_a_range_too(text: str, key: str) -> None:
    text = text if text.startswith("[[") else f"[fencing]\n{text}"
    message = error_of(text)
    assert message.startswith(f"xenhad.toml: {key} = ") and " from " in message, message


def test_the_example_documents_the_range_of_every_numeric_option() -> None:
    example = (Path(__file__).resolve().parents[2] / "etc" / "xenhad.toml").read_text()
    for section, key, _ in NUMERIC:
        block = example.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
        before = block.split(f"\n{key} = ", 1)[0]
        comment = before.rsplit("\n\n", 1)[-1]
        assert "Range " in comment, f"{section}.{key}: no range in etc/xenhad.toml"


def test_check_config_prints_the_error_of_an_absurd_value_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "xenhad.toml"
    path.write_text(f'[host]\nuuid = "{HOST_UUID}"\n[xapi]\ntimeout = 1e300\n')
    assert cli.main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == f"xenhad: {path}: xapi.timeout = 1e+300 is invalid: expected a number of " \
        "seconds from 0.01 to 600\n"


# --------------------------------------------------------------------------- the file itself


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`xenhad check-config FILE` as the unit's ExecStartPre runs it: exit code, output."""
    code = cli.main(["check-config", str(path)])
    out = capsys.readouterr()
    # An error line says who speaks ("xenhad: "), and journald's priority prefix under it.
    return code, out.out + out.err.removeprefix("<3>").removeprefix("xenhad: ")


def deep(levels: int) -> str:
    return f'[host]\nuuid = "{HOST_UUID}"\n[daemon]\nx = ' + "[" * levels + "]" * levels + "\n"


@pytest.mark.parametrize("levels", [100_000, 300, 17])
def test_deeply_nested_toml_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], levels: int
) -> None:
    # Issue 24: arrays 100,000 deep made check-config print a 3,000-line RecursionError.
    path = write(tmp_path / "xenhad.toml", deep(levels))
    code, output = check(path, capsys)
    assert (code, output) == (1, f"{path}: arrays or tables nested more than "
                              f"{config.MAX_NESTING} deep: this is not a xenhad config (an "
                              "example with every option is etc/xenhad.toml)\n")


def test_a_config_file_over_one_mib_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "xenhad.toml", "#" * (config.MAX_CONFIG_BYTES + 1))
    code, output = check(path, capsys)
    assert (code, output) == (1, f"{path}: the config file is larger than 1 MiB: this is not "
                              "a xenhad config (an example with every option is "
                              "etc/xenhad.toml)\n")


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664, 0o620, 0o602])
def test_a_config_file_that_others_may_write_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    # Issue 24: whoever writes the file chooses alerts.exec, the fence agent and xapi.url.
    path = write(tmp_path / "xenhad.toml", f'[host]\nuuid = "{HOST_UUID}"\n', mode)
    code, output = check(path, capsys)
    assert code == 1
    assert output == (f"{path}: the config file is writable by group or others (mode "
                      f"{mode:04o}), who could then choose the commands xenhad runs as root: "
                      f"run chmod go-w {path}\n")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600, 0o400])
def test_a_config_file_that_others_may_only_read_is_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    path = write(tmp_path / "xenhad.toml", f'[host]\nuuid = "{HOST_UUID}"\n', mode)
    assert check(path, capsys) == (0, f"{path}: ok\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_config_file_owned_by_another_user_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The owner must be root or the user running xenhad (os.geteuid()): as root in CI, the
    # file is given away to see it refused.
    path = write(tmp_path / "xenhad.toml", f'[host]\nuuid = "{HOST_UUID}"\n')
    os.chown(path, 4321, -1)
    code, output = check(path, capsys)
    assert code == 1
    assert output == (f"{path}: the config file is owned by uid 4321, not by root or by uid "
                      f"{os.geteuid()} running xenhad, who could then choose the commands "
                      f"xenhad runs: run chown root {path}\n")


# --------------------------------------------------------------------------- echoes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('password = "hunter2"', "xenhad.toml: password is not a known key: keys belong in a "
         "section: [host], [xapi], [detector], [recovery], [fencing], [daemon], [peers], "
         "[failover], [alerts]"),
        ('[xapi]\npw = "hunter2"', "xenhad.toml: xapi.pw is not a known key: known keys: "),
        ('[[fencing.hosts]]\ntoken = "hunter2"', "xenhad.toml: fencing.hosts[0].token is not "
         "a known key: known keys: "),
        ('[daemon]\n"a\\nb" = "hunter2"', 'xenhad.toml: daemon."a\\nb" is not a known key: '),
    ],
)
def test_the_value_of_an_unknown_key_is_never_echoed(text: str, message: str) -> None:
    # Issue 24: a top-level password = "..." was echoed in clear.
    error = error_of(text)
    assert error.startswith(message) and "hunter2" not in error


@pytest.mark.parametrize("where", ["", "[daemon]\n", "[[fencing.hosts]]\n", "[xapi]\n"])
def test_a_huge_key_name_is_cut_in_the_message(where: str) -> None:
    # Issue 24: a 1 MB key name was echoed whole.
    key = "k" * 1_000_000
    error = error_of(f"{where}{key} = 1")
    assert "k" * 61 + "..." in error and "k" * 62 not in error and len(error) < 400
    assert error_of(f"[{key}]\nx = 1").startswith("xenhad.toml: [" + "k" * 61 + "...] is not")


# --------------------------------------------------------------------------- secrets


SECRET = "0123456789abcdef0123456789abcdef"


def with_peers(tmp_path: Path, secret: Path) -> Path:
    return write(tmp_path / "xenhad.toml",
                 f'[host]\nuuid = "{HOST_UUID}"\n[peers]\nsecret_file = "{secret}"\n')


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [
        (None, 0o600, "cannot be opened (No such file or directory)"),
        (SECRET, 0o644, "is readable or writable by group or others (mode 0644)"),
        (SECRET, 0o640, "is readable or writable by group or others (mode 0640)"),
        ("short", 0o600, "shorter than 16 characters"),
    ],
)
def test_check_config_checks_the_peer_secret_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, mode: int,
    problem: str,
) -> None:
    # Issue 24: a missing or 0644 pool secret passed check-config (the unit's pre-start
    # check) and failed only at start, or with SIGHUP was not noticed at all.
    secret = tmp_path / "pool-secret"
    if content is not None:
        write(secret, content + "\n", mode)
    code, output = check(with_peers(tmp_path, secret), capsys)
    assert code == 1 and output.count("\n") == 1
    assert f'peers.secret_file = "{secret}" is unusable: ' in output and problem in output
    assert SECRET not in output


def test_a_private_peer_secret_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = with_peers(tmp_path, write(tmp_path / "pool-secret", SECRET + "\n", 0o600))
    assert check(path, capsys) == (0, f"{path}: ok\n")


def test_a_peer_secret_credential_is_checked_under_systemd(tmp_path: Path) -> None:
    text = f'[host]\nuuid = "{HOST_UUID}"\n[peers]\nsecret_credential = "pool-secret"\n'
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    with pytest.raises(ConfigError, match=r'peers.secret_credential = "pool-secret" is '
                       r"unusable: secret file .* cannot be opened"):
        config.parse(text, source="xenhad.toml", env=env)
    write(tmp_path / "pool-secret", SECRET, 0o400)
    assert config.parse(text, source="xenhad.toml", env=env).peers.secret_credential
    # Outside systemd (an operator's shell) there is no credentials directory to look in.
    assert config.parse(text, source="xenhad.toml", env={}).peers.enabled


BACKENDS = {
    "redfish": 'url = "https://10.0.0.12", username = "admin"',
    "ipmi": 'address = "10.0.0.12", username = "admin"',
    "agent": 'command = "fence_ipmilan"',
}


@pytest.mark.parametrize("kind", list(BACKENDS))
@pytest.mark.parametrize(("mode", "problem"), [
    (None, "cannot be opened (No such file or directory)"),
    (0o644, "is readable or writable by group or others (mode 0644)"),
])
def test_check_config_checks_every_fencing_password_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, mode: int | None,
    problem: str,
) -> None:
    # Issue 24: a 0644 BMC password file failed only when a fence was attempted.
    password = tmp_path / "bmc-host2"
    if mode is not None:
        write(password, "calvin\n", mode)
    path = write(tmp_path / "xenhad.toml", (
        f'[host]\nuuid = "{HOST_UUID}"\n[[fencing.hosts]]\nhost = "host2"\nchain = ["{kind}"]\n'
        f'{kind} = {{ {BACKENDS[kind]}, password_file = "{password}" }}\n'))
    code, output = check(path, capsys)
    assert code == 1
    assert f'fencing.hosts[0].{kind}.password_file = "{password}" is unusable: ' in output
    assert problem in output and "calvin" not in output
    password.unlink(missing_ok=True)
    write(password, "calvin\n", 0o600)
    assert check(path, capsys) == (0, f"{path}: ok\n")


# --------------------------------------------------------------------------- SIGHUP


def reload_with(tmp_path: Path, text: str, mode: int = 0o644) -> tuple[Config, Config, list[Any]]:
    """A daemon started on a good file, sent SIGHUP after `text` replaced it: (the config
    before, the config after, the events logged by the reload)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    path = write(tmp_path / "xenhad.toml",
                 f'[host]\nuuid = "{HOST_UUID}"\n[daemon]\nstate_dir = "{state}"\n')
    daemon = Daemon(path, config.load(path, env={}), clock=ManualClock())
    before = daemon.config
    write(path, text, mode)
    # The reload sets up logging; done here first, outside capture_logs, whose exit would
    # otherwise undo structlog's one-time set-up for every later test (tests/unit/test_log).
    logsetup.configure(daemon.config.daemon.log_format, daemon.config.daemon.log_level)
    with capture_logs() as events:
        daemon._reload_config()
    return before, daemon.config, events


@pytest.mark.parametrize(
    ("text", "mode", "words"),
    [
        ('[peers]\nsecret_file = "/nonexistent/pool-secret"\n', 0o644,
         'peers.secret_file = "/nonexistent/pool-secret" is unusable'),
        ("[xapi]\ntimeout = 1e300\n", 0o644, "xapi.timeout = 1e+300 is invalid"),
        (deep(100_000), 0o644, "nested more than 16 deep"),
        ("[detector]\ninterval = 1\n", 0o666, "writable by group or others (mode 0666)"),
        ('password = "hunter2"\n', 0o644, "password is not a known key"),
    ],
)
def test_a_sighup_with_a_bad_file_keeps_the_old_config_and_says_why(
    tmp_path: Path, text: str, mode: int, words: str
) -> None:
    # Issue 24: a SIGHUP naming a missing peer secret logged config.reloaded, one with 1e300
    # was accepted, and one with a deeply nested file killed the daemon.
    before, after, events = reload_with(tmp_path, text, mode)
    assert after is before
    [refused] = [e for e in events if e["event"] == "config.reload_refused"]
    assert words in refused["error"] and "hunter2" not in refused["error"]
    assert not [e for e in events if e["event"] == "config.reloaded"]


def test_a_sighup_with_a_good_file_takes_it(tmp_path: Path) -> None:
    secret = write(tmp_path / "pool-secret", SECRET, 0o600)
    before, after, events = reload_with(
        tmp_path, f'[host]\nuuid = "{HOST_UUID}"\n[daemon]\nstate_dir = "{tmp_path}/state"\n'
        f'[peers]\nsecret_file = "{secret}"\n')
    assert after.peers.secret_file == secret and before.peers.secret_file is None
    # (config.reloaded is logged after the reload set up logging again, past capture_logs.)
    assert not [e for e in events if e["event"] == "config.reload_refused"]
