"""PSBT -> the compact co-sign request of docs/hsm-pair.md, and the digests both HSMs sign.

The serial line is the throughput ceiling, so the cold HSM gets only what it needs: the
unsigned transaction (raw bytes), per input the amount and the wallet position
`[amount, chain, index]`, per change output `[vout, index]`, the V-device's signed request, and
the funding transactions the PSBT carries (custody adds them when the cold HSM asks, for
outpoints it has not verified yet). It re-derives every script and verifies every amount
itself, so nothing here is trusted by it. `packed_request` sends the same by position and
leaves out what the cold HSM rebuilds itself (change scripts, version, nLockTime, `outs`).

On this side the same derivation tells whether the PSBT spends the account's hot wallet: the
BIP143 digest we compute from the *derived* witness script must equal the PSBT's own digest,
which (through `Psbt.sighash`) is computed from the witness script the PSBT carries, itself
checked against the input's P2WSH output. One equality covers script, key set and amount.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from hsm_hot.errors import BadRequest
from wallet_core.addresses import script_to_address
from wallet_core.chaincloud import format_outs
from wallet_core.errors import TxParseError, WalletError
from wallet_core.fees import estimate_vsize
from wallet_core.packedtx import pack_tx
from wallet_core.prevtx import parse_prev_tx
from wallet_core.psbt import Psbt
from wallet_core.rawtx import TxOut, UnsignedTx, parse_unsigned_tx, serialize_unsigned
from wallet_core.script import ScriptType
from wallet_core.sighash import bip143_sighash
from wallet_core.wallets import CHANGE, HotWallet, is_own_script, own_index_from_origins

# A link frame holds 16 KiB: funding transactions travel inside the request up to this many
# bytes in all, and otherwise before it, in parts of PREV_TX_PART bytes.
INLINE_PREV_TX_BYTES = 8_192
PREV_TX_PART = 8_192
# hsm_cold.errors.ColdErrorCode.PREV_TX_REQUIRED, relayed unchanged
PREV_TX_REQUIRED = 730


@dataclass(frozen=True)
class CosignPlan:
    """What `sign_send` needs after reading the PSBT."""

    tx: UnsignedTx
    inputs: list[tuple[int, int, int]]  # (amount, chain, index)
    change: list[tuple[int, int]]  # (vout, index)
    digests: list[bytes]  # BIP143 sighash per input
    cold_pubkeys: list[bytes]  # the cold cosigner's child key per input
    payments: int  # satoshi leaving the wallet (every non-change output)
    fee: int
    prev_txs: list[bytes]  # funding transactions the PSBT carries (one per distinct txid)
    vsize: int  # worst-case virtual size (72-byte signatures), for the fee rate
    carried: frozenset[int] = frozenset()  # inputs whose funding transaction the PSBT carries

    @cached_property
    def txid(self) -> str:
        """The unsigned transaction's txid (a hash, computed once: a co-sign uses it often)."""
        return self.tx.txid


def plan_cosign(psbt: Psbt, wallet: HotWallet) -> CosignPlan:
    """Check that every input spends `wallet` and find the change; raise `BadRequest` if not."""
    try:
        tx = parse_unsigned_tx(psbt.unsigned_tx_bytes())  # the same rules as the cold HSM
    except TxParseError as exc:
        raise BadRequest(f"unsigned transaction is malformed: {exc.message}") from None
    if len(tx.vin) != psbt.input_count:
        raise BadRequest("PSBT input maps do not match its transaction")
    inputs: list[tuple[int, int, int]] = []
    digests: list[bytes] = []
    cold_pubkeys: list[bytes] = []
    prev_txs: dict[str, bytes] = {}
    carried: set[int] = set()
    for i in range(psbt.input_count):
        prev = _prev_tx(psbt, tx, i)
        if prev is not None:
            prev_txs.setdefault(tx.vin[i].txid.hex(), prev)
            carried.add(i)
        try:
            amount = psbt.input_value(i)
            where = own_index_from_origins(wallet, psbt.input_origins(i))
            if where is None:
                raise BadRequest(f"input {i} is not of the account's hot wallet")
            chain, index = where
            digest = bip143_sighash(tx, i, wallet.witness_script(index, chain), amount)
            if digest != psbt.sighash(i):
                raise BadRequest(f"input {i} is not of the account's hot wallet")
            cold_pubkeys.append(wallet.pubkeys(index, chain)[1])
        except WalletError as exc:
            raise BadRequest(f"input {i}: {exc.message}") from None
        inputs.append((amount, chain, index))
        digests.append(digest)
    change: list[tuple[int, int]] = []
    payments = 0
    for vout, out in enumerate(psbt.outputs):
        where = own_index_from_origins(wallet, out.origins) if out.origins else None
        if where is not None and where[0] == CHANGE:
            # Declared change goes to the cold HSM as such: it derives the script itself and
            # refuses a mismatch ("change not derivable"). Our own limits count as spent
            # every output we did not derive ourselves.
            change.append((vout, where[1]))
            if is_own_script(wallet, out.script_pubkey, CHANGE, where[1]):
                continue
        payments += out.value
    fee = sum(a for a, _, _ in inputs) - sum(o.value for o in tx.vout)
    if fee < 0:
        raise BadRequest("outputs exceed inputs")
    vsize = estimate_vsize([ScriptType.P2WSH] * len(inputs), [o.script_pubkey for o in tx.vout])
    return CosignPlan(
        tx,
        inputs,
        change,
        digests,
        cold_pubkeys,
        payments,
        fee,
        list(prev_txs.values()),
        vsize,
        frozenset(carried),
    )


def _prev_tx(psbt: Psbt, tx: UnsignedTx, i: int) -> bytes | None:
    """Input `i`'s funding transaction if the PSBT carries one, checked: it hashes to the
    txid the input spends and its output is the input's stated amount and script."""
    raw = psbt.input_prev_tx(i)
    if raw is None:
        return None
    try:
        prev = parse_prev_tx(raw)
    except TxParseError as exc:
        raise BadRequest(f"input {i}: previous transaction: {exc.message}") from None
    vin = tx.vin[i]
    if prev.txid != vin.txid.hex() or vin.vout >= len(prev.vout):
        raise BadRequest(f"input {i}: the previous transaction is not the one it spends")
    out = prev.vout[vin.vout]
    if out.value != psbt.input_value(i):
        raise BadRequest(
            f"input {i}: stated as {psbt.input_value(i)} sat; its previous transaction says"
            f" {out.value} sat"
        )
    return raw


def vc_code_bytes(vc_code: str) -> bytes | str:
    """The 65 bytes of a base64 signed message; anything else is passed on as given, so the
    cold HSM judges it (a malformed `vc_code` is a forged one)."""
    try:
        raw = base64.b64decode(vc_code, validate=True)
    except (binascii.Error, ValueError):
        return vc_code
    return raw if len(raw) == 65 and base64.b64encode(raw).decode() == vc_code else vc_code


def compact_request(
    account: int, plan: CosignPlan, request: dict[str, Any], vc_code: str, c_id: str
) -> dict[str, Any]:
    """The `cosign` payload: small on the wire (raw tx bytes, integers, short strings)."""
    return {
        "account": account,
        "tx": plan.tx.raw,
        "inputs": [list(i) for i in plan.inputs],
        "change": [list(c) for c in plan.change],
        "user_tx_no": request["user_tx_no"],
        "is_dynamic_fee": request["is_dynamic_fee"],
        "coin_code": request["coin_code"],
        "outs": request["outs"],
        "vc_code": vc_code_bytes(vc_code),
        "c_id": c_id,
        **({"prev_txs": plan.prev_txs} if inline_prev_txs(plan.prev_txs) else {}),
    }


def inline_prev_txs(prev_txs: list[bytes]) -> bool:
    """Whether funding transactions fit inside one request frame (else they are taught to the
    cold HSM beforehand, in parts: `learn_prev_tx`)."""
    return 0 < sum(len(t) for t in prev_txs) <= INLINE_PREV_TX_BYTES


def prev_tx_parts(raw: bytes) -> list[dict[str, Any]]:
    """The `learn_prev_tx` payloads of one funding transaction, in order."""
    txid = parse_prev_tx(raw).txid
    return [
        {"txid": txid, "offset": at, "total": len(raw), "data": raw[at : at + PREV_TX_PART]}
        for at in range(0, len(raw), PREV_TX_PART)
    ]


def packed_request(
    account: int,
    plan: CosignPlan,
    request: dict[str, Any],
    vc_code: str,
    c_id: str,
    wallet: HotWallet,
    short: bool = False,
) -> dict[str, Any]:
    """The `cosign` payload in the packed form of docs/hsm-pair.md: what the cold HSM derives
    itself is left out (version 2 and nLockTime 0, change scripts, `outs` when it is the
    payments written out, `coin_code`). A request it would refuse, or whose `outs` is written
    otherwise, goes in the long form (`compact_request`), so the refusal is the same.

    `short`: the short form (`{"q": ...}`), which also leaves out what the cold HSM has seen:
    an input whose funding transaction the PSBT does not carry (custody knows the cold HSM
    verified it) is named by its txid's first 8 bytes; the transaction is written by
    `wallet_core.packedtx`. Amounts are still stated: the cold HSM compares them with the
    verified ones, and a lying one freezes (731). If the cold HSM cannot resolve such an
    input it refuses with 730 and changes nothing: ask again without `short`."""
    tx = plan.tx
    change = dict(plan.change)
    if (
        tx.version != 2
        or tx.locktime != 0
        or request["coin_code"] != "BTC"
        or len(change) != len(plan.change)
        or not all(
            is_own_script(wallet, tx.vout[v].script_pubkey, CHANGE, i) for v, i in change.items()
        )
    ):
        return compact_request(account, plan, request, vc_code, c_id)
    vout = [TxOut(o.value, b"") if n in change else o for n, o in enumerate(tx.vout)]
    outs: str | None = request["outs"]
    try:
        payments = [
            (script_to_address(o.script_pubkey, wallet.network), o.value)
            for n, o in enumerate(tx.vout)
            if n not in change
        ]
        if format_outs(payments) == outs:
            outs = None
    except WalletError:
        pass
    if short:
        by_prefix = frozenset(range(len(tx.vin))) - plan.carried
        body = pack_tx(tx.vin, vout, by_prefix)
    else:
        body = serialize_unsigned(tx.version, tx.vin, vout, tx.locktime)[4:-4]
    return {
        "q" if short else "p": [
            account,
            body,
            [list(i) for i in plan.inputs],
            [list(c) for c in plan.change],
            request["user_tx_no"],
            request["is_dynamic_fee"],
            vc_code_bytes(vc_code),
            c_id,
            outs,
            plan.prev_txs if inline_prev_txs(plan.prev_txs) else [],
        ]
    }
