"""A simulated XenServer / XCP-ng pool, reached through the unmodified XenAPI client.

`SimPool(PoolSpec(...))` is a context manager: on enter every simulated host serves
XML-RPC and JSON-RPC on its own loopback address and a UNIX socket standing for its local
/var/lib/xcp/xapi; faults are injected through Python methods or the control HTTP API.
"""

from __future__ import annotations

from xenhad.sim.clock import SimClock
from xenhad.sim.pool import SimError, SimPool
from xenhad.sim.spec import PoolSpec

__all__ = ["PoolSpec", "SimClock", "SimError", "SimPool"]
