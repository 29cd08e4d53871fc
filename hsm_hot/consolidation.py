"""`sign_consolidation`: the hot side of a consolidation (a hot spend paying only itself).

The hot HSM checks, as the cold one will, that the PSBT spends only the account's hot wallet
and that every output is the wallet's own change (so nothing counts against the spending
limits), relays the compact `consolidate` request, checks the cold signatures, adds its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hsm_hot.compact import plan_cosign
from hsm_hot.errors import BadRequest
from wallet_core.errors import PsbtError
from wallet_core.psbt import Psbt

if TYPE_CHECKING:
    from hsm_hot.service import HotService


def sign(service: HotService, params: Mapping[str, Any]) -> dict[str, Any]:
    from hsm_hot.service import _account, _text  # noqa: PLC0415 (the service imports us)

    account = _account(params)
    acct = service._account_record(account)
    service.ledger.admit_request(account)
    try:
        psbt = Psbt.from_base64(_text(params, "psbt", 1_000_000))
    except PsbtError as exc:
        raise BadRequest(f"psbt: {exc.message}") from None
    plan = plan_cosign(psbt, service.state.wallet(acct))
    if plan.payments or len(plan.change) != len(plan.tx.vout):
        raise BadRequest("a consolidation pays only the account's own change outputs")
    payload = {
        "account": account,
        "tx": plan.tx.raw,
        "inputs": [list(i) for i in plan.inputs],
        "change": [list(c) for c in plan.change],
        **({"prev_txs": plan.prev_txs} if plan.prev_txs else {}),
    }
    answer = service.relay.call("consolidate", payload)
    signed = service._signed_psbt(psbt, plan, acct, service._both_signatures(plan, acct, answer))
    service.audit.record(
        "consolidate", account=account, txid=plan.txid, inputs=len(plan.inputs), fee=plan.fee
    )
    return {"psbt": signed}
