"""The bundle in an empty chroot: nothing of the host's userland, only the unpacked tarball,
/proc, /dev/null and /tmp, as a stand-in for a dom0 whose glibc and python it must not use.

The simulated pool runs outside, from the venv; the bundled daemon reaches it as on a dom0:
its host's xapi through a UNIX socket (placed under the chroot), the other hosts and the
BMCs over loopback TCP.
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from bundle_env import Chroot, clean_env

from xenhad.log import LogLine, parse_line
from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed, to_toml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_version_check_config_and_preflight_run_from_nothing_but_the_bundle(chroot: Chroot) -> None:
    version = chroot.run("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("xenhad ")

    config = chroot.path("/tmp/check.toml")
    config.write_text('[host]\nuuid = "0b5c62b4-5f6c-4a55-9a33-6d7a2e7d4c11"\n')
    good = chroot.run("check-config", "/tmp/check.toml")
    assert good.returncode == 0, good.stderr
    # preflight, from the bundle too: no xapi in the chroot, so a FAIL line and exit 1.
    preflight = chroot.run("preflight", "--config", "/tmp/check.toml", "--listen", "0")
    assert preflight.returncode == 1, preflight.stderr
    assert "OK    config" in preflight.stdout and "FAIL  xapi" in preflight.stdout

    config.write_text("[detector]\ninterval = -1\n")
    bad = chroot.run("check-config", "/tmp/check.toml")
    assert bad.returncode != 0
    assert "detector.interval" in bad.stderr


def test_every_compiled_module_loads_from_the_bundle(chroot: Chroot) -> None:
    # What a daemon may import late (IPMI fencing imports pyghmi and cryptography at the
    # first fence): a library missing from the bundle would fail here, where the host's
    # /lib64 does not exist, not in the middle of an incident.
    modules = ["ssl", "hashlib", "ctypes", "lzma", "bz2", "zlib", "uuid", "decimal",
               "_asyncio", "orjson", "_cffi_backend", "cryptography.hazmat.bindings._rust",
               "pyghmi.ipmi.command", "XenAPI", "sdnotify", "prometheus_client",
               "xenhad.daemon", "xenhad.fencing.ipmi", "xenhad.fencing.redfish"]
    code = f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint('ok')"
    result = subprocess.run(["chroot", str(chroot.root), "/opt/xenhad/bin/python3", "-I",
                             "-c", code], capture_output=True, text=True, env=clean_env(),
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_bundled_daemon_as_master_recovers_a_crashed_slave(chroot: Chroot) -> None:
    with _pool(chroot, "crash") as bed, BundledDaemon(chroot, bed, "host1") as daemon:
        daemon.wait_for_event("daemon.ready", 30)
        records, hosts = bed.vm_records(), bed.vm_hosts()
        protected = sorted(vm for vm, rec in records.items()
                           if hosts.get(vm) == ["host2"] and rec["protection"] != "off")
        assert protected, "the seed should put protected VMs on host2"

        bed.crash("host2")

        def back() -> bool:
            now = bed.vm_hosts()
            return all(now.get(vm) and "host2" not in now[vm] for vm in protected)

        bed.wait_for(back, 60, what=f"{protected} running again")
        bed.wait_for(lambda: bool(daemon.events("incident.closed")), 30,
                     what="the incident to close")
        assert bed.pool.double_runs() == []
        (closed,) = daemon.events("incident.closed")
        assert closed.fields["phase"] == "done"
        assert set(closed.fields["restarted"]) == set(protected)


def test_the_bundled_daemon_speaks_to_systemd_from_its_main_pid(chroot: Chroot) -> None:
    with _pool(chroot, "signals") as bed, BundledDaemon(chroot, bed, "host1") as daemon:
        pid = daemon.proc.pid  # the launcher execs the interpreter: one process
        daemon.notify.wait_for("READY=1", pid, 30)
        daemon.notify.wait_for("WATCHDOG=1", pid, 10)
        assert daemon.notify.senders() == {pid}, "only the main PID may notify"

        good = daemon.config.read_text()
        daemon.config.write_text(good + "\n[detector\n")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for_event("config.reload_refused", 15)
        assert daemon.proc.poll() is None, "a bad file must not stop the daemon"

        daemon.config.write_text(good)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for_event("config.reloaded", 15)
        daemon.notify.wait_for("RELOADING=1", pid, 5)

        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0
        assert daemon.notify.seen("STOPPING=1", pid)


# -- the bundled daemon -------------------------------------------------------------------


class _pool:
    """A simulated pool, its sockets and files under the chroot, no daemon of the venv's.
    Without heartbeats: quorum comes from probing each host's xapi."""

    def __init__(self, chroot: Chroot, name: str) -> None:
        spec = PoolSpec(hosts=3, vms=9, seed=3, vm_start_seconds=0.5,
                        base_dir=str(chroot.path(f"/tmp/{name}-sim")))
        self.bed = Testbed(spec, chroot.path(f"/tmp/{name}"), daemon_hosts=(), peers=False)

    def __enter__(self) -> Testbed:
        return self.bed.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.bed.__exit__(*exc)


class NotifyListener:
    """Stands for systemd's notify socket, with the sender's credentials of each datagram
    (SO_PASSCRED), as systemd checks NotifyAccess=main against them."""

    def __init__(self, path: Path) -> None:
        self.messages: list[tuple[int, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        creds = struct.calcsize("3i")
        while not self._closed:
            try:
                data, ancdata, _, _ = self._sock.recvmsg(65536, socket.CMSG_SPACE(creds))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:creds])[0]
            for item in data.decode(errors="replace").split("\n"):
                if item:
                    self.messages.append((pid, item))

    def seen(self, prefix: str, pid: int) -> bool:
        return any(p == pid and m.startswith(prefix) for p, m in list(self.messages))

    def senders(self) -> set[int]:
        return {p for p, _ in list(self.messages)}

    def wait_for(self, prefix: str, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.seen(prefix, pid):
                return
            time.sleep(0.1)
        raise AssertionError(f"no {prefix} from pid {pid} within {timeout}s: "
                             f"{self.messages[-10:]}")

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=2)
        self._sock.close()


class BundledDaemon:
    """`/opt/xenhad/bin/xenhad run` inside the chroot, configured as the testbed would
    configure the venv's daemon for that host, with a NOTIFY_SOCKET and WATCHDOG_USEC as
    systemd gives them."""

    def __init__(self, chroot: Chroot, bed: Testbed, host: str) -> None:
        self.chroot = chroot
        hostdir = bed.workdir / host
        hostdir.mkdir(parents=True, exist_ok=True)
        self.config = hostdir / "xenhad.toml"
        self.config.write_text(to_toml(_inside(chroot, bed.config_for(host))))
        self.log = hostdir / "daemon.log"
        self.notify = NotifyListener(hostdir / "notify.sock")
        env = {**clean_env(), "NOTIFY_SOCKET": chroot.inside(hostdir / "notify.sock"),
               "WATCHDOG_USEC": "30000000"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                chroot.command("run", "--config", chroot.inside(self.config)),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)

    def __enter__(self) -> BundledDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.notify.close()
        if exc[0] is not None:
            print(self.log.read_text(errors="replace")[-20000:])

    def lines(self) -> Iterator[LogLine]:
        for raw in self.log.read_text(errors="replace").splitlines():
            line = parse_line(raw)
            if line is not None:
                yield line

    def events(self, name: str) -> list[LogLine]:
        return [line for line in self.lines() if line.event == name]

    def wait_for_event(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.events(name):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"the bundled daemon logged no {name} (exit {self.proc.poll()}):"
                             f"\n{self.log.read_text(errors='replace')[-5000:]}")


def _inside(chroot: Chroot, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The testbed's config with every path under the chroot given by its name inside."""
    root = str(chroot.root)

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(root + "/"):
            return chroot.inside(value)
        if isinstance(value, Mapping):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return {section: fix(values) for section, values in doc.items()}
