"""What an XML-RPC round trip makes of a value, computed without writing the XML.

A virtual run spent a quarter of its time writing and parsing XML between each daemon and
the simulator's xapi (bench/RESULTS.md, "virtual chaos"): the same bytes the process chaos
and the wire tests already cover. `sent` gives what the server's handler is given for a
request's params, `read` what the daemon's parser (xapi/transport.py `parse_reply`) gives
for a reply, each equal to the round trip through the real XML for the values it accepts.

A value whose round trip is anything but a copy is not accepted: `Unusual` is raised and
the caller sends the real bytes, so the shortcut is never kinder than the wire. That is:
a string XML would change or refuse (a carriage return, which parsers turn into a line
feed; a control character; a lone surrogate), an int outside XML-RPC's 32 bits, a key that
is not a string, a type XML-RPC has no element for, nesting past the parser's limit, or a
reply large enough that its size could matter. tests/virtual/test_marshal.py runs seeds both
ways and compares their traces byte for byte.
"""

from __future__ import annotations

import re
import sys
import xmlrpc.client
from typing import Any

from xenhad.sim import rpc
from xenhad.sim.model import I32
from xenhad.xapi.transport import _INTERN_MAX, MAX_REPLY_BYTES, MAX_REPLY_DEPTH

_ODD = re.compile("[\x00-\x08\x0b\x0c\x0d\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
"""Characters an XML round trip does not give back as they were: XML 1.0 refuses the
controls and surrogates, and reads a carriage return as a line feed (XML 1.0, 2.11). Only
a string that is not printable (str.isprintable: none of these are) is searched."""

_I32 = 2 ** 31

_BUDGET = MAX_REPLY_BYTES // 8
"""Characters of strings a reply may carry and still be read without its bytes: well under
the parser's cap however the XML around them is counted."""


class Unusual(Exception):
    """This value's round trip is not a plain copy: send the real bytes."""


class _Reader:
    def __init__(self, unread: frozenset[str], intern: bool) -> None:
        self.unread = unread
        self.intern = intern
        self.left = _BUDGET

    def copy(self, value: Any, depth: int) -> Any:
        # Exact types: xmlrpc.client marshals a subclass by its __dict__, or refuses it.
        kind = type(value)
        if kind is str:
            self.left -= len(value)
            if self.left < 0 or (not value.isprintable() and _ODD.search(value)):
                raise Unusual
            if self.intern and len(value) <= _INTERN_MAX:
                return sys.intern(value)
            return value
        if kind is bool or value is None or kind is float:
            return value
        if kind is int:
            if not -_I32 <= value < _I32:
                raise Unusual
            return value
        if kind is dict:
            if depth >= MAX_REPLY_DEPTH:
                raise Unusual
            out: dict[str, Any] = {}
            for key, item in value.items():
                if type(key) is not str or (not key.isprintable() and _ODD.search(key)):
                    raise Unusual
                if key in self.unread:
                    continue
                out[sys.intern(key) if self.intern else key] = self.copy(item, depth + 1)
            return out
        if kind is list or kind is tuple:
            if depth >= MAX_REPLY_DEPTH:
                raise Unusual
            return [self.copy(item, depth + 1) for item in value]
        if kind is xmlrpc.client.DateTime:
            return xmlrpc.client.DateTime(value.value)
        raise Unusual

    def marshalled(self, value: Any, depth: int) -> Any:
        """`copy(rpc.to_xmlrpc(value), depth)` in one walk: the simulator's values as its
        server marshals them (int64 as decimal strings), then read. Its cases in
        to_xmlrpc's order (a string, the commonest, first: to_xmlrpc leaves it as it is);
        a dict with a key that is not a string takes the two walks (two keys may stringify
        alike, and the later then wins)."""
        if type(value) is str:
            return self.copy(value, depth)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, I32):
            return self.copy(int(value), depth)
        if isinstance(value, int):
            return self.copy(str(value), depth)
        if isinstance(value, dict):
            if depth >= MAX_REPLY_DEPTH:
                raise Unusual
            out: dict[str, Any] = {}
            left, unread, intern = self.left, self.unread, self.intern
            for key, item in value.items():
                if type(key) is not str:
                    self.left = left  # as though this dict's items had not been read yet
                    return self.copy(rpc.to_xmlrpc(value), depth)
                if not key.isprintable() and _ODD.search(key):
                    raise Unusual
                if key in unread:
                    continue
                if type(item) is str:
                    # copy's case for a string, inline: most members are one.
                    self.left -= len(item)
                    if self.left < 0 or (not item.isprintable() and _ODD.search(item)):
                        raise Unusual
                    if intern and len(item) <= _INTERN_MAX:
                        item = sys.intern(item)
                    out[sys.intern(key) if intern else key] = item
                else:
                    out[sys.intern(key) if intern else key] = self.marshalled(item, depth + 1)
            return out
        if isinstance(value, (list, tuple)):
            if depth >= MAX_REPLY_DEPTH:
                raise Unusual
            return [self.copy(item, depth + 1) if type(item) is str
                    else self.marshalled(item, depth + 1) for item in value]
        return self.copy(value, depth)


def sent(params: list[Any]) -> list[Any]:
    """The params as the server's handler is given them (world.request), XML-RPC's
    datetimes as their strings (rpc._from_wire)."""
    reader = _Reader(frozenset(), intern=False)
    copied = reader.copy(params, 0)
    return [rpc._from_wire(p) for p in copied]


def read(name: str, kind: str, value: Any, unread: frozenset[str]) -> Any:
    """The first value `parse_reply(rpc.xmlrpc_reply(name, kind, value), ..., unread)`
    gives: members named in `unread` dropped at any depth, names and short strings
    interned."""
    return _reply(_Reader(unread, intern=True), name, kind, value)


def loaded(name: str, kind: str, value: Any) -> Any:
    """The first value `xmlrpc.client.loads(rpc.xmlrpc_reply(name, kind, value))` gives,
    as the probe reads a reply (xapi/probe.py `envelope`): `read` with nothing dropped and
    nothing interned, parse_reply's parser being xmlrpc.client's Unmarshaller with the
    same settings."""
    return _reply(_Reader(frozenset(), intern=False), name, kind, value)


def _reply(reader: _Reader, name: str, kind: str, value: Any) -> Any:
    if kind == "ok" and name == "system.listMethods":
        return reader.marshalled(value, 0)
    if kind == "ok" and not reader.unread & {"Status", "Value"}:
        return {"Status": reader.copy("Success", 1), "Value": reader.marshalled(value, 1)}
    if kind == "ok":
        return reader.copy({"Status": "Success", "Value": rpc.to_xmlrpc(value)}, 0)
    return reader.copy({"Status": "Failure", "ErrorDescription": value}, 0)
