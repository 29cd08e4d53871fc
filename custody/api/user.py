"""`GET /user`: the account as seen from the token's side."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy import select

from custody.api import iso, queries
from custody.app import settings
from custody.auth import any_token, current_principal
from custody.batches import next_address
from custody.errors import BatchNotVerified, Conflict, NotFound
from custody.extensions import db
from custody.models import Account, AccountStatus, Wallet

bp = Blueprint("user", __name__)


@bp.get("/user")
@any_token
def get_user() -> dict[str, object]:
    p = current_principal()
    cold = p.wallet is Wallet.COLD
    conn = db.reader
    a = conn.execute(
        select(
            Account.id,
            Account.name,
            Account.status,
            Account.network,
            Account.created_at,
            Account.cold_descriptor if cold else Account.hot_descriptor,
            Account.cold_receive_next if cold else Account.hot_receive_next,
        ).where(Account.id == p.account_id)
    ).first()
    if a is None:
        raise NotFound("account not found")
    cfg = settings()
    try:
        index, address = next_address(
            conn,
            a.id,
            p.wallet,
            require_verified=cfg.require_verified_batches,
            take=False,
            start_hint=a[6],
        )
    except (BatchNotVerified, Conflict):
        index, address = None, None
    return {
        "user_id": a.id,
        "user_name": a.name,
        "balance": queries.balance(conn, a.id, p.wallet, cfg.min_confirmations),
        "receiving_index": index,
        "address": address,
        "register_at": iso(a.created_at),
        # extensions
        "wallet": "cold" if cold else "hot",
        "status": AccountStatus(a.status).value,
        "network": a.network,
        "min_confirmations": cfg.min_confirmations,
        "descriptor": a[5],
    }
