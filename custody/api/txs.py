"""Transactions of the token's side (`/tx`, `/tx/detail/<hash>`) and hot sends
(`POST /tx/request`, `GET /tx/<user_tx_no>`)."""

from __future__ import annotations

import contextlib
import logging

from flask import Blueprint, Response, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from custody import journal, send_statements
from custody.api import iso, tx_json
from custody.api.params import body_fields
from custody.api.schemas import parse_send_request, parse_txid, parse_user_tx_no
from custody.auth import any_token, current_principal, hot_only
from custody.errors import (
    AccountFrozen,
    DuplicateUserTxNo,
    HsmRefusedError,
    HsmUnavailableError,
    NotFound,
)
from custody.extensions import db, hsm_provider
from custody.models import Account, AccountStatus, Send, SendStatus
from custody.vc_check import check_vc_code
from wallet_core.networks import Network

log = logging.getLogger(__name__)

bp = Blueprint("txs", __name__)


@bp.get("/tx")
@any_token
def list_txs() -> Response:
    """Oldest first, 20 a page, after the transaction `tx_hash` (first page without it)."""
    p = current_principal()
    after = request.args.get("tx_hash")
    txid = parse_txid(after) if after else None
    body = tx_json.tx_page(db.reader, p.account_id, p.wallet, txid)
    if body is None:
        raise NotFound("tx_hash is not a transaction of this account")
    return Response(body + "\n", mimetype="application/json")


@bp.get("/tx/detail/<tx_hash>")
@any_token
def tx_detail(tx_hash: str) -> Response:
    p = current_principal()
    body = tx_json.tx_detail(db.reader, p.account_id, p.wallet, parse_txid(tx_hash))
    if body is None:
        raise NotFound("no such transaction for this account")
    return Response(body + "\n", mimetype="application/json")


def _duplicate(user_tx_no: str) -> DuplicateUserTxNo:
    return DuplicateUserTxNo(f"user_tx_no {user_tx_no} was already accepted")


@bp.post("/tx/request")
@hot_only
def post_send() -> dict[str, object]:
    """Accept a hot send (validated fully); code 3 when its user_tx_no was accepted before."""
    p = current_principal()
    session = db.session
    account = session.get(Account, p.account_id)
    if account is None:
        raise NotFound("account not found")
    req = parse_send_request(body_fields(), Network.from_name(account.network))
    exists = session.execute(
        select(Send.id).where(Send.account_id == account.id, Send.user_tx_no == req.user_tx_no)
    ).first()
    if exists is not None:
        raise _duplicate(req.user_tx_no)
    if account.status is AccountStatus.FROZEN:
        raise AccountFrozen("the account is frozen: sends are refused")
    check_vc_code(
        hsm_provider.client,
        account.id,
        account.cold_identity_pubkey,
        req.request_dict(),
        req.vc_code,
        req.c_id,
    )
    try:
        with db.write() as session:
            send = Send(
                account_id=account.id,
                user_tx_no=req.user_tx_no,
                coin_code=req.coin_code,
                outs=req.outs,
                is_dynamic_fee=req.is_dynamic_fee,
                vc_code=req.vc_code,
                c_id=req.c_id,
                status=SendStatus.PENDING,
                failure_reason="",
            )
            session.add(send)
            session.flush()
            journal.append(
                session,
                journal.JournalKind.SEND_REQUESTED,
                account.id,
                {"send_id": send.id, **req.request_dict(), "c_id": req.c_id},
            )
    except IntegrityError:
        raise _duplicate(req.user_tx_no) from None
    log.info("account %d: send %d accepted", account.id, send.id)
    return {"result": True}


@bp.get("/tx/<user_tx_no>")
@hot_only
def get_send(user_tx_no: str) -> dict[str, object]:
    p = current_principal()
    parse_user_tx_no(user_tx_no)
    send = db.session.execute(
        select(Send).where(Send.account_id == p.account_id, Send.user_tx_no == user_tx_no)
    ).scalar_one_or_none()
    if send is None:
        raise NotFound(f"no send with user_tx_no {user_tx_no}")
    status = SendStatus(send.status)
    extension: dict[str, object] = {}
    if status in send_statements.FINAL:
        # our extension: the cold HSM's signed word, without which a V-device never reports
        # "failed" (absent while the HSMs cannot be reached; the V-device asks again)
        with contextlib.suppress(HsmUnavailableError, HsmRefusedError):
            extension["cold_statement"] = send_statements.statement(
                db.session, hsm_provider.client, p.account_id, user_tx_no, send
            )
    return {
        "tx_hash": send.txid,
        "c_id": send.c_id,
        "user_id": send.account_id,
        "send_request": {
            "coin_code": send.coin_code,
            "user_tx_no": send.user_tx_no,
            "is_dynamic_fee": send.is_dynamic_fee,
            "outs": send.outs,
        },
        "vc_code": send.vc_code,
        "request_at": iso(send.request_at),
        "hot_wallet_tx_id": send.id,
        "tx_at": iso(send.tx_at),
        "hot_wallet_tx_status": status.public_status,
        "failure_reason": send.failure_reason or "",
        "cc_state": status.value,
        "cc_state_reason": send.state_reason or "",
        **extension,
    }


@bp.post("/tx/<user_tx_no>/statement")
@hot_only
def send_statement(user_tx_no: str) -> dict[str, object]:
    """The cold HSM's signed final word on `user_tx_no` (our extension, for the V-device).

    For a send custody holds, once it is final (409 while in progress); for a number custody
    holds no send for (say, refused at intake), the cold HSM closes it and says "refused".
    """
    p = current_principal()
    parse_user_tx_no(user_tx_no)
    send = db.session.execute(
        select(Send).where(Send.account_id == p.account_id, Send.user_tx_no == user_tx_no)
    ).scalar_one_or_none()
    answer = send_statements.statement(
        db.session, hsm_provider.client, p.account_id, user_tx_no, send
    )
    return {"user_tx_no": user_tx_no, "cold_statement": answer}
