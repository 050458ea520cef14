"""Xen Orchestra's npm `xen-api` client, an XAPI client nobody here wrote, drives the
simulator: connect (system.listMethods), keep its cache by event.inject and event.from
(valid_ref_counts, tasks included), shut down and start a VM with Async.* and their tasks,
and read a failed task's error, over JSON-RPC and over XML-RPC at /xmlrpc."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenhad.sim import PoolSpec, SimPool

XO = Path(__file__).resolve().parent.parent / "xo"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (XO / "node_modules" / "xen-api").is_dir(),
    reason="needs node and tests/xo's npm install (scripts/install-test-deps)")


@pytest.fixture(scope="module")
def pool() -> Iterator[SimPool]:
    with SimPool(PoolSpec(hosts=3, vms=4, seed=3, vm_start_seconds=0.2, local_vms=1,
                          groups=1, base_address="127.0.0.30")) as p:
        yield p


@pytest.mark.parametrize("transport", ["auto", "xml-rpc"])
def test_xen_orchestras_client_drives_the_pool(pool: SimPool, transport: str) -> None:
    run = subprocess.run(["node", "drive.mjs", pool.url("host1"), pool.spec.root_password,
                          transport], cwd=XO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(run.stdout.strip().splitlines()[-1])
    # Every class it found through system.listMethods is in its cache.
    assert {"pool", "host", "VM", "SR", "PBD", "VDI", "VBD", "network", "PIF", "VIF",
            "VM_group"} <= set(doc["counts"])
    assert doc["counts"]["host"] == 3
    assert doc["result"] == ""  # VM.start returns nothing: the task's result is empty
    assert doc["resident_on"].startswith("OpaqueRef:")
    # A second start fails in its task, and the client raises xapi's error.
    assert doc["again"][0] == "VM_BAD_POWER_STATE"
    assert pool.double_runs() == []
