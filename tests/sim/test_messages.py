"""The message class as xapi keeps it (ocaml/xapi/xapi_message.ml): files on the master."""

from __future__ import annotations

import xmlrpc.client

import pytest
import XenAPI

from xenhad.sim import PoolSpec, SimPool

from .clients import failure, login, unix_session

pytestmark = pytest.mark.timeout(60)


def test_create_read_since_destroy(pool: SimPool) -> None:
    x = login(pool).xenapi
    host2 = x.host.get_by_name_label("host2")[0]
    uuid = x.host.get_uuid(host2)
    ref = x.message.create("XENHAD_HOST_FAILED", "3", "Host", uuid, "host2 is down")
    record = x.message.get_record(ref)
    assert {k: record[k] for k in ("name", "priority", "cls", "obj_uuid", "body")} == {
        "name": "XENHAD_HOST_FAILED", "priority": "3", "cls": "Host", "obj_uuid": uuid,
        "body": "host2 is down"}
    assert isinstance(record["timestamp"], xmlrpc.client.DateTime)
    assert x.message.get_all() == [ref]
    assert list(x.message.get_all_records()) == [ref]
    assert x.message.get_by_uuid(record["uuid"]) == ref
    assert list(x.message.get_since(xmlrpc.client.DateTime("19700101T00:00:00Z"))) == [ref]
    assert x.message.get_since(xmlrpc.client.DateTime("20991231T00:00:00Z")) == {}
    x.message.destroy(ref)
    assert x.message.get_all_records() == {}
    with pytest.raises(XenAPI.Failure) as e:
        x.message.get_record(ref)
    assert failure(e) == ["HANDLE_INVALID", "message", ref]
    with pytest.raises(XenAPI.Failure) as e:
        x.message.destroy(ref)
    assert failure(e) == ["HANDLE_INVALID", "message", ref]


def test_create_checks_the_object(pool: SimPool) -> None:
    x = login(pool).xenapi
    host_uuid = x.host.get_uuid(x.host.get_by_name_label("host2")[0])
    with pytest.raises(XenAPI.Failure) as e:  # a host's uuid is not a VM's
        x.message.create("X", "3", "VM", host_uuid, "body")
    assert failure(e) == ["UUID_INVALID", "VM", host_uuid]
    with pytest.raises(XenAPI.Failure) as e:
        x.message.create("X", "3", "host", host_uuid, "body")  # datamodel.ml spells "Host"
    assert failure(e)[0] == "INVALID_VALUE"
    [p] = x.pool.get_all()
    assert x.message.create("X", "3", "Pool", x.pool.get_uuid(p), "body")


def test_a_slave_forwards_and_a_promoted_master_starts_empty() -> None:
    spec = PoolSpec(hosts=3, vms=4, seed=3, vm_start_seconds=0.1, fuse_seconds=2)
    with SimPool(spec) as pool:
        x = login(pool).xenapi
        [p] = x.pool.get_all()
        pool_uuid = x.pool.get_uuid(p)
        local = unix_session(pool, "host3")
        local.login_with_password("root", "")
        local.xenapi.message.create("FROM_A_SLAVE", "5", "Pool", pool_uuid, "via host1")
        assert [r["name"] for r in x.message.get_all_records().values()] == ["FROM_A_SLAVE"]
        pool.crash("host1")
        promote = unix_session(pool, "host3")
        promote.slave_local_login_with_password("root", "")
        promote.xenapi.pool.emergency_transition_to_master()
        pool.advance(spec.fuse_seconds + 1)
        x3 = login(pool, "host3").xenapi
        # The messages were files on host1's disk, not rows of the database host3 copied.
        assert x3.message.get_all_records() == {}
