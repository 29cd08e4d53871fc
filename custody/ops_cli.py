"""Operator views of `custody`: `journal show`, `sends`, balances for `account show`.

Read-only: these open the database and print; a table by default, only JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cc_common.cli import Table, add_dir_argument, add_json_argument, config_from_args
from custody.balances import confirmed_balance, unconfirmed_balance
from custody.db import database_url, make_engine, make_session_factory
from custody.models import JournalEntry, Send, SendStatus, Wallet, utcnow

OPEN_STATES = (SendStatus.PENDING, SendStatus.BUILT, SendStatus.SIGNED, SendStatus.BROADCAST)
DEFAULT_STUCK_MINUTES = 10.0
WAITING_FOR = {
    SendStatus.PENDING: "waiting for the worker to build it",
    SendStatus.BUILT: "waiting for the HSMs' signatures",
    SendStatus.SIGNED: "waiting to be broadcast",
    SendStatus.BROADCAST: "waiting for a confirmation",
    SendStatus.CONFIRMED: "done",
    SendStatus.FAILED: "failed",
}


def _session(args: argparse.Namespace) -> Session:

    config = config_from_args(args)
    return make_session_factory(make_engine(database_url(config), pool_size=1))()


def _age(since: datetime | None, now: datetime) -> str:
    if since is None:
        return "-"
    seconds = max(int((now - since).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def balances(session: Session, account_id: int, min_conf: int = 1) -> dict[str, dict[str, int]]:
    """Confirmed and incoming satoshi per side (what `account show` prints)."""
    return {
        side.name.lower(): {
            "confirmed_sat": confirmed_balance(session, account_id, side, min_conf),
            "unconfirmed_sat": unconfirmed_balance(session, account_id, side),
        }
        for side in (Wallet.COLD, Wallet.HOT)
    }


# -- journal show -------------------------------------------------------------------------------


def cmd_journal_show(args: argparse.Namespace) -> Table:
    with _session(args) as s:
        query = select(JournalEntry).order_by(JournalEntry.id.desc()).limit(args.limit)
        if args.account is not None:
            query = query.where(JournalEntry.account_id == args.account)
        if args.kind:
            query = query.where(JournalEntry.kind == args.kind)
        rows = list(s.execute(query).scalars())
    rows.reverse()  # oldest first, like a log
    data = [
        (
            e.id,
            e.at.replace(microsecond=0).isoformat(),
            e.kind,
            e.account_id if e.account_id is not None else "-",
            e.data if not args.json else json.loads(e.data),
            e.hash[:16],
        )
        for e in rows
    ]
    return Table(("id", "at", "kind", "account", "data", "hash"), data)


# -- sends --------------------------------------------------------------------------------------


def _reason(send: Send, stuck: bool) -> str:
    if send.status is SendStatus.FAILED:
        return send.failure_reason or "failed"
    text = WAITING_FOR[send.status]
    if send.failure_reason:
        text += f" (last problem: {send.failure_reason})"
    if stuck:
        text = "STUCK: " + text
    return text


def cmd_sends(args: argparse.Namespace) -> Table:
    now = utcnow()
    stuck_after = timedelta(minutes=args.stuck_minutes)
    states = [SendStatus(s) for s in args.state] if args.state else list(OPEN_STATES)
    with _session(args) as s:
        query = (
            select(Send)
            .where(Send.status.in_(states))
            .order_by(Send.request_at.desc())
            .limit(args.limit)
        )
        if args.account is not None:
            query = query.where(Send.account_id == args.account)
        sends = list(s.execute(query).scalars())
    rows: list[tuple[Any, ...]] = []
    for send in sends:
        since = send.tx_at if send.status is SendStatus.BROADCAST else send.request_at
        stuck = send.status in OPEN_STATES and since is not None and now - since > stuck_after
        if args.stuck and not stuck:
            continue
        rows.append(
            (
                send.id,
                send.account_id,
                send.user_tx_no,
                send.status.value,
                _age(send.request_at, now),
                send.attempts,
                send.txid or "-",
                _reason(send, stuck),
            )
        )
    return Table(
        ("id", "account", "user_tx_no", "state", "age", "attempts", "txid", "reason"), rows
    )


def state_arg(text: str) -> str:
    try:
        return SendStatus(text.strip().lower()).value
    except ValueError:
        valid = ", ".join(s.value for s in SendStatus)
        raise argparse.ArgumentTypeError(f"unknown state {text!r} (one of: {valid})") from None


def register_journal_show(jsub: Any) -> None:
    q = jsub.add_parser("show", help="the newest journal entries (oldest first)")
    add_dir_argument(q)
    q.add_argument("--limit", type=int, default=50, help="how many entries (default: %(default)s)")
    q.add_argument("--account", type=int, default=None, help="only this account's entries")
    q.add_argument("--kind", default=None, help="only entries of this kind (e.g. send_broadcast)")
    add_json_argument(q)
    q.set_defaults(handler=cmd_journal_show)


def register_sends(sub: Any) -> None:
    p = sub.add_parser("sends", help="hot sends still in progress, with their age and reason")
    add_dir_argument(p)
    p.add_argument(
        "--state",
        action="append",
        type=state_arg,
        metavar="STATE",
        help="only sends in STATE (repeatable; default: every state not final: "
        + ", ".join(s.value for s in OPEN_STATES)
        + ")",
    )
    p.add_argument("--account", type=int, default=None, help="only this account's sends")
    p.add_argument("--stuck", action="store_true", help="only sends stuck longer than allowed")
    p.add_argument(
        "--stuck-minutes",
        type=float,
        default=DEFAULT_STUCK_MINUTES,
        help="a send in one state longer than this is stuck (default: %(default)s)",
    )
    p.add_argument("--limit", type=int, default=100, help="at most LIMIT sends, newest first")
    add_json_argument(p)
    p.set_defaults(handler=cmd_sends)
