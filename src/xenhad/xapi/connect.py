"""From the `[xapi]` configuration to a logged-in `Xapi`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xenhad.clock import Clock
from xenhad.config import Config, read_xapi_password
from xenhad.xapi.client import Xapi

UNREAD = frozenset({
    # VM: the whole record again as it booted, an XML document of limits.
    "last_booted_record", "recommendations",
    # Lists naming other objects, each as big as the pool: a host's resident VMs, an SR's
    # VDIs (a shared SR's are every disk of the pool), a VM's VBDs and VIFs, a VDI's VBDs.
    # xenhad links them the other way round (a VBD names its VM and VDI: monitor.FIELDS).
    "resident_VMs", "VDIs", "VBDs", "VIFs", "PBDs", "PIFs", "VGPUs", "consoles",
    "crash_dumps", "snapshots",
    # Per-object maps and lists nothing of xenhad reads.
    "allowed_operations", "blocked_operations", "xenstore_data", "platform",
    "HVM_boot_params", "bios_strings", "NVRAM", "snapshot_info", "VCPUs_params",
    "sm_config", "device_config", "runtime_properties", "qos_algorithm_params",
    "qos_supported_algorithms", "tags", "blobs", "cpu_info", "capabilities",
    "software_version", "power_on_config",
})
"""Fields no part of xenhad reads, dropped as replies are parsed, whatever the record: a
1,000-VM pool's full read is megabytes of them, and parsed whole its peak stayed in the
daemon's resident size (bench/RESULTS.md, 2026-12-07). The name is matched at any depth,
so only names nobody reads anywhere belong here (tests/xapi/test_xapi_sim.py checks that
no source file but the simulator's names one)."""


def xapi_from_config(config: Config, *, clock: Clock | None = None,
                     make: Callable[..., Xapi] = Xapi,
                     password: str | None = None) -> Xapi:
    """The facade the configuration describes, not yet logged in.

    The password is read here (CredentialError, one line, if it cannot be), unless given,
    and handed to the facade only; it is never logged. `make` builds the facade from
    Xapi's arguments (in process: xenhad.virtual.xapi.InProcessXapi over a World).
    """
    x = config.xapi
    endpoint = str(x.socket_path) if x.scheme == "unix" else x.url
    if password is None:
        password = read_xapi_password(config) if x.needs_password else ""
    retry: dict[str, Any] = {}
    # The retry knobs are optional in the config schema; the facade's defaults stand in
    # for any the schema does not (yet) have.
    for name in ("retry_attempts", "retry_backoff", "retry_backoff_max"):
        if hasattr(x, name):
            retry[name] = getattr(x, name)
    return make(
        endpoint,
        workers=call_threads(config.recovery.concurrency),
        username=x.username,
        password=password,
        source_address=x.source_address or None,
        ca_file=str(x.ca_file) if x.ca_file is not None else None,
        verify_tls=x.verify_tls,
        timeout=x.timeout,
        clock=clock,
        unread=UNREAD,
        **retry,
    )


READ_THREADS = 4
"""XAPI calls that watch the pool (reads, event.from, resets, the lock) can always run."""

INCIDENTS_AT_ONCE = 4
"""Incidents whose starts are sized for; more share the threads (and wait for them)."""


def call_threads(concurrency: int) -> int:
    """Threads for XAPI calls: a VM.start holds one for the whole boot, start_delay
    included, so recovery.concurrency starts in each of a few incidents must leave threads
    for the reads that watch the pool. With 4 threads for everything, a 64-host crash's
    starts went 4 at a time whatever recovery.concurrency said, and while 4 ran the pool
    was not read. Threads are made as calls need them: at rest there are one or two."""
    return READ_THREADS + INCIDENTS_AT_ONCE * concurrency


async def open_xapi(config: Config, *, clock: Clock | None = None, local: bool = False) -> Xapi:
    """A logged-in facade. `local` uses slave_local_login_with_password (see Xapi).

    On failure the facade is closed and the error (XapiUnreachable, XapiAuthError, ...)
    raised.
    """
    return await log_in(xapi_from_config(config, clock=clock), local=local)


async def log_in(xapi: Xapi, *, local: bool = False) -> Xapi:
    """`xapi` logged in (see open_xapi), or closed and the error raised."""
    try:
        if local:
            await xapi.login_local()
        else:
            await xapi.login()
    except BaseException:
        await xapi.close()
        raise
    return xapi
