"""Receiving addresses of the token's side: batches, history, the next address, and the
V-device's verdict on a batch (our extension, `POST /address/batch/<n>/status`)."""

from __future__ import annotations

from flask import Blueprint, request
from sqlalchemy import select

from custody import batches
from custody.api.params import body_fields, parse_batch_no
from custody.api.schemas import parse_batch_status, parse_path
from custody.auth import any_token, current_principal, hot_only
from custody.errors import BadRequest, NotFound
from custody.extensions import app_config, db, hsm_provider, settings
from custody.models import Address, Chain

bp = Blueprint("addresses", __name__)

HISTORY_PAGE = 100


@bp.get("/address/batch/<batch_no>")
@any_token
def get_batch(batch_no: str) -> list[dict[str, object]]:
    p = current_principal()
    number = parse_batch_no(batch_no)
    return batches.get_or_create_batch(
        db.factory, hsm_provider.client, app_config(), p.account_id, p.wallet, number
    )


@bp.post("/address/batch/<batch_no>/status")
@hot_only
def post_batch_status(batch_no: str) -> dict[str, object]:
    p = current_principal()
    number = parse_batch_no(batch_no)
    report = parse_batch_status(body_fields())
    with db.write() as session:
        batches.set_batch_status(
            session, app_config(), p.account_id, report.wallet, number, report.status
        )
    return {"result": True}


@bp.get("/address/history/<path>")
@any_token
def get_history(path: str) -> list[dict[str, object]]:
    """Handed-out addresses of a path, newest first, at most 100, after `since_address`."""
    p = current_principal()
    chain = Chain(parse_path(path))
    session = db.reader
    q = select(Address.index, Address.address).where(
        Address.account_id == p.account_id, Address.wallet == p.wallet, Address.chain == chain
    )
    if chain is Chain.RECEIVE:
        q = q.where(Address.handed_out_at.is_not(None))
    since = request.args.get("since_address")
    if since is not None:
        if not since or len(since) > 100:
            raise BadRequest("since_address is not a valid address")
        cursor = session.execute(
            q.with_only_columns(Address.index).where(Address.address == since)
        ).scalar()
        if cursor is None:
            raise NotFound("since_address is not an address handed out on this path")
        q = q.where(Address.index < cursor)
    rows = session.execute(q.order_by(Address.index.desc()).limit(HISTORY_PAGE)).all()
    return [{"index": i, "address": a} for i, a in rows]


@bp.get("/address/next")
@any_token
def get_next() -> dict[str, object]:
    p = current_principal()
    with db.write() as session:
        index, address = batches.next_address(
            session,
            p.account_id,
            p.wallet,
            require_verified=settings().require_verified_batches,
            take=True,
        )
    return {"index": index, "address": address}
