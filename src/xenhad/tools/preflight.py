"""`xenhad preflight`: is this host ready to trust the pool to xenhad? Read-only.

One line per item, OK / FAIL / SKIP, and for each FAIL the fix. Exit status 1 on any FAIL.
Nothing is switched or armed: the watchdog device is never opened (opening arms it), each
BMC is asked for its power state only, XAPI is only read, and heartbeats are only listened
to (when this host's daemon runs, its status socket is asked instead: it holds the port).
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from xenhad import status as status_socket
from xenhad.clock import SystemClock
from xenhad.config import Config, load, read_peer_secret, resolve_host_uuid
from xenhad.errors import XenhadError
from xenhad.fencing import build_chain
from xenhad.fencing.base import FenceFailure, FenceOutcome
from xenhad.fencing.config import FencingMode, HostFencing, WatchdogMode
from xenhad.model import HostId, PoolView
from xenhad.monitor import read_snapshot
from xenhad.peers.heartbeat import HeartbeatError
from xenhad.peers.wire import Reader
from xenhad.tools.plan import candidate_targets, what_if
from xenhad.xapi import Xapi, XapiError, XapiUnreachable
from xenhad.xapi.connect import open_xapi

WATCHDOG_DRIVERS = ("xen_wdt", "ipmi_watchdog")


class Verdict(enum.Enum):
    OK = "OK"
    FAIL = "FAIL"
    SKIP = "SKIP"
    """Does not apply to this configuration (said why)."""


@dataclass(frozen=True)
class Check:
    item: str
    verdict: Verdict
    detail: str
    fix: str = ""


def ok(item: str, detail: str) -> Check:
    return Check(item, Verdict.OK, detail)


def fail(item: str, detail: str, fix: str) -> Check:
    return Check(item, Verdict.FAIL, detail, fix)


def render(checks: Sequence[Check]) -> str:
    width = max((len(c.item) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.verdict.value:<4}  {c.item:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    failed = sum(c.verdict is Verdict.FAIL for c in checks)
    lines.append(f"{failed} FAIL" if failed else "all OK: this host is ready")
    return "\n".join(lines)


def run_preflight(config_path: Path, *, listen: float | None = None, out: TextIO = sys.stdout,
                  sys_root: Path = Path("/sys")) -> int:
    checks = asyncio.run(preflight(config_path, listen=listen, sys_root=sys_root))
    print(render(checks), file=out)
    return 1 if any(c.verdict is Verdict.FAIL for c in checks) else 0


async def preflight(config_path: Path, *, listen: float | None = None,
                    sys_root: Path = Path("/sys")) -> list[Check]:
    try:
        config = load(config_path)
    except XenhadError as e:
        return [fail("config", str(e), f"edit {config_path}; `xenhad check-config` re-checks it")]
    checks = [ok("config", f"{config_path} is valid")]
    checks.append(watchdog_check(config, sys_root=sys_root))
    try:
        me = resolve_host_uuid(config)
    except XenhadError as e:
        return [*checks, fail("host", str(e), "see [host] in the example config")]

    try:
        xapi = await open_xapi(config)
    except (XapiUnreachable, XapiError) as e:
        checks.append(fail("xapi", f"cannot log in: {e}",
                           "is xapi running (systemctl status xapi)? check [xapi] url, socket "
                           "and password_file"))
        return checks
    try:
        snap = await read_snapshot(xapi, protection_key=config.recovery.protection_key,
                                   now=time.monotonic())
        view = snap.view
        checks.append(ok("xapi", f"answers: pool {view.pool_uuid or view.pool_ref}, "
                         f"{len(view.hosts)} hosts"))
        if me not in view.hosts:
            checks.append(fail("host", f"this host's uuid {me} is no host of the pool",
                               "set host.uuid to this host's uuid, or leave it empty on a dom0"))
            return checks
        checks.append(native_ha_check(view))
        checks.extend(await placement_checks(xapi, view))
    except (XapiUnreachable, XapiError) as e:
        checks.append(fail("xapi", f"reading the pool failed: {e}", "check xapi's health "
                           "(xe host-list) and [xapi] timeout"))
        return checks
    finally:
        await xapi.close()
    checks.append(await peers_check(config, view, me, listen=listen))
    checks.extend(await bmc_checks(config, view))
    return checks


# -- the items --------------------------------------------------------------------------


def watchdog_check(config: Config, *, sys_root: Path) -> Check:
    """The self-fencing device and its driver, without opening it (that would arm it)."""
    item = "watchdog"
    settings = config.fencing.self_fence
    enable = ('set fencing.self_fence = { watchdog = "/dev/watchdog", timeout = 60, '
              'margin = 15 } and `modprobe xen_wdt`')
    if settings is None:
        return fail(item, "self-fencing is off: a host whose BMC loses power with it is never "
                    "recovered", enable)
    if settings.mode is WatchdogMode.OFF or settings.watchdog == "none":
        return Check(item, Verdict.SKIP, "self-fencing is switched off in the config")
    if settings.watchdog == "sim":
        return ok(item, f"the simulator's watchdog at {settings.sim_control_url} (tests only)")
    device = Path(settings.watchdog)
    loaded = [d for d in WATCHDOG_DRIVERS if (sys_root / "module" / d).exists()]
    try:
        is_device = stat.S_ISCHR(os.stat(device).st_mode)
    except OSError as e:
        return fail(item, f"{device}: {e.strerror}",
                    "`modprobe xen_wdt` (Xen's watchdog; the package loads it at boot "
                    "through /usr/lib/modules-load.d/xenhad.conf), or `modprobe "
                    f"ipmi_watchdog timeout={settings.timeout}` for the BMC's")
    if not is_device:
        return fail(item, f"{device} is not a character device",
                    "point fencing.self_fence.watchdog at /dev/watchdog")
    if "ipmi_watchdog" in loaded:
        timeout = _read(sys_root / "module" / "ipmi_watchdog" / "parameters" / "timeout")
        if timeout is not None and timeout != str(settings.timeout):
            return fail(item, f"ipmi_watchdog counts {timeout} s, not the configured "
                        f"{settings.timeout} s (it lets no program set its timeout)",
                        f"options ipmi_watchdog timeout={settings.timeout} in "
                        "/etc/modprobe.d/xenhad.conf, then reload the module")
    driver = ", ".join(loaded) if loaded else "a driver other than xen_wdt or ipmi_watchdog"
    mode = "required" if settings.mode is WatchdogMode.REQUIRED else "automatic"
    return ok(item, f"{device} from {driver}, timeout {settings.timeout} s, mode {mode}")


def native_ha_check(view: PoolView) -> Check:
    if view.ha_enabled:
        return fail("native HA", "the pool's native HA is on: xenhad stays passive",
                    "xe pool-ha-disable (xenhad replaces it; never run both)")
    return ok("native HA", "off")


async def placement_checks(xapi: Xapi, view: PoolView) -> list[Check]:
    """For each host, whether its protected VMs would all find room on the others now."""
    free: dict[HostId, int | None] = {}

    async def one(host: HostId) -> None:
        try:
            free[host] = await xapi.host_compute_free_memory(view.hosts[host].ref)
        except (XapiError, XapiUnreachable):
            free[host] = None

    await asyncio.gather(*(one(h) for h in view.hosts))
    stuck: list[str] = []
    protected = 0
    for host in sorted(view.hosts.values(), key=lambda h: h.name):
        targets = {t.uuid: free.get(t.uuid) for t in candidate_targets(view, host)}
        plan = what_if(view, host, targets, [])
        protected += len(plan.restarts) + len(plan.not_placed)
        stuck.extend(f"{n.name} (of {host.name}: {n.reason})" for n in plan.not_placed)
    if stuck:
        return [fail("placement", f"{len(stuck)} protected VMs could not restart elsewhere: "
                     + "; ".join(stuck[:5]) + (" ..." if len(stuck) > 5 else ""),
                     "`xenhad plan HOST` shows why; free memory, enable hosts, or lower "
                     "those VMs' protection")]
    return [ok("placement", f"every protected VM ({protected}) can run on another host")]


async def peers_check(config: Config, view: PoolView, me: HostId, *,
                      listen: float | None) -> Check:
    item = "peers"
    peers = config.peers
    if not peers.enabled:
        return fail(item, "heartbeats are off: no quorum of daemons, no self-fencing, no "
                    "failover of the master", "create the pool secret (docs/DEPLOYMENT.md) and "
                    "set peers.secret_file on every host")
    try:
        secret = read_peer_secret(config).encode()
    except XenhadError as e:
        return fail(item, str(e), "fix the pool secret file (root-only, the same on every host)")
    others = {h for h in view.hosts if h != me}
    if not others:
        return ok(item, "a pool of one host: nobody to hear")
    names = {h: view.hosts[h].name for h in view.hosts}
    heard, strangers = await _heartbeats(config, secret, me, listen)
    if heard is None:
        return fail(item, strangers[0], strangers[1])
    silent = sorted(names[h] for h in others - heard)
    if not silent:
        return ok(item, f"heartbeats heard from every other host ({len(others)}), "
                  "with this pool's secret")
    why = f"no heartbeat from {', '.join(silent)} on UDP {peers.port}"
    if strangers:
        why += f"; {len(strangers)} datagrams failed the pool secret ({strangers[0]})"
    return fail(item, why, f"start xenhad on those hosts with the same secret file, and open UDP "
                f"{peers.port} between the hosts' management addresses (iptables on 8.x, "
                "firewalld on 9: docs/DEPLOYMENT.md)")


async def _heartbeats(config: Config, secret: bytes, me: HostId, listen: float | None
                      ) -> tuple[set[HostId] | None, list[str]]:
    """Who was heard: from this host's running daemon, or by listening on the peers port.
    (None, [why, fix]) when neither can be done."""
    try:
        doc = status_socket.query(status_socket.socket_path(Path(config.daemon.state_dir)),
                                  timeout=3.0)
    except XenhadError:
        doc = None
    if doc is not None:
        return {_uuid(h) for h in doc.get("hosts", []) if h.get("peer") in ("mutual", "heard")}, []
    port = config.peers.listen_port or config.peers.port
    address = config.xapi.source_address or "0.0.0.0"
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((address, port))
    except OSError as e:
        sock.close()
        return None, [f"cannot listen on UDP {address}:{port}: {e.strerror}",
                      "stop whatever holds the port, or run preflight where xenhad's status "
                      "socket answers (same daemon.state_dir)"]
    heard: set[HostId] = set()
    reader = Reader()
    strangers: list[str] = []
    deadline = time.monotonic() + (listen if listen is not None else config.peers.window)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), left)
            except asyncio.TimeoutError:
                break
            try:
                beat = reader.decode(data, secret)
            except HeartbeatError as e:
                strangers.append(f"{addr[0]}: {e}")
                continue
            if beat.sender != me:
                heard.add(beat.sender)
    finally:
        sock.close()
    return heard, strangers


def _uuid(host: Mapping[str, Any]) -> HostId:
    return HostId(str(host.get("uuid", "")))


async def bmc_checks(config: Config, view: PoolView) -> list[Check]:
    """Each configured backend reads its host's power state: reachable, credentials valid.
    Nothing is switched."""
    fencing = config.fencing
    if fencing.mode is FencingMode.TRUST_LIVENESS:
        return [fail("fencing", "fencing.mode is trust-liveness: VMs are restarted on XAPI's "
                     "word alone, and a host that is only cut off runs them twice",
                     'set fencing.mode = "required" and a [[fencing.hosts]] chain per host')]
    checks = []
    configured = {e.host for e in fencing.hosts}
    for host in sorted(view.hosts.values(), key=lambda h: h.name):
        if host.name not in configured and host.uuid not in configured:
            checks.append(fail(f"bmc {host.name}", "no [[fencing.hosts]] entry: its VMs are "
                               "never restarted unless its self-fence deadline proves it off",
                               f'add [[fencing.hosts]] host = "{host.name}" with a chain'))
    results = await asyncio.gather(*(_bmc(entry) for entry in fencing.hosts))
    for found in results:
        checks.extend(found)
    return checks


async def _bmc(entry: HostFencing) -> list[Check]:
    chain = build_chain(entry, clock=SystemClock())
    checks = []
    for backend in chain.backends:
        item = f"bmc {entry.host} {backend.name}"
        try:
            power = await backend.check_status()
        except FenceFailure as e:
            checks.append(fail(item, f"{backend.bmc}: {e.reason}", _BMC_FIX.get(
                e.outcome, "check the backend's settings in [[fencing.hosts]]")))
            continue
        checks.append(ok(item, f"{backend.bmc} answers: power {power.value}"))
    return checks


_BMC_FIX = {
    FenceOutcome.UNREACHABLE: "check the BMC's address and that this host reaches it "
    "(management network, firewall)",
    FenceOutcome.AUTH_FAILED: "check username and password_file (a BMC account with the "
    "power-control role)",
    FenceOutcome.ERROR: "check the URL, TLS (ca_file) or the agent's options",
}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
