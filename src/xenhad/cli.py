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

    history = sub.add_parser("history", help="past incidents from this host's journal "
                             "(read-only: safe while the daemon runs)")
    history.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE",
                         help=f"the daemon's configuration (default {DEFAULT_CONFIG})")
    history.add_argument("--json", action="store_true", help="print JSON instead of text")
    history.add_argument("--host", default=None, metavar="NAME",
                         help="only incidents of this host (name_label or uuid)")
    history.add_argument("--limit", type=_count(1, 1_000_000), default=None, metavar="N",
                         help="only the N newest incidents")

    plan = sub.add_parser("plan", help="which VMs would restart where if HOST died now "
                          "(read-only XAPI calls)")
    plan.add_argument("host", metavar="HOST", help="the host's name_label or uuid")
    plan.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE",
                      help=f"the daemon's configuration (default {DEFAULT_CONFIG})")
    plan.add_argument("--json", action="store_true", help="print JSON instead of text")

    status = sub.add_parser("status", help="the running daemon's view: pool, quorum, hosts, "
                            "incidents (root-only socket)")
    status.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"the daemon's configuration (default {DEFAULT_CONFIG})")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    maint = sub.add_parser("maintenance", help="take a host out of xenhad's hands (disable "
                           "it, recover nothing for it) or give it back")
    maint.add_argument("action", choices=("on", "off"))
    maint.add_argument("host", metavar="HOST", help="the host's name_label or uuid")
    maint.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE",
                       help=f"the daemon's configuration (default {DEFAULT_CONFIG})")

    preflight = sub.add_parser("preflight", help="is this host ready for xenhad? read-only "
                               "checks, one OK/FAIL line each with the fix (exit 1 on a FAIL)")
    preflight.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE",
                           help=f"the daemon's configuration (default {DEFAULT_CONFIG})")
    preflight.add_argument("--listen", type=float, default=None, metavar="SECONDS",
                           help="how long to listen for the other hosts' heartbeats "
                           "(default peers.window)")

    chaos = sub.add_parser("chaos", help="seeded random faults against real daemons and the "
                           "simulator, with invariants checked (exit 1 on a violation)")
    chaos.add_argument("--schedules", type=_count(1, 100_000), default=5)
    chaos.add_argument("--seed", type=int, default=1)
    chaos.add_argument("--hosts", type=_count(3, 7), default=3, help="pool size (3-7)")
    chaos.add_argument("--budget-minutes", type=float, default=30.0, metavar="MIN",
                       help="stop starting schedules after this long (default 30)")
    chaos.add_argument("--bmc", choices=("ok", "lie"), default="ok",
                       help='"lie": every BMC says Off and does nothing (a broken fence '
                       "that the checks must catch)")
    chaos.add_argument("--keep", type=Path, default=None, metavar="DIR",
                       help="keep every schedule's configs and logs in DIR")
    chaos.add_argument("--replay", type=int, nargs="+", default=[], metavar="SEED",
                       help="run the schedules of these seeds again (logs kept)")
    chaos.add_argument("--self-fence", action="store_true",
                       help="every daemon holds its host's simulated watchdog (timeout 6 s), "
                       "and a dead BMC leaves the watchdog as the only proof of power-off")
    chaos.add_argument("--jobs", type=_count(1, 32), default=1,
                       help="schedules run side by side (each pool on its own addresses)")
    chaos.add_argument("--virtual", action="store_true",
                       help="run the whole pool (daemon cores, xapis, network, BMCs, "
                       "watchdogs) in this process on virtual time: the same seed gives the "
                       "same run, byte for byte, in about a second a schedule")
    chaos.add_argument("--trace", type=Path, default=None, metavar="DIR",
                       help="with --virtual: write each schedule's trace (every daemon's "
                       "events, virtual time) to DIR/seed-N.trace")
    chaos.add_argument("--ledger", type=Path, default=None, metavar="FILE",
                       help="with --virtual: add a JSON line to FILE per finished schedule, "
                       "skip the schedules FILE holds, and report on all of them: a long "
                       "soak runs in parts by giving the same command again")
    chaos.add_argument("--mix", action="store_true",
                       help="with --virtual: pools of 3 to 7 hosts in turn, every other one "
                       "self-fencing (instead of --hosts and --self-fence)")

    scen = sub.add_parser("scenarios", help="run the golden scenarios (tests/scenarios/NAME/) "
                          "on virtual time and diff each event log against its expected.log")
    scen.add_argument("names", nargs="*", metavar="NAME", help="only these scenarios")
    scen.add_argument("--dir", type=Path, default=Path("tests/scenarios"),
                      help="where the scenario directories are (default tests/scenarios)")
    scen.add_argument("--update", action="store_true",
                      help="rewrite every expected.log from this run (review the diff)")

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
        from xenhad.log import print_error

        print_error(str(exc))  # one line, at error priority under journald
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from xenhad.daemon import run

        return run(args.config)
    if args.command == "check-config":
        from xenhad.config import check_config
        from xenhad.log import print_error

        code, line = check_config(args.file)
        if code == 0:
            print(line)
        else:
            print_error(line)
        return code
    if args.command == "demo":
        from xenhad.demo import run_demo

        return run_demo(hosts=args.hosts, vms=args.vms, seed=args.seed, keep=args.keep)
    if args.command == "history":
        from xenhad.tools.history_cmd import run_history

        return run_history(args.config, as_json=args.json, host=args.host, limit=args.limit)
    if args.command == "plan":
        from xenhad.tools.plan_cmd import run_plan

        return run_plan(args.config, args.host, as_json=args.json)
    if args.command == "status":
        from xenhad.status import run_status

        return run_status(args.config, as_json=args.json)
    if args.command == "maintenance":
        from xenhad.maintenance import run_maintenance

        return run_maintenance(args.config, args.host, on=args.action == "on")
    if args.command == "preflight":
        from xenhad.tools.preflight import run_preflight

        return run_preflight(args.config, listen=args.listen)
    if args.command == "scenarios":
        from xenhad.chaos.scenarios import main as scenarios_main

        return scenarios_main(args.dir, args.names, update=args.update)
    if args.command == "chaos" and args.virtual:
        from xenhad.chaos.virtual_run import main as virtual_main

        if args.mix and args.replay:
            raise XenhadError("--mix plays pools by schedule number, --replay seeds alone: "
                              "replay a seed with the --hosts (and --self-fence) it ran with")
        return virtual_main(schedules=args.schedules, seed=args.seed, hosts=args.hosts,
                            budget_minutes=args.budget_minutes, bmc=args.bmc,
                            replay=args.replay, self_fence=args.self_fence, trace=args.trace,
                            ledger=args.ledger, mix=args.mix, jobs=args.jobs)
    if args.command == "chaos" and (args.ledger is not None or args.mix):
        raise XenhadError("--ledger and --mix are for --virtual chaos only")
    if args.command == "chaos":
        from xenhad.chaos.run import main as chaos_main

        return chaos_main(schedules=args.schedules, seed=args.seed, hosts=args.hosts,
                          budget_minutes=args.budget_minutes, bmc=args.bmc, keep=args.keep,
                          replay=args.replay, jobs=args.jobs, self_fence=args.self_fence)
    raise AssertionError(f"unhandled command {args.command}")
