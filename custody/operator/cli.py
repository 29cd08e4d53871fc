"""`custody dashboard`: the operator console (dashboard, /health, /metrics) under gunicorn."""

from __future__ import annotations

import argparse
import os
from typing import Any

from cc_common.cli import add_dir_argument, config_from_args
from cc_common.config import Config
from cc_common.logs import setup_logging
from custody.serve import CustodyApplication, listener_options

READY_NAME = "custody-operator"


def _console(config: Config) -> Any:
    from custody.operator.app import create_console_app  # noqa: PLC0415 - in the worker

    return create_console_app(config)


def serve_console(config: Config) -> int:
    """Run the console until SIGTERM/SIGINT; it refuses to start on a placeholder token."""
    s = config.section("operator")
    s.secret("token")
    setup_logging(READY_NAME, config.log_dir, fmt=config.log_format)
    os.environ.setdefault("CC_DATA_DIR", str(config.data_dir))
    host, port = s.str("host", "127.0.0.1"), s.int("port")
    options = listener_options(
        config,
        name=READY_NAME,
        host=host,
        port=port,
        probe="/ready",
        url=f"http://{host}:{port}/",
        workers=1,  # one process: the snapshot cache and the journal check are per process
        threads=s.int("threads", 4),
    )
    CustodyApplication(config, options, factory=_console).run()
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    return serve_console(config_from_args(args))


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve the operator console: dashboard, /health and /metrics ([operator] host/port)",
    )
    add_dir_argument(p)
    p.set_defaults(handler=cmd_dashboard)
