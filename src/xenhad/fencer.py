"""How the recovery machine gets its proof that a host is off, per fencing config.

Each [[fencing.hosts]] entry becomes a chain of backends tried in order; the first that
reads the power back as off is the proof. When no backend can give it (a total power loss
takes the BMC down with its host), the self-fence deadline can: every daemon feeds its
host's watchdog only while quorate, so a host no quorum member has heard from for longer
than the watchdog timeout (plus margins) has been reset. Without either proof the incident
waits, touching nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from xenhad.clock import Clock
from xenhad.config import Config
from xenhad.fencing import FenceChain, build_chain, chain_confirmed_off, chain_summary
from xenhad.fencing.config import HostFencing
from xenhad.model import HostView
from xenhad.recovery.events import FenceDone

log = structlog.get_logger("xenhad.fencing")


@dataclass(frozen=True)
class SelfFenceProof:
    passed: bool
    detail: str


SelfFenceCheck = Callable[[HostView], "SelfFenceProof | None"]
ChainBuilder = Callable[[HostFencing, Clock], FenceChain]
"""The backends of one [[fencing.hosts]] entry (fencing.build_chain; in process, the
BMCs of xenhad.virtual)."""


def default_chain(entry: HostFencing, clock: Clock) -> FenceChain:
    return build_chain(entry, clock=clock)


class ChainFencer:
    def __init__(
        self, config: Config, clock: Clock, self_fence: SelfFenceCheck | None = None,
        chain: ChainBuilder = default_chain,
    ) -> None:
        self._fencing = config.fencing
        self._clock = clock
        self._self_fence = self_fence
        self._build_chain = chain
        self._chains: dict[str, FenceChain] = {}

    async def fence(self, host: HostView) -> FenceDone:
        chain = self._chain(host)
        results = await chain.power_off() if chain is not None else []
        if chain_confirmed_off(results):
            return FenceDone(self._clock.wall(), True, results[-1].backend,
                             chain_summary(results))
        if results:
            why = chain_summary(results)
        else:
            why = (f"no fencing backend is configured for {host.name}; add a [[fencing.hosts]] "
                   'entry for it, or accept the risk with fencing.mode = "trust-liveness"')
        proof = self._self_fence(host) if self._self_fence is not None else None
        if proof is not None and proof.passed:
            log.warning("fence.self_fence_proven", host=host.name, why=proof.detail)
            return FenceDone(self._clock.wall(), True, "self-fence", f"{proof.detail} ({why})")
        if proof is not None:
            why = f"{why}; {proof.detail}"
        backend = results[-1].backend if results else "none"
        return FenceDone(self._clock.wall(), False, backend, why)

    def _chain(self, host: HostView) -> FenceChain | None:
        # One chain per host for the daemon's life: backends keep what they learnt (the
        # Redfish system path) between attempts.
        if host.uuid not in self._chains:
            entry = self._fencing.chain_for(host.name, host.uuid)
            if entry is None:
                return None
            self._chains[host.uuid] = self._build_chain(entry, self._clock)
        return self._chains[host.uuid]


def build_fencer(
    config: Config, *, clock: Clock, self_fence: SelfFenceCheck | None = None,
    chain: ChainBuilder = default_chain,
) -> ChainFencer:
    return ChainFencer(config, clock, self_fence, chain)
