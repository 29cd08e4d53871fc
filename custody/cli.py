"""`custody`: the operator's command line.

Sub-commands are registered here; each handler returns a value that `cc_common.cli.run`
prints, or raises a `CustodyError`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cc_common.cli import add_dir_argument, run
from cc_common.config import default_data_dir
from cc_common.deployment import init_deployment


def cmd_init(args: argparse.Namespace) -> str:
    data_dir = args.dir if args.dir else default_data_dir()
    config = init_deployment(Path(data_dir), force=args.force)
    return f"wrote {config.path} (new secrets and PINs; keep it private)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="custody", description=__doc__)
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("init", help="write a complete local deployment configuration")
    add_dir_argument(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing configuration")
    p.set_defaults(handler=cmd_init)

    from custody import admin_cli, supervisor_cli, worker
    from custody.operator import cli as operator_cli

    supervisor_cli.register(sub)  # up, status, down
    admin_cli.register(sub)  # db, serve, account, token, alerts, journal
    worker.register(sub)  # worker
    operator_cli.register(sub)  # dashboard
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
