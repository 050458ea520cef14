"""xenhad.schema.Table: the getters every config section is read through, and their messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from xenhad.errors import ConfigError
from xenhad.schema import Table, render_value


def message_of(call: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_an_array_of_strings_is_checked_item_by_item() -> None:
    t = Table("x.toml", "fencing.hosts[0]", {"chain": ["ipmi", "agent"]}, ["chain"])
    assert t.array("chain", str, choices=("redfish", "ipmi", "agent"), unique=True) == [
        "ipmi",
        "agent",
    ]
    assert Table("x.toml", "s", {}, ["a"]).array("a", str, ["d"]) == ["d"]

    def bad(value: object, **kw: Any) -> str:
        table = Table("x.toml", "s", {"a": value}, ["a"])
        return message_of(lambda: table.array("a", str, **kw))

    assert bad("ipmi") == 'x.toml: s.a = "ipmi" is invalid: expected an array of strings'
    assert bad([1]) == "x.toml: s.a = [1] is invalid: expected an array of strings"
    assert bad([], min_items=1) == (
        "x.toml: s.a = [] is invalid: expected a non-empty array of strings"
    )
    assert bad(["IPMI"], choices=("ipmi", "agent")) == (
        'x.toml: s.a = ["IPMI"] is invalid: "IPMI" is not one of "ipmi", "agent" '
        '(did you mean "ipmi"?)'
    )
    assert bad(["ipmi", "ipmi"], unique=True) == (
        'x.toml: s.a = ["ipmi", "ipmi"] is invalid: "ipmi" is listed twice: list it once'
    )


def test_an_array_of_integers_refuses_booleans() -> None:
    # TOML's true is a Python int: without care it would read as 1.
    t = Table("x.toml", "s", {"ports": [623, True]}, ["ports"])
    assert message_of(lambda: t.array("ports", int)) == (
        "x.toml: s.ports = [623, true] is invalid: expected an array of integers"
    )


def test_a_missing_key_is_named_with_its_fix() -> None:
    t = Table("x.toml", "fencing.hosts[2].ipmi", {}, ["password_file"])
    assert str(t.missing("password_file", "set it to the BMC password file")) == (
        "x.toml: fencing.hosts[2].ipmi.password_file is missing: set it to the BMC password file"
    )


def test_a_broken_rule_between_two_keys_blames_the_one_the_operator_wrote() -> None:
    only_b = Table("x.toml", "s", {"off_timeout": 1}, ["off_timeout", "poll_interval"])
    assert message_of(
        lambda: only_b.blame_pair("poll_interval", 2.0, "<=", "off_timeout", 1.0)
    ) == (
        "x.toml: s.off_timeout = 1 is invalid: expected >= s.poll_interval (2.0, the default): "
        "set s.poll_interval too"
    )
    both = Table(
        "x.toml", "s", {"off_timeout": 1, "poll_interval": 2}, ["off_timeout", "poll_interval"]
    )
    assert message_of(lambda: both.blame_pair("poll_interval", 2.0, "<=", "off_timeout", 1.0)) == (
        "x.toml: s.poll_interval = 2 is invalid: expected <= s.off_timeout (1.0)"
    )


def test_a_key_of_another_table_is_pointed_to_only_from_a_top_level_table() -> None:
    neighbours = {"detector": ("interval",), "daemon": ("state_dir",)}
    xapi = {"interval": 2}
    assert message_of(lambda: Table("x.toml", "xapi", xapi, ["url"], neighbours=neighbours)) == (
        "x.toml: xapi.interval is not a known key: it belongs in [detector]: "
        "did you mean detector.interval?"
    )
    top = Table("x.toml", "fencing", {"hosts": [{"interval": 2}]}, ["hosts"], neighbours=neighbours)
    assert message_of(lambda: top.array_of_tables("hosts", ["host"])) == (
        "x.toml: fencing.hosts[0].interval is not a known key: known keys: host"
    )


def test_values_that_hold_a_secret_are_never_rendered() -> None:
    assert message_of(lambda: Table("x.toml", "s", {"passwd": "hunter2"}, ["password_file"])) == (
        'x.toml: s.passwd is not a known key: did you mean s.password_file?'
    )
    shown = render_value({"password": "hunter2", "password_file": "/etc/pw", "secret": "x"})
    assert shown == '{ password = "***", password_file = "/etc/pw", secret = "***" }'
