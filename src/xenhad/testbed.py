"""A simulated pool with one real xenhad process per host, as on real dom0s.

The demo, the integration tests and the chaos runs all stand on this: it starts the XAPI
simulator, writes each host's config (its local socket, its uuid, its source address),
runs `xenhad run` for each host as a separate process, and ties the two worlds together:
a crashed host's daemon dies with it (its dom0 is gone), a booted host gets its daemon back.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xenhad.log import LogLine, parse_line
from xenhad.sim import PoolSpec, SimPool
from xenhad.sim.bmc import BmcFarm
from xenhad.sim.ipmi_farm import IpmiFarm
from xenhad.sim.relay import HeartbeatRelay

DEFAULT_DAEMON: dict[str, dict[str, Any]] = {
    "detector": {
        "interval": 0.5,
        "confirm_misses": 3,
        "confirm_seconds": 2.0,
        "recover_hold_seconds": 3.0,
        "probe_timeout": 0.4,
    },
    "recovery": {"retry_backoff": 0.5, "retry_backoff_max": 4.0, "concurrency": 4},
    "xapi": {"timeout": 2.0},
    "daemon": {"log_format": "json", "log_level": "info"},
}


class NotifyListener:
    """Stands for systemd: a datagram socket a daemon sends READY/STATUS/WATCHDOG to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._read, name=f"notify-{path.name}",
                                        daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            for item in data.decode(errors="replace").split("\n"):
                if item:
                    self.messages.append((time.monotonic(), item))

    def seen(self, prefix: str, since: float = 0.0) -> list[str]:
        return [m for t, m in list(self.messages) if t >= since and m.startswith(prefix)]

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=2)
        self._sock.close()


@dataclass
class DaemonProcess:
    host: str
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    notify: NotifyListener | None = None
    wanted: bool = True
    """The test wants this daemon running whenever its host is up (systemd would)."""
    boot: int | None = None
    """The host's boot count when this daemon started: a daemon outlives no reboot."""


@dataclass
class Testbed:
    __test__ = False  # not a pytest test class, whatever its name says

    spec: PoolSpec
    workdir: Path
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    daemon_hosts: tuple[str, ...] | None = None
    """Hosts that run a daemon (default: all)."""
    env: Mapping[str, str] = field(default_factory=dict)
    fencing: str = "redfish"
    """How daemons fence: "redfish" (each host's simulated Redfish BMC, the default),
    "ipmi" (each host's IPMI BMC, xenhad's own IPMI backend), "agent" (Debian's
    fence_ipmilan against the same IPMI BMCs), "none" (no backend: incidents wait), or
    "trust-liveness" (unsafe, XAPI's word)."""
    peers: bool = True
    """Daemons exchange heartbeats through the simulator's relay (partitions apply)."""
    self_fence: bool = False
    """Each daemon holds its host's simulated watchdog; peers trust its deadline."""
    watchdog_timeout: int = 6
    self_fence_margin: float = 2.0
    systemd: bool = False
    """Give each daemon a NOTIFY_SOCKET (and WATCHDOG_USEC) the way systemd would."""
    watchdog_seconds: float = 30.0

    def __post_init__(self) -> None:
        self.pool = SimPool(self.spec)
        self.bmcs: BmcFarm | None = None
        self.ipmi: IpmiFarm | None = None
        self.relay: HeartbeatRelay | None = None
        self.daemons: dict[str, DaemonProcess] = {}
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()
        self._info: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Testbed:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pool.__enter__()
        try:
            self._info = self.pool.info()
            if self.peers:
                addresses = [h["address"] for h in self._info["hosts"]]
                self._listen_port = _free_udp_port(addresses)
                self.relay = HeartbeatRelay(self.pool, listen_port=self._listen_port)
                secret = self.workdir / "pool-secret"
                secret.write_text(secrets.token_hex(32) + "\n")
                secret.chmod(0o600)
            if self.fencing == "redfish":
                self.bmcs = BmcFarm(self.pool)
                secret = self.workdir / "bmc-password"
                secret.write_text(self.bmcs.password + "\n")
                secret.chmod(0o600)
            if self.fencing in ("ipmi", "agent"):
                self.ipmi = IpmiFarm(self.pool, self._info["control_url"], self.workdir)
            for host in self._info["hosts"]:
                if self.daemon_hosts is None or host["name"] in self.daemon_hosts:
                    self.daemons[host["name"]] = self._prepare(host)
                    self.start_daemon(host["name"])
            self._watcher = threading.Thread(target=self._watch_power, name="testbed-power",
                                             daemon=True)
            self._watcher.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        # Every daemon is told to stop first, then each is waited for: one at a time, a
        # 64-host pool took minutes (a daemon's stop waits for an XAPI call in flight).
        for d in self.daemons.values():
            d.wanted = False
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
        for name, d in list(self.daemons.items()):
            self.stop_daemon(name)
            if d.notify is not None:
                d.notify.close()
        if self.bmcs is not None:
            self.bmcs.close()
        if self.ipmi is not None:
            self.ipmi.close()
        if self.relay is not None:
            self.relay.close()
        self.pool.__exit__(None, None, None)

    @property
    def info(self) -> dict[str, Any]:
        return self._info

    def host(self, name: str) -> dict[str, Any]:
        for host in self._info["hosts"]:
            if name in (host["name"], host["uuid"]):
                return dict(host)
        raise KeyError(name)

    def config_for(self, name: str) -> dict[str, Any]:
        host = self.host(name)
        state = self.workdir / name / "state"
        doc: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULT_DAEMON.items()}
        for section, values in self.overrides.items():
            doc.setdefault(section, {}).update(values)
        doc.setdefault("host", {})["uuid"] = host["uuid"]
        doc["xapi"].update({"socket": host["socket"], "source_address": host["address"]})
        port = host["url"].rsplit(":", 1)[1].rstrip("/")
        doc["detector"].setdefault("probe_url", f"{self.pool.scheme}://{{address}}:{port}/")
        doc["daemon"]["state_dir"] = str(state)
        if self.relay is not None:
            peers = doc.setdefault("peers", {})
            peers.update({
                "secret_file": str(self.workdir / "pool-secret"),
                "port": self.relay.port,
                "listen_port": self._listen_port,
            })
            # The overrides' timings win (the benchmarks' production intervals).
            peers.setdefault("interval", 0.5)
            peers.setdefault("window", 2.0)
        fencing = doc.setdefault("fencing", {})
        if self.self_fence:
            fencing.setdefault("self_fence", {
                "watchdog": "sim",
                "timeout": self.watchdog_timeout,
                "margin": self.self_fence_margin,
                "mode": "required",
                "sim_control_url": self._info["control_url"],
            })
        if self.fencing == "trust-liveness":
            fencing.setdefault("mode", "trust-liveness")
        elif self.fencing == "redfish" and self.bmcs is not None:
            fencing.setdefault("hosts", [
                {
                    "host": h["name"],
                    "chain": ["redfish"],
                    "redfish": {
                        "url": self.bmcs.url(h["name"]),
                        "username": self.bmcs.username,
                        "password_file": str(self.workdir / "bmc-password"),
                        "request_timeout": 2.0,
                        "off_timeout": 5.0,
                        "poll_interval": 0.3,
                    },
                }
                for h in self._info["hosts"]
            ])
        elif self.fencing in ("ipmi", "agent") and self.ipmi is not None:
            fencing.setdefault("hosts", [
                self._ipmi_entry(h["name"]) for h in self._info["hosts"]
            ])
        return doc

    def _ipmi_entry(self, name: str) -> dict[str, Any]:
        assert self.ipmi is not None
        address, port = self.ipmi.address(name), self.ipmi.ports[name]
        timings = {"off_timeout": 5.0, "poll_interval": 0.3}
        if self.fencing == "ipmi":
            return {"host": name, "chain": ["ipmi"], "ipmi": {
                "address": address, "port": port, "username": self.ipmi.username,
                "password_file": str(self.ipmi.password_file), "request_timeout": 2.0,
                **timings,
            }}
        return {"host": name, "chain": ["agent"], "agent": {
            "command": "fence_ipmilan",
            "options": {"ip": address, "ipport": str(port), "username": self.ipmi.username,
                        "lanplus": "1"},
            "password_file": str(self.ipmi.password_file), "timeout": 20.0, **timings,
        }}

    def _prepare(self, host: Mapping[str, Any]) -> DaemonProcess:
        hostdir = self.workdir / host["name"]
        hostdir.mkdir(parents=True, exist_ok=True)
        config = hostdir / "xenhad.toml"
        config.write_text(to_toml(self.config_for(host["name"])))
        notify = NotifyListener(hostdir / "notify.sock") if self.systemd else None
        return DaemonProcess(host=host["name"], config=config, log=hostdir / "daemon.log",
                             notify=notify)

    def write_config(self, name: str, text: str) -> None:
        self.daemons[name].config.write_text(text)

    # -- daemons -----------------------------------------------------------------------

    def start_daemon(self, name: str) -> None:
        d = self.daemons[name]
        d.wanted = True
        if d.proc is not None and d.proc.poll() is None:
            return
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            env.pop(var, None)
        if d.notify is not None:
            env["NOTIFY_SOCKET"] = str(d.notify.path)
            env["WATCHDOG_USEC"] = str(int(self.watchdog_seconds * 1_000_000))
        with contextlib.suppress(Exception):  # the watcher then learns it at its next look
            d.boot = int(self.pool.truth()["hosts"][name]["boots"])
        with open(d.log, "ab") as out:
            d.proc = subprocess.Popen(
                [sys.executable, "-m", "xenhad", "run", "--config", str(d.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
            )
        d.starts += 1

    def signal_daemon(self, name: str, sig: int) -> None:
        proc = self.daemons[name].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def kill_daemon(self, name: str, *, respawn: bool = False) -> None:
        """SIGKILL: the daemon dies at whatever instant it is in."""
        d = self.daemons[name]
        d.wanted = respawn
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)

    def stop_daemon(self, name: str, timeout: float = 20.0) -> int | None:
        d = self.daemons.get(name)
        if d is None or d.proc is None:
            return None
        d.wanted = False
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
            try:
                d.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait(timeout=10)
        return d.proc.returncode

    def daemon_alive(self, name: str) -> bool:
        d = self.daemons.get(name)
        return d is not None and d.proc is not None and d.proc.poll() is None

    # -- physical faults that take the dom0 (and so its daemon) with them --------------

    def crash(self, name: str) -> None:
        self.pool.crash(name)
        if name in self.daemons:
            self.kill_daemon(name, respawn=True)

    def _watch_power(self) -> None:
        """A daemon lives in its host's dom0: it dies with the power (a BMC's ForceOff, a
        watchdog reset) and comes back when the host has booted and its xapi is up."""
        while not self._closing.wait(0.2):
            try:
                hosts = self.pool.truth()["hosts"]
            except Exception:
                continue
            for name, d in self.daemons.items():
                state = hosts.get(name, {})
                alive = d.proc is not None and d.proc.poll() is None
                # A reset that powered the host off and on between two looks still killed
                # dom0: the boot count says so.
                rebooted = d.boot is not None and state.get("boots", d.boot) != d.boot
                if alive and (not state.get("powered", True) or rebooted):
                    d.proc.kill()  # type: ignore[union-attr]
                    d.proc.wait(timeout=10)  # type: ignore[union-attr]
                elif (not alive and d.wanted and state.get("powered")
                      and state.get("xapi") == "up" and not self._closing.is_set()):
                    self.start_daemon(name)

    def power_loss(self, name: str) -> None:
        """Mains power gone: the host and its BMC go dark together."""
        if self.bmcs is not None or self.ipmi is not None:
            self.bmc_mode(name, "down")
        self.crash(name)

    def bmc_mode(self, name: str, mode: str) -> None:
        """A fault of `name`'s BMC: "ok", "down", "ignore-off" (and "hang" for Redfish)."""
        if self.bmcs is not None:
            self.bmcs.set_mode(name, mode)
        elif self.ipmi is not None:
            self.ipmi.set_mode(name, mode)
        else:
            raise AssertionError(f"this testbed has no BMCs (fencing = {self.fencing})")

    def boot(self, name: str) -> None:
        """Power on; the daemon comes back once the host's xapi is up (see _watch_power)."""
        self.pool.boot(name)

    # -- reading what happened ---------------------------------------------------------

    def events(self, name: str | None = None) -> list[tuple[str, LogLine]]:
        """Every structured log line of one daemon (or all), in file order per host."""
        names = [name] if name else list(self.daemons)
        found: list[tuple[str, LogLine]] = []
        for n in names:
            path = self.daemons[n].log
            if not path.exists():
                continue
            for raw in path.read_text(errors="replace").splitlines():
                line = parse_line(raw)
                if line is not None:
                    found.append((n, line))
        return found

    def events_named(self, event: str, name: str | None = None) -> list[tuple[str, LogLine]]:
        return [(n, e) for n, e in self.events(name) if e.event == event]

    def events_named_any(self, events: Collection[str]) -> list[tuple[str, LogLine]]:
        return [(n, e) for n, e in self.events() if e.event in events]

    def truth(self) -> dict[str, Any]:
        return self.pool.truth()

    def vm_hosts(self) -> dict[str, list[str]]:
        """Guest VM name -> names of the hosts its domain really runs on (physical truth)."""
        return {
            vm["name"]: sorted(vm["hosts"])
            for vm in self.truth()["vms"]
            if not vm.get("control_domain")
        }

    def xapi(self) -> Any:
        """A XenAPI session to the current master, from the outside (no partition applies)."""
        import XenAPI

        info = self.pool.info()
        master = next(h for h in info["hosts"] if h["uuid"] == info["master"])
        session = XenAPI.Session(master["url"])
        session.xenapi.login_with_password("root", info["root_password"], "1.0", "testbed")
        return session

    def vm_records(self) -> dict[str, dict[str, Any]]:
        """Guest VM name -> what XAPI (the master's database) says of it."""
        session = self.xapi()
        try:
            names = {ref: rec["name_label"]
                     for ref, rec in session.xenapi.host.get_all_records().items()}
            result = {}
            for rec in session.xenapi.VM.get_all_records().values():
                if rec["is_control_domain"] or rec["is_a_template"] or rec["is_a_snapshot"]:
                    continue
                result[rec["name_label"]] = {
                    "power_state": rec["power_state"],
                    "resident_on": names.get(rec["resident_on"]),
                    "protection": rec["other_config"].get("xenhad")
                    or rec["ha_restart_priority"] or "off",
                }
            return result
        finally:
            session.xenapi.session.logout()

    def set_host_enabled(self, name: str, enabled: bool) -> None:
        session = self.xapi()
        try:
            ref = session.xenapi.host.get_by_uuid(self.host(name)["uuid"])
            if enabled:
                session.xenapi.host.enable(ref)
            else:
                session.xenapi.host.disable(ref)
        finally:
            session.xenapi.session.logout()

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float, *, what: str, step: float = 0.2
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(step)
        raise TimeoutError(f"waited {timeout:.0f}s for {what}")

    def dump_logs(self) -> str:
        """Every daemon's log, for a failing test's output."""
        parts = []
        for n, d in self.daemons.items():
            with contextlib.suppress(OSError):
                parts.append(f"===== {n} ({d.log})\n{d.log.read_text(errors='replace')[-20000:]}")
        return "\n".join(parts)


def _free_udp_port(addresses: list[str]) -> int:
    """A UDP port free on every one of these addresses (daemons listen on it)."""
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((addresses[0], 0))
        port = int(probe.getsockname()[1])
        taken = [probe]
        try:
            for address in addresses[1:]:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                taken.append(s)
                s.bind((address, port))
            return port
        except OSError:
            continue
        finally:
            for s in taken:
                s.close()
    raise RuntimeError("no UDP port is free on every host address")


def to_toml(doc: Mapping[str, Mapping[str, Any]]) -> str:
    """A config document as TOML: sections of scalars and inline tables, plus arrays of
    tables (a list of dicts under a key, such as fencing.hosts)."""
    lines: list[str] = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        arrays = {k: v for k, v in values.items() if _is_table_list(v)}
        for key, value in values.items():
            if key not in arrays:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
        for key, tables in arrays.items():
            for table in tables:
                lines.append(f"[[{section}.{key}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
                lines.append("")
    return "\n".join(lines)


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


@contextlib.contextmanager
def testbed(spec: PoolSpec, workdir: Path, **kwargs: Any) -> Iterator[Testbed]:
    with Testbed(spec, workdir, **kwargs) as bed:
        yield bed
