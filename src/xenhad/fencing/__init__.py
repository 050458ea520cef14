"""Fencing: backends that prove a host is off, behind one interface (see base.py)."""

from __future__ import annotations

from xenhad.fencing.base import (
    FenceBackend,
    FenceChain,
    FenceOutcome,
    FenceResult,
    PowerStatus,
)

__all__ = ["FenceBackend", "FenceChain", "FenceOutcome", "FenceResult", "PowerStatus"]
