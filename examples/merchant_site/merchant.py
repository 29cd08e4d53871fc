"""The merchant's own side: queue withdrawals, fetch address batches, see what happened.

These pages are for the merchant, not the V-device. They are open unless
`[merchant_site] admin_token` is set (then send it in `X-Merchant-Token`): bind the site to
loopback or put it behind your own login.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template
from sqlalchemy import select

from examples.merchant_site import events, forms, store
from examples.merchant_site.errors import Conflict, Forbidden
from examples.merchant_site.extensions import (
    ADMIN_TOKEN_HEADER,
    check_shared_token,
    custody_token,
    db,
    site,
    transaction,
)
from examples.merchant_site.models import AddressType, Deposit

bp = Blueprint("merchant", __name__, template_folder="templates")


@bp.before_request
def _authenticate() -> None:
    check_shared_token(site().settings.admin_token, ADMIN_TOKEN_HEADER)


@bp.get("/")
def index() -> str:
    s = db()
    return render_template(
        "index.html", batches=store.list_batches(s), withdrawals=store.list_withdrawals(s)
    )


@bp.get("/merchant/batches")
def list_batches() -> list[dict[str, Any]]:
    return [b.summary() for b in store.list_batches(db())]


@bp.post("/merchant/batches/fetch")
def fetch_batch() -> tuple[dict[str, Any], int]:
    """Fields `type` (hot/cold or 1/2) and `batch_no`: fetch it from custody for verification."""
    data = forms.request_data()
    address_type = forms.address_type(data)
    batch_no = forms.integer(data, "batch_no")
    token = custody_token(f"{address_type.name.lower()}_token")
    addresses = store.download_batch(site().custody, token, address_type, batch_no)
    with transaction() as s:
        batch = store.save_batch(s, address_type, batch_no, addresses)
    return batch.summary(), 201


@bp.get("/merchant/deposits")
def list_deposits() -> dict[str, Any]:
    """The deposit ledger custody's events built, and the total that may be credited."""
    s = db()
    rows = s.execute(select(Deposit).order_by(Deposit.id)).scalars()
    return {
        "deposits": [d.summary() for d in rows],
        "credited": {side: events.credited_total(s, side) for side in ("cold", "hot")},
        "last_seq": {side: events.last_seq(s, side) for side in ("cold", "hot")},
        "events": events.stored_seqs(s),
    }


@bp.get("/merchant/withdrawals")
def list_withdrawals() -> list[dict[str, Any]]:
    return [w.summary() for w in store.list_withdrawals(db())]


@bp.post("/merchant/withdrawals")
def enqueue_withdrawal() -> tuple[dict[str, Any], int]:
    """Fields `outs` ("addr,value;addr,value") and `dynamic` (0/1, default 1).

    DEMO SWITCH: with `[merchant_site] allow_raw_vtest = true`, `raw_vtest_info` is stored as
    given, unencrypted: how the demo plays a hacked site whose requests the V-device refuses.
    """
    data = forms.request_data()
    settings = site().settings
    raw = forms.text(data, "raw_vtest_info", required=False)
    with transaction() as s:
        if raw:
            if not settings.allow_raw_vtest:
                raise Forbidden("raw_vtest_info needs the demo switch allow_raw_vtest = true")
            w = store.add_withdrawal(s, raw, None, None)
        else:
            outs, dynamic = forms.text(data, "outs"), forms.dynamic(data)
            w = store.enqueue_withdrawal(
                s, outs, dynamic, settings.vtest_password, settings.network
            )
    return w.summary(), 201


@bp.post("/merchant/deposit-address")
def deposit_address() -> dict[str, Any]:
    """Custody's next cold address, given out only if it is in a batch the V-device verified."""
    return _verified_next_address(AddressType.COLD, "cold_token", "address", "use")


@bp.post("/merchant/funding-address")
def funding_address() -> dict[str, Any]:
    """Custody's next hot address (where the merchant tops up the hot wallet), given out only
    if it is in a hot batch the V-device verified: a hacked custody cannot substitute it."""
    return _verified_next_address(AddressType.HOT, "hot_token", "hot address", "fund")


def _verified_next_address(kind: AddressType, token: str, noun: str, use: str) -> dict[str, Any]:
    """Custody's next address of `kind`, refused unless a batch the V-device verified has it."""
    index, address = site().custody.next_address(custody_token(token))
    if store.find_in_verified_batch(db(), kind, index, address) is None:
        side = kind.name.lower()
        raise Conflict(
            f"custody's next {noun} {address} (index {index}) is not in a verified {side} "
            f"batch: do not {use} it (fetch and verify its batch first)"
        )
    return {"index": index, "address": address}
