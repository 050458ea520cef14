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


H0 = "xenhad.toml: fencing.hosts[0]"


MISTAKES = [
    (
        '[fencing]\nmode = "trust"',
        'xenhad.toml: fencing.mode = "trust" is invalid: '
        'expected one of "required", "trust-liveness"',
    ),
    (
        '[fencing]\nmode = "Required"',
        'xenhad.toml: fencing.mode = "Required" is invalid: '
        'expected one of "required", "trust-liveness" (did you mean "required"?)',
    ),
    (
        HOST,
        f"{H0}.chain is missing: expected the backends to try in order, "
        'e.g. chain = ["redfish", "agent"]',
    ),
    (
        HOST + 'chain = ["redfish"]',
        f"{H0}.redfish is missing: fencing.hosts[0].chain names redfish: "
        "add redfish = { ... } to this host",
    ),
    (
        HOST + 'chain = ["bmc"]',
        f'{H0}.chain = ["bmc"] is invalid: "bmc" is not one of "redfish", "ipmi", "agent"',
    ),
    (
        HOST + 'chain = ["redfsh"]',
        f'{H0}.chain = ["redfsh"] is invalid: "redfsh" is not one of "redfish", "ipmi", '
        '"agent" (did you mean "redfish"?)',
    ),
    (
        HOST + "chain = []",
        f"{H0}.chain = [] is invalid: expected a non-empty array of backends, "
        'e.g. ["redfish", "agent"]',
    ),
    (
        HOST + f'chain = ["redfish", "redfish"]\nredfish = {{ url = "https://x", {RF} }}',
        f'{H0}.chain = ["redfish", "redfish"] is invalid: "redfish" is listed twice: '
        "list it once",
    ),
    (
        HOST + f'chain = ["redfish"]\nredfish = {{ url = "ftp://x", {RF} }}',
        f'{H0}.redfish.url = "ftp://x" is invalid: expected a URL such as "https://10.0.0.12"',
    ),
    (
        HOST + f'chain = ["redfish"]\nredfish = {{ url = "https://x/redfish/v1", {RF} }}',
        f'{H0}.redfish.url = "https://x/redfish/v1" is invalid: expected only https://x: the '
        "Redfish paths are found from /redfish/v1 (set fencing.hosts[0].redfish.system for a "
        "specific ComputerSystem)",
    ),
    (
        HOST + f'chain = ["redfish"]\nredfish = {{ url = "https://x:99999", {RF} }}',
        f'{H0}.redfish.url = "https://x:99999" is invalid: '
        "expected a port number from 0 to 65535 after the host",
    ),
    (
        HOST + 'chain = ["redfish"]\nredfish = { url = "https://x", username = "a" }',
        f"{H0}.redfish.password_file is missing: expected the path of a file holding the BMC "
        "password (chmod 600), or set fencing.hosts[0].redfish.password_credential",
    ),
    (
        HOST + f'chain = ["redfish"]\nredfish = {{ url = "https://x", {RF}, pasword = "x" }}',
        f'{H0}.redfish.pasword is not a known key: '
        "did you mean fencing.hosts[0].redfish.password_file?",
    ),
    (
        # The value of a key that holds a password is never echoed.
        HOST + f'chain = ["redfish"]\nredfish = {{ url = "https://x", {RF}, '
        'password = "hunter2" }',
        f'{H0}.redfish.password is not a known key: '
        "did you mean fencing.hosts[0].redfish.password_file?",
    ),
    (
        HOST + f'chain = ["redfish"]\nredfish = {{ url = "https://x", {RF}, '
        'verify_tls = false, ca_file = "/etc/ca.pem" }',
        f'{H0}.redfish.ca_file = "/etc/ca.pem" is invalid: fencing.hosts[0].redfish.ca_file is '
        "only used with fencing.hosts[0].redfish.verify_tls = true: remove one of them",
    ),
    (
        HOST + f'chain = ["redfish"]\nredfish = {{ url = "https://x", {RF}, '
        'password_credential = "bmc" }',
        f'{H0}.redfish.password_credential = "bmc" is invalid: expected only one of '
        "fencing.hosts[0].redfish.password_file and fencing.hosts[0].redfish.password_credential: "
        "remove one",
    ),
    (
        HOST + f'chain = ["redfish"]\nredfish = {{ url = "https://x", {RF}, off_timeout = 1 }}',
        f"{H0}.redfish.off_timeout = 1 is invalid: expected >= "
        "fencing.hosts[0].redfish.poll_interval (2.0, the default): "
        "set fencing.hosts[0].redfish.poll_interval too",
    ),
    (
        HOST + f'chain = ["redfish"]\nredfish = {{ url = "https://x", {RF}, '
        "off_timeout = 5, poll_interval = 10 }",
        f"{H0}.redfish.poll_interval = 10 is invalid: expected <= "
        "fencing.hosts[0].redfish.off_timeout (5.0)",
    ),
    (
        HOST + 'chain = ["agent"]\nagent = { command = "fence_ipmilan", '
        'options = { password = "hunter2" } }',
        f'{H0}.agent.options.password = "***" is invalid: remove it and name the file with '
        "fencing.hosts[0].agent.password_file (the agent gets the password on stdin, never in "
        "the config or on its command line)",
    ),
    (
        HOST + 'chain = ["agent"]\nagent = { command = "fence_ipmilan -P x" }',
        f'{H0}.agent.command = "fence_ipmilan -P x" is invalid: expected a fence agent name '
        'such as "fence_ipmilan" or an absolute path (no arguments: put them in options)',
    ),
    (
        HOST + f'chain = ["ipmi"]\nipmi = {{ address = "10.0.0.1", port = 0, {RF} }}',
        f"{H0}.ipmi.port = 0 is invalid: expected an integer from 1 to 65535",
    ),
    (
        HOST + f'chain = ["ipmi"]\nipmi = {{ address = "10.0.0.1", {RF} }}\n'
        f'redfish = {{ url = "https://x", {RF} }}',
        f'{H0}.redfish = {{ url = "https://x", username = "admin", password_file = "/etc/pw" }} '
        "is invalid: redfish is not in fencing.hosts[0].chain: add it to the chain or remove "
        "the table",
    ),
    (
        HOST
        + f'chain = ["ipmi"]\nipmi = {{ address = "a", {RF} }}\n'
        + HOST
        + f'chain = ["ipmi"]\nipmi = {{ address = "a", {RF} }}',
        'xenhad.toml: fencing.hosts[1].host = "host2" is invalid: fencing.hosts[0] fences this '
        "host already: merge the two entries",
    ),
    (
        '[[fencing.hosts]]\nname = "host1"',
        f'{H0}.name is not a known key: known keys: host, chain, redfish, ipmi, agent',
    ),
    (
        "[fencing]\nhosts = 3",
        "xenhad.toml: fencing.hosts = 3 is invalid: expected [[fencing.hosts]] tables",
    ),
    (
        '[fencing]\nself_fence = { watchdog = "watchdog0" }',
        'xenhad.toml: fencing.self_fence.watchdog = "watchdog0" is invalid: expected a device '
        'path such as "/dev/watchdog", "sim" or "none"',
    ),
    (
        '[fencing]\nself_fence = { watchdog = "sim" }',
        "xenhad.toml: fencing.self_fence.sim_control_url is missing: expected the simulator's "
        'control URL ("http://...") for watchdog = "sim"',
    ),
    (
        '[fencing]\nself_fence = { watchdog = "/dev/watchdog", sim_control_url = "http://x" }',
        'xenhad.toml: fencing.self_fence.sim_control_url = "http://x" is invalid: '
        "fencing.self_fence.sim_control_url is only used with fencing.self_fence.watchdog = "
        '"sim": remove it',
    ),
    (
        '[fencing]\nself_fence = { watchdog = "/dev/watchdog", timeout = 0 }',
        "xenhad.toml: fencing.self_fence.timeout = 0 is invalid: "
        "expected an integer from 1 to 3600",
    ),
]


@pytest.mark.parametrize(("text", "message"), MISTAKES, ids=[m.split(" ")[1] for _, m in MISTAKES])
def test_each_mistake_is_one_line_naming_key_value_and_fix(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse(text)
    assert str(error.value) == message
    assert "\n" not in message and "hunter2" not in message


@pytest.mark.parametrize("scheme", ["https", "ftp"])
def test_a_password_in_the_url_is_refused_without_echoing_it(scheme: str) -> None:
    # Checked before the scheme, or the message about the scheme would print the password.
    with pytest.raises(ConfigError) as error:
        parse(
            HOST
            + f'chain = ["redfish"]\nredfish = {{ url = "{scheme}://admin:hunter2@x", {RF} }}'
        )
    assert str(error.value) == (
        f'{H0}.redfish.url = "{scheme}://***@x" is invalid: expected no user or password in '
        "the url: set fencing.hosts[0].redfish.username and "
        "fencing.hosts[0].redfish.password_file instead"
    )


@pytest.mark.parametrize(("extra", "message"), [
    ("[peers]\nsecret_file = \"/etc/xenhad/pool-secret\"\ninterval = 5.0\nwindow = 20.0\n"
     "[fencing]\nself_fence = { watchdog = \"/dev/watchdog\", timeout = 10, margin = 5 }\n",
     "fencing.self_fence.timeout = 10 is invalid: expected >= 3 x peers.interval (15)"),
    ("[peers]\nsecret_file = \"/etc/xenhad/pool-secret\"\n"
     "[fencing]\nself_fence = { watchdog = \"/dev/watchdog\", timeout = 60, margin = 0.5 }\n",
     "fencing.self_fence.margin = 0.5 is invalid: expected >= 1 s"),
])
def test_a_self_fence_timeout_or_margin_that_cannot_hold_is_refused_in_one_line(
    extra: str, message: str
) -> None:
    # Issue 18: the margin that remains to cover once the proof holds for any tick and
    # delay; the feed's cadence is the heartbeat loop's.
    from xenhad import config

    with pytest.raises(ConfigError) as e:
        config.parse(extra, source="xenhad.toml", env={}, check_files=False)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_check_config_warns_that_a_two_host_pool_needs_a_witness_for_self_fencing() -> None:
    # Issue 18: without a witness, any partition of a 2-host pool reset both hosts.
    from xenhad import config

    text = '[peers]\nsecret_file = "/etc/xenhad/pool-secret"\n' + EXAMPLE
    two = config.parse(text, source="xenhad.toml", env={}, check_files=False)
    (warning,) = config.config_warnings(two)
    assert "2-host pool without failover.witness" in warning and "will not arm" in warning
    witnessed = config.parse(text.replace("[fencing]\n", '[failover]\nwitness = "/mnt/w"\n'
                                          "[fencing]\n", 1),
                             source="xenhad.toml", env={}, check_files=False)
    assert config.config_warnings(witnessed) == []
