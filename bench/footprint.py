"""One daemon watching a big pool: resident memory (goal < 40 MB) and CPU at rest (goals,
issue 23: alone at most 0.5% of a core, with 63 peers beating at most 0.25%), read from
/proc.

Run: .venv/bin/python bench/footprint.py [--hosts 64] [--vms 1000] [--seconds 30] [--tls]
         [--alone]
The master's daemon runs against the simulator at production intervals (tick 2 s,
heartbeats every 1 s), over http, or with --tls over TLS as a real pool's probes go (the
simulator serves it as stunnel does; a self-signed certificate made with openssl), twice
(once with --alone):
- alone: no other daemon beats, so it probes the other hosts' xapi every tick;
- with peers: the heartbeats the other hosts' daemons would send (xenhad's own codec and
  pool secret, through the simulated network) come from one sender thread in this process,
  since 63 more daemons on 2 cores would measure the machine. A host heard by heartbeat is
  probed every 60th tick only (cadence.PROBE_HEARD_EVERY).
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from xenhad.peers.heartbeat import Heartbeat
from xenhad.sim import PoolSpec
from xenhad.testbed import Testbed

try:  # wire version 3 (issue 23): what peers of this code send
    from xenhad.peers import wire

    _reader = wire.Reader()
    READ = _reader.decode

    def WRITE(hb: Heartbeat, secret: bytes) -> bytes:
        return wire.encode(dataclasses.replace(hb, reads=wire.READS), secret, wire.READS)
except ImportError:  # the code of before: JSON
    from xenhad.peers.heartbeat import decode as READ
    from xenhad.peers.heartbeat import encode as WRITE
ECHOES = "echo" in {f.name for f in dataclasses.fields(Heartbeat)}
"""Whether the code measured proves contact by echoes (wire version 2 and later)."""

TICKS = os.sysconf("SC_CLK_TCK")
CPU_GOAL_ALONE = 0.5
CPU_GOAL_WITH_PEERS = 0.25
"""Percent of a core at rest (issue 23)."""
INTERVAL = 1.0
MB_PER_MIB = 2**20 / 10**6
"""The goal is in MB (10^6 bytes); /proc counts KiB."""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


class PeerBeats:
    """Every host but the master beats to the master, as its daemon would: it hears every
    host, follows the master, is quorate, and (where the code measured has them) echoes the
    master's latest sequence number and vouches for every host, in the newest wire version
    that code writes. So the master's table holds proven contact with all 63, as at rest in
    a real pool, and checks what a real peer sends."""

    def __init__(self, bed: Testbed) -> None:
        assert bed.relay is not None
        info = bed.info
        self._pool = info["pool"]
        self._master = info["master"]
        self._hosts = [(h["uuid"], h["address"]) for h in info["hosts"]]
        self._to = (next(a for u, a in self._hosts if u == self._master), bed.relay.port)
        self._secret = (bed.workdir / "pool-secret").read_text().strip().encode()
        self._socks: dict[str, socket.socket] = {}
        for uuid, address in self._hosts:
            if uuid != self._master:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                # Where the relay delivers the master's heartbeats to this host's daemon.
                sock.bind((address, bed._listen_port))
                sock.setblocking(False)
                self._socks[uuid] = sock
        self._master_boot: dict[str, str] = {}
        """Per host: the master's boot its latest echo is of."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeerBeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self._socks.values():
            sock.close()

    def _master_seq(self, uuid: str, sock: socket.socket, seen: int | None) -> int | None:
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return seen
            try:
                hb = READ(data, self._secret)
            except ValueError:
                continue
            if hb.sender == self._master:
                # A new boot of the master (bundle_footprint.py runs two daemons one after
                # the other) starts its numbers anywhere: its echo is its own latest, not the
                # larger of two boots', or no echo proves contact and it never hears a peer.
                if hb.boot != self._master_boot.get(uuid):
                    self._master_boot[uuid], seen = hb.boot, None
                seen = max(seen or 0, hb.seq)

    def _run(self) -> None:
        boots = {uuid: secrets.token_hex(8) for uuid in self._socks}
        everyone = tuple(sorted(u for u, _ in self._hosts))
        started = time.time()
        heard_master: dict[str, int | None] = dict.fromkeys(self._socks)
        seq = 1 << 40
        while not self._stop.wait(INTERVAL):
            seq += 1
            for uuid, sock in self._socks.items():
                heard_master[uuid] = self._master_seq(uuid, sock, heard_master[uuid])
                others = tuple(h for h in everyone if h != uuid)
                fields: dict[str, object] = {}
                if ECHOES:
                    echo = dict.fromkeys(others, seq - 1)
                    if heard_master[uuid] is None:
                        del echo[self._master]
                    else:
                        echo[self._master] = heard_master[uuid]  # type: ignore[assignment]
                    fields = {"echo": echo, "boot_started": started,
                              "proven": dict.fromkeys(echo, 0.5)}
                    fields["last_heard"] = dict.fromkeys(echo, 0.5)
                else:
                    fields["last_heard"] = tuple((h, 0.5) for h in others)
                heard = tuple(sorted(h for h in others if ECHOES is False
                                     or h != self._master or heard_master[uuid] is not None))
                hb = Heartbeat(pool=self._pool, sender=uuid, boot=boots[uuid], seq=seq,
                               sent_at=time.time(), master=self._master, heard=heard,
                               quorate=True, **fields)  # type: ignore[arg-type]
                sock.sendto(WRITE(hb, self._secret), self._to)


def certificate(directory: Path) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def measure(hosts: int, vms: int, seconds: float, peers: bool,
            tls: bool = False, profile: str = "") -> tuple[float, float]:
    overrides = {"detector": {"interval": 2.0, "confirm_misses": 3, "confirm_seconds": 10.0,
                              "probe_timeout": 1.5},
                 # production's: the testbed's 2 s can time out the first full read of a
                 # 64-host pool on a loaded machine again and again.
                 "xapi": {"timeout": 10.0}}
    if peers:
        overrides["peers"] = {"interval": INTERVAL, "window": 4.0}
    workdir = Path(tempfile.mkdtemp(prefix="xh-bench-"))
    cert, key = certificate(workdir) if tls else (None, None)
    # Only with --tls: the code of before (measured side by side) has no TLS in its simulator.
    spec = PoolSpec(hosts=hosts, vms=vms, seed=1, **(
        {"tls_cert": cert, "tls_key": key} if tls else {}))
    with Testbed(spec, workdir, overrides=overrides, daemon_hosts=("host1",),
                 peers=peers) as bed:
        beats = PeerBeats(bed) if peers else None
        if beats is not None:
            beats.__enter__()
        try:
            bed.wait_for(lambda: bool(bed.events_named("daemon.ready")), 240, what="the daemon")
            time.sleep(10)
            proc = bed.daemons["host1"].proc
            assert proc is not None
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            if profile:  # the Python the daemon runs, sampled without pausing it
                subprocess.run(["py-spy", "record", "--pid", str(proc.pid), "--rate", "1000",
                                "--gil", "--nonblocking", "--duration", str(int(seconds)),
                                "--format", "raw",
                                "--output", f"{profile}-{'peers' if peers else 'alone'}.txt"],
                               check=True, capture_output=True)
            else:
                time.sleep(seconds)
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            rss = rss_mib(proc.pid)
            if peers:
                assert bed.events_named("quorum.gained"), "the peers' heartbeats were not heard"
        finally:
            if beats is not None:
                beats.__exit__()
    return rss, (cpu1 - cpu0) / (t1 - t0) * 100


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--tls", action="store_true", help="the hosts' xapi over TLS (https probes)")
    ap.add_argument("--alone", action="store_true", help="only the run without peers")
    ap.add_argument("--peers-only", action="store_true", help="only the run with peers")
    ap.add_argument("--profile", default="", metavar="PREFIX",
                    help="sample the daemon's Python with py-spy (pip install py-spy) into "
                         "PREFIX-alone.txt and PREFIX-peers.txt (collapsed stacks)")
    args = ap.parse_args()
    print("| pool | other hosts' daemons | resident memory | CPU at rest |\n|---|---|---|---|")
    runs = (False,) if args.alone else (True,) if args.peers_only else (False, True)
    for peers in runs:
        rss, share = measure(args.hosts, args.vms, args.seconds, peers, args.tls, args.profile)
        pool = f"{args.hosts} hosts, {args.vms} VMs{', TLS' if args.tls else ''}"
        goal = CPU_GOAL_WITH_PEERS if peers else CPU_GOAL_ALONE
        print(f"| {pool} | {'beating' if peers else 'none'} | "
              f"{rss:.1f} MiB = {rss * MB_PER_MIB:.1f} MB "
              f"({rss * MB_PER_MIB / 40:.2f}x the 40 MB goal) | "
              f"{share:.2f}% of a core ({share / goal:.2f}x the {goal:g}% goal) |", flush=True)


if __name__ == "__main__":
    main()
