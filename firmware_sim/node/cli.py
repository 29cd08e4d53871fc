"""`firmware-sim node [--dir D]`: run the simulated regtest Bitcoin node."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from cc_common.cli import add_dir_argument, config_from_args
from cc_common.logs import setup_logging


def cmd_node(args: argparse.Namespace) -> int:
    from firmware_sim.node.service import serve  # noqa: PLC0415 - keep other commands light

    config = config_from_args(args)
    setup_logging(
        "node", config.log_dir, logging.DEBUG if args.debug else logging.INFO, fmt=config.log_format
    )
    return serve(config)


def register(sub: Any) -> None:
    """Add this part's sub-commands to the `firmware-sim` parser."""
    p = sub.add_parser("node", help="run the simulated regtest Bitcoin node (Core JSON-RPC)")
    add_dir_argument(p)
    p.add_argument("--debug", action="store_true", help="log every RPC call")
    p.set_defaults(handler=cmd_node)
