"""Fencing: backends that prove a host is off, behind one interface (see base.py).

The daemon builds one `FenceChain` per configured host with `build_chain` and never looks
at which backends it holds.
"""

from __future__ import annotations

from xenhad.clock import Clock
from xenhad.fencing.agent import AgentBackend
from xenhad.fencing.base import (
    FenceBackend,
    FenceChain,
    FenceOutcome,
    FenceResult,
    PowerStatus,
    chain_confirmed_off,
    chain_summary,
)
from xenhad.fencing.config import (
    AgentSettings,
    FencingConfig,
    HostFencing,
    IpmiSettings,
    RedfishSettings,
    parse_fencing,
)
from xenhad.fencing.ipmi import IpmiBackend
from xenhad.fencing.redfish import RedfishBackend
from xenhad.fencing.watchdog import self_fence_deadline_passed

__all__ = [
    "FenceBackend",
    "FenceChain",
    "FenceOutcome",
    "FenceResult",
    "FencingConfig",
    "PowerStatus",
    "build_chain",
    "chain_confirmed_off",
    "chain_summary",
    "parse_fencing",
    "self_fence_deadline_passed",
]


def build_chain(entry: HostFencing, *, clock: Clock) -> FenceChain:
    """The backends of one [[fencing.hosts]] entry, in its chain order."""
    backends: list[FenceBackend] = []
    for settings in entry.chain:
        if isinstance(settings, RedfishSettings):
            backends.append(RedfishBackend(settings, host=entry.host, clock=clock))
        elif isinstance(settings, IpmiSettings):
            backends.append(IpmiBackend(settings, host=entry.host, clock=clock))
        elif isinstance(settings, AgentSettings):
            backends.append(AgentBackend(settings, host=entry.host, clock=clock))
    return FenceChain(entry.host, backends)
