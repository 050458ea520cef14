from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from xenhad.sim import PoolSpec, SimPool


def same_port_pool(spec: PoolSpec) -> SimPool:
    """A simulated pool whose hosts all listen on one port, as a real pool's do (443).

    HOST_IS_SLAVE names only the master's address; following it keeps our port, so the
    simulator's default of one random port per host would send us nowhere. The ports are
    set before the pool starts listening.
    """
    pool = SimPool(spec)
    probe = socket.socket()
    probe.bind((pool.hosts[0].address, 0))
    port: int = probe.getsockname()[1]
    probe.close()
    for host in pool.hosts:
        host.port = port
    return pool


@pytest.fixture
def sim() -> Iterator[SimPool]:
    with same_port_pool(PoolSpec(hosts=3, vms=8, seed=3, vm_start_seconds=0.2)) as pool:
        yield pool
