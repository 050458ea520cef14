"""BMC emulators on loopback for the fencing tests, started and stopped by the tests.

- `redfish_bmc` / `redfish_tls_bmc`: sushy-tools' Redfish emulator (fake driver), HTTP and
  HTTPS, one per test module, with one fake system per scenario so tests never share state.
- `ipmi_bmc`: a factory for pyghmi-based IPMI 2.0 BMCs (xenhad.sim.ipmi_bmc, standalone).
- `dead_tcp_port` / `black_hole_tcp` / `black_hole_udp`: BMCs that do not answer.
Everything binds 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from self_signed import self_signed_cert

HERE = Path(__file__).parent
USER = "admin"
PASSWORD = "s3cret-Passw0rd"

SYSTEMS = {
    # name -> (power_state, stuck)
    "fence-me": ("On", False),
    "agent-off": ("On", False),
    "already-off": ("Off", False),
    "stuck": ("On", True),
    "agent-stuck": ("On", True),
    "tls-host": ("On", False),
}


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("secrets")


@pytest.fixture(scope="session")
def password_file(secrets_dir: Path) -> Path:
    return write_secret(secrets_dir / "bmc-password", PASSWORD)


@pytest.fixture(scope="session")
def wrong_password_file(secrets_dir: Path) -> Path:
    return write_secret(secrets_dir / "bmc-wrong", "not-the-password")


@dataclass
class RedfishBmc:
    url: str
    systems: dict[str, str]
    """fake system name -> uuid (its Redfish id)."""
    ca_file: Path | None
    process: subprocess.Popen[bytes]
    log: Path

    def power_state(self, name: str) -> str:
        import json
        import ssl

        request = urllib.request.Request(
            f"{self.url}/redfish/v1/Systems/{self.systems[name]}",
            headers={"Authorization": _basic(USER, PASSWORD)},
        )
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return str(json.loads(response.read())["PowerState"])


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()




@contextlib.contextmanager
def _run_redfish_bmc(directory: Path, *, tls: bool) -> Iterator[RedfishBmc]:
    pytest.importorskip(
        "sushy_tools", reason="PyPI sushy-tools is not installed (pip install -e '.[test]')"
    )
    import bcrypt

    auth_file = directory / "htpasswd"
    # rounds=4: the emulator checks bcrypt on every request; the default cost is ~0.25 s each.
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    auth_file.write_text(f"{USER}:{hashed}\n")
    systems = {name: f"{i:08d}-0000-4000-8000-{(0xF0 + i):012x}" for i, name in enumerate(SYSTEMS)}
    fake = [
        {
            "uuid": systems[name],
            "name": name,
            "power_state": state,
            "stuck_power": stuck,
            "external_notifier": False,
            "nics": [{"mac": f"00:5c:52:31:3a:{i:02x}", "ip": "127.0.0.1"}],
        }
        for i, (name, (state, stuck)) in enumerate(SYSTEMS.items())
    ]
    cert = key = None
    if tls:
        cert, key = self_signed_cert(directory, common_name="127.0.0.1",
                                     cert_name="bmc.crt", key_name="bmc.key")
    last_error = ""
    for _attempt in range(3):
        port = free_tcp_port()
        config = directory / "emulator.conf"
        lines = [
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
            f"SUSHY_EMULATOR_LISTEN_PORT = {port}",
            "SUSHY_EMULATOR_FAKE_DRIVER = True",
            f"SUSHY_EMULATOR_STATE_DIR = {str(directory / 'state')!r}",
            f"SUSHY_EMULATOR_AUTH_FILE = {str(auth_file)!r}",
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {fake!r}",
        ]
        if tls:
            lines += [
                f"SUSHY_EMULATOR_SSL_CERT = {str(cert)!r}",
                f"SUSHY_EMULATOR_SSL_KEY = {str(key)!r}",
            ]
        config.write_text("\n".join(lines) + "\n")
        log = directory / f"emulator-{port}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, str(HERE / "redfish_bmc.py"), "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        scheme = "https" if tls else "http"
        bmc = RedfishBmc(f"{scheme}://127.0.0.1:{port}", systems, cert, process, log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            try:
                bmc.power_state("fence-me")
                break
            except OSError as exc:
                last_error = str(exc)
                time.sleep(0.1)
        if process.poll() is None and time.monotonic() < deadline:
            try:
                yield bmc
            finally:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            return
        process.kill()
        process.wait()
        last_error += " | " + log.read_text(errors="replace")[-500:]
    pytest.fail(f"sushy-emulator did not start: {last_error}")


@pytest.fixture(scope="module")
def redfish_bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedfishBmc]:
    with _run_redfish_bmc(tmp_path_factory.mktemp("redfish"), tls=False) as bmc:
        yield bmc


@pytest.fixture(scope="module")
def redfish_tls_bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedfishBmc]:
    with _run_redfish_bmc(tmp_path_factory.mktemp("redfish-tls"), tls=True) as bmc:
        yield bmc


@dataclass
class IpmiBmc:
    port: int
    process: subprocess.Popen[str]


IpmiFactory = Callable[..., IpmiBmc]


@pytest.fixture
def ipmi_bmc(password_file: Path) -> Iterator[IpmiFactory]:
    pytest.importorskip("pyghmi", reason="PyPI pyghmi is not installed (pip install -e '.[test]')")
    started: list[subprocess.Popen[str]] = []

    def start(*, power: str = "on", stuck: bool = False) -> IpmiBmc:
        argv = [
            sys.executable,
            "-m",
            "xenhad.sim.ipmi_bmc",
            "--user",
            USER,
            "--password-file",
            str(password_file),
            "--power",
            power,
        ]
        if stuck:
            argv.append("--stuck")
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY "):
            pytest.fail(f"IPMI emulator did not start: {line}{process.stdout.read()[-500:]}")
        return IpmiBmc(int(line.split()[1]), process)

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def dead_tcp_port() -> int:
    """A loopback port with nothing listening: connections are refused at once."""
    return free_tcp_port()


@pytest.fixture
def black_hole_tcp() -> Iterator[int]:
    """A loopback port that completes TCP handshakes (the kernel's backlog) but never answers:
    what a BMC whose web server hung looks like."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


@pytest.fixture
def black_hole_udp() -> Iterator[int]:
    """A loopback UDP port that swallows datagrams: an IPMI BMC that does not answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def agent_available(name: str) -> bool:
    from xenhad.fencing.agent import find_agent

    return find_agent(name) is not None
