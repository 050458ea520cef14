"""An IPMI BMC for every simulated host: one `xenhad.sim.ipmi_bmc` process each.

pyghmi's BMC server keeps process-wide state, so each BMC is its own process, bound to its
host's address. Like the Redfish farm (bmc.py), the BMCs read and switch the simulator's
physical power, here through its control API. Faults: "ok", "down" (the process is gone:
datagrams go unanswered, as when the BMC lost power with its host), and "ignore-off"
(power off is accepted and nothing happens).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from xenhad.sim.pool import SimPool

MODES = ("ok", "down", "ignore-off")


class IpmiFarm:
    def __init__(
        self,
        pool: SimPool,
        control_url: str,
        workdir: Path,
        username: str = "admin",
        password: str = "ipmi-secret",
    ) -> None:
        self.username = username
        self.password = password
        self._workdir = workdir
        self._started: dict[str, int] = {}
        self.password_file = workdir / "ipmi-password"
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)
        self._control_url = control_url
        self._addresses = {h.name: h.address for h in pool.hosts}
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self.ports: dict[str, int] = {}
        self.modes: dict[str, str] = {}
        try:
            for host in self._addresses:
                self._start(host, "ok")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> IpmiFarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def address(self, host: str) -> str:
        return self._addresses[host]

    def set_mode(self, host: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"ipmi bmc mode {mode!r}: choose one of {', '.join(MODES)}")
        if self.modes.get(host) == mode:
            return
        self._stop(host)
        self.modes[host] = mode
        if mode != "down":
            self._start(host, mode)

    def close(self) -> None:
        for host in list(self._procs):
            self._stop(host)

    def _start(self, host: str, mode: str) -> None:
        argv = [
            sys.executable, "-m", "xenhad.sim.ipmi_bmc",
            "--address", self._addresses[host], "--port", str(self.ports.get(host, 0)),
            "--user", self.username, "--password-file", str(self.password_file),
            "--control", self._control_url, "--host", host,
        ]
        if mode == "ignore-off":
            argv.append("--stuck")
        log = self._workdir / f"ipmi-{host}.log"
        with open(log, "a") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while True:
            lines = log.read_text().splitlines()
            ready = [ln for ln in lines if ln.startswith("READY ")]
            if len(ready) > self._started.get(host, 0):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the IPMI BMC of {host} did not start; see {log}")
            time.sleep(0.05)
        self._started[host] = len(ready)
        port = int(ready[-1].split()[1])
        self._procs[host] = proc
        self.ports[host] = port
        self.modes[host] = mode

    def _stop(self, host: str) -> None:
        proc = self._procs.pop(host, None)
        if proc is None:
            return
        proc.kill()
        proc.wait(timeout=10)
