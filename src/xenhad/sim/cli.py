"""`xenhad sim`: run a simulated pool in the foreground and print its info as one JSON line."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from xenhad.sim.pool import SimPool
from xenhad.sim.spec import PoolSpec


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, never a usage dump
        sys.stderr.write(f"xenhad sim: {message} (see xenhad sim --help)\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="xenhad sim", description="Run a simulated XenServer/XCP-ng pool; "
                "prints one JSON line (hosts, urls, sockets, control URL) when ready.")
    p.add_argument("--hosts", type=int, default=3, help="number of hosts (1-250)")
    p.add_argument("--vms", type=int, default=8, help="number of guest VMs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--local-vms", type=int, default=0,
                   help="protected VMs with their disk on their host's local SR")
    p.add_argument("--groups", type=int, default=0,
                   help="anti-affinity VM groups of two protected VMs (both on one host)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="sim seconds per real second (e.g. 100: 600 s pass in 6 s)")
    p.add_argument("--base-dir", default=None, help="where the hosts' UNIX sockets live")
    p.add_argument("--base-address", default="127.0.0.2", help="host1's loopback address")
    p.add_argument("--root-password", default="xenroot")
    p.add_argument("--vm-start-seconds", type=float, default=2.0)
    p.add_argument("--boot-seconds", type=float, default=60.0)
    p.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="serve the hosts' XML-RPC over TLS (https URLs), as a real host's "
                   "stunnel does on 443; with --tls-key")
    p.add_argument("--tls-key", default=None, metavar="PEM")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    spec = PoolSpec(hosts=args.hosts, vms=args.vms, seed=args.seed, time_scale=args.time_scale,
                    local_vms=args.local_vms, groups=args.groups,
                    base_dir=args.base_dir, base_address=args.base_address,
                    root_password=args.root_password, vm_start_seconds=args.vm_start_seconds,
                    boot_seconds=args.boot_seconds, tls_cert=args.tls_cert,
                    tls_key=args.tls_key)
    try:
        spec.validate()
    except ValueError as e:
        sys.stderr.write(f"xenhad sim: {e}\n")
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        pool = SimPool(spec)
        pool.start()
    except OSError as e:
        sys.stderr.write(f"xenhad sim: cannot start the pool: {e}\n")
        return 1
    try:
        sys.stdout.write(json.dumps(pool.info()) + "\n")
        sys.stdout.flush()
        while not stop.wait(0.2):
            pass
    finally:
        pool.stop()
    return 0
