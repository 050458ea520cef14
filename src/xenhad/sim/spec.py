"""PoolSpec: everything that decides what a simulated pool looks like and how it behaves."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class PoolSpec:
    hosts: int = 3
    vms: int = 8
    seed: int = 1
    time_scale: float = 1.0
    base_address: str = "127.0.0.2"
    """Host i (0-based) listens on base_address + i; 127.0.0.1 stays "the outside"."""
    base_dir: str | None = None
    """Where each host's UNIX socket lives (<base_dir>/hostN/xapi.sock); None: a temp dir."""
    root_password: str = "xenroot"
    pool_name: str = "simpool"
    templates: int = 2
    local_vms: int = 0
    """Protected VMs whose disk is on their host's local SR: no other host can start them."""
    groups: int = 0
    """Anti-affinity VM groups of two protected VMs, both seeded on one host."""
    # xapi's intervals (xapi_globs.ml), in sim seconds.
    host_heartbeat_interval: float = 30.0
    host_assumed_dead_interval: float = 600.0
    db_gc_interval: float = 30.0
    pool_db_sync_interval: float = 300.0
    fuse_seconds: float = 10.0
    """Xapi_fuse: emergency_transition_to_master restarts xapi this long after the call."""
    xapi_restart_seconds: float = 2.0
    """How long after emergency_reset_master / recover_slaves a slave's xapi is back."""
    boot_seconds: float = 60.0
    enable_after_boot_seconds: float = 5.0
    """A slave's Pool.hello sets enabled=false; consider_enabling_host re-enables it later."""
    vm_start_seconds: float = 2.0
    failed_login_seconds: float = 0.0
    """How long a master's xapi sleeps before it answers a failed session.login_with_password
    over the network. xapi sleeps 5 s (xapi_session.ml login_with_password,
    thread_delay_and_raise_error: "to avoid someone brute-forcing the password"), and a
    slave answers HOST_IS_SLAVE before any credential is checked. KINDER THAN XAPI at its
    default of 0: the daemon's probe (an empty-credential login) reads a master's answer
    at once here, where a real master's comes after the probe's timeout; with 5 s, the
    golden scenarios of two masters end with both still masters (docs/virtual-time.md,
    defect 12, open). It stays 0 by default until the probe tells a master without it."""
    host_memory: int = 256 * GiB
    dom0_memory: int = 4 * GiB
    host_memory_overhead: int = 1 * GiB
    ha_enabled: bool = False
    blackhole_cap_seconds: float = 60.0
    """Real seconds a black-holed request is held at most (it is never answered)."""
    idle_close_seconds: float = 43200.0
    """Real seconds after which a TCP connection to a host's xapi that carries nothing is
    closed. xapi never closes a kept-alive connection (http_svr.ml handle_connection reads
    the next request with no timeout); stunnel in front of it does, after TIMEOUTidle, which
    xapi's stunnel.conf leaves at stunnel's default of 12 h (xapi_stunnel_server.ml, stunnel
    src/options.c). Tests set it short to stand for a server that closes idle connections."""
    tls_cert: str | None = None
    tls_key: str | None = None
    """With both (PEM files): each host's TCP endpoint speaks TLS and its URL is https, as on a
    real host, where stunnel terminates TLS on 443 and hands each connection to xapi's port
    80 (xapi_stunnel_server.ml: accept 443, connect 80)."""

    def validate(self) -> None:
        """Raise ValueError with a one-line message naming the field and the fix."""
        if not 1 <= self.hosts <= 250:
            raise ValueError(f"hosts={self.hosts}: a pool has 1 to 250 hosts")
        if self.vms < 0:
            raise ValueError(f"vms={self.vms}: give zero or more VMs")
        if self.local_vms < 0 or self.groups < 0:
            raise ValueError("local_vms, groups: give zero or more")
        if self.idle_close_seconds <= 0:
            raise ValueError(f"idle_close_seconds={self.idle_close_seconds}: give a positive "
                             "number of seconds")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert, tls_key: give both (TLS) or neither (plain HTTP)")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale={self.time_scale}: give a positive factor")
        try:
            base = ipaddress.IPv4Address(self.base_address)
        except ValueError:
            raise ValueError(
                f"base_address={self.base_address!r}: give an IPv4 loopback address"
            ) from None
        last = ipaddress.IPv4Address(int(base) + self.hosts - 1)
        if not (base.is_loopback and last.is_loopback):
            raise ValueError(
                f"base_address={self.base_address!r}: hosts must stay in 127.0.0.0/8"
            )
        for name in ("host_heartbeat_interval", "host_assumed_dead_interval", "db_gc_interval",
                     "pool_db_sync_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: give a positive interval")
        guest = self.host_memory - self.dom0_memory - self.host_memory_overhead
        if guest <= 0:
            raise ValueError("host_memory: must exceed dom0_memory + host_memory_overhead")

    def address(self, index: int) -> str:
        return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address(self.base_address)) + index))
