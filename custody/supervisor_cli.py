"""`custody up`, `custody status` and `custody down`: run the local deployment.

Exit status of `custody status`: 0 when a supervisor runs and every process is ready, 1 when
something is not ready (or failed), 3 when nothing runs. With `--wait SECONDS` it polls until
every process is ready, so scripts wait for readiness without sleeping.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cc_common.cli import add_dir_argument, config_from_args
from custody import supervisor as sv

EXIT_NOT_READY = 1
EXIT_NOTHING_RUNS = 3


def cmd_up(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    specs = sv.plan(config)
    if not specs:
        raise sv.SupervisorError("no process to run: [supervisor] only selects none")
    supervisor = sv.Supervisor(config, specs, sv.Settings.from_config(config), quiet=args.quiet)
    return supervisor.run()


def _print_status(status: sv.Status, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status.to_json(), indent=2, default=str))
    else:
        print(sv.render_status(status))


def cmd_status(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.wait is not None:
        status, outcome = sv.wait_status(config, args.wait)
        _print_status(status, args.json)
        if outcome == "ready":
            return 0
        if outcome == "gone":
            print("the supervisor exited before every process was ready", file=sys.stderr)
            return EXIT_NOTHING_RUNS
        if outcome == "failed":
            print("a process failed; see `custody up`'s output", file=sys.stderr)
        else:
            print(f"not every process was ready within {args.wait:.0f}s", file=sys.stderr)
        return EXIT_NOT_READY if status.running else EXIT_NOTHING_RUNS
    status = sv.read_status(config)
    _print_status(status, args.json)
    if status.all_ready:
        return 0
    return EXIT_NOT_READY if status.running else EXIT_NOTHING_RUNS


def cmd_down(args: argparse.Namespace) -> str:
    config = config_from_args(args)
    pid = sv.stop_supervisor(config, args.timeout)
    if pid is None:
        return f"no supervisor runs on {config.data_dir}"
    return f"stopped the supervisor (pid {pid}) and its processes"


def register(sub: Any) -> None:
    """Add `up`, `status` and `down` to the `custody` parser."""
    p = sub.add_parser("up", help="start every process of the local deployment and supervise")
    add_dir_argument(p)
    p.add_argument("--quiet", action="store_true", help="do not stream the processes' output")
    p.set_defaults(handler=cmd_up)

    p = sub.add_parser("status", help="show what runs (pid, state, uptime, readiness)")
    add_dir_argument(p)
    p.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        default=None,
        help="poll until every process is ready (exit 0) or SECONDS pass (exit 1)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("down", help="stop the running supervisor and all its processes")
    add_dir_argument(p)
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait (default: %(default)s)"
    )
    p.set_defaults(handler=cmd_down)
