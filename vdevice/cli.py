"""`vdevice`: the customer's phone (the chaincloud-v app), emulated as its own process.

vdevice init [--dir D]                  identity key; prints its public key (hex)
vdevice provision --bundle FILE|- [--force] [--dir D]
vdevice run [--dir D]                   the loop (supervised by `custody up`)
vdevice status [--json] [--dir D]       channel, last batch, last send, policies, alerts
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cc_common.cli import add_dir_argument, config_from_args, run
from cc_common.logs import setup_logging
from cc_common.process import install_stop_handlers
from vdevice import loop
from vdevice.errors import ProvisioningError
from vdevice.settings import DB_FILENAME, Policies, load_settings, state_dir
from vdevice.state import Provisioning, State
from vdevice.status import process_running, render, snapshot


def _state(args: argparse.Namespace) -> State:
    return State(state_dir(config_from_args(args)) / DB_FILENAME)


def cmd_init(args: argparse.Namespace) -> str:
    """Generate the identity key on the phone (idempotent); print the public key."""
    state = _state(args)
    try:
        pub, _created = state.init_identity()
    finally:
        state.close()
    return pub.hex()


def _read_bundle(source: str) -> Any:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProvisioningError(f"cannot read the bundle: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError:
        raise ProvisioningError("the bundle is not JSON") from None


def cmd_provision(args: argparse.Namespace) -> str:
    config = config_from_args(args)
    v = config.section("vdevice")
    owner = v.str("owner_number", "") or config.section("phones").str("owner", "")
    prov = Provisioning.from_bundle(_read_bundle(args.bundle), owner)
    state = State(state_dir(config) / DB_FILENAME)
    try:
        state.identity_pub()
        changed = state.provision(prov, force=args.force)
    finally:
        state.close()
    what = "provisioned" if changed else "already provisioned with this bundle"
    return f"{what}: account {prov.account_id}, cold numbers {', '.join(prov.cold_numbers)}"


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    settings = load_settings(config)
    setup_logging("vdevice", config.log_dir, fmt=config.log_format)
    state = State(settings.db_path)
    try:
        if not settings.wait_for_provisioning:
            state.identity_pub()  # NotInitialised / NotProvisioned: a clear one-line refusal
            state.provisioning()
        stop = install_stop_handlers()
        return loop.run(state, settings, stop)
    finally:
        state.close()


def cmd_status(args: argparse.Namespace) -> str:
    config = config_from_args(args)
    try:
        policies = load_settings(config).policies
    except Exception:  # noqa: BLE001 (show the state even with a broken config)
        policies = Policies()
    state = _state(args)
    try:
        data = snapshot(state, policies, process_running=process_running(config.run_dir))
    finally:
        state.close()
    return json.dumps(data, indent=2, sort_keys=True) if args.json else render(data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdevice", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("init", help="generate the phone's identity key; print its public key")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("provision", help="load the bundle of `custody account create`")
    p.add_argument("--bundle", required=True, metavar="FILE", help="JSON file, or - for stdin")
    p.add_argument("--force", action="store_true", help="replace a different provisioning")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_provision)

    p = sub.add_parser("run", help="run the loop (polls the site, SMS channel, sends)")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("status", help="the state at a glance")
    p.add_argument("--json", action="store_true", help="machine-readable")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
