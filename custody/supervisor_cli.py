"""`custody up`, `custody status` and `custody down`: run the local deployment.

Exit status of `custody status`: 0 when a supervisor runs and every process is ready, 1 when
something is not ready (or failed), 3 when nothing runs. With `--wait SECONDS` it polls until
every process is ready, so scripts wait for readiness without sleeping.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cc_common.cli import add_dir_argument, config_from_args, set_role
from cc_common.config import Config
from cc_common.network_config import runs_simulated_node
from cc_common.ports import busy, configured_listeners
from custody import supervisor as sv
from custody.admin_cli import deployment_network
from custody.chain_progress import read_progress

EXIT_NOT_READY = 1
EXIT_NOTHING_RUNS = 3


def cmd_up(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    specs = without_simulated_node(config, sv.plan(config))
    if not specs:
        raise sv.SupervisorError("no process to run: [supervisor] only selects none")
    check_ports(config, [s.name for s in specs if not sv.ready_pid(config, s.ready_name)])
    supervisor = sv.Supervisor(config, specs, sv.Settings.from_config(config), quiet=args.quiet)
    return supervisor.run()


def without_simulated_node(config: Config, specs: list[sv.ProcessSpec]) -> list[sv.ProcessSpec]:
    """The simulated node is regtest only: on another network `[node]` is the operator's."""
    network = deployment_network(config)
    if runs_simulated_node(network) or config.has_section("firmware_sim.node"):
        return specs
    kept = [s for s in specs if s.name != "node"]
    if len(kept) != len(specs):
        print(
            f"[supervisor] node: not started: the simulated node is regtest only; "
            f"[node] rpc_url is your {network.value} node",
            flush=True,
        )
    return kept


def check_ports(config: Config, processes: list[str]) -> None:
    """Stop before starting anything if a listener's port is taken, naming the key to change
    (a port taken later would only show as one process failing with a traceback)."""
    if sv.lock_owner(sv.lock_path(config)) is not None:
        return  # a supervisor runs already: its own processes hold the ports; it says so
    for listener in configured_listeners(config.raw, processes):
        why = busy(listener)
        if why is not None:
            raise sv.SupervisorError(
                f"port {listener.port} on {listener.host} for {listener.process} is {why}: "
                f"change {listener.key} with `custody config set` (in {config.data_dir})"
            )


def _print_status(status: sv.Status, as_json: bool, run_dir: Path | None = None) -> None:
    progress = read_progress(run_dir) if run_dir is not None and status.running else None
    if as_json:
        data = status.to_json()
        data["chain"] = progress.to_json() if progress is not None else None
        print(json.dumps(data, indent=2, default=str))
    else:
        print(sv.render_status(status))
        if progress is not None:
            print(progress.describe())


def cmd_status(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.wait is not None:
        status, outcome = sv.wait_status(config, args.wait)
        _print_status(status, args.json, config.run_dir)
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
    _print_status(status, args.json, config.run_dir)
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
    set_role(p, None)  # the map of every process, no secret
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
    set_role(p, None)  # the map of every process, no secret
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("down", help="stop the running supervisor and all its processes")
    add_dir_argument(p)
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait (default: %(default)s)"
    )
    set_role(p, None)  # the map of every process, no secret
    p.set_defaults(handler=cmd_down)
