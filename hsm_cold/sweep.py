"""Sweeps of cold-receiving funds to the customer's settlement descriptor, signed offline.

The hot side names the UTXOs by outpoint, amount and wallet path; the cold side derives each
input's key itself (a UTXO named at a path of someone else's script just gets a signature over
our own script, which spends nothing), picks the destination itself (the next index of the
settlement descriptor pinned at provisioning) and sets the fee from the rate within policy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cc_common.fields import hex_txid
from hsm_cold.cosign import FeePolicy, field, int_list
from hsm_cold.errors import (
    AmountMismatch,
    BadPrevTx,
    BadRequest,
    FeeAbovePolicy,
    FeeRateAbovePolicy,
    ForeignInput,
    PrevTxRequired,
)
from wallet_core import signatures
from wallet_core.bip32 import HARDENED, ExtendedKey
from wallet_core.chaincloud import MAX_MONEY
from wallet_core.descriptors import Descriptor, parse_descriptor
from wallet_core.errors import DescriptorError, PsbtError
from wallet_core.fees import estimate_vsize, fee_for
from wallet_core.hashes import sha256
from wallet_core.prevtx import PrevTx
from wallet_core.psbt import Psbt, PsbtInput, PsbtOutput
from wallet_core.script import ScriptType
from wallet_core.wallets import CHANGE, RECEIVE, ColdWallet

MAX_SWEEP_INPUTS = 200
DUST_SAT = 546


@dataclass(frozen=True)
class SweepUtxo:
    txid: str
    vout: int
    amount: int
    chain: int
    index: int


@dataclass(frozen=True)
class SweepResult:
    tx_hex: str
    txid: str
    fee: int
    value: int


def decode_utxos(payload: Mapping[str, Any]) -> list[SweepUtxo]:
    raw = field(payload, "utxos", list)
    if not 0 < len(raw) <= MAX_SWEEP_INPUTS:
        raise BadRequest(f"a sweep spends 1 to {MAX_SWEEP_INPUTS} UTXOs")
    utxos, seen = [], set()
    for n, u in enumerate(raw):
        if not isinstance(u, dict):
            raise BadRequest(f"utxo {n} is not a map")
        txid = hex_txid(field(u, "txid", str))
        if txid is None:
            raise BadRequest(f"utxo {n}: txid must be 64 hex characters")
        vout, amount, chain, index = int_list(
            [u.get("vout"), u.get("amount"), u.get("chain"), u.get("index")], 4, f"utxo {n}"
        )
        if not 0 < amount <= MAX_MONEY:
            raise BadRequest(f"utxo {n}: amount out of range")
        if chain not in (RECEIVE, CHANGE) or index >= HARDENED:
            raise ForeignInput(f"utxo {n} (chain {chain}, index {index}) is not a cold wallet path")
        if (txid, vout) in seen:
            raise BadRequest(f"utxo {txid}:{vout} is listed twice")
        seen.add((txid, vout))
        utxos.append(SweepUtxo(txid, vout, amount, chain, index))
    return utxos


def request_digest(utxos: Sequence[SweepUtxo], fee_rate: Any) -> bytes:
    """What identifies a sweep request: its outpoints, amounts, paths and fee rate."""
    text = json.dumps(
        [sorted((u.txid, u.vout, u.amount, u.chain, u.index) for u in utxos), str(fee_rate)]
    )
    return sha256(text.encode())


def verify_utxos(
    utxos: Sequence[SweepUtxo],
    wallet: ColdWallet,
    known: Callable[[str, int], tuple[int, bytes] | None],
    supplied: Mapping[str, PrevTx],
) -> None:
    """Each UTXO's amount and script from a verified previous transaction: `PrevTxRequired`
    if none, `ForeignInput` if its script is not the named cold path's, `AmountMismatch` if
    the stated amount is not the true one."""
    facts = []
    for u in utxos:
        fact = known(u.txid, u.vout)
        if fact is None and u.txid in supplied:
            outs = supplied[u.txid].vout
            if u.vout >= len(outs):
                raise BadPrevTx(f"previous transaction {u.txid} has no output {u.vout}")
            fact = (outs[u.vout].value, outs[u.vout].script_pubkey)
        facts.append(fact)
    missing = [f"{u.txid}:{u.vout}" for u, f in zip(utxos, facts, strict=True) if f is None]
    if missing:
        raise PrevTxRequired(
            f"send the previous transaction of {', '.join(missing)}: its amount is not verified"
        )
    for u, fact in zip(utxos, facts, strict=True):
        assert fact is not None
        amount, script = fact
        if script != wallet.script_pubkey(u.index, u.chain):
            raise ForeignInput(
                f"utxo {u.txid}:{u.vout} pays {script.hex()}, not cold path ({u.chain}, {u.index})"
            )
        if amount != u.amount:
            raise AmountMismatch(
                f"utxo {u.txid}:{u.vout} is stated as {u.amount} sat; it holds {amount} sat"
            )


def decode_fee_rate(payload: Mapping[str, Any], policy: FeePolicy) -> float:
    """`fee_rate` in sat/vB: an integer (the link has no float) or decimal text."""
    value = payload.get("fee_rate")
    try:
        rate = float(value) if isinstance(value, int | str) and not isinstance(value, bool) else 0
    except ValueError:
        rate = 0
    if not rate >= 1:
        raise BadRequest("fee_rate must be a number of sat/vB, at least 1")
    if rate > policy.max_fee_rate:
        raise FeeRateAbovePolicy(
            f"fee rate {rate:g} sat/vB is above the policy ({policy.max_fee_rate:g})"
        )
    return rate


def settlement(descriptor_text: str) -> Descriptor:
    try:
        return parse_descriptor(descriptor_text)
    except DescriptorError as exc:
        raise BadRequest(f"settlement descriptor: {exc.message}") from None


def build_sweep(
    utxos: Sequence[SweepUtxo],
    wallet: ColdWallet,
    account_node: ExtendedKey,
    destination: bytes,
    rate: float,
    policy: FeePolicy,
) -> SweepResult:
    """Spend every UTXO to `destination`, fee from `rate`; each input signed and verified."""
    size = estimate_vsize([ScriptType.P2WPKH] * len(utxos), [destination])
    fee = fee_for(size, rate)
    if fee > policy.max_fee_sat:
        raise FeeAbovePolicy(f"sweep fee {fee} sat is above the policy ({policy.max_fee_sat})")
    total = sum(u.amount for u in utxos)
    value = total - fee
    if value < DUST_SAT:
        raise BadRequest(f"sweep of {total} sat leaves {value} sat after the fee: below dust")
    inputs = [
        PsbtInput(
            u.txid,
            u.vout,
            u.amount,
            wallet.script_pubkey(u.index, u.chain),
            origins=wallet.origins(u.index, u.chain),
        )
        for u in utxos
    ]
    try:
        psbt = Psbt.create(inputs, [PsbtOutput(destination, value)])
        for n, u in enumerate(utxos):
            child = account_node.child(u.chain).child(u.index)
            der = signatures.sign_digest(child.private_key, psbt.sighash(n))
            psbt.add_signature(n, child.public_key, der)
        psbt.finalize()
        return SweepResult(psbt.extract_hex(), psbt.txid, fee, value)
    except PsbtError as exc:
        raise BadRequest(f"sweep: {exc.message}") from None
