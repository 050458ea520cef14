"""Whatever is in the config file, and whoever could have written it, xenhad accepts it whole
or refuses it in one line, at `check-config`, at start and on SIGHUP alike: absurd numbers,
files nested 100,000 deep, a file others may write, secrets nobody checked (issue 24)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from xenhad import cli, config
from xenhad.config import Config
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
    assert err == f"{path}: xapi.timeout = 1e+300 is invalid: expected a number of seconds " \
        "from 0.01 to 600\n"
