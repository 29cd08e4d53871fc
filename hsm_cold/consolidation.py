"""Consolidation: co-signing, without a V-device signature, a hot spend that pays only itself.

Many small hot UTXOs cost fees at every send; merging them needs no customer consent because
no coin leaves the account's hot wallet. The cold HSM therefore co-signs a `consolidate`
request only when every output is a change output it derives itself from the account's
cosigner key (`change not derivable` 710 otherwise, which freezes: a hacked hot side trying
to pay out without the V-device), every input is a path of the hot wallet (711), and the fee
rate is within the consolidation policy: at most `MAX_FEE_RATE` sat/vB and the ordinary fee
policy (`fee above policy` 712, no freeze).

The request is the compact co-sign request without the V-device fields:
`{account, tx, inputs: [[amount, chain, index]...], change: [[vout, index]...], prev_txs?}`;
input amounts are verified as for a send (invariant 8: from the cold HSM's own records or the
hash-checked previous transactions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hsm_cold.cosign import (
    CosignRequest,
    FeePolicy,
    check_change_scripts,
    decode_prev_txs,
    decode_tx_inputs,
    field,
    int_list,
    witness_scripts,
)
from hsm_cold.errors import BadRequest, ChangeNotDerivable, FeeAbovePolicy
from wallet_core.fees import estimate_vsize, fee_for
from wallet_core.script import ScriptType
from wallet_core.wallets import HotWallet

MAX_FEE_RATE = 10.0  # sat/vB: consolidate when fees are low, never at any price
MAX_INPUTS = 200


def decode(payload: Mapping[str, Any]) -> CosignRequest:
    """The request as a `CosignRequest` with no V-device fields (they are not used here)."""
    tx, inputs = decode_tx_inputs(payload)
    if not 1 <= len(inputs) <= MAX_INPUTS:
        raise BadRequest(f"a consolidation spends 1-{MAX_INPUTS} inputs")
    change = tuple(
        (pair[0], pair[1])
        for pair in (int_list(c, 2, "each change entry") for c in field(payload, "change", list))
    )
    return CosignRequest(
        account=field(payload, "account", int),
        tx=tx,
        inputs=inputs,
        change=change,
        user_tx_no="",
        is_dynamic_fee=0,
        coin_code="BTC",
        outs="",
        vc_code="",
        c_id="",
        prev_txs=decode_prev_txs(payload, len(tx.vin)),
    )


def check_outputs(req: CosignRequest, wallet: HotWallet) -> None:
    """Every output is declared change and is the wallet's change script at its index."""
    declared = dict(req.change)
    if len(declared) != len(req.change) or set(declared) != set(range(len(req.tx.vout))):
        raise ChangeNotDerivable(
            "a consolidation pays only the account's own change: every output must be declared"
            " change, once"
        )
    check_change_scripts(req, wallet, "output")


def check_fee(req: CosignRequest, policy: FeePolicy) -> int:
    """Fee within the consolidation rate and the ordinary fee policy; returns it."""
    total_in = sum(i.amount for i in req.inputs)
    fee = total_in - sum(o.value for o in req.tx.vout)
    if fee < 0:
        raise BadRequest("outputs exceed inputs")
    size = estimate_vsize(
        [ScriptType.P2WSH] * len(req.inputs), [o.script_pubkey for o in req.tx.vout]
    )
    rate = min(MAX_FEE_RATE, policy.max_fee_rate)
    ceiling = min(policy.max_fee_sat, fee_for(size, rate))
    if fee > ceiling:
        raise FeeAbovePolicy(
            f"consolidation fee {fee} sat ({fee / size:.1f} sat/vB) is above the consolidation"
            f" policy: at most {rate:g} sat/vB ({ceiling} sat here)"
        )
    return fee


def scripts(req: CosignRequest, wallet: HotWallet) -> list[bytes]:
    """Every input a hot wallet path (`foreign input` 711 otherwise); their witness scripts."""
    return witness_scripts(req, wallet)
