"""`hsm-hot`: the online HSM (init, serve, unlock, audit).

hsm-hot init   [--dir D]   token, wrapping key, import of the pairing file of `hsm-cold init`
hsm-hot serve  [--dir D]   the local RPC for custody, relaying to the cold HSM
hsm-hot unlock [--dir D]   operator reset of the PIN retry lock (SO PIN read from stdin)
hsm-hot audit  [--dir D]   the audit log of every signature, as a table
hsm-hot sign-recovery N PSBT --out F   the hot key on a recovery PSBT (docs/recovery.md)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import getpass
import ipaddress
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cc_common.cli import add_dir_argument, config_from_args, render_table, run, set_role
from cc_common.config import Config, Section
from cc_common.errors import ConfigError
from cc_common.link import JsonCounterStore, LinkClient, LinkConfig
from cc_common.logs import setup_logging
from cc_common.pairing import PairingBundle, PairingError
from cc_common.process import clear_ready, install_stop_handlers, mark_ready
from cc_common.token import HsmToken
from cc_common.token.pin_change import add_change_pin_command
from hsm_hot import recovery_sign
from hsm_hot.audit import AuditLog
from hsm_hot.errors import NotPaired
from hsm_hot.policy import HotPolicy, PolicyLedger
from hsm_hot.relay import ColdRelay
from hsm_hot.rpc_server import RpcServer
from hsm_hot.service import HotService
from hsm_hot.state import HotState
from wallet_core.networks import Network

log = logging.getLogger("hsm_hot")

PROCESS = "hsm-hot"
SEAL_KEY = "hot/seal"
LINK_KEY_AAD = b"link_key"
AUDIT_FILE = "audit.jsonl"
POLICY_FILE = "policy.db"
COUNTERS_FILE = "link-counters.json"


@dataclass(frozen=True)
class HotPaths:
    """Where the hot HSM keeps its files, all under `[hsm_hot] state_dir`."""

    state_dir: Path

    @property
    def audit(self) -> Path:
        return self.state_dir / AUDIT_FILE

    @property
    def policy(self) -> Path:
        return self.state_dir / POLICY_FILE

    @property
    def counters(self) -> Path:
        return self.state_dir / COUNTERS_FILE

    @classmethod
    def of(cls, section: Section) -> HotPaths:
        return cls(section.path("state_dir"))


def _network(config: Config) -> Network:
    name = config.section("deployment").str("network", "regtest")
    try:
        return Network.from_name(name)
    except ValueError:
        raise ConfigError(f"config: [deployment] network {name!r} is unknown") from None


# -- init ----------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> str:
    """Create the token and wrapping key; import the one-time pairing file, then delete it.

    The file is read, its link key sealed and stored, and only then removed, so a failure in
    between leaves the file for a second try instead of losing the pairing.
    """
    config = config_from_args(args)
    setup_logging(PROCESS, config.log_dir, fmt=config.log_format)
    section = config.section("hsm_hot")
    created = HsmToken.init(section)
    state = HotState(HotPaths.of(section).state_dir)
    pairing_file = section.path("pairing_file")
    try:
        with HsmToken.open(section) as token:
            token.seals.ensure_wrapping_key(SEAL_KEY)
            paired = state.pairing()
            if paired is not None and not (args.re_pair and pairing_file.is_file()):
                note = ""
                if pairing_file.is_file():
                    note = f"; a new pairing file waits at {pairing_file} (use --re-pair)"
                return f"hsm-hot: token {section.str('token_label')} ready, already paired{note}"
            if not pairing_file.is_file():
                raise PairingError(
                    f"no pairing file at {pairing_file}: run `hsm-cold init` first "
                    "(it writes the file once), then `hsm-hot init` again"
                )
            bundle = PairingBundle.from_bytes(pairing_file.read_bytes())
            sealed = token.seals.encrypt(SEAL_KEY, bundle.link_key, LINK_KEY_AAD)
            state.set_pairing(sealed, bundle.cold_identity)
            pairing_file.unlink()
    finally:
        state.close()
    log.info("paired with the cold HSM (identity %s)", bundle.cold_identity.hex())
    return (
        f"hsm-hot: token {section.str('token_label')} {created.value}; paired with cold HSM "
        f"{bundle.cold_identity.hex()}; pairing file removed"
    )


# -- serve ---------------------------------------------------------------------------------------


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ConfigError(f"config: [hsm_hot] rpc_host {host!r} is not a loopback address")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve custody until SIGTERM/SIGINT."""
    config = config_from_args(args)
    setup_logging(PROCESS, config.log_dir, args.log_level, fmt=config.log_format)
    section = config.section("hsm_hot")
    serial = config.section("serial")
    secret = section.secret("rpc_secret")
    host, port = section.str("rpc_host"), section.int("rpc_port")
    _check_loopback(host)
    HsmToken.settings(section)  # refuses placeholder PINs before anything is opened
    network = _network(config)
    paths = HotPaths.of(section)
    stop = install_stop_handlers()
    state = HotState(paths.state_dir)
    with contextlib.ExitStack() as stack:
        stack.callback(state.close)
        pairing = state.pairing()
        if pairing is None:
            raise NotPaired("hsm-hot is not paired: run `hsm-cold init`, then `hsm-hot init`")
        token = stack.enter_context(HsmToken.open(section))
        link_key = token.seals.decrypt(SEAL_KEY, pairing.sealed_link_key, LINK_KEY_AAD)
        client = LinkClient.open(
            serial.port_url("hot_port"),
            link_key,
            JsonCounterStore(paths.counters),
            LinkConfig(baudrate=serial.int("baud", 115200)),
            name="hot-link",
        )
        del link_key
        relay = ColdRelay(client, section.float("link_timeout", 20.0))
        stack.callback(relay.close)
        ledger = PolicyLedger(paths.policy, HotPolicy.from_section(section))
        stack.callback(ledger.close)
        service = HotService(
            token,
            state,
            relay,
            ledger,
            AuditLog(paths.audit),
            network,
            pairing.cold_identity,
            token_status=lambda: token.status(section),
        )
        server = RpcServer(host, port, secret, service.dispatch)
        server.start()
        stack.callback(server.stop)
        mark_ready(config.run_dir, PROCESS, rpc=f"http://{host}:{port}")
        stack.callback(clear_ready, config.run_dir, PROCESS)
        log.info("serving custody on %s:%d (network %s)", host, port, network.value)
        stop.wait()
        log.info("stopping")
    return 0


# -- unlock and audit ----------------------------------------------------------------------------


def _read_so_pin() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("SO PIN: ")
    return sys.stdin.readline().rstrip("\r\n")


def cmd_unlock(args: argparse.Namespace) -> str:
    """Clear the PIN retry lock after an SO login with the SO PIN the operator types."""
    config = config_from_args(args)
    setup_logging(PROCESS, config.log_dir, fmt=config.log_format)
    section = config.section("hsm_hot")
    so_pin = _read_so_pin()
    if not so_pin:
        raise ConfigError("no SO PIN given on stdin")
    HsmToken.reset_pin_lock(section, so_pin)
    return f"hsm-hot: PIN retry lock of token {section.str('token_label')} cleared"


def _when(at: Any) -> str:
    try:
        return datetime.datetime.fromtimestamp(float(at), datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
    except (TypeError, ValueError):
        return "?"


def cmd_audit(args: argparse.Namespace) -> str:
    """The audit log as a table (or JSON lines with --json)."""
    config = config_from_args(args)
    entries = AuditLog(HotPaths.of(config.section("hsm_hot")).audit).entries()
    if args.json:
        return "\n".join(json.dumps(e, sort_keys=True) for e in entries[-args.limit :])
    rows = [
        (
            _when(e.get("at")),
            e.get("event", ""),
            e.get("account", ""),
            e.get("user_tx_no", ""),
            e.get("txid", ""),
            e.get("amount", ""),
            e.get("fee", ""),
        )
        for e in entries[-args.limit :]
    ]
    return render_table(("at (UTC)", "event", "account", "user_tx_no", "txid", "sat", "fee"), rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsm-hot", description=__doc__)
    set_role(parser, "hsm-hot")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("init", help="create the token and import the pairing file")
    add_dir_argument(p)
    p.add_argument(
        "--re-pair",
        action="store_true",
        help="replace an existing pairing with a new pairing file",
    )
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("serve", help="serve custody's RPC and relay to the cold HSM")
    add_dir_argument(p)
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING"],
        help="log verbosity (default: %(default)s)",
    )
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("unlock", help="clear the PIN retry lock (SO PIN from stdin)")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_unlock)

    add_change_pin_command(sub, "hsm_hot", "hsm-hot")

    p = sub.add_parser("audit", help="show the audit log")
    add_dir_argument(p)
    p.add_argument(
        "--limit", type=int, default=100, help="the last LIMIT entries (default: %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(handler=cmd_audit)
    recovery_sign.add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
