"""`custody`: the operator's command line.

Sub-commands are registered here; each handler returns a value that `cc_common.cli.run`
prints, or raises a `CustodyError`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cc_common.cli import add_dir_argument, run, set_role
from cc_common.config import default_data_dir
from cc_common.deployment import init_deployment
from cc_common.network_config import runs_simulated_node
from custody import admin_cli, config_cli, send_cli, supervisor_cli, webhook_cli, worker
from custody.operator import cli as operator_cli
from wallet_core.networks import Network

DESCRIPTION = (
    "Operate a ChainCloud custody deployment: set it up (init), run it (up, status, down), "
    "manage accounts, tokens and alerts, and check the journal."
)


def cmd_init(args: argparse.Namespace) -> str:
    data_dir = args.dir if args.dir else default_data_dir()
    network = Network.from_name(args.network)
    config = init_deployment(Path(data_dir), force=args.force, network=network)
    note = ""
    if not runs_simulated_node(network):
        note = (
            f"; set [node] rpc_password (or cookie_file) for your {network.value} node: "
            "`custody config set node.rpc_password -`"
        )
    return (
        f"wrote {config.path} (the supervisor's map) and one <role>.toml per machine role in "
        f"{config.data_dir} for {network.value} (new secrets and PINs; keep them private){note}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="custody", description=DESCRIPTION)
    set_role(parser, "custody")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("init", help="write a complete local deployment configuration")
    add_dir_argument(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing configuration")
    p.add_argument(
        "--network",
        choices=[n.value for n in Network],
        default=Network.REGTEST.value,
        help="bitcoin network: address prefixes, BIP44 coin type, node port and fee floor "
        "follow from it (default: %(default)s, with the simulated node)",
    )
    p.set_defaults(handler=cmd_init)

    supervisor_cli.register(sub)  # up, status, down
    config_cli.register(sub)  # config set
    admin_cli.register(sub)  # db, serve, account, token, alerts, journal
    worker.register(sub)  # worker
    webhook_cli.register(sub)  # webhook add/list/remove/deliveries/redeliver
    send_cli.register(sub)  # send bump, wallet consolidate
    operator_cli.register(sub)  # dashboard
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
