"""`hsm-cold`: the air-gapped HSM. Reachable only over the serial link; no network socket at all.

hsm-cold init       create the token, keys, state and (once) the pairing file
hsm-cold serve      answer the hot HSM over the serial link, and the V-devices by SMS
hsm-cold unfreeze   the operator's local unfreeze of an account (asks for the user PIN)
hsm-cold status     accounts, frozen ones, SMS channels and counters, recent alerts
hsm-cold alerts     every recorded alert
hsm-cold identity   the identity key's fingerprint, to read out to the V-device's owner
hsm-cold confirm-account N --vdevice-fingerprint F   confirm a pending account, set its policy
hsm-cold policy     each account's spending policy and the loosenings waiting
hsm-cold backup verify / restore / sign-recovery / sweep: disaster recovery (docs/recovery.md)
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cc_common.cli import (
    Table,
    add_dir_argument,
    add_json_argument,
    config_from_args,
    render_table,
    run,
    set_role,
)
from cc_common.config import Config, Section
from cc_common.errors import ConfigError
from cc_common.link import LinkConfig, LinkServer, SqliteCounterStore
from cc_common.logs import setup_logging
from cc_common.pairing import write_pairing_file
from cc_common.process import clear_ready, install_stop_handlers, mark_ready
from cc_common.token import HsmToken, Provisioned
from cc_common.token.pin_change import add_change_pin_command
from hsm_cold import policy_cli, recovery_cli
from hsm_cold.console import Console
from hsm_cold.cosign import FeePolicy
from hsm_cold.errors import NotPaired, UnknownAccount
from hsm_cold.keystore import IDENTITY_KEY, ColdKeystore
from hsm_cold.restore import BackupSettings, prepare_backup
from hsm_cold.service import AlertKind, ColdService
from hsm_cold.sms_service import SmsService, SmsSettings
from hsm_cold.store import ColdStore
from wallet_core import derive_helper
from wallet_core.networks import Network

log = logging.getLogger("hsm_cold")

NAME = "hsm-cold"
STATE_DB = "cold.db"
COUNTERS_DB = "link-counters.db"
DEFAULT_MAX_FEE_SAT = 1_000_000
DEFAULT_MAX_FEE_RATE = 500.0
DEFAULT_MAX_FEE_PER_DAY_SAT = 10_000_000
RECENT_ALERTS = 10
RECENT_CHANNELS = 3


@dataclass(frozen=True)
class ColdPaths:
    """Where the cold HSM keeps things, from `[hsm_cold]`."""

    state_dir: Path
    pairing_file: Path
    export_dir: Path

    @classmethod
    def of(cls, section: Section) -> ColdPaths:
        return cls(
            section.path("state_dir"), section.path("pairing_file"), section.path("export_dir")
        )

    @property
    def store(self) -> Path:
        return self.state_dir / STATE_DB


def _section(config: Config) -> Section:
    return config.section("hsm_cold")


def _network(config: Config) -> Network:
    name = config.section("deployment").str("network")
    try:
        return Network.from_name(name)
    except ValueError:
        raise ConfigError(f"config: [deployment] network {name!r} is unknown") from None


def _policy(section: Section) -> FeePolicy:
    policy = FeePolicy(
        max_fee_sat=section.int("max_fee_sat", DEFAULT_MAX_FEE_SAT),
        max_fee_rate=section.float("max_fee_rate", DEFAULT_MAX_FEE_RATE),
        max_fee_per_day_sat=section.int("max_fee_per_day_sat", DEFAULT_MAX_FEE_PER_DAY_SAT),
    )
    if policy.max_fee_sat < 0 or policy.max_fee_rate < 1 or policy.max_fee_per_day_sat < 0:
        raise ConfigError(
            "config: [hsm_cold] max_fee_sat / max_fee_rate / max_fee_per_day_sat out of range"
        )
    return policy


def _with_pin(section: Section, pin: str) -> Section:
    return Section(section.name, {**section.values, "user_pin": pin}, section.data_dir)


@contextmanager
def _opened(section: Section) -> Iterator[tuple[HsmToken, ColdStore, ColdKeystore]]:
    paths = ColdPaths.of(section)
    token = HsmToken.open(section)
    try:
        store = ColdStore(paths.store)
        try:
            yield token, store, ColdKeystore(token, store)
        finally:
            store.close()
    finally:
        token.close()


# -- init ---------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> dict[str, Any]:
    """Idempotent: a second run keeps the keys and writes no new pairing file once paired."""
    config = config_from_args(args)
    section = _section(config)
    paths = ColdPaths.of(section)
    created = HsmToken.init(section)
    with _opened(section) as (_, store, keystore):
        backup = prepare_backup(
            keystore,
            store,
            paths.export_dir,
            _network(config),
            BackupSettings.of(section),
            Console(),
        )
        identity = keystore.ensure_keys()
        pairing: str | None = None
        if not keystore.has_link_key():
            write_pairing_file(paths.pairing_file, keystore.new_pairing())
            pairing = str(paths.pairing_file)
    paths.export_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return {
        "token": "created" if created is Provisioned.CREATED else "already present",
        "identity_pubkey": identity.hex(),
        "pairing_file": pairing or "none written: already paired",
        **backup,
    }


# -- serve --------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    setup_logging(NAME, config.log_dir, fmt=config.log_format)
    section = _section(config)
    for key in ("so_pin", "user_pin"):
        section.secret(key)  # refuse placeholder PINs before touching the token
    serial = config.section("serial")
    port_url = serial.port_url("cold_port")
    link_config = LinkConfig(baudrate=serial.int("baud", LinkConfig.baudrate))
    paths = ColdPaths.of(section)
    network = _network(config)
    policy = _policy(section)
    if not paths.store.is_file():
        raise NotPaired(f"no cold state in {paths.state_dir}: run `hsm-cold init` first")
    with _opened(section) as (token, store, keystore):
        if not token.keys.has_key(IDENTITY_KEY):
            raise NotPaired("the cold token has no identity key: run `hsm-cold init` first")
        link_key = keystore.link_key()
        if link_key is None:
            raise NotPaired("the cold HSM is not paired: run `hsm-cold init` first")
        server_ref: list[LinkServer] = []
        service = ColdService(
            keystore,
            store,
            network,
            policy,
            paths.export_dir,
            link_refusals=lambda: _refusals(server_ref),
            spending_defaults=policy_cli.defaults(config),
            min_loosen_delay=policy_cli.min_loosen_delay(config),
        )
        counters = SqliteCounterStore(paths.state_dir / COUNTERS_DB)
        server = LinkServer.open(
            port_url,
            link_key,
            service.handlers(),
            counters,
            link_config,
            name="cold-link",
            unit_of_work=store.transaction,  # one commit per group of requests
        )
        del link_key
        server_ref.append(server)
        sms = _sms_service(config, service)
        stop = install_stop_handlers()
        modems = sms.modem_status if sms is not None else list
        service.status_extras = lambda: {"modems": modems(), **token.status(section)}
        derive_helper.start()  # the second core for batch proofs (public chain keys only)
        server.start()
        if sms is not None:
            service.on_alert = sms.on_alert
            service.on_text = sms.on_text
            sms.start()
        mark_ready(config.run_dir, NAME, port=port_url)
        log.info("serving the hot HSM on %s (%s)", port_url, network.value)
        try:
            stop.wait()
        finally:
            log.info("stopping")
            if sms is not None:
                sms.stop()
            server.stop()
            counters.close()
            clear_ready(config.run_dir, NAME)
    return 0


def _sms_service(config: Config, service: ColdService) -> SmsService | None:
    """The SMS side, when `[hsm_cold] modem_ports` lists modems (absent ones are retried)."""
    settings = SmsSettings.of(config)
    if not settings.ports:
        log.warning("no [hsm_cold] modem_ports: the SMS channel is off")
        return None
    return SmsService(service, settings)


def _refusals(server_ref: list[LinkServer]) -> dict[str, int]:
    if not server_ref:
        return {}
    refusals = server_ref[0].session.refusals
    return {reason.name.lower(): n for reason, n in refusals.items()}


# -- console commands ---------------------------------------------------------------------------


def _read_pin(args: argparse.Namespace) -> str:
    if args.pin_stdin:
        pin = sys.stdin.readline().rstrip("\r\n")
    else:
        pin = getpass.getpass("cold token user PIN: ")
    if not pin:
        raise ConfigError("no PIN given")
    return pin


def cmd_unfreeze(args: argparse.Namespace) -> str:
    """The only way to unfreeze: at the cold console, proven by the token's user PIN."""
    config = config_from_args(args)
    section = _section(config)
    pin = _read_pin(args)
    HsmToken.open(_with_pin(section, pin)).close()  # the PIN check, under the retry limit
    del pin
    store = ColdStore(ColdPaths.of(section).store)
    try:
        if store.get_account(args.account) is None:
            raise UnknownAccount(f"account {args.account} is not provisioned on the cold HSM")
        store.set_frozen(args.account, False)
        store.add_alert(
            args.account, AlertKind.ACCOUNT_UNFROZEN.value, "unfrozen at the cold console"
        )
    finally:
        store.close()
    return f"account {args.account} unfrozen"


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _alerts_table(store: ColdStore, limit: int) -> str:
    rows = [
        (a.id, _when(a.at), "-" if a.account is None else a.account, a.kind, a.message)
        for a in store.list_alerts(limit)
    ]
    return render_table(("id", "at (UTC)", "account", "kind", "message"), rows)


def _expires_in(expires_at: float, now: float) -> str:
    left = int(expires_at - now)
    if left <= 0:
        return "expired"
    hours, rest = divmod(left, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _channels_table(store: ColdStore, now: float) -> str:
    """The newest channels of each account: c_id, state, time left."""
    rows, shown = [], dict[int, int]()
    for ch in store.list_channels():
        shown[ch.account] = shown.get(ch.account, 0) + 1
        if shown[ch.account] <= RECENT_CHANNELS:
            how = "sms" if ch.cold_key_label else "link"
            rows.append((ch.account, ch.c_id, ch.state, _expires_in(ch.expires_at, now), how))
    return render_table(("account", "c_id", "state", "expires in", "opened by"), rows)


def _sms_table(store: ColdStore) -> str:
    """SMS counters: received, refused by reason, sent per SIM, ..."""
    rows = [(name, value) for name, value in store.counters().items()]
    rows.append(("outbox (not yet sent)", store.pending_sms_count()))
    return render_table(("sms counter", "count"), rows)


def cmd_status(args: argparse.Namespace) -> str | dict[str, Any]:
    store = ColdStore(ColdPaths.of(_section(config_from_args(args))).store)
    try:
        accounts = [
            (a, "yes" if frozen else "no", reason or "-")
            for a, frozen, reason in store.list_accounts()
        ]
        if args.json:
            return {
                "accounts": [
                    {"account": a, "frozen": frozen, "reason": reason}
                    for a, frozen, reason in store.list_accounts()
                ],
                "sms_counters": dict(store.counters()),
                "sms_outbox": store.pending_sms_count(),
                "alerts_not_handed_over": store.pending_alert_count(),
            }
        return "\n".join(
            (
                render_table(("account", "frozen", "reason"), accounts),
                "",
                f"SMS channels (newest {RECENT_CHANNELS} per account):",
                _channels_table(store, time.time()),
                "",
                _sms_table(store),
                "",
                f"recent alerts ({store.pending_alert_count()} not yet handed over):",
                _alerts_table(store, RECENT_ALERTS),
            )
        )
    finally:
        store.close()


def cmd_alerts(args: argparse.Namespace) -> str | Table:
    store = ColdStore(ColdPaths.of(_section(config_from_args(args))).store)
    try:
        if args.json:
            rows = [
                (a.id, int(a.at), a.account, a.kind, a.message)
                for a in store.list_alerts(args.limit)
            ]
            return Table(("id", "at", "account", "kind", "message"), rows)
        return _alerts_table(store, args.limit)
    finally:
        store.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=NAME, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    set_role(parser, NAME)
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("init", help="create the cold token, keys, state and pairing file")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("serve", help="serve the hot HSM over the serial link")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("unfreeze", help="unfreeze an account (local operator action)")
    p.add_argument("account", type=int, help="the account number to unfreeze")
    p.add_argument("--pin-stdin", action="store_true", help="read the user PIN from stdin")
    add_dir_argument(p)
    p.set_defaults(handler=cmd_unfreeze)

    add_change_pin_command(sub, "hsm_cold", "hsm-cold")

    p = sub.add_parser("status", help="accounts, frozen ones and recent alerts")
    add_dir_argument(p)
    add_json_argument(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("alerts", help="every recorded alert, newest first")
    p.add_argument(
        "--limit", type=int, default=100, help="the last LIMIT alerts (default: %(default)s)"
    )
    add_json_argument(p)
    add_dir_argument(p)
    p.set_defaults(handler=cmd_alerts)
    policy_cli.add_commands(sub)
    recovery_cli.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # everything the cold HSM writes (state, exports, logs) is private
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
