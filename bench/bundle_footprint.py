"""The dom0 bundle beside the venv: start-up time, resident memory and CPU at rest.

Run as root after `make bundle`: .venv/bin/python bench/bundle_footprint.py [--seconds 20]
    [--hosts 3] [--vms 9] [--peers] [--settle 2]
The bundle runs in an empty chroot (its tarball unpacked, /proc mounted), the venv's
xenhad directly; both as master of the same simulated pool (by default 3 hosts, no
heartbeats: probes of the other hosts' xapi every 2 s tick), one after the other. With
`--peers`, the other hosts' daemons beat to it as in bench/footprint.py (tick 2 s,
heartbeats every 1 s): `--hosts 64 --vms 1000 --peers --settle 10` is footprint.py's
"beating" case on the bundle. Prints numbers; asserts nothing.
- `--version` and `check-config`: wall time of a whole command, best of 10;
- daemon start: from spawn to its `daemon.ready` log line;
- RSS after `seconds` of rest, and CPU over those seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import footprint  # bench/: the peers' heartbeats

from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed, to_toml

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def best_of(cmd: list[str], n: int = 10) -> float:
    best = float("inf")
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False)
        best = min(best, time.perf_counter() - started)
    return best


def unpack(tarball: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="xh-bench-"))
    with tarfile.open(tarball) as tar:
        tar.extractall(root, filter="tar")
    for folder in ("proc", "dev", "tmp"):
        (root / folder).mkdir()
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    return root


def inside(root: Path, doc: Mapping[str, Any]) -> dict[str, Any]:
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(f"{root}/"):
            return value[len(str(root)):]
        if isinstance(value, Mapping):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return {k: fix(v) for k, v in doc.items()}


def daemon(
    name: str, command: list[str], log: Path, seconds: float, settle: float, peers: bool
) -> tuple[float, float, float]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=out, env=env)
    try:
        while "daemon.ready" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() - started > 240:
                raise RuntimeError(f"{name} did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.02)
        ready = time.monotonic() - started
        time.sleep(settle)  # past the first reads
        if peers and "quorum.gained" not in log.read_text(errors="replace"):
            raise RuntimeError(f"{name} never heard its peers:\n{log.read_text()[-3000:]}")
        cpu0 = cpu_seconds(proc.pid)
        time.sleep(seconds)
        cpu = (cpu_seconds(proc.pid) - cpu0) / seconds * 100
        return ready, rss_mib(proc.pid), cpu
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--vms", type=int, default=9)
    parser.add_argument("--peers", action="store_true",
                        help="the other hosts' daemons beat (bench/footprint.py's PeerBeats)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds after daemon.ready before CPU is counted")
    args = parser.parse_args()
    version = re.search(r'__version__ = "(.+)"', (REPO / "src/xenhad/__init__.py").read_text())
    assert version
    tarball = REPO / "dist" / f"xenhad-{version.group(1)}-x86_64.tar.gz"
    rpm = tarball.with_name(f"xenhad-{version.group(1)}-1.x86_64.rpm")
    root = unpack(tarball)
    try:
        opt = root / "opt" / "xenhad"
        installed = sum(p.stat().st_size for p in opt.rglob("*") if p.is_file()) / 2**20
        print(f"bundle: tarball {tarball.stat().st_size / 2**20:.1f} MiB, rpm "
              f"{rpm.stat().st_size / 2**20:.1f} MiB, installed {installed:.1f} MiB")
        venv = [sys.executable, "-m", "xenhad"]
        bundled = ["chroot", str(root), "/opt/xenhad/bin/xenhad"]
        cfg = root / "tmp" / "check.toml"
        cfg.write_text('[host]\nuuid = "0b5c62b4-5f6c-4a55-9a33-6d7a2e7d4c11"\n')
        for name, cmd, path in (("venv", venv, str(cfg)), ("bundle", bundled, "/tmp/check.toml")):
            print(f"{name:>6}: --version {best_of([*cmd, '--version']) * 1000:.0f} ms, "
                  f"check-config {best_of([*cmd, 'check-config', path]) * 1000:.0f} ms")
        spec = PoolSpec(hosts=args.hosts, vms=args.vms, seed=3,
                        base_dir=str(root / "tmp" / "sim"))
        overrides: dict[str, dict[str, Any]] = {
            "detector": {"interval": 2.0, "confirm_misses": 3, "confirm_seconds": 10.0,
                         "probe_timeout": 1.5},
            "xapi": {"timeout": 10.0}}  # production's, as footprint.py's
        if args.peers:
            overrides["peers"] = {"interval": footprint.INTERVAL, "window": 4.0}
        with Testbed(spec, root / "tmp" / "bed", daemon_hosts=(), peers=args.peers,
                     overrides=overrides) as bed, \
                footprint.PeerBeats(bed) if args.peers else contextlib.nullcontext():
            doc = bed.config_for("host1")
            venv_cfg = root / "tmp" / "venv.toml"
            venv_cfg.write_text(to_toml(doc))
            bundle_cfg = root / "tmp" / "bundle.toml"
            bundle_cfg.write_text(to_toml(inside(root, doc)))
            for name, cmd in (("venv", [*venv, "run", "--config", str(venv_cfg)]),
                              ("bundle", [*bundled, "run", "--config", "/tmp/bundle.toml"])):
                ready, rss, cpu = daemon(name, cmd, root / "tmp" / f"{name}.log", args.seconds,
                                         args.settle, args.peers)
                print(f"{name:>6}: daemon ready in {ready:.2f} s, RSS {rss:.1f} MiB, "
                      f"CPU at rest {cpu:.2f}% of a core")
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
