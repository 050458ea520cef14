"""How the recovery machine gets its proof that a host is off, per fencing config.

Each [[fencing.hosts]] entry becomes a chain of backends tried in order; the first that
reads the power back as off is the proof. A host without an entry has no proof to give,
and its incident waits (touching nothing) until the operator configures one.
"""

from __future__ import annotations

from xenhad.clock import Clock
from xenhad.config import Config
from xenhad.fencing import FenceChain, build_chain, chain_confirmed_off, chain_summary
from xenhad.model import HostView
from xenhad.recovery.events import FenceDone


class ChainFencer:
    def __init__(self, config: Config, clock: Clock) -> None:
        self._fencing = config.fencing
        self._clock = clock
        self._chains: dict[str, FenceChain] = {}

    async def fence(self, host: HostView) -> FenceDone:
        chain = self._chain(host)
        if chain is None:
            return FenceDone(
                self._clock.wall(),
                False,
                "none",
                f"no fencing backend is configured for {host.name}; add a [[fencing.hosts]] "
                f'entry for it, or accept the risk with fencing.mode = "trust-liveness"',
            )
        results = await chain.power_off()
        backend = results[-1].backend if results else "none"
        return FenceDone(
            self._clock.wall(), chain_confirmed_off(results), backend, chain_summary(results)
        )

    def _chain(self, host: HostView) -> FenceChain | None:
        # One chain per host for the daemon's life: backends keep what they learnt (the
        # Redfish system path) between attempts.
        if host.uuid not in self._chains:
            entry = self._fencing.chain_for(host.name, host.uuid)
            if entry is None:
                return None
            self._chains[host.uuid] = build_chain(entry, clock=self._clock)
        return self._chains[host.uuid]


def build_fencer(config: Config, *, clock: Clock) -> ChainFencer:
    return ChainFencer(config, clock)
