"""An operator writes /etc/xenhad/xenhad.toml; xenhad either accepts it whole or names, in
one line, the key that is wrong, the value found and the fix."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from xenhad import config
from xenhad.config import Config, FencingMode
from xenhad.errors import ConfigError, CredentialError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "xenhad.toml"
HOST_UUID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"


def parse(text: str) -> Config:
    return config.parse(text, source="xenhad.toml", env={})


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def private_file(path: Path, content: str = "s3cret\n", mode: int = 0o600) -> Path:
    path.write_text(content)
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------- defaults


def test_an_empty_file_gives_the_defaults_for_a_dom0() -> None:
    cfg = parse("")
    assert cfg == config.defaults()
    assert cfg.xapi.scheme == "unix"
    assert cfg.xapi.socket_path == Path("/var/lib/xcp/xapi")
    assert not cfg.xapi.needs_password
    assert cfg.host.inventory == Path("/etc/xensource-inventory")
    assert cfg.detector.interval == 2.0
    assert cfg.detector.confirm_misses == 3
    assert cfg.detector.confirm_seconds == 10.0
    assert cfg.detector.probe_timeout < cfg.detector.interval
    assert cfg.recovery.protection_key == "xenhad"
    assert cfg.fencing.mode is FencingMode.REQUIRED
    assert cfg.daemon.state_dir == Path("/var/lib/xenhad")
    assert (cfg.daemon.log_format, cfg.daemon.log_level) == ("kv", "info")


def test_the_config_is_frozen() -> None:
    cfg = parse("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.detector.interval = 1.0  # type: ignore[misc]


def test_integers_are_accepted_for_durations_and_values_keep_their_types() -> None:
    cfg = parse(
        """
        [detector]
        interval = 1
        confirm_seconds = 5
        probe_timeout = 0.5
        recover_hold_seconds = 0
        [recovery]
        concurrency = 8
        [fencing]
        mode = "trust-liveness"
        [daemon]
        log_format = "json"
        log_level = "debug"
        """
    )
    assert cfg.detector.interval == 1.0 and isinstance(cfg.detector.interval, float)
    assert cfg.detector.recover_hold_seconds == 0.0
    assert cfg.recovery.concurrency == 8
    assert cfg.fencing.mode is FencingMode.TRUST_LIVENESS
    assert cfg.daemon.log_format == "json"


def test_a_host_uuid_is_normalised_to_lowercase() -> None:
    cfg = parse(f'[host]\nuuid = "{HOST_UUID.upper()}"')
    assert cfg.host.uuid == HOST_UUID
    assert config.resolve_host_uuid(cfg) == HOST_UUID


def test_the_simulator_setup_parses(tmp_path: Path) -> None:
    password = private_file(tmp_path / "pw")
    cfg = config.parse(
        f"""
        [xapi]
        url = "http://127.0.0.2:8080"
        allow_insecure_http = true
        password_file = "{password}"
        source_address = "127.0.0.2"
        """,
        env={},
    )
    assert cfg.xapi.scheme == "http"
    assert cfg.xapi.needs_password
    assert cfg.xapi.source_address == "127.0.0.2"
    assert config.read_xapi_password(cfg) == "s3cret"


def test_a_unix_url_names_another_socket() -> None:
    cfg = parse('[xapi]\nurl = "unix:///run/sim/host1.sock"')
    assert cfg.xapi.scheme == "unix"
    assert cfg.xapi.socket_path == Path("/run/sim/host1.sock")
    assert config.read_xapi_password(cfg) == ""


# --------------------------------------------------------------------------- errors

PW = '\npassword_file = "/nonexistent-but-unchecked"'

INVALID = [
    # (toml, the exact one-line message)
    (
        "[detector]\nconfirm_misses = 0",
        "xenhad.toml: detector.confirm_misses = 0 is invalid: expected an integer from 1 to 1000",
    ),
    (
        "[detector]\nconfirm_misses = 2.5",
        "xenhad.toml: detector.confirm_misses = 2.5 is invalid: "
        "expected an integer from 1 to 1000",
    ),
    (
        "[detector]\ninterval = 0",
        "xenhad.toml: detector.interval = 0 is invalid: "
        "expected a number of seconds from 0.01 to 300",
    ),
    (
        '[detector]\ninterval = "2s"',
        'xenhad.toml: detector.interval = "2s" is invalid: '
        "expected a number of seconds from 0.01 to 300",
    ),
    (
        "[detector]\ninterval = true",
        "xenhad.toml: detector.interval = true is invalid: "
        "expected a number of seconds from 0.01 to 300",
    ),
    (
        "[detector]\ninterval = nan",
        "xenhad.toml: detector.interval = nan is invalid: "
        "expected a number of seconds from 0.01 to 300",
    ),
    (
        "[detector]\nrecover_hold_seconds = -1",
        "xenhad.toml: detector.recover_hold_seconds = -1 is invalid: "
        "expected a number of seconds from 0 to 86400",
    ),
    (
        "[detector]\nconfirm_seconds = 1",
        "xenhad.toml: detector.confirm_seconds = 1 is invalid: "
        "expected >= detector.interval (2.0)",
    ),
    (
        # Only interval was written: it is the one blamed, against the default it broke.
        "[detector]\ninterval = 20",
        "xenhad.toml: detector.interval = 20 is invalid: expected <= "
        "detector.confirm_seconds (10.0, the default): set detector.confirm_seconds too",
    ),
    (
        "[detector]\ninterval = 4\nconfirm_seconds = 3\nprobe_timeout = 1",
        "xenhad.toml: detector.confirm_seconds = 3 is invalid: "
        "expected >= detector.interval (4.0)",
    ),
    (
        "[detector]\nprobe_timeout = 2",
        "xenhad.toml: detector.probe_timeout = 2 is invalid: expected < detector.interval (2.0)",
    ),
    (
        "[detector]\ninterval = 1",
        "xenhad.toml: detector.interval = 1 is invalid: expected > "
        "detector.probe_timeout (1.5, the default): set detector.probe_timeout too",
    ),
    (
        "[xapi]\ntimeout = 0",
        "xenhad.toml: xapi.timeout = 0 is invalid: expected a number of seconds from 0.01 to 600",
    ),
    (
        '[xapi]\nurl = "https://master"',
        'xenhad.toml: xapi.url = "https://master" is invalid: a XAPI url needs a password: '
        "set xapi.password_file or xapi.password_credential "
        '(or url = "" for the local socket, which needs none)',
    ),
    (
        '[xapi]\nurl = "http://127.0.0.2"' + PW,
        'xenhad.toml: xapi.url = "http://127.0.0.2" is invalid: plain http sends the XAPI '
        "password in clear: use https://, or set xapi.allow_insecure_http = true "
        "(meant for the simulator only)",
    ),
    (
        '[xapi]\nurl = "ftp://master"' + PW,
        'xenhad.toml: xapi.url = "ftp://master" is invalid: expected an https:// URL, "" for '
        "the local socket, or unix:///path/of/socket",
    ),
    (
        '[xapi]\nurl = "https://"' + PW,
        'xenhad.toml: xapi.url = "https://" is invalid: expected a host name, '
        'e.g. "https://pool-master"',
    ),
    (
        '[xapi]\nurl = "https://master:99999"' + PW,
        'xenhad.toml: xapi.url = "https://master:99999" is invalid: expected a URL such as '
        '"https://pool-master"',
    ),
    (
        '[xapi]\nurl = "unix://relative/sock"',
        'xenhad.toml: xapi.url = "unix://relative/sock" is invalid: '
        'expected "unix:///absolute/path/of/the/socket"',
    ),
    (
        '[xapi]\nurl = "unix:///run/x.sock"\nsocket = "/run/y.sock"',
        'xenhad.toml: xapi.url = "unix:///run/x.sock" is invalid: '
        "expected only one of a unix: url and xapi.socket: remove one",
    ),
    (
        '[xapi]\npassword_file = "/etc/pw"\npassword_credential = "xapi-password"',
        'xenhad.toml: xapi.password_credential = "xapi-password" is invalid: expected only '
        "one of xapi.password_file and xapi.password_credential: remove one",
    ),
    (
        '[xapi]\npassword_credential = "../etc/shadow"',
        'xenhad.toml: xapi.password_credential = "../etc/shadow" is invalid: '
        "expected a systemd credential name (letters, digits, _ . : @ + -)",
    ),
    (
        '[xapi]\npassword_file = "pw.txt"',
        'xenhad.toml: xapi.password_file = "pw.txt" is invalid: '
        "expected an absolute path (starting with /)",
    ),
    (
        '[xapi]\nverify_tls = false\nca_file = "/etc/xenhad/ca.pem"',
        'xenhad.toml: xapi.ca_file = "/etc/xenhad/ca.pem" is invalid: '
        "xapi.ca_file is only used with xapi.verify_tls = true: remove one of them",
    ),
    (
        '[xapi]\nverify_tls = "yes"',
        'xenhad.toml: xapi.verify_tls = "yes" is invalid: expected true or false (no quotes)',
    ),
    (
        '[xapi]\nusername = ""',
        'xenhad.toml: xapi.username = "" is invalid: expected a XAPI user name, e.g. "root"',
    ),
    (
        '[xapi]\nsource_address = "host1"',
        'xenhad.toml: xapi.source_address = "host1" is invalid: expected an IP address of '
        'this host, e.g. "127.0.0.2", or "" for the default',
    ),
    (
        '[host]\nuuid = "host1"',
        'xenhad.toml: host.uuid = "host1" is invalid: expected a host uuid '
        '(xe host-list params=uuid) or "" for the inventory\'s INSTALLATION_UUID',
    ),
    (
        '[host]\ninventory = ""',
        'xenhad.toml: host.inventory = "" is invalid: expected an absolute path',
    ),
    (
        '[recovery]\nprotection_key = "ha restart"',
        'xenhad.toml: recovery.protection_key = "ha restart" is invalid: '
        "expected a VM other_config key (letters, digits, _ . : / -)",
    ),
    (
        "[recovery]\nconcurrency = 0",
        "xenhad.toml: recovery.concurrency = 0 is invalid: expected an integer from 1 to 64",
    ),
    (
        "[recovery]\nbest_effort_attempts = 0",
        "xenhad.toml: recovery.best_effort_attempts = 0 is invalid: "
        "expected an integer from 1 to 1000",
    ),
    (
        "[recovery]\nretry_backoff = 10\nretry_backoff_max = 5",
        "xenhad.toml: recovery.retry_backoff_max = 5 is invalid: "
        "expected >= recovery.retry_backoff (10.0)",
    ),
    (
        '[fencing]\nmode = "off"',
        'xenhad.toml: fencing.mode = "off" is invalid: expected one of "required", '
        '"trust-liveness"',
    ),
    (
        '[fencing]\nmode = "trust_liveness"',
        'xenhad.toml: fencing.mode = "trust_liveness" is invalid: expected one of "required", '
        '"trust-liveness" (did you mean "trust-liveness"?)',
    ),
    (
        '[daemon]\nlog_level = "INFO"',
        'xenhad.toml: daemon.log_level = "INFO" is invalid: expected one of "debug", "info", '
        '"warning", "error" (did you mean "info"?)',
    ),
    (
        '[daemon]\nlog_format = "text"',
        'xenhad.toml: daemon.log_format = "text" is invalid: expected one of "kv", "json"',
    ),
    (
        '[daemon]\nstate_dir = "var/lib/xenhad"',
        'xenhad.toml: daemon.state_dir = "var/lib/xenhad" is invalid: '
        "expected an absolute path (starting with /)",
    ),
    (
        "detector = 3",
        "xenhad.toml: detector = 3 is invalid: expected a table [detector]",
    ),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[m.split(" ")[1] for _, m in INVALID])
def test_each_invalid_value_is_named_in_one_line(text: str, message: str) -> None:
    assert error_of(text) == message


def test_a_password_in_the_url_is_refused_without_being_echoed() -> None:
    message = error_of('[xapi]\nurl = "https://root:hunter2@master"' + PW)
    assert "hunter2" not in message
    assert message == (
        'xenhad.toml: xapi.url = "https://***@master" is invalid: expected no user or password '
        "in the url: set xapi.username and xapi.password_file instead"
    )


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[detector]\nconfirm_mises = 3",
            "xenhad.toml: detector.confirm_mises is not a known key: "
            "did you mean detector.confirm_misses?",
        ),
        (
            "[xapi]\ninterval = 2",
            "xenhad.toml: xapi.interval is not a known key: it belongs in [detector]: "
            "did you mean detector.interval?",
        ),
        (
            # A password typed into the config is not echoed into logs and bug reports.
            '[xapi]\npassword = "hunter2"',
            'xenhad.toml: xapi.password is not a known key: '
            "did you mean xapi.password_file?",
        ),
        (
            "[daemon]\nfoo = 1",
            "xenhad.toml: daemon.foo is not a known key: "
            "known keys: state_dir, log_format, log_level, metrics_port, metrics_address",
        ),
        (
            # Inside [fencing], a key of another section is pointed to where it belongs.
            "[fencing]\ninterval = 2",
            "xenhad.toml: fencing.interval is not a known key: it belongs in [detector]: "
            "did you mean detector.interval?",
        ),
        (
            "[detectr]\ninterval = 2",
            "xenhad.toml: [detectr] is not a known section: did you mean [detector]?",
        ),
        (
            "interval = 2",
            "xenhad.toml: interval is not a known key: keys belong in a section: "
            "did you mean detector.interval?",
        ),
        (
            # A misspelt key inside a per-host fencing table is refused, not ignored.
            '[[fencing.hosts]]\nname = "host1"',
            'xenhad.toml: fencing.hosts[0].name is not a known key: '
            "known keys: host, chain, redfish, ipmi, agent",
        ),
    ],
)
def test_an_unknown_key_is_an_error_with_a_suggestion(text: str, message: str) -> None:
    assert error_of(text) == message


def test_a_misspelt_key_is_reported_before_a_bad_value_in_the_same_table() -> None:
    message = error_of("[detector]\nconfirm_misses = 0\nintervall = 2")
    assert "detector.intervall" in message and "did you mean detector.interval?" in message


# --------------------------------------------------------------------------- TOML syntax


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "[detector]\ninterval = 2\nconfirm_misses 3\n",
            r"xenhad.toml: line 3, column \d+: TOML syntax error: Expected .=. after a key.*",
        ),
        (
            '[xapi]\nurl = "https://master\n',
            r"xenhad.toml: line 2, column \d+: TOML syntax error: Illegal character '\\n'",
        ),
        (
            "[detector]\ninterval = ",
            r"xenhad.toml: line 2 \(end of file\): TOML syntax error: Invalid value",
        ),
    ],
)
def test_a_toml_syntax_error_is_one_line_with_its_line_number(text: str, pattern: str) -> None:
    # Columns and wording come from tomllib (tomli before 3.11): match, don't pin them.
    assert re.fullmatch(pattern, error_of(text))


# --------------------------------------------------------------------------- files


def test_load_names_the_file_in_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "xenhad.toml"
    path.write_text("[detector]\nconfirm_misses = 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: detector.confirm_misses = 0 is invalid"):
        config.load(path, env={})


def test_a_missing_config_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        config.load(path, env={})
    assert str(caught.value) == (
        f"{path}: cannot read the config file (No such file or directory): pass the path of "
        "an existing file (an example with every option is etc/xenhad.toml)"
    )


def test_a_config_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "xenhad.toml"
    path.write_bytes(b"[daemon]\nlog_level = \"info\"\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r": line 3: not UTF-8 text"):
        config.load(path, env={})


def test_the_example_config_loads_and_documents_every_option() -> None:
    assert config.load(EXAMPLE, env={}) == config.defaults()
    text = EXAMPLE.read_text()
    for section, cls in config.SECTIONS.items():
        assert f"[{section}]" in text
        for f in dataclasses.fields(cls):
            # Optional tables are documented as commented examples.
            written = f"\n{f.name} = " in text or f"\n#{f.name} = " in text
            assert written or f"[[{section}.{f.name}]]" in text, (
                f"{section}.{f.name} is not in etc/xenhad.toml"
            )


def test_check_config_reports_ok_or_the_error(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'[host]\nuuid = "{HOST_UUID}"\n')
    assert config.check_config(good, env={}) == (0, f"{good}: ok")

    bad = tmp_path / "bad.toml"
    bad.write_text("[recovery]\nconcurrency = 0\n")
    code, line = config.check_config(bad, env={})
    assert code == 1
    assert line == f"{bad}: recovery.concurrency = 0 is invalid: expected an integer from 1 to 64"


def test_check_config_needs_the_host_uuid_unless_told_not_to(tmp_path: Path) -> None:
    path = tmp_path / "xenhad.toml"
    path.write_text(f'[host]\ninventory = "{tmp_path / "missing-inventory"}"\n')
    code, line = config.check_config(path, env={})
    assert code == 1
    assert line == (
        f"{path}: host.uuid is empty and the inventory {tmp_path}/missing-inventory cannot be "
        'read (No such file or directory): set host.uuid = "..." in the config, or '
        "host.inventory to the inventory file"
    )
    assert config.check_config(path, env={}, resolve_host=False) == (0, f"{path}: ok")


def test_a_missing_ca_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse(f'[xapi]\nca_file = "{tmp_path}/ca.pem"', source="xenhad.toml", env={})
    assert str(caught.value) == (
        f'xenhad.toml: xapi.ca_file = "{tmp_path}/ca.pem" is invalid: expected an existing '
        "PEM file (the pool's CA or the master's certificate)"
    )


# --------------------------------------------------------------------------- inventory


def inventory_config(tmp_path: Path, content: str | None) -> Config:
    inventory = tmp_path / "xensource-inventory"
    if content is not None:
        inventory.write_text(content)
    return parse(f'[host]\ninventory = "{inventory}"')


def test_the_host_uuid_comes_from_the_inventory(tmp_path: Path) -> None:
    cfg = inventory_config(
        tmp_path,
        "PRIMARY_DISK='/dev/sda'\n"
        f"INSTALLATION_UUID='{HOST_UUID}'\n"
        "CONTROL_DOMAIN_UUID='11111111-2222-4333-8444-555555555555'\n"
        "BUILD_NUMBER=release/yangtze\n"
        "\n",
    )
    assert config.resolve_host_uuid(cfg) == HOST_UUID
    assert config.read_inventory(cfg.host.inventory)["BUILD_NUMBER"] == "release/yangtze"


def test_shell_quoting_in_the_inventory_is_understood(tmp_path: Path) -> None:
    path = tmp_path / "inv"
    path.write_text("A='it'\"'\"'s'\nB=\"two words\"\nC=''\n# comment\n")
    assert config.read_inventory(path) == {"A": "it's", "B": "two words", "C": ""}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot be read (No such file or directory)"),
        ("BUILD_NUMBER='x'\n", "has no INSTALLATION_UUID"),
        ("INSTALLATION_UUID='not-a-uuid'\n", "INSTALLATION_UUID = 'not-a-uuid' is not a uuid"),
        ("this is not an inventory\n", "line 1 is not KEY='value'"),
    ],
)
def test_an_unusable_inventory_is_one_line_with_the_fix(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    cfg = inventory_config(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        config.resolve_host_uuid(cfg)
    message = str(caught.value)
    assert expected in message
    assert str(cfg.host.inventory) in message
    assert message.endswith(
        'set host.uuid = "..." in the config, or host.inventory to the inventory file'
    )
    assert "\n" not in message


# --------------------------------------------------------------------------- credentials


def test_the_password_comes_from_a_private_file(tmp_path: Path) -> None:
    password = private_file(tmp_path / "xapi-password", "hunter2 \n")
    cfg = config.parse(
        f'[xapi]\nurl = "https://master"\npassword_file = "{password}"', env={}
    )
    # One trailing newline is dropped; the space a password may end with is kept.
    assert config.read_xapi_password(cfg) == "hunter2 "
    assert "hunter2" not in repr(cfg)


def test_the_password_comes_from_a_systemd_credential(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    private_file(creds / "xapi-password", "from-systemd\n", mode=0o400)
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    cfg = config.parse(
        '[xapi]\nurl = "https://master"\npassword_credential = "xapi-password"', env=env
    )
    assert config.read_xapi_password(cfg, env=env) == "from-systemd"


def test_a_credential_outside_systemd_fails_when_read_with_the_fix(tmp_path: Path) -> None:
    text = '[xapi]\nurl = "https://master"\npassword_credential = "xapi-password"'
    cfg = config.parse(text, env={})  # check-config run from a shell: nothing to look at
    with pytest.raises(CredentialError) as caught:
        config.read_xapi_password(cfg, env={})
    assert str(caught.value) == (
        "credential 'xapi-password': $CREDENTIALS_DIRECTORY is not set: run xenhad under "
        "systemd with LoadCredential=xapi-password:/path/to/secret, or use a password_file "
        "instead"
    )


def test_a_credential_missing_from_the_credentials_directory_is_refused(
    tmp_path: Path,
) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    text = '[xapi]\nurl = "https://master"\npassword_credential = "xapi-password"'
    with pytest.raises(ConfigError, match=r"xapi.password_credential .* cannot be opened"):
        config.parse(text, source="xenhad.toml", env=env)


def test_a_world_readable_password_file_is_refused(tmp_path: Path) -> None:
    password = private_file(tmp_path / "xapi-password", "hunter2\n", mode=0o644)
    path = tmp_path / "xenhad.toml"
    path.write_text(f'[xapi]\nurl = "https://master"\npassword_file = "{password}"\n')
    path.chmod(0o644)  # the config itself may be world-readable: it holds no secret
    with pytest.raises(ConfigError) as caught:
        config.load(path, env={})
    message = str(caught.value)
    assert message == (
        f'{path}: xapi.password_file = "{password}" is unusable: secret file {password} is '
        f"readable or writable by group or others (mode 0644): run chmod 600 {password}"
    )
    assert "hunter2" not in message
    # Following the fix makes it load.
    password.chmod(0o600)
    assert config.load(path, env={}).xapi.password_file == password


def test_a_missing_password_file_is_refused_by_check_config(tmp_path: Path) -> None:
    path = tmp_path / "xenhad.toml"
    path.write_text(f'[xapi]\nurl = "https://m"\npassword_file = "{tmp_path}/pw"\n')
    code, line = config.check_config(path, env={}, resolve_host=False)
    assert code == 1
    assert line == (
        f'{path}: xapi.password_file = "{tmp_path}/pw" is unusable: secret file '
        f"{tmp_path}/pw cannot be opened (No such file or directory): create it, readable by "
        f"root only (chmod 600 {tmp_path}/pw)"
    )


def test_files_are_not_looked_at_when_checking_away_from_the_host() -> None:
    cfg = config.parse(
        '[xapi]\nurl = "https://m"\npassword_file = "/nonexistent/pw"', check_files=False
    )
    assert cfg.xapi.password_file == Path("/nonexistent/pw")


# --------------------------------------------------------------------------- plug-in tables


def test_section_parsers_get_dotted_names_for_arrays_of_tables() -> None:
    # How the coming [[fencing.hosts]] parser reads its entries: each entry is a Table of
    # its own, so messages say which entry and which key.
    fencing = config.Table(
        "xenhad.toml",
        "fencing",
        {"mode": "required", "hosts": [{"host": "h1"}, {"host": "h2", "backend": "ipmi"}]},
        known=["mode", "hosts"],
    )
    with pytest.raises(ConfigError) as caught:
        fencing.array_of_tables("hosts", known=["host", "backends"])
    assert str(caught.value) == (
        'xenhad.toml: fencing.hosts[1].backend is not a known key: '
        "did you mean fencing.hosts[1].backends?"
    )
    entries = config.Table("x", "fencing", {"hosts": [{"host": "h1"}]}, ["hosts"])
    [entry] = entries.array_of_tables("hosts", known=["host", "timeout"])
    assert entry.string("host", "") == "h1"
    assert entry.seconds("timeout", 5.0, maximum=60) == 5.0
    with pytest.raises(ConfigError, match=r'^x: fencing.hosts = 3 is invalid: expected '):
        config.Table("x", "fencing", {"hosts": 3}, ["hosts"]).array_of_tables("hosts", [])


# --------------------------------------------------------------------------- failover


def test_failover_defaults_and_values() -> None:
    assert parse("").failover.enabled and parse("").failover.witness is None
    cfg = parse("[failover]\npriority = 10\nsync_interval = 0\n")
    assert cfg.failover.priority == 10 and cfg.failover.sync_interval == 0


@pytest.mark.parametrize(("text", "words"), [
    ("[failover]\npriority = 1.5\n", "failover.priority = 1.5 is invalid"),
    ("[failover]\npriority = 5000\n", "failover.priority = 5000"),
    ("[failover]\nlock_ttl = 0\n", "failover.lock_ttl = 0 is invalid"),
    ("[failover]\nwitnes = '/x'\n", "did you mean failover.witness"),
    ("[failover]\nwitness = '/run/sr'\n", "failover.witness needs peer heartbeats"),
])
def test_failover_errors_name_the_key_and_the_fix(text: str, words: str) -> None:
    assert words in error_of(text)


# --------------------------------------------------------------------------- alerts


def test_alerts_are_off_by_default_and_values_keep_their_types(tmp_path: Path) -> None:
    assert not parse("").alerts.enabled
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    token = private_file(tmp_path / "token")
    cfg = parse(
        "[alerts]\n"
        'webhooks = ["https://alerts.example.com/x", "http://127.0.0.1:8080/"]\n'
        f'webhook_token_file = "{token}"\n'
        f'exec = "{hook}"\n'
        "timeout = 3\nretries = 0\n"
    )
    assert cfg.alerts.enabled
    assert cfg.alerts.webhooks == ("https://alerts.example.com/x", "http://127.0.0.1:8080/")
    assert (cfg.alerts.exec, cfg.alerts.webhook_token_file) == (hook, token)
    assert (cfg.alerts.timeout, cfg.alerts.retries) == (3.0, 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'webhooks = "https://a.example"',
            'xenhad.toml: alerts.webhooks = "https://a.example" is invalid: expected an array '
            'of URLs, e.g. ["https://alerts.example.com/xenhad"]',
        ),
        (
            'webhooks = ["ftp://a.example"]',
            'xenhad.toml: alerts.webhooks = ["ftp://a.example"] is invalid: "ftp://a.example" '
            "is not an http:// or https:// URL",
        ),
        (
            'webhooks = ["https://"]',
            'xenhad.toml: alerts.webhooks = ["https://"] is invalid: "https://" has no host '
            'name: expected e.g. "https://alerts.example.com/"',
        ),
        (
            'webhooks = ["https://a.example:99999/"]',
            'xenhad.toml: alerts.webhooks = ["https://a.example:99999/"] is invalid: '
            '"https://a.example:99999/" is not a URL: expected e.g. "https://alerts.example.com/"',
        ),
        (
            'webhooks = ["https://a.example", "https://a.example"]',
            'xenhad.toml: alerts.webhooks = ["https://a.example", "https://a.example"] is '
            'invalid: "https://a.example" is listed twice: list it once',
        ),
        (
            'webhooks = ["http://alerts.example.com/"]\nwebhook_token_file = "/etc/t"',
            'xenhad.toml: alerts.webhooks = ["http://alerts.example.com/"] is invalid: '
            '"http://alerts.example.com/" would send the webhook token in clear: use '
            "https://, or remove alerts.webhook_token_file",
        ),
        (
            'webhook_token_file = "/etc/t"',
            'xenhad.toml: alerts.webhook_token_file = "/etc/t" is invalid: '
            "alerts.webhook_token_file is only used with alerts.webhooks: add a webhook or "
            "remove it",
        ),
        (
            'exec = "alert-hook"',
            'xenhad.toml: alerts.exec = "alert-hook" is invalid: expected an absolute path '
            "(starting with /)",
        ),
        (
            "timeout = 0",
            "xenhad.toml: alerts.timeout = 0 is invalid: "
            "expected a number of seconds from 0.01 to 600",
        ),
        (
            "retries = -1",
            "xenhad.toml: alerts.retries = -1 is invalid: expected an integer from 0 to 10",
        ),
        (
            'verify_tls = false\nca_file = "/etc/ca.pem"',
            'xenhad.toml: alerts.ca_file = "/etc/ca.pem" is invalid: alerts.ca_file is only '
            "used with alerts.verify_tls = true: remove one of them",
        ),
        (
            'webhook = ["https://a.example"]',
            'xenhad.toml: alerts.webhook is not a known key: '
            "did you mean alerts.webhooks?",
        ),
    ],
)
def test_alerts_errors_name_the_key_the_value_and_the_fix(text: str, message: str) -> None:
    assert error_of(f"[alerts]\n{text}\n") == message


def test_a_webhook_password_is_refused_without_being_echoed() -> None:
    message = error_of('[alerts]\nwebhooks = ["https://bot:hunter2@alerts.example.com/"]\n')
    assert "hunter2" not in message
    assert message == (
        'xenhad.toml: alerts.webhooks = ["https://***@alerts.example.com/"] is invalid: '
        '"https://***@alerts.example.com/" carries a user or password: keep credentials out '
        "of the config, put a token in alerts.webhook_token_file"
    )


def test_a_token_over_plain_http_is_accepted_on_loopback_only(tmp_path: Path) -> None:
    token = private_file(tmp_path / "token")
    for host in ("127.0.0.1:9000", "localhost", "[::1]:9000"):
        cfg = parse(f'[alerts]\nwebhooks = ["http://{host}/"]\nwebhook_token_file = "{token}"')
        assert cfg.alerts.webhook_token_file == token


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        (0o600, "is not executable: run chmod 755 "),
        (0o757, "is writable by group or others (mode 0757): run chmod go-w "),
        (0o775, "is writable by group or others (mode 0775): run chmod go-w "),
    ],
)
def test_an_alert_hook_that_would_hand_out_root_is_refused(
    tmp_path: Path, mode: int, words: str
) -> None:
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(mode)
    assert error_of(f'[alerts]\nexec = "{hook}"\n') == (
        f'xenhad.toml: alerts.exec = "{hook}" is invalid: {words}{hook}'
    )


def test_a_missing_alert_hook_or_ca_file_is_refused(tmp_path: Path) -> None:
    assert error_of(f'[alerts]\nexec = "{tmp_path}/nope"\n') == (
        f'xenhad.toml: alerts.exec = "{tmp_path}/nope" is invalid: cannot be used (No such '
        "file or directory): expected an existing executable file"
    )
    assert error_of(f'[alerts]\nexec = "{tmp_path}"\n') == (
        f'xenhad.toml: alerts.exec = "{tmp_path}" is invalid: is not a regular file: expected '
        "an executable file"
    )
    assert error_of(f'[alerts]\nwebhooks = ["https://a.example"]\nca_file = "{tmp_path}/ca"') == (
        f'xenhad.toml: alerts.ca_file = "{tmp_path}/ca" is invalid: expected an existing PEM '
        "file (the CA of the webhook servers' certificates)"
    )


def test_a_webhook_token_readable_by_others_is_refused(tmp_path: Path) -> None:
    token = private_file(tmp_path / "token", mode=0o644)
    message = error_of(
        f'[alerts]\nwebhooks = ["https://a.example"]\nwebhook_token_file = "{token}"\n'
    )
    assert message.startswith(f'xenhad.toml: alerts.webhook_token_file = "{token}" is unusable: ')
    assert message.endswith(f"(mode 0644): run chmod 600 {token}")
    assert "s3cret" not in message


def test_metrics_port_is_off_by_default_and_checked() -> None:
    assert parse("").daemon.metrics_port == 0
    assert parse("[daemon]\nmetrics_port = 9717\n").daemon.metrics_port == 9717
    assert "daemon.metrics_port = 70000 is invalid" in error_of("[daemon]\nmetrics_port = 70000\n")
