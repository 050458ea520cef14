"""The virtual wire's shortcut (virtual/marshal.py) gives what the XML gives, or steps aside.

Each value is put through the real bytes (the simulator's server writes them, the daemon's
parser reads them) and through the shortcut; the two must be equal, or the shortcut must
refuse the value (Unusual) so the bytes are used. Then whole runs, both ways, must leave the
same trace byte for byte."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest

from xenhad.chaos.run import schedule_seed
from xenhad.chaos.virtual_run import run_one
from xenhad.sim import rpc
from xenhad.sim.model import I32
from xenhad.virtual import marshal
from xenhad.xapi.transport import parse_reply

RECORD = {"uuid": "0b5c", "power_state": "Running", "memory": 2 ** 33, "VCPUs": I32(4),
          "other_config": {"xenhad_priority": "1", "last_booted_record": "dropped"},
          "tags": ["a", "b"], "ok": True, "ratio": 0.25, "empty": "",
          "when": xmlrpc.client.DateTime("20261207T10:00:00Z"), "nothing": {}, "none": []}

PLAIN: list[tuple[str, str, Any]] = [
    ("VM.get_all_records", "ok", {"OpaqueRef:1": RECORD}),
    ("host.get_record", "ok", RECORD),
    ("session.login_with_password", "ok", "OpaqueRef:session"),
    ("VM.start", "ok", ""),
    ("VM.start", "fail", ["HOST_OFFLINE", "OpaqueRef:host"]),
    ("VM.start", "fail", ["INTERNAL_ERROR", 12]),
    ("system.listMethods", "ok", ["VM.start", "host.get_all"]),
    ("VM.get_all", "ok", []),
    ("pool.get_other_config", "ok", {"name": "caf\u00e9 \u2603 \U0001f600\ttab\nline"}),
]


def _through_the_bytes(name: str, kind: str, value: Any, unread: frozenset[str]) -> Any:
    return parse_reply(rpc.xmlrpc_reply(name, kind, value), "virtual", unread)[0]


@pytest.mark.parametrize(("name", "kind", "value"), PLAIN)
def test_a_reply_reads_as_its_bytes_parse(name: str, kind: str, value: Any) -> None:
    unread = frozenset({"last_booted_record"})
    assert marshal.read(name, kind, value, unread) == _through_the_bytes(name, kind, value,
                                                                          unread)


@pytest.mark.parametrize(("name", "kind", "value"), PLAIN)
def test_a_reply_loads_as_the_probe_parses_its_bytes(name: str, kind: str, value: Any) -> None:
    (expected,), _ = xmlrpc.client.loads(rpc.xmlrpc_reply(name, kind, value))
    assert marshal.loaded(name, kind, value) == expected


@pytest.mark.parametrize("value", [
    "carriage\rreturn", "nul\x00", "bell\x07", "surrogate\ud800", "\ufffe",
    {1: "a key that is not a string"}, {"key\r": "x"}, b"bytes", object(),
    I32(3),  # an int subclass: xmlrpc.client marshals it by its type, not as an int
])
def test_a_value_the_xml_would_change_is_left_to_the_bytes(value: Any) -> None:
    with pytest.raises(marshal.Unusual):
        marshal.read("VM.get_record", "fail", ["X", value], frozenset())
    with pytest.raises(marshal.Unusual):
        marshal.sent([value])


def test_an_int_past_32_bits_is_left_to_the_bytes() -> None:
    with pytest.raises(marshal.Unusual):
        marshal.sent([2 ** 31])
    assert marshal.sent([2 ** 31 - 1, -(2 ** 31)]) == [2 ** 31 - 1, -(2 ** 31)]


def test_nesting_past_the_parsers_limit_is_left_to_the_bytes() -> None:
    deep: Any = "x"
    for _ in range(40):
        deep = [deep]
    with pytest.raises(marshal.Unusual):
        marshal.read("VM.get_record", "ok", deep, frozenset())


def test_params_are_handled_as_their_bytes_give_them() -> None:
    params = ["OpaqueRef:s", {"a": ["b", 1, True, 0.5, None]},
              xmlrpc.client.DateTime("20261207T10:00:00Z")]
    body = xmlrpc.client.dumps(tuple(params), "event.from", allow_none=True)
    parsed, _ = xmlrpc.client.loads(body, use_builtin_types=False)
    assert marshal.sent(params) == [rpc._from_wire(p) for p in parsed]


@pytest.mark.parametrize("index", [0, 1, 5])
def test_a_run_leaves_the_same_trace_with_and_without_the_xml(index: int) -> None:
    seed = schedule_seed(1, index)
    hosts, self_fence = 3 + index % 3, index % 2 == 1
    wired = run_one(seed, hosts=hosts, self_fence=self_fence, wire=True)
    short = run_one(seed, hosts=hosts, self_fence=self_fence)
    assert wired.trace == short.trace


@pytest.mark.parametrize("value", [
    RECORD, {"OpaqueRef:1": RECORD, "OpaqueRef:2": [RECORD, (I32(1), 2 ** 40)]},
    {1: "x", "1": "y", "z": RECORD},  # keys that stringify alike: the later value wins
    {"a": {2: ["deep", 3]}, "b": "x" * 100}, [I32(2 ** 31)], ("t", True, None, 0.5),
])
def test_a_value_is_marshalled_and_read_in_one_walk_as_in_two(value: Any) -> None:
    unread = frozenset({"last_booted_record"})

    def two_walks() -> Any:
        return marshal._Reader(unread, intern=True).copy(rpc.to_xmlrpc(value), 1)

    try:
        expected = two_walks()
    except marshal.Unusual:
        with pytest.raises(marshal.Unusual):
            marshal._Reader(unread, intern=True).marshalled(value, 1)
        return
    assert marshal._Reader(unread, intern=True).marshalled(value, 1) == expected
    assert marshal.read("VM.get_record", "ok", value, unread) == _through_the_bytes(
        "VM.get_record", "ok", value, unread)


def test_a_reply_near_the_budget_is_left_to_the_bytes_in_one_walk_as_in_two() -> None:
    # The reply's "Success" counts against the budget in both.
    for size in range(marshal._BUDGET - 12, marshal._BUDGET + 2):
        value = {"s": "x" * size, 7: "k"} if size % 2 else {"s": "x" * size}
        unread: frozenset[str] = frozenset()
        try:
            expected: Any = marshal._Reader(unread, intern=True).copy(
                {"Status": "Success", "Value": rpc.to_xmlrpc(value)}, 0)
        except marshal.Unusual:
            expected = marshal.Unusual
        try:
            got: Any = marshal.read("VM.get_record", "ok", value, unread)
        except marshal.Unusual:
            got = marshal.Unusual
        assert got == expected, size
