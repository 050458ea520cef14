"""The XAPI calls of a failover that must go to this host's own xapi, not the master's.

On a slave whose master is dead, a normal login over the local socket blocks in xapi
(it waits for the master), so both calls use slave_local_login_with_password: answered by
this host's xapi alone (xapi_session.ml). Neither call is repeated after a timeout: both
restart xapi, and a repeat would restart it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from xenhad.config import Config
from xenhad.xapi.client import Xapi
from xenhad.xapi.connect import open_xapi

Connect = Callable[..., Awaitable[Xapi]]
"""`(config, *, local) -> a logged-in Xapi` (environment.XapiConnector)."""


class FailoverActions:
    def __init__(self, config: Config, *, connect: Connect = open_xapi) -> None:
        self._config = config
        self._connect = connect

    async def transition_to_master(self) -> None:
        """pool.emergency_transition_to_master: this host's xapi restarts as the master, on
        its own copy of the database (xapi_pool.ml)."""
        xapi = await self._connect(self._config, local=True)
        try:
            await xapi.pool_emergency_transition_to_master()
        finally:
            await xapi.close()

    async def reset_master(self, master_address: str) -> None:
        """pool.emergency_reset_master: this host's xapi restarts as a slave of
        `master_address` (xapi_pool.ml)."""
        xapi = await self._connect(self._config, local=True)
        try:
            await xapi.pool_emergency_reset_master(master_address)
        finally:
            await xapi.close()
