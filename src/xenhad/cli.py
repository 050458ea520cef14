"""`xenhad` commands: argument parsing only; each command is one call elsewhere."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from xenhad import __version__
from xenhad.errors import XenhadError

DEFAULT_CONFIG = Path("/etc/xenhad/xenhad.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xenhad",
        description="Safe, automatic high availability for XenServer / XCP-ng pools.",
    )
    parser.add_argument("--version", action="version", version=f"xenhad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the daemon (under systemd: Type=notify)")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE",
                     help=f"configuration file (default {DEFAULT_CONFIG})")

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", type=Path, nargs="?", default=DEFAULT_CONFIG, metavar="FILE")

    demo = sub.add_parser("demo", help="a simulated pool loses a host and xenhad recovers it")
    demo.add_argument("--hosts", type=_count(2, 16), default=3, help="pool size (2-16)")
    demo.add_argument("--vms", type=_count(1, 200), default=8, help="guest VMs (1-200)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--keep", type=Path, default=None, metavar="DIR",
                      help="keep configs, journals and logs in DIR")

    sub.add_parser("sim", help="run a simulated XAPI pool (see `xenhad sim --help`)",
                   add_help=False)
    return parser


def _count(low: int, high: int) -> type[int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range {low}-{high}")
        return value

    return parse  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["sim"]:
        from xenhad.sim.cli import main as sim_main

        return sim_main(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        return _dispatch(args)
    except XenhadError as exc:
        print(f"xenhad: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from xenhad.daemon import run

        return run(args.config)
    if args.command == "check-config":
        from xenhad.config import check_config

        code, line = check_config(args.file)
        print(line, file=sys.stdout if code == 0 else sys.stderr)
        return code
    if args.command == "demo":
        from xenhad.demo import run_demo

        return run_demo(hosts=args.hosts, vms=args.vms, seed=args.seed, keep=args.keep)
    raise AssertionError(f"unhandled command {args.command}")
