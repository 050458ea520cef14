"""Whatever the config file holds, the loader returns a Config or raises one ConfigError
line: never a RecursionError, an OverflowError or any other traceback (issue 24).

Two fuzzers: text that is TOML-ish (known and unknown sections, keys and values of every
TOML type, brackets nested or unbalanced), and well-formed files giving any value to the
options xenhad knows, [fencing]'s per-host tables included.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenhad import config
from xenhad.errors import ConfigError

KNOWN = {section: config.known_keys(section) for section in config.SECTIONS}
FENCING_TABLES = {
    "redfish": ["url", "username", "password_file", "password_credential", "verify_tls",
                "ca_file", "system", "request_timeout", "off_timeout", "poll_interval"],
    "ipmi": ["address", "port", "username", "password_file", "password_credential",
             "request_timeout", "off_timeout", "poll_interval"],
    "agent": ["command", "options", "password_file", "password_credential", "timeout",
              "off_timeout", "poll_interval"],
}


def toml_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def toml_string(value: str) -> str:
    # JSON's escapes are TOML's, but JSON leaves DEL bare, which TOML refuses.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


SCALARS = st.one_of(
    st.booleans().map(lambda b: "true" if b else "false"),
    st.integers().map(str),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.sampled_from(["0", "1", "-1", "1e300", "-1e300", "1" + "0" * 400, "0.001", "2.5"]),
    st.floats().map(toml_float),
    st.text(max_size=30).map(toml_string),
    st.sampled_from(['"/"', '"/nonexistent"', '"https://h"', '"http://{address}/"',
                     '"sim"', '"none"', '"required"', '"trust-liveness"', '"fence_x"',
                     '"redfish"', '["redfish"]', '["ipmi", "agent"]', '"kv"', '""']),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.dictionaries(st.sampled_from(["a", "password", "timeout", "url", "x y"]), inner,
                        max_size=3).map(
            lambda d: "{ " + ", ".join(f"{json.dumps(k)} = {v}" for k, v in d.items()) + " }"),
    ),
    max_leaves=6,
)


def load(text: str) -> None:
    try:
        config.parse(text, source="fuzz.toml", env={})
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message and message.startswith("fuzz.toml")
        assert len(message) < 1200, message[:200]


@st.composite
def tomlish(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            section = draw(st.sampled_from([*KNOWN, "fencing.hosts", "x", "fencing.self_fence"]))
            lines.append(f"[[{section}]]" if draw(st.booleans()) else f"[{section}]")
        elif kind == 1:
            lines.append(draw(st.text(max_size=40)))
        elif kind == 2:
            depth = draw(st.integers(0, 3000))
            lines.append("k = " + "[" * depth + "]" * draw(st.integers(0, depth)))
        else:
            section = draw(st.sampled_from(list(KNOWN)))
            key = draw(st.sampled_from([*KNOWN[section], "password", "k" * 100]))
            lines.append(f"{key} = {draw(VALUES)}")
    return "\n".join(lines)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=tomlish())
def test_any_tomlish_text_loads_or_is_one_config_error_line(text: str) -> None:
    load(text)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_at_all_loads_or_is_one_config_error_line(text: str) -> None:
    load(text)


@st.composite
def known_values(draw: st.DrawFn) -> str:
    """A file whose sections hold only known keys, each with any value."""
    out: list[str] = []
    for section in draw(st.lists(st.sampled_from([s for s in KNOWN if s != "fencing"]),
                                 unique=True, max_size=4)):
        out.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from(KNOWN[section]), unique=True, max_size=4)):
            out.append(f"{key} = {draw(VALUES)}")
    if draw(st.booleans()):
        out.append("[fencing]")
        out.append(f"mode = {draw(VALUES)}")
        if draw(st.booleans()):
            keys = draw(st.lists(st.sampled_from(
                ["watchdog", "timeout", "margin", "mode", "sim_control_url"]), unique=True))
            out.append("self_fence = { " + ", ".join(
                f"{k} = {draw(VALUES)}" for k in keys) + " }")
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(list(FENCING_TABLES)))
            out += ["[[fencing.hosts]]", f"host = {draw(VALUES)}", f'chain = ["{kind}"]']
            keys = draw(st.lists(st.sampled_from(FENCING_TABLES[kind]), unique=True))
            out.append(f"{kind} = {{ " + ", ".join(f"{k} = {draw(VALUES)}" for k in keys) + " }")
    return "\n".join(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=known_values())
def test_any_value_of_any_known_option_loads_or_is_one_config_error_line(text: str) -> None:
    load(text)


def test_the_fuzzers_reach_past_the_syntax() -> None:
    # A fuzzer whose every file is a syntax error would prove nothing about the options.
    accepted: list[Any] = []

    @settings(max_examples=200, deadline=None, database=None)
    @given(text=known_values())
    def collect(text: str) -> None:
        try:
            accepted.append(config.parse(text, source="fuzz.toml", env={}))
        except ConfigError as e:
            assert "TOML syntax error" not in str(e), (text, str(e))

    collect()
    assert accepted
