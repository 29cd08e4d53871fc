"""Operator sub-commands of `custody`: `db upgrade`, `serve`, `account ...`, `token rotate`,
`alerts`, `journal verify`. Registered by `custody.cli` through `register(sub)`.

Handlers return a value (printed by `cc_common.cli.run`) or raise a `CustodyError`. Tokens are
printed exactly once, by `account create` and `token rotate`; they are never logged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cc_common.cli import Table, add_dir_argument, add_json_argument, config_from_args
from cc_common.config import Config
from cc_common.errors import ConfigError
from custody import accounts, freezes, journal, ops_cli
from custody.app import API_PREFIX
from custody.balances import verify_balances
from custody.db import database_url, make_engine, make_session_factory, transaction
from custody.hsm_client import HotHsmClient
from custody.models import Account, Alert, ApiToken, TokenScope
from wallet_core.networks import Network

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_database(url: str, revision: str = "head") -> None:
    """Apply the migrations to `url` (creates the SQLite file if needed)."""
    command.upgrade(alembic_config(url), revision)


def _factory(config: Config) -> sessionmaker[Session]:
    return make_session_factory(make_engine(database_url(config)))


def deployment_network(config: Config) -> Network:
    if config.has_section("deployment"):
        return Network.from_name(config.section("deployment").str("network", "regtest"))
    return Network.REGTEST


def custody_url(config: Config) -> str:
    s = config.section("custody")
    return f"http://{s.str('host')}:{s.int('port')}{API_PREFIX}"


# -- handlers ------------------------------------------------------------------------------
def cmd_db_upgrade(args: argparse.Namespace) -> str:
    config = config_from_args(args)
    upgrade_database(database_url(config), args.revision)
    return f"database upgraded to {args.revision}"


def cmd_serve(args: argparse.Namespace) -> int:
    from custody.serve import serve  # noqa: PLC0415 (gunicorn only when serving)

    return serve(config_from_args(args), workers=args.workers)


def _hsm(config: Config) -> HotHsmClient:
    return HotHsmClient.from_config(config)


def cmd_account_create(args: argparse.Namespace) -> dict[str, Any]:
    config = config_from_args(args)
    hsm = _hsm(config)
    with transaction(_factory(config)) as session:
        created = accounts.create_account(
            session,
            hsm,
            args.name,
            args.vdevice_phone,
            args.owner_phone,
            args.settlement_descriptor,
            args.vdevice_identity,
            network=deployment_network(config),
        )
    cold_numbers: list[str] = []
    if config.has_section("hsm_cold") and config.section("hsm_cold").has("numbers"):
        cold_numbers = [str(n) for n in config.section("hsm_cold").list("numbers")]
    bundle = {
        "account_id": created.account_id,
        "cold_identity": created.cold_identity,
        "cold_numbers": cold_numbers,
        "hot_token": created.hot_token,
        "custody_url": custody_url(config),
    }
    return {
        "account_id": created.account_id,
        "name": created.name,
        "tokens": {"cold": created.cold_token, "hot": created.hot_token},
        "notice": "the tokens are shown once; only their hashes are stored",
        "vdevice_bundle": bundle,
        "descriptors": created.descriptors,
    }


def cmd_account_list(args: argparse.Namespace) -> Table:
    config = config_from_args(args)
    with _factory(config)() as session:
        rows = session.execute(select(Account).order_by(Account.id)).scalars().all()
        table = [
            (
                a.id,
                a.name,
                a.status.value,
                a.network,
                a.cold_receive_next,
                a.hot_receive_next,
                a.created_at.replace(microsecond=0).isoformat(),
            )
            for a in rows
        ]
    return Table(("id", "name", "status", "network", "cold next", "hot next", "created"), table)


def cmd_account_show(args: argparse.Namespace) -> dict[str, Any]:
    config = config_from_args(args)
    with _factory(config)() as session:
        a = accounts.get_account(session, args.id)
        tokens = session.execute(
            select(ApiToken).where(ApiToken.account_id == a.id).order_by(ApiToken.id)
        ).scalars()
        return {
            "id": a.id,
            "name": a.name,
            "status": a.status.value,
            "freeze": freezes.describe(session, a),
            "balances": ops_cli.balances(
                session, a.id, config.section("custody").int("min_confirmations", 1)
            ),
            "frozen_reason": a.frozen_reason,
            "network": a.network,
            "vdevice_phone": a.vdevice_phone,
            "owner_phone": a.owner_phone,
            "settlement_descriptor": a.settlement_descriptor,
            "cold_identity": a.cold_identity_pubkey,
            "vdevice_identity": a.vdevice_identity_pubkey,
            "hot_pubkey": a.hot_pubkey,
            "cold_receiving_xpub": a.cold_receiving_xpub,
            "cold_cosigner_xpub": a.cold_cosigner_xpub,
            "recovery_xpub": a.recovery_xpub,
            "cold_descriptor": a.cold_descriptor,
            "hot_descriptor": a.hot_descriptor,
            "cold_receive_next": a.cold_receive_next,
            "hot_receive_next": a.hot_receive_next,
            "hot_change_next": a.hot_change_next,
            "created_at": a.created_at.isoformat(),
            "tokens": [
                {
                    "scope": t.scope.value,
                    "hint": t.hint + "...",
                    "rate_limit_per_minute": t.rate_limit_per_minute,
                    "created_at": t.created_at.isoformat(),
                    "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
                }
                for t in tokens
            ],
        }


def cmd_account_freeze(args: argparse.Namespace) -> str:
    config = config_from_args(args)
    with transaction(_factory(config)) as session:
        told = accounts.freeze_account(session, _hsm(config), args.id, args.reason, config)
    suffix = "" if told else " (the HSMs could NOT be told; freeze them at their consoles)"
    return f"account {args.id} frozen{suffix}"


def cmd_account_unfreeze(args: argparse.Namespace) -> str:
    config = config_from_args(args)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError("unfreeze needs a confirmation: answer the prompt, or pass --yes")
        answer = input(f"unfreeze account {args.id}? sends are accepted again [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return "nothing changed"
    with transaction(_factory(config)) as session:
        return freezes.unfreeze_account(session, _hsm(config), args.id, args.reason, config)


def cmd_token_rotate(args: argparse.Namespace) -> dict[str, Any]:
    config = config_from_args(args)
    with transaction(_factory(config)) as session:
        token = accounts.rotate_token(session, args.id, TokenScope(args.scope))
    return {
        "account_id": args.id,
        "scope": args.scope,
        "token": token,
        "notice": "shown once; the previous token of this scope is revoked",
    }


def cmd_alerts(args: argparse.Namespace) -> Table:
    config = config_from_args(args)
    with _factory(config)() as session:
        rows = (
            session.execute(select(Alert).order_by(Alert.id.desc()).limit(args.limit))
            .scalars()
            .all()
        )
        table = [
            (
                a.id,
                a.at.replace(microsecond=0).isoformat(),
                a.kind,
                a.account_id if a.account_id is not None else "-",
                "yes" if a.delivered else ("no: " + a.error if a.error else "no"),
                a.message,
            )
            for a in rows
        ]
    return Table(("id", "at", "kind", "account", "delivered", "message"), table)


def cmd_journal_verify(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    with _factory(config)() as session:
        result = journal.verify(session)
    if args.json:
        print(json.dumps({**result.__dict__, "description": result.describe()}))
    else:
        print(result.describe())
    return 0 if result.ok else 1


def cmd_balance_verify(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    with _factory(config)() as session:
        mismatches = verify_balances(session)
    if args.json:
        print(json.dumps({"ok": not mismatches, "mismatches": [m.describe() for m in mismatches]}))
    elif mismatches:
        print("\n".join(m.describe() for m in mismatches))
    else:
        print(
            "every maintained balance equals the sum of its unspent outputs and the journal's"
            " newest record of it"
        )
    return 1 if mismatches else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operator's sub-commands to the `custody` parser."""
    p = sub.add_parser("db", help="database schema")
    dsub = p.add_subparsers(dest="db_command")
    q = dsub.add_parser("upgrade", help="apply the Alembic migrations")
    add_dir_argument(q)
    q.add_argument("--revision", default="head", help="target migration (default: %(default)s)")
    q.set_defaults(handler=cmd_db_upgrade)

    p = sub.add_parser("serve", help="run the custody API (gunicorn)")
    add_dir_argument(p)
    p.add_argument("--workers", type=int, default=None, help="default [custody] workers or 2")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("account", help="accounts")
    asub = p.add_subparsers(dest="account_command")
    q = asub.add_parser("create", help="provision an account on the HSM pair")
    add_dir_argument(q)
    q.add_argument("name", help="the customer's name for the account")
    q.add_argument("--vdevice-phone", required=True, help="the V-device's phone number (E.164)")
    q.add_argument("--owner-phone", required=True, help="the account owner's phone number (E.164)")
    q.add_argument(
        "--settlement-descriptor",
        required=True,
        help="the customer's ranged (/*) descriptor with key origins, where sweeps pay",
    )
    q.add_argument(
        "--vdevice-identity",
        required=True,
        metavar="HEX",
        help="the V-device's identity public key (33-byte compressed, hex)",
    )
    q.set_defaults(handler=cmd_account_create)
    q = asub.add_parser("list", help="list accounts")
    add_dir_argument(q)
    add_json_argument(q)
    q.set_defaults(handler=cmd_account_list)
    q = asub.add_parser("show", help="one account's public material and tokens (hints)")
    add_dir_argument(q)
    q.add_argument("id", type=int, help="the account number")
    q.set_defaults(handler=cmd_account_show)
    q = asub.add_parser("freeze", help="freeze an account (custody and HSMs)")
    add_dir_argument(q)
    q.add_argument("id", type=int, help="the account number")
    q.add_argument("--reason", required=True, help="why (recorded, shown with the freeze)")
    q.set_defaults(handler=cmd_account_freeze)

    q = asub.add_parser(
        "unfreeze", help="lift an operator's freeze (a cold HSM freeze: the cold console only)"
    )
    add_dir_argument(q)
    q.add_argument("id", type=int, help="the account number")
    q.add_argument("--reason", default="", help="why (recorded in the journal)")
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation (scripts)")
    q.set_defaults(handler=cmd_account_unfreeze)

    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_command")
    q = tsub.add_parser("rotate", help="revoke a token and issue a new one")
    add_dir_argument(q)
    q.add_argument("id", type=int, help="the account number")
    q.add_argument(
        "--scope",
        required=True,
        choices=[s.value for s in TokenScope],
        help="which token: cold (deposits only) or hot (sends)",
    )
    q.set_defaults(handler=cmd_token_rotate)

    p = sub.add_parser("alerts", help="operator alerts, newest first")
    add_dir_argument(p)
    p.add_argument(
        "--limit", type=int, default=50, help="the newest LIMIT alerts (default: %(default)s)"
    )
    add_json_argument(p)
    p.set_defaults(handler=cmd_alerts)

    p = sub.add_parser("journal", help="the custody journal")
    jsub = p.add_subparsers(dest="journal_command")
    q = jsub.add_parser("verify", help="verify the hash chain")
    add_dir_argument(q)
    q.add_argument("--json", action="store_true", help="print only the result as JSON")
    q.set_defaults(handler=cmd_journal_verify)
    ops_cli.register_journal_show(jsub)

    p = sub.add_parser("balance", help="the maintained account balances")
    bsub = p.add_subparsers(dest="balance_command")
    q = bsub.add_parser(
        "verify",
        help="compare every maintained balance with the sum of its unspent outputs and with the"
        " journal's newest record of it (run `custody journal verify` for the chain itself)",
    )
    add_dir_argument(q)
    q.add_argument("--json", action="store_true", help="print only the result as JSON")
    q.set_defaults(handler=cmd_balance_verify)
    ops_cli.register_sends(sub)
