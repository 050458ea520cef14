"""The message class: the alerts an administrator reads in Xen Orchestra and XenCenter.

As xapi keeps them (ocaml/xapi/xapi_message.ml), not as the database does: a message is a
file under the master's blob directory (`message_dir`), never a database row
(datamodel.ml: `create_obj ~in_db:false ~persist:PersistNothing`). So the messages belong
to the host that was master when they were written: they survive its reboots (files on
its disk), a slave's call is forwarded to its master (api.call's MASTER kind), and a host
promoted by pool.emergency_transition_to_master starts with its own directory, which holds
none of the old master's messages.

What the simulator checks, as xapi does:
- create: `cls` is one of datamodel.ml's Message.cls values, spelt as xapi spells them
  ("VM", "Host", "SR", "Pool", ...); `obj_uuid` must name an object of that class
  (check_uuid, else UUID_INVALID [cls; uuid]); the body must be UTF-8 (INVALID_VALUE).
  The priority is an int64 taken as given (xapi checks no range; api_messages.ml's
  convention is 1 most urgent .. 5 informational).
- get_record / destroy of an unknown ref: HANDLE_INVALID ["message"; ref];
  get_by_uuid of an unknown uuid: UUID_INVALID ["message"; uuid].
- get_since(since): messages whose timestamp is strictly later (since_name_filter compares
  the file names, which are the timestamps).
- at most `message_limit` (xapi_globs.ml: 10000) are kept; gc drops the oldest.
Not simulated: message.get_all_records_where, destroy_all, and message events in
event.from (xenhad reads none of them).
"""

from __future__ import annotations

import uuid as uuidlib
import weakref
import xmlrpc.client
from dataclasses import dataclass, field
from typing import Any

from xenhad.sim.api import Ctx, method
from xenhad.sim.model import XapiFailure
from xenhad.sim.pool import SimPool

CLASSES = {
    # datamodel.ml, Message.cls -> the table check_uuid looks the object up in. Classes
    # the simulator has no table for can never hold a valid uuid here.
    "VM": "VM", "Host": "host", "SR": "SR", "Pool": "pool", "VMPP": "VMPP", "VMSS": "VMSS",
    "PVS_proxy": "PVS_proxy", "VDI": "VDI", "Certificate": "Certificate",
}
MESSAGE_LIMIT = 10000
"""xapi_globs.ml message_limit: the gc keeps the newest this many."""


@dataclass
class _Message:
    ref: str
    uuid: str
    name: str
    priority: int
    cls: str
    obj_uuid: str
    timestamp: float
    body: str

    def record(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid, "name": self.name, "priority": self.priority,
            "cls": self.cls, "obj_uuid": self.obj_uuid, "body": self.body,
            "timestamp": _datetime(self.timestamp),
        }


@dataclass
class _Box:
    """One host's message directory."""

    messages: dict[str, _Message] = field(default_factory=dict)
    last: float = 0.0


_BOXES: weakref.WeakKeyDictionary[SimPool, dict[str, _Box]] = weakref.WeakKeyDictionary()


def _box(ctx: Ctx) -> _Box:
    # ctx.served is the master whose xapi answers (api.call forwards a slave's call).
    boxes = _BOXES.setdefault(ctx.pool, {})
    return boxes.setdefault(ctx.served.uuid, _Box())


def held(pool: SimPool, host: str) -> list[dict[str, Any]]:
    """The records `host` (uuid) holds, oldest first: for /truth-like checks in tests."""
    box = _BOXES.get(pool, {}).get(host)
    if box is None:
        return []
    return [m.record() for m in sorted(box.messages.values(), key=lambda m: m.timestamp)]


def _datetime(wall: float) -> xmlrpc.client.DateTime:
    import time

    return xmlrpc.client.DateTime(time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime(wall)))


def _since(value: Any) -> float:
    """A DateTime parameter: xmlrpc DateTime or its string (JSON-RPC), UTC when no zone."""
    import calendar
    import time

    text = value.value if isinstance(value, xmlrpc.client.DateTime) else value
    if not isinstance(text, str):
        raise XapiFailure("FIELD_TYPE_ERROR", ["since"])
    text = text.strip()
    for fmt in ("%Y%m%dT%H:%M:%SZ", "%Y%m%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ",
                "%Y-%m-%dT%H:%M:%S"):
        try:
            return float(calendar.timegm(time.strptime(text, fmt)))
        except ValueError:
            continue
    raise XapiFailure("INVALID_VALUE", ["since", text])


@method("message.create", 5)
def create(ctx: Ctx, name: Any, priority: Any, cls: Any, obj_uuid: Any, body: Any) -> str:
    if not isinstance(name, str) or not isinstance(obj_uuid, str) or not isinstance(body, str):
        raise XapiFailure("FIELD_TYPE_ERROR", ["name" if not isinstance(name, str) else
                                               "obj_uuid" if not isinstance(obj_uuid, str)
                                               else "body"])
    try:
        level = int(priority)  # int64: a decimal string over XML-RPC, or an int
    except (TypeError, ValueError):
        raise XapiFailure("FIELD_TYPE_ERROR", ["priority"]) from None
    table = CLASSES.get(cls) if isinstance(cls, str) else None
    if table is None:
        # The generated unmarshaller refuses a value datamodel.ml does not list (the exact
        # error code of that refusal is not modelled: xenhad only sends valid classes).
        raise XapiFailure("INVALID_VALUE", ["cls", str(cls)])
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        raise XapiFailure("INVALID_VALUE", ["UTF8 expected"]) from None
    rows = ctx.db.tables.get(table, {})
    if not any(rec.get("uuid") == obj_uuid for rec in rows.values()):
        # xapi_message.ml create: check_uuid, else UUID_INVALID [cls; obj_uuid].
        raise XapiFailure("UUID_INVALID", [cls, obj_uuid])
    box = _box(ctx)
    # A file named by its timestamp, bumped by 0.00001 on a collision (write).
    stamp = max(ctx.pool.clock.wall(), box.last + 0.00001)
    box.last = stamp
    ref = f"OpaqueRef:{uuidlib.uuid4()}"
    box.messages[ref] = _Message(ref, str(uuidlib.uuid4()), name, level, cls, obj_uuid,
                                 stamp, body)
    if len(box.messages) > MESSAGE_LIMIT:
        # gc: the oldest go first.
        for old in sorted(box.messages.values(), key=lambda m: m.timestamp)[
                :len(box.messages) - MESSAGE_LIMIT]:
            del box.messages[old.ref]
    return ref


def _get(ctx: Ctx, ref: Any) -> _Message:
    message = _box(ctx).messages.get(str(ref))
    if message is None:
        raise XapiFailure("HANDLE_INVALID", ["message", str(ref)])
    return message


@method("message.get_record", 1)
def get_record(ctx: Ctx, ref: Any) -> dict[str, Any]:
    return _get(ctx, ref).record()


@method("message.destroy", 1)
def destroy(ctx: Ctx, ref: Any) -> str:
    del _box(ctx).messages[_get(ctx, ref).ref]
    return ""


@method("message.get_all", 0)
def get_all(ctx: Ctx) -> list[str]:
    return list(_box(ctx).messages)


def _newest_first(ctx: Ctx, cutoff: float) -> dict[str, dict[str, Any]]:
    # get_real_inner: the records sorted newest first (by generation, then timestamp).
    found = sorted((m for m in _box(ctx).messages.values() if m.timestamp > cutoff),
                   key=lambda m: m.timestamp, reverse=True)
    return {m.ref: m.record() for m in found}


@method("message.get_all_records", 0)
def get_all_records(ctx: Ctx) -> dict[str, dict[str, Any]]:
    return _newest_first(ctx, float("-inf"))


@method("message.get_since", 1)
def get_since(ctx: Ctx, since: Any) -> dict[str, dict[str, Any]]:
    return _newest_first(ctx, _since(since))


@method("message.get_by_uuid", 1)
def get_by_uuid(ctx: Ctx, uuid: Any) -> str:
    for ref, m in _box(ctx).messages.items():
        if m.uuid == uuid:
            return ref
    raise XapiFailure("UUID_INVALID", ["message", str(uuid)])
