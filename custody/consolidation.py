"""Consolidation: spend many small confirmed hot UTXOs to the account's own next change address.

`custody wallet consolidate --account N [--max-inputs K] [--fee-rate R]` takes up to K of the
smallest confirmed, unreserved, non-dust hot coins (at least two), builds one transaction
paying their sum less the fee to a fresh change address, has the HSM pair co-sign it (the cold
HSM does so without a V-device signature only because every output is the account's own change
and the rate is within its consolidation policy: hsm_cold/consolidation.py), broadcasts it and
journals it (`consolidation`).

The chosen coins are claimed in the database (`spent_by` = the new txid, in the transaction
that chose them), so no send can pick them meanwhile. The signed transaction is kept in
`service_state` until the node accepted it: a run interrupted after signing broadcasts that
same transaction next time; one interrupted before signing gives its coins back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cc_common.errors import CustodyError
from custody import journal
from custody.balances import tip_height
from custody.batches import account_keys
from custody.chain.errors import RPCError
from custody.chain.rpc import BitcoinRPC
from custody.db import rowcount, transaction
from custody.hsm_client import HsmRefused
from custody.journal import JournalKind
from custody.models import Account, AccountStatus, Chain, KeyValue, Utxo, Wallet
from custody.prevtxs import PREV_TX_REQUIRED, PrevTxUnavailable, with_prev_txs
from custody.sends import (
    confirmed_at,
    free_hot_coins,
    locked_coins,
    next_change_address,
    psbt_inputs,
)
from custody.watcher import is_postgres
from wallet_core.fees import estimate_vsize, fee_for
from wallet_core.psbt import Psbt, PsbtOutput
from wallet_core.script import ScriptType

log = logging.getLogger(__name__)

MAX_FEE_RATE = 10.0  # the cold HSM's consolidation policy (sat/vB)
PENDING_KEY = "consolidation_pending:{}"


class ConsolidationRefused(CustodyError):
    """No consolidation now (the message says why)."""

    code = 602


@dataclass(frozen=True)
class Consolidated:
    txid: str
    inputs: int
    value: int
    fee: int
    change_index: int


def consolidate(
    factory: sessionmaker[Session],
    rpc: BitcoinRPC,
    hsm: Any,
    account_id: int,
    *,
    max_inputs: int = 50,
    fee_rate: float = 2.0,
    min_conf: int = 1,
) -> Consolidated:
    if not 2 <= max_inputs <= 200:
        raise ConsolidationRefused(f"max inputs must be 2-200, got {max_inputs}")
    if not 1 <= fee_rate <= MAX_FEE_RATE:
        raise ConsolidationRefused(
            f"fee rate must be 1-{MAX_FEE_RATE:g} sat/vB (the consolidation policy), got"
            f" {fee_rate:g}"
        )
    _finish_pending(factory, rpc, account_id)
    with transaction(factory) as s:
        psbt, built = _build(s, account_id, max_inputs, fee_rate, min_conf)
        s.add(KeyValue(key=PENDING_KEY.format(account_id), value=json.dumps({"txid": psbt.txid})))
    try:
        signed = Psbt.from_base64(_sign(factory, rpc, hsm, account_id, psbt.to_base64()))
        if signed.txid != psbt.txid:
            raise ConsolidationRefused("the HSMs signed a different transaction")
        signed.finalize()
        tx_hex = signed.extract_hex()
    except (HsmRefused, ConsolidationRefused) as exc:
        _release(factory, account_id, psbt.txid)
        raise ConsolidationRefused(f"refused by the HSM: {exc.message}") from None
    with transaction(factory) as s:
        row = s.get(KeyValue, PENDING_KEY.format(account_id))
        assert row is not None
        row.value = json.dumps({"txid": psbt.txid, "tx_hex": tx_hex, **built})
    _broadcast(factory, rpc, account_id, psbt.txid, tx_hex, built)
    return Consolidated(psbt.txid, built["inputs"], built["value"], built["fee"], built["change"])


def _sign(
    factory: sessionmaker[Session], rpc: BitcoinRPC, hsm: Any, account_id: int, psbt_b64: str
) -> str:
    """Co-sign with the funding transactions of inputs the cold HSM cannot know; if it asks
    for more, attach every input's and ask again."""
    try:
        first = with_prev_txs(factory, rpc, psbt_b64, all_inputs=False)
        try:
            return str(hsm.sign_consolidation(account_id, first))
        except HsmRefused as exc:
            if exc.code != PREV_TX_REQUIRED:
                raise
        full = with_prev_txs(factory, rpc, psbt_b64)
    except PrevTxUnavailable as exc:
        raise ConsolidationRefused(f"funding transaction for the cold HSM: {exc}") from None
    return str(hsm.sign_consolidation(account_id, full))


def _build(
    s: Session, account_id: int, max_inputs: int, fee_rate: float, min_conf: int
) -> tuple[Psbt, dict[str, int]]:
    account = s.get(Account, account_id, with_for_update=is_postgres(s))
    if account is None:
        raise ConsolidationRefused(f"no account {account_id}")
    if account.status is AccountStatus.FROZEN:
        raise ConsolidationRefused(f"account {account_id} is frozen")
    tip = tip_height(s)
    if tip is None:
        raise ConsolidationRefused("the watcher has not seen a block yet")
    coins = free_hot_coins(account_id, confirmed_at(tip, min_conf))
    q = locked_coins(s, coins.order_by(Utxo.value, Utxo.id).limit(max_inputs))
    rows = s.execute(q).all()
    if len(rows) < 2:
        raise ConsolidationRefused(f"account {account_id} has {len(rows)} spendable coin(s)")
    hot = account_keys(account).hot
    change = next_change_address(s, account)
    index = change.index
    vsize = estimate_vsize([ScriptType.P2WSH] * len(rows), [bytes(change.script_pubkey)])
    fee = fee_for(vsize, fee_rate)
    total = sum(u.value for u, _ in rows)
    if total - fee < 10 * fee:
        raise ConsolidationRefused(f"{len(rows)} coins of {total} sat are not worth a {fee} fee")
    inputs = psbt_inputs(hot, [(u, a) for u, a in rows])
    output = PsbtOutput(
        bytes(change.script_pubkey),
        total - fee,
        origins=hot.origins(index, int(Chain.CHANGE)),
        witness_script=hot.witness_script(index, int(Chain.CHANGE)),
    )
    psbt = Psbt.create(inputs, [output])
    claimed = s.execute(
        update(Utxo)
        .where(Utxo.id.in_([u.id for u, _ in rows]), Utxo.spent_by.is_(None))
        .values(spent_by=psbt.txid)
        .execution_options(synchronize_session=False)
    )
    if rowcount(claimed) != len(rows):
        raise ConsolidationRefused("coins were taken meanwhile; try again")
    built = {"inputs": len(rows), "value": total - fee, "fee": fee, "change": index}
    built["address_id"] = change.id
    return psbt, built


def _release(factory: sessionmaker[Session], account_id: int, txid: str) -> None:
    with transaction(factory) as s:
        s.execute(
            update(Utxo)
            .where(Utxo.account_id == account_id, Utxo.spent_by == txid)
            .values(spent_by=None)
        )
        row = s.get(KeyValue, PENDING_KEY.format(account_id))
        if row is not None:
            s.delete(row)


def _broadcast(
    factory: sessionmaker[Session],
    rpc: BitcoinRPC,
    account_id: int,
    txid: str,
    tx_hex: str,
    built: dict[str, int],
) -> None:
    try:
        rpc.send_raw_transaction(tx_hex)
    except RPCError as exc:
        try:
            rpc.get_raw_transaction(txid, True)
        except RPCError:
            _release(factory, account_id, txid)
            raise ConsolidationRefused(f"the node refused it: {exc.rpc_message}") from None
    with transaction(factory) as s:
        exists = s.execute(select(Utxo.id).where(Utxo.txid == txid, Utxo.vout == 0)).first()
        if exists is None:
            s.add(
                Utxo(
                    account_id=account_id,
                    wallet=Wallet.HOT,
                    txid=txid,
                    vout=0,
                    value=built["value"],
                    address_id=built["address_id"],
                    block_height=None,
                )
            )
        journal.append(
            s,
            JournalKind.CONSOLIDATION,
            account_id,
            {k: built[k] for k in ("inputs", "value", "fee", "change")} | {"txid": txid},
        )
        row = s.get(KeyValue, PENDING_KEY.format(account_id))
        if row is not None:
            s.delete(row)
    log.info("account %d: consolidated %d coins in %s", account_id, built["inputs"], txid)


def _finish_pending(factory: sessionmaker[Session], rpc: BitcoinRPC, account_id: int) -> None:
    """An earlier run's consolidation: broadcast it if it was signed, else give its coins back."""
    with factory() as s:
        row = s.get(KeyValue, PENDING_KEY.format(account_id))
        pending = json.loads(row.value) if row is not None else None
    if pending is None:
        return
    if "tx_hex" not in pending:
        _release(factory, account_id, pending["txid"])
        return
    built = {k: int(pending[k]) for k in ("inputs", "value", "fee", "change", "address_id")}
    _broadcast(factory, rpc, account_id, pending["txid"], pending["tx_hex"], built)
