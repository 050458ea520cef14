"""[fencing] in xenhad.toml: the shapes that parse, and the one-line error for each mistake."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from xenhad.errors import ConfigError
from xenhad.fencing.config import (
    AgentSettings,
    FencingMode,
    IpmiSettings,
    RedfishSettings,
    Secret,
    WatchdogMode,
    parse_fencing,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLE = """
[fencing]
mode = "required"
self_fence = { watchdog = "/dev/watchdog", timeout = 60, margin = 15 }

[[fencing.hosts]]
host = "host2"
chain = ["redfish", "agent"]
redfish = { url = "https://10.0.0.12", username = "admin", password_file = "/etc/xenhad/bmc" }
[fencing.hosts.agent]
command = "fence_ipmilan"
password_file = "/etc/xenhad/bmc"
options = { ip = "10.0.0.12", username = "admin", lanplus = "1" }

[[fencing.hosts]]
host = "3f1c2d9e-0000-4000-8000-000000000003"
chain = ["ipmi"]
ipmi = { address = "10.0.0.13", username = "admin", password_credential = "bmc-host3" }
"""


def parse(text: str) -> Any:
    return parse_fencing(tomllib.loads(text).get("fencing", {}), source="xenhad.toml")


def test_the_documented_example_parses() -> None:
    config = parse(EXAMPLE)
    assert config.mode is FencingMode.REQUIRED
    assert config.self_fence is not None
    assert config.self_fence.watchdog == "/dev/watchdog"
    assert config.self_fence.mode is WatchdogMode.REQUIRED
    host2 = config.chain_for("host2")
    assert host2 is not None
    redfish, agent = host2.chain
    assert isinstance(redfish, RedfishSettings) and redfish.verify_tls
    assert redfish.password == Secret(file=Path("/etc/xenhad/bmc"))
    assert isinstance(agent, AgentSettings) and agent.options["lanplus"] == "1"
    host3 = config.chain_for("nope", "3f1c2d9e-0000-4000-8000-000000000003")
    assert host3 is not None
    (ipmi,) = host3.chain
    assert isinstance(ipmi, IpmiSettings) and ipmi.port == 623 and ipmi.off_timeout == 60
    assert ipmi.password == Secret(credential="bmc-host3")


def test_an_empty_fencing_table_is_required_mode_with_no_hosts() -> None:
    config = parse("")
    assert config.mode is FencingMode.REQUIRED and config.hosts == ()


HOST = '[[fencing.hosts]]\nhost = "host2"\n'
RF = 'username = "admin", password_file = "/etc/pw"'


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[fencing]\nmode = "trust"', "fencing.mode", "trust-liveness"),
        (HOST + 'chain = ["redfish"]', "fencing.hosts[0].redfish", "add redfish"),
        (HOST + 'chain = ["bmc"]', "fencing.hosts[0].chain", "not a backend"),
        (HOST + "chain = []", "fencing.hosts[0].chain", "non-empty list"),
        (
            HOST + f'chain = ["redfish"]\nredfish = {{ url = "ftp://x", {RF} }}',
            "fencing.hosts[0].redfish.url",
            "https://",
        ),
        (
            HOST + f'chain = ["redfish"]\nredfish = {{ url = "https://x/redfish/v1", {RF} }}',
            "fencing.hosts[0].redfish.url",
            "expected only https://x",
        ),
        (
            HOST + 'chain = ["redfish"]\nredfish = { url = "https://x", username = "a" }',
            "fencing.hosts[0].redfish.password_file",
            "chmod 600",
        ),
        (
            HOST + f'chain = ["redfish"]\nredfish = {{ url = "https://x", {RF}, pasword = "x" }}',
            "fencing.hosts[0].redfish.pasword",
            "not a known key",
        ),
        (
            HOST + 'chain = ["agent"]\nagent = { command = "fence_ipmilan", '
            'options = { password = "hunter2" } }',
            "fencing.hosts[0].agent.options.password",
            "password_file",
        ),
        (
            HOST + 'chain = ["agent"]\nagent = { command = "fence_ipmilan -P x" }',
            "fencing.hosts[0].agent.command",
            "no arguments",
        ),
        (
            HOST + f'chain = ["ipmi"]\nipmi = {{ address = "10.0.0.1", port = 0, {RF} }}',
            "fencing.hosts[0].ipmi.port",
            "1 to 65535",
        ),
        (
            HOST + f'chain = ["ipmi"]\nipmi = {{ address = "10.0.0.1", {RF} }}\n'
            f'redfish = {{ url = "https://x", {RF} }}',
            "fencing.hosts[0].redfish",
            "not in chain",
        ),
        (
            HOST
            + f'chain = ["ipmi"]\nipmi = {{ address = "a", {RF} }}\n'
            + HOST
            + f'chain = ["ipmi"]\nipmi = {{ address = "a", {RF} }}',
            "fencing.hosts[1].host",
            "merge",
        ),
        (
            '[fencing]\nself_fence = { watchdog = "watchdog0" }',
            "fencing.self_fence.watchdog",
            "/dev/watchdog",
        ),
        (
            '[fencing]\nself_fence = { watchdog = "sim" }',
            "fencing.self_fence.sim_control_url",
            "http://",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_key_and_fix(text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse(text)
    message = str(error.value)
    assert message.startswith(f"xenhad.toml: {key} = "), message
    assert words in message
    assert "\n" not in message
    assert "hunter2" not in message


def test_a_password_in_the_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as error:
        parse(
            HOST + 'chain = ["redfish"]\nredfish = { url = "https://admin:hunter2@x", ' + RF + " }"
        )
    assert "hunter2" not in str(error.value) and "password_file" in str(error.value)
