"""Custody's events at the site: signed webhooks first, polling `GET /events` as the fallback.

`POST /webhooks/custody` checks the `CC-Signature` header: HMAC-SHA256, with the endpoint's
secret (set by `set-webhook-secret` or `[merchant_site] webhook_secret`), over
`"<t>." + raw body`, compared in constant time; a timestamp outside
`webhook_tolerance_seconds` (default 300) either way is refused, so a forged or replayed
request changes nothing. Each event is stored once per (account_id, seq), however often it
arrives, by webhook or by `catch_up`, and deposit events move the site's deposit ledger: only
`confirmed` and `final` deposits may be credited. A fee bump (`send.replaced`) and the
transaction finally mined (`send.confirmed`) update a sent withdrawal's `tx_hash`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from flask import Blueprint, request
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from examples.merchant_site import store
from examples.merchant_site.errors import BadRequest, NotFound, Unauthorized
from examples.merchant_site.extensions import db, site, transaction
from examples.merchant_site.models import (
    CustodyEvent,
    Deposit,
    Withdrawal,
    WithdrawalStatus,
    utcnow,
)

bp = Blueprint("webhooks", __name__)

SIGNATURE_HEADER = "CC-Signature"
CREDITABLE = ("confirmed", "final")


def verify_signature(
    secret: str, header: str | None, body: bytes, *, tolerance: int, now: float | None = None
) -> None:
    """Raise `Unauthorized` unless `header` signs `body` with `secret`, recently."""
    if not header:
        raise Unauthorized(f"missing {SIGNATURE_HEADER} header")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts, given = int(parts["t"]), parts["v1"]
    except (KeyError, ValueError):
        raise Unauthorized(f"malformed {SIGNATURE_HEADER} header") from None
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given, mac):
        raise Unauthorized("webhook signature does not match")
    age = (time.time() if now is None else now) - ts
    if abs(age) > tolerance:
        raise Unauthorized(f"webhook signed {int(age)} s ago, outside the {tolerance} s window")


def _event_fields(event: Any) -> tuple[int, int, str, str, dict[str, Any]]:
    try:
        data = event["data"]
        fields = (int(event["account_id"]), int(event["seq"]), str(event["kind"]))
        side = str(event["side"])
        if not isinstance(data, dict):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise BadRequest("not a custody event: account_id, seq, kind, side, data") from None
    return (*fields, side, data)


def record(s: Session, event: Any, via: str) -> bool:
    """Store one event (once) and apply it to the deposit ledger; False if already had."""
    account_id, seq, kind, side, data = _event_fields(event)
    known = s.execute(
        select(CustodyEvent.id).where(
            CustodyEvent.account_id == account_id, CustodyEvent.seq == seq
        )
    ).first()
    if known is not None:
        return False
    s.add(
        CustodyEvent(
            account_id=account_id,
            seq=seq,
            kind=kind,
            side=side,
            data=json.dumps(data, sort_keys=True),
            via=via,
        )
    )
    if kind.startswith("deposit.") and "txid" in data:
        _apply_deposit(s, side, str(data["txid"]), int(data.get("value", 0)), kind[8:])
    if kind in ("send.replaced", "send.confirmed") and "txid" in data and "user_tx_no" in data:
        _follow_withdrawal(s, str(data["user_tx_no"]), str(data["txid"]))
    try:
        s.flush()
    except IntegrityError:  # the same event arrived twice at once: the other one counts
        s.rollback()
        return False
    return True


def _apply_deposit(s: Session, side: str, txid: str, value: int, state: str) -> None:
    row = s.execute(
        select(Deposit).where(Deposit.side == side, Deposit.txid == txid)
    ).scalar_one_or_none()
    if row is None:
        s.add(Deposit(side=side, txid=txid, value=value, state=state))
    else:
        row.state, row.updated_at = state, utcnow()


def _follow_withdrawal(s: Session, vtest_id: str, txid: str) -> None:
    """A fee bump (or the transaction that was mined) gives a sent withdrawal its new hash."""
    s.execute(
        update(Withdrawal)
        .where(Withdrawal.vtest_id == vtest_id, Withdrawal.status == WithdrawalStatus.SENT)
        .values(tx_hash=txid)
    )


def last_seq(s: Session, side: str) -> int:
    """The highest seq stored for events a `side` token sees."""
    got = s.execute(
        select(func.max(CustodyEvent.seq)).where(CustodyEvent.side.in_((side, "both")))
    ).scalar()
    return int(got or 0)


def stored_seqs(s: Session) -> dict[str, int]:
    """How many events are stored and the highest seq: equal when nothing is missing."""
    count, top = s.execute(select(func.count(CustodyEvent.id), func.max(CustodyEvent.seq))).one()
    return {"count": int(count or 0), "max_seq": int(top or 0)}


def credited_total(s: Session, side: str) -> int:
    total = s.execute(
        select(func.coalesce(func.sum(Deposit.value), 0)).where(
            Deposit.side == side, Deposit.state.in_(CREDITABLE)
        )
    ).scalar()
    return int(total or 0)


def catch_up(s: Session, client: Any, token: str, side: str, wait: float = 0.0) -> int:
    """Fetch and record every event `side`'s token sees after this side's cursor (the last
    seq polled for it, kept in the settings); returns how many were new."""
    key = f"events_cursor_{side}"
    cursor = int(store.get_setting(s, key) or 0)
    added = 0
    while True:
        page = client.events(token, cursor, wait=wait)
        for event in page:
            added += int(record(s, event, "poll"))
            cursor = max(cursor, int(event["seq"]))
        store.set_setting(s, key, str(cursor))
        s.commit()
        if not page:
            return added
        wait = 0.0


@bp.post("/webhooks/custody")
def receive() -> tuple[str, int]:
    """A signed event from custody: 204 stored (or already had), 401 forged or stale."""

    settings = site().settings
    secret = store.get_setting(db(), "webhook_secret") or settings.webhook_secret
    if not secret:
        raise NotFound("webhooks are not configured ([merchant_site] webhook_secret)")
    body = request.get_data(cache=False)
    verify_signature(
        secret,
        request.headers.get(SIGNATURE_HEADER),
        body,
        tolerance=settings.webhook_tolerance,
    )
    try:
        event = json.loads(body)
    except ValueError:
        raise BadRequest("webhook body is not JSON") from None
    with transaction() as s:
        record(s, event, "webhook")
    return "", 204
