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

DEFAULT_DAEMON = {
    "detector": {
        "interval": 0.5,
        "confirm_misses": 3,
        "confirm_seconds": 2.0,
        "recover_hold_seconds": 3.0,
        "probe_timeout": 0.4,
    },
    "recovery": {"retry_backoff": 0.5, "retry_backoff_max": 4.0, "concurrency": 4},
    "xapi": {"timeout": 2.0},
    "fencing": {"mode": "trust-liveness"},
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


@dataclass
class Testbed:
    spec: PoolSpec
    workdir: Path
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    daemon_hosts: tuple[str, ...] | None = None
    """Hosts that run a daemon (default: all)."""
    env: Mapping[str, str] = field(default_factory=dict)
    systemd: bool = False
    """Give each daemon a NOTIFY_SOCKET (and WATCHDOG_USEC) the way systemd would."""
    watchdog_seconds: float = 30.0

    def __post_init__(self) -> None:
        self.pool = SimPool(self.spec)
        self.daemons: dict[str, DaemonProcess] = {}
        self._info: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Testbed:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pool.__enter__()
        try:
            self._info = self.pool.info()
            for host in self._info["hosts"]:
                if self.daemon_hosts is None or host["name"] in self.daemon_hosts:
                    self.daemons[host["name"]] = self._prepare(host)
                    self.start_daemon(host["name"])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for name, d in list(self.daemons.items()):
            self.stop_daemon(name)
            if d.notify is not None:
                d.notify.close()
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
        doc["detector"].setdefault("probe_url", f"http://{{address}}:{port}/")
        doc["daemon"]["state_dir"] = str(state)
        return doc

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
        if d.proc is not None and d.proc.poll() is None:
            return
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            env.pop(var, None)
        if d.notify is not None:
            env["NOTIFY_SOCKET"] = str(d.notify.path)
            env["WATCHDOG_USEC"] = str(int(self.watchdog_seconds * 1_000_000))
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

    def kill_daemon(self, name: str) -> None:
        """SIGKILL: the daemon dies at whatever instant it is in."""
        d = self.daemons[name]
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)

    def stop_daemon(self, name: str, timeout: float = 20.0) -> int | None:
        d = self.daemons.get(name)
        if d is None or d.proc is None:
            return None
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
            self.kill_daemon(name)

    def boot(self, name: str) -> None:
        self.pool.boot(name)
        if name in self.daemons:
            self.start_daemon(name)

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
        """VM name -> names of the hosts its domain really runs on (the physical truth)."""
        truth = self.truth()
        hosts_by_uuid = {h["uuid"]: h["name"] for h in self._info["hosts"]}
        result: dict[str, list[str]] = {}
        for vm in truth["vms"]:
            result[vm["name"]] = sorted(hosts_by_uuid.get(h, h) for h in vm["running_on"])
        return result

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


def to_toml(doc: Mapping[str, Mapping[str, Any]]) -> str:
    """A config document as TOML (flat sections of strings, numbers and booleans)."""
    lines: list[str] = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


@contextlib.contextmanager
def testbed(spec: PoolSpec, workdir: Path, **kwargs: Any) -> Iterator[Testbed]:
    with Testbed(spec, workdir, **kwargs) as bed:
        yield bed
