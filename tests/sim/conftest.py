from __future__ import annotations

from collections.abc import Iterator

import pytest

from xenhad.sim import PoolSpec, SimPool


@pytest.fixture
def pool() -> Iterator[SimPool]:
    with SimPool(PoolSpec(hosts=3, vms=8, seed=3, vm_start_seconds=0.5,
                          boot_seconds=20.0)) as p:
        yield p
