"""`GET /user`: the account as seen from the token's side."""

from __future__ import annotations

from flask import Blueprint

from custody.api import iso, queries
from custody.auth import any_token, current_principal
from custody.batches import next_address
from custody.errors import BatchNotVerified, Conflict, NotFound
from custody.extensions import db, settings
from custody.models import AccountStatus, Wallet

bp = Blueprint("user", __name__)


@bp.get("/user")
@any_token
def get_user() -> dict[str, object]:
    p = current_principal()
    cold = p.wallet is Wallet.COLD
    conn = db.reader
    cfg = settings()
    # One statement (account, next address on the fast path, balance cache key).
    a = conn.execute(
        queries.user_stmt(p.wallet, cfg.require_verified_batches), {"account_id": p.account_id}
    ).first()
    if a is None:
        raise NotFound("account not found")
    index, address = a.next_index, a.next_address
    if index is None:
        try:
            index, address = next_address(
                conn,
                a.id,
                p.wallet,
                require_verified=cfg.require_verified_batches,
                take=False,
                start_hint=a.receive_next,
            )
        except (BatchNotVerified, Conflict):
            index, address = None, None
    balance = queries.balance_at_key(
        conn, a.id, p.wallet, cfg.min_confirmations, a.tip_height, a.tip_hash, a.newest_id
    )
    return {
        "user_id": a.id,
        "user_name": a.name,
        "balance": balance,
        "receiving_index": index,
        "address": address,
        "register_at": iso(a.created_at),
        # extensions
        "wallet": "cold" if cold else "hot",
        "status": AccountStatus(a.status).value,
        "network": a.network,
        "min_confirmations": cfg.min_confirmations,
        "descriptor": a.descriptor,
    }
