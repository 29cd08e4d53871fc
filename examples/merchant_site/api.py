"""Reference section 2: the four calls the V-device polls, exactly as ChainCloud's demo site.

Authentication: the original had none. When `[merchant_site] vdevice_token` is set (a fresh
deployment generates one), every call here must carry it in the `X-VDevice-Token` header;
leave it empty for a V-device that cannot send the header (the reference-compatible default).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from examples.merchant_site import forms, store
from examples.merchant_site.extensions import (
    VDEVICE_TOKEN_HEADER,
    check_shared_token,
    db,
    site,
    transaction,
)
from examples.merchant_site.models import iso

bp = Blueprint("api", __name__)
MAX_SKIP = 64  # more than the V-device ever skips: its max_in_flight (<= 50) plus held (<= 5)


@bp.before_request
def _authenticate() -> None:
    check_shared_token(site().settings.vdevice_token, VDEVICE_TOKEN_HEADER)


@bp.get("/batch")
def get_batch() -> dict[str, Any]:
    """The oldest batch not yet verified, or `{}`."""
    batch = store.oldest_unverified_batch(db())
    if batch is None:
        return {}
    return {
        "batch_no": batch.batch_no,
        "address_list": batch.addresses,
        "address_type": int(batch.address_type),
    }


@bp.post("/batch")
def post_batch() -> dict[str, Any]:
    """The V-device's verdict: form `batch_no`, `status` 2 verified / 3 failed, `type` 1/2."""
    data = forms.request_data()
    batch_no = forms.integer(data, "batch_no")
    verdict = forms.batch_verdict(data)
    address_type = forms.address_type(data)
    with transaction() as s:
        store.report_batch(s, address_type, batch_no, verdict)
    return {"result": True}


@bp.get("/vtest")
def get_vtest() -> dict[str, Any]:
    """The oldest withdrawal not yet handled, encrypted for the V-device, or `{}`.

    Our extension: `?skip=ID,ID` passes over the withdrawals the V-device already handles
    (in flight, or held for its owner's approval), so they do not stop the queue behind them."""
    skip = [v for v in request.args.get("skip", "").split(",") if v][:MAX_SKIP]
    w = store.oldest_pending_withdrawal(db(), skip)
    if w is None:
        return {}
    return {"vtest_id": w.vtest_id, "vtest_at": iso(w.created_at), "vtest_info": w.vtest_info}


@bp.post("/vtest")
def post_vtest() -> dict[str, Any]:
    """The outcome: form `vtest_id`, `tx_hash` (absent or empty = failed). Final once set."""
    data = forms.request_data()
    vtest_id = forms.text(data, "vtest_id")
    tx_hash = forms.tx_hash(data)
    with transaction() as s:
        store.report_withdrawal(s, vtest_id, tx_hash)
    return {"result": True}
