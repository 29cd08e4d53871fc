"""Transactions of the token's side (`/tx`, `/tx/detail/<hash>`) and hot sends
(`POST /tx/request`, `GET /tx/<user_tx_no>`)."""

from __future__ import annotations

import contextlib

from flask import Blueprint, Response, request
from sqlalchemy import select

from custody import send_intake, send_statements
from custody.api import iso, tx_json
from custody.api.params import body_fields
from custody.api.schemas import parse_send_request, parse_txid, parse_user_tx_no
from custody.auth import any_token, current_principal, hot_only
from custody.errors import (
    AccountFrozen,
    ApiError,
    DuplicateUserTxNo,
    HsmRefusedError,
    HsmUnavailableError,
    NotFound,
)
from custody.extensions import (
    AccountInfo,
    account_cache,
    db,
    hsm_provider,
    send_intake_committer,
)
from custody.models import Account, AccountStatus, Send, SendStatus
from custody.send_intake import Intake, NewSend
from custody.vc_check import check_vc_text
from wallet_core.networks import Network

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


def _frozen() -> AccountFrozen:
    return AccountFrozen("the account is frozen: sends are refused")


def _account(account_id: int) -> AccountInfo:
    def load() -> AccountInfo | None:
        row = db.reader.execute(
            select(Account.network, Account.cold_identity_pubkey).where(Account.id == account_id)
        ).first()
        return None if row is None else AccountInfo(Network.from_name(row[0]), row[1])

    info = account_cache.get(account_id, load)
    if info is None:
        raise NotFound("account not found")
    return info


def _refused_before(account_id: int, user_tx_no: str) -> None:
    """Raise what a request refused before its write would answer first: a duplicate, then a
    frozen account (the order the write itself checks them in)."""
    with db.factory() as session:
        if send_intake.existing(session, [(account_id, user_tx_no)]):
            raise _duplicate(user_tx_no)
        status = session.execute(select(Account.status).where(Account.id == account_id)).scalar()
    if status is AccountStatus.FROZEN:
        raise _frozen()


# What `jsonify({"result": True})` gives (compact), built once: no JSON encoding per request.
_ACCEPTED = '{"result":true}\n'


@bp.post("/tx/request")
@hot_only
def post_send() -> Response:
    """Accept a hot send (validated fully); code 3 when its user_tx_no was accepted before.

    Written by the process's group committer with the other requests waiting to be written,
    and answered once that transaction committed."""
    p = current_principal()
    account = _account(p.account_id)
    req = parse_send_request(body_fields(), account.network)
    try:
        check_vc_text(
            hsm_provider.client,
            p.account_id,
            account.cold_identity_pubkey,
            req.text,
            req.vc_code,
            req.c_id,
        )
    except ApiError:
        _refused_before(p.account_id, req.user_tx_no)
        raise
    db.release_reader()
    outcome = send_intake_committer.committer.submit(
        NewSend(
            account_id=p.account_id,
            user_tx_no=req.user_tx_no,
            coin_code=req.coin_code,
            outs=req.outs,
            is_dynamic_fee=req.is_dynamic_fee,
            vc_code=req.vc_code,
            c_id=req.c_id,
        )
    )
    if outcome is Intake.DUPLICATE:
        raise _duplicate(req.user_tx_no)
    if outcome is Intake.FROZEN:
        raise _frozen()
    return Response(_ACCEPTED, mimetype="application/json")


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
