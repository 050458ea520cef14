"""Performs the recovery machine's actions against the world and reports each as an event.

This is the thin I/O layer under machine.py: it decides nothing beyond translating XAPI's
answers into the machine's vocabulary (which error means "retry", which means "give up").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from xenhad.model import HostView, PoolView
from xenhad.recovery.events import (
    Action,
    CapacityMeasured,
    Event,
    FenceDone,
    FenceHost,
    MeasureCapacity,
    ResetDone,
    ResetVm,
    StartDone,
    StartOutcome,
    StartVm,
)
from xenhad.xapi.client import Xapi
from xenhad.xapi.errors import XapiError, XapiUnreachable

# VM.start errors that may pass with time or on another host (xapi_vm_helpers.ml
# assert_can_boot_here and friends): the machine retries them with backoff.
_RETRY_CODES = frozenset(
    {
        "HOST_NOT_ENOUGH_FREE_MEMORY",
        "NO_HOSTS_AVAILABLE",
        "HOST_DISABLED",
        "HOST_NOT_LIVE",
        "HOST_OFFLINE",
        "HOST_CANNOT_ATTACH_NETWORK",
        "OTHER_OPERATION_IN_PROGRESS",
        "CANNOT_CONTACT_HOST",
        "SR_BACKEND_FAILURE_46",  # VDI still locked by the dead host's tapdisk lease
        "VDI_IN_USE",
        "HOST_STILL_BOOTING",
    }
)


# VM.start errors that say this host cannot run the VM, whatever the time (xapi_vm_helpers.ml
# assert_can_boot_here: SRs, networks, IOMMU, GPUs, pCPUs, CPU features, virtual hardware
# platform, HVM): another host that can is tried, not this one again.
_HOST_REFUSALS = frozenset(
    {
        "VM_REQUIRES_SR",
        "VM_REQUIRES_NETWORK",
        "VM_REQUIRES_GPU",
        "VM_REQUIRES_VGPU",
        "VM_REQUIRES_IOMMU",
        "VM_HAS_VUSBS",
        "HOST_NOT_ENOUGH_PCPUS",
        "VM_INCOMPATIBLE_WITH_THIS_HOST",
        "VM_HOST_INCOMPATIBLE_VERSION",
        "VM_HOST_INCOMPATIBLE_VIRTUAL_HARDWARE_PLATFORM_VERSION",
        "VM_HVM_REQUIRED",
        "NETWORK_SRIOV_INSUFFICIENT_CAPACITY",
    }
)


class Fencer(Protocol):
    """Proves a host is off. Implementations: fencing backends, or trust-liveness."""

    async def fence(self, host: HostView) -> FenceDone: ...


async def _gone(host: HostView) -> str:
    return ""


class Executor:
    def __init__(
        self,
        xapi: Xapi,
        fencer: Fencer,
        *,
        view: Callable[[], PoolView],
        targets: Callable[[], Sequence[HostView]],
        now: Callable[[], float],
        concurrency: int,
        start_timeout: float | None = None,
        back: Callable[[HostView], Awaitable[str]] = _gone,
        may_fence: Callable[[], str] = lambda: "",
    ) -> None:
        self._xapi = xapi
        self._fencer = fencer
        self._back = back
        """Why a host is back ("" if it is still gone), asked before each fence retry."""
        self._may_fence = may_fence
        """Why this node may fence no host now ("" if it may), asked before every fence."""
        self._view = view
        self._targets = targets
        self._now = now
        self._starts = asyncio.Semaphore(concurrency)
        self._start_timeout = start_timeout

    async def perform(self, action: Action) -> Event:
        if isinstance(action, FenceHost):
            return await self._fence(action)
        if isinstance(action, ResetVm):
            return await self._reset(action)
        if isinstance(action, MeasureCapacity):
            return await self._capacity(action)
        return await self._start(action)

    async def _fence(self, action: FenceHost) -> FenceDone:
        host = self._view().hosts.get(action.host)
        if host is None:
            return FenceDone(self._now(), False, "none", "host is no longer in the pool database")
        if action.retry:
            # A waiting incident retries for as long as the host stays silent; one that came
            # back (a healed partition, a BMC that answers again) is healthy, and fencing it
            # would kill its VMs. The detector's BACK waits recover_hold_seconds; this may not.
            why = await self._back(host)
            if why:
                return FenceDone(self._now(), False, "none", why, returned=True)
        # Asked last, after any probe: quorum as of the fence itself, not of the tick that
        # opened the incident. A master whose side of a partition became the minority
        # within that tick fenced a host of the majority's side (golden scenario of chaos
        # seed 1000086, once two masters ranked by epoch): the attempt fails and is
        # retried, and its retry asks whether the host is back.
        refused = self._may_fence()
        if refused:
            return FenceDone(self._now(), False, "none", refused)
        return await self._fencer.fence(host)

    async def _reset(self, action: ResetVm) -> ResetDone:
        vm = self._view().vms.get(action.vm)
        if vm is None:
            # Gone from the database (destroyed): nothing left to reset.
            return ResetDone(self._now(), action.vm, True, "", "VM no longer exists")
        if vm.resident_on not in (None, action.host):
            # Started elsewhere meanwhile: resetting it would lie about a live domain.
            return ResetDone(self._now(), action.vm, True, "", "resident on another host now")
        try:
            await self._xapi.vm_power_state_reset(vm.ref)
        except XapiError as exc:
            return ResetDone(self._now(), action.vm, False, exc.code, " ".join(exc.params))
        except XapiUnreachable as exc:
            return ResetDone(self._now(), action.vm, False, "XAPI_UNREACHABLE", str(exc))
        return ResetDone(self._now(), action.vm, True)

    async def _capacity(self, action: MeasureCapacity) -> CapacityMeasured:
        hosts = [h for h in self._targets() if h.uuid != action.exclude]
        free = await asyncio.gather(
            *(self._free_memory(h) for h in hosts), return_exceptions=False
        )
        measured = tuple((h.uuid, m) for h, m in zip(hosts, free) if m is not None)
        view = self._view()
        # What every other host sees, and where each group's members run: placement's
        # inputs, journaled with the memory so a replay plans the same.
        sees = tuple(
            (h.uuid, tuple(sorted(h.srs)), tuple(sorted(h.networks)))
            for h in sorted(view.hosts.values(), key=lambda h: h.uuid)
            if h.uuid != action.exclude and h.srs is not None and h.networks is not None
        )
        grouped = tuple(sorted(
            (vm.group, vm.resident_on, vm.uuid) for vm in view.vms.values()
            if vm.group is not None and vm.resident_on is not None and vm.running
            and vm.resident_on != action.exclude
        ))
        labels = tuple(sorted(
            [*view.labels.items(), *((h.uuid, h.name) for h in view.hosts.values())]))
        return CapacityMeasured(self._now(), measured, sees, grouped, labels)

    async def _free_memory(self, host: HostView) -> int | None:
        try:
            return await self._xapi.host_compute_free_memory(host.ref)
        except (XapiError, XapiUnreachable):
            return None

    async def _start(self, action: StartVm) -> StartDone:
        view = self._view()
        vm = view.vms.get(action.vm)
        host = view.hosts.get(action.host)
        if vm is None:
            return StartDone(self._now(), action.vm, action.host, StartOutcome.FAILED,
                             "VM_GONE", "VM no longer exists")
        if host is None:
            return StartDone(self._now(), action.vm, action.host, StartOutcome.RETRY,
                             "HOST_GONE", "target host left the pool")
        async with self._starts:
            try:
                await self._xapi.vm_start_on(vm.ref, host.ref, timeout=self._start_timeout)
            except XapiError as exc:
                return StartDone(self._now(), action.vm, action.host, *_classify(exc))
            except XapiUnreachable as exc:
                outcome = StartOutcome.UNKNOWN if exc.sent else StartOutcome.RETRY
                return StartDone(self._now(), action.vm, action.host, outcome,
                                 "XAPI_UNREACHABLE", str(exc))
        return StartDone(self._now(), action.vm, action.host, StartOutcome.STARTED)


def _classify(exc: XapiError) -> tuple[StartOutcome, str, str]:
    detail = " ".join(exc.params)
    if exc.code == "VM_BAD_POWER_STATE":
        # [vm, expected, actual] (api_errors.ml): "running"/"paused" means it runs already.
        actual = exc.params[2].lower() if len(exc.params) > 2 else ""
        if actual in ("running", "paused"):
            return StartOutcome.ALREADY_RUNNING, exc.code, detail
        return StartOutcome.RETRY, exc.code, detail
    if exc.code in _RETRY_CODES:
        return StartOutcome.RETRY, exc.code, detail
    if exc.code in _HOST_REFUSALS:
        return StartOutcome.REFUSED, exc.code, detail
    return StartOutcome.FAILED, exc.code, detail
