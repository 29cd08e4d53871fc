"""Lean read queries behind the views: Core statements on indexed columns, no ORM objects.

`GET /tx` must stay flat as an account grows to 100 000 transactions: the page comes from
`ix_chain_txs_page` (account, wallet, id), then the page's inputs and outputs in one query
each. The balance is `custody.balances`' confirmed balance (the one the watcher and sends
use), cached per process and keyed by the chain tip and the side's newest transaction, so it
is recomputed only when something it depends on changed (and at the latest after
`BALANCE_TTL` seconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, select

from custody.api import iso
from custody.balances import Conn, confirmations, confirmed_balance_at
from custody.models import (
    BlockSeen,
    ChainTx,
    ChainTxInput,
    ChainTxOutput,
    TxStatus,
    Wallet,
)

PAGE_SIZE = 20
BALANCE_TTL = 5.0
_balance_cache: dict[tuple[int, int], tuple[tuple[Any, ...], float, int]] = {}
_balance_lock = threading.Lock()


_TIP = (
    select(BlockSeen.height, BlockSeen.block_hash)
    .order_by(BlockSeen.height.desc())
    .limit(1)
    .subquery()
)
_NEWEST = (
    select(ChainTx.id)
    .where(ChainTx.account_id == bindparam("account_id"), ChainTx.wallet == bindparam("wallet"))
    .order_by(ChainTx.id.desc())
    .limit(1)
    .scalar_subquery()
)
_BALANCE_KEY = select(_TIP.c.height, _TIP.c.block_hash, _NEWEST)


def balance(session: Conn, account_id: int, wallet: Wallet, min_conf: int) -> int:
    """`balances.confirmed_balance`, memoised per process until the tip or the side's
    newest transaction changes (at the latest after `BALANCE_TTL` seconds)."""
    row = session.execute(_BALANCE_KEY, {"account_id": account_id, "wallet": wallet}).first()
    if row is None:
        return 0
    height, block_hash, newest_id = int(row[0]), str(row[1]), row[2]
    key = (height, block_hash, newest_id, min_conf)
    now = time.monotonic()
    with _balance_lock:
        hit = _balance_cache.get((account_id, int(wallet)))
    if hit is not None and hit[0] == key and now - hit[1] < BALANCE_TTL:
        return hit[2]
    value = confirmed_balance_at(session, height, account_id, wallet, min_conf)
    with _balance_lock:
        if len(_balance_cache) > 100_000:
            _balance_cache.clear()
        _balance_cache[(account_id, int(wallet))] = (key, now, value)
    return value


_TX_COLUMNS = (
    ChainTx.id,
    ChainTx.txid,
    ChainTx.status,
    ChainTx.block_height,
    ChainTx.value,
    ChainTx.tx_at,
    ChainTx.confirm_at,
)


_BEST = select(func.max(BlockSeen.height)).scalar_subquery().label("best")
# Statements are built once (bind parameters), so a request only binds and executes.
_A, _W = bindparam("account_id"), bindparam("wallet")
_PAGE = (
    select(*_TX_COLUMNS, _BEST)
    .where(ChainTx.account_id == _A, ChainTx.wallet == _W, ChainTx.status != TxStatus.REMOVED)
    .order_by(ChainTx.id)
    .limit(PAGE_SIZE)
)
_CURSOR = select(ChainTx.id).where(
    ChainTx.account_id == _A, ChainTx.wallet == _W, ChainTx.txid == bindparam("txid")
)
_PAGE_AFTER = _PAGE.where(ChainTx.id > _CURSOR.scalar_subquery())
_IDS = bindparam("ids", expanding=True)
_INPUTS = (
    select(
        ChainTxInput.chain_tx_id,
        ChainTxInput.sn,
        ChainTxInput.prev_tx_hash,
        ChainTxInput.prev_out_sn,
        ChainTxInput.address,
        ChainTxInput.value,
        ChainTxInput.is_mine,
    )
    .where(ChainTxInput.chain_tx_id.in_(_IDS))
    .order_by(ChainTxInput.chain_tx_id, ChainTxInput.sn)
)
_OUTPUTS = (
    select(
        ChainTxOutput.chain_tx_id,
        ChainTxOutput.sn,
        ChainTxOutput.address,
        ChainTxOutput.value,
        ChainTxOutput.is_mine,
        ChainTxOutput.spent,
    )
    .where(ChainTxOutput.chain_tx_id.in_(_IDS))
    .order_by(ChainTxOutput.chain_tx_id, ChainTxOutput.sn)
)


def tx_page(
    session: Conn, account_id: int, wallet: Wallet, after_txid: str | None
) -> list[dict[str, Any]] | None:
    """Up to PAGE_SIZE transactions of one side, oldest first, after `after_txid`.

    One query for the page (the cursor and the chain tip as sub-queries), one each for the
    page's inputs and outputs. None when `after_txid` is not a transaction of this side.
    """
    params: dict[str, Any] = {"account_id": account_id, "wallet": wallet}
    if after_txid is None:
        rows = session.execute(_PAGE, params).all()
    else:
        params["txid"] = after_txid
        rows = session.execute(_PAGE_AFTER, params).all()
        if not rows and session.execute(_CURSOR, params).first() is None:
            return None
    return _render(session, rows)


def tx_cursor(session: Conn, account_id: int, wallet: Wallet, txid: str) -> int | None:
    params = {"account_id": account_id, "wallet": wallet, "txid": txid}
    return session.execute(_CURSOR, params).scalar()


def tx_detail(session: Conn, account_id: int, wallet: Wallet, txid: str) -> dict[str, Any] | None:
    rows = session.execute(
        select(*_TX_COLUMNS, _BEST).where(
            ChainTx.account_id == account_id,
            ChainTx.wallet == wallet,
            ChainTx.txid == txid,
            ChainTx.status != TxStatus.REMOVED,
        )
    ).all()
    out = _render(session, rows)
    return out[0] if out else None


def _render(session: Conn, rows: Sequence[Any]) -> list[dict[str, Any]]:
    if not rows:
        return []
    best = rows[0].best
    ids = [r.id for r in rows]
    inputs: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    outputs: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for r in session.execute(_INPUTS, {"ids": ids}):
        inputs[r.chain_tx_id].append(
            {
                "sn": r.sn,
                "prev_tx_hash": r.prev_tx_hash,
                "prev_out_sn": r.prev_out_sn,
                "address": r.address,
                "value": int(r.value),
                "is_mine": bool(r.is_mine),
            }
        )
    for r in session.execute(_OUTPUTS, {"ids": ids}):
        outputs[r.chain_tx_id].append(
            {
                "sn": r.sn,
                "address": r.address,
                "value": int(r.value),
                "is_mine": bool(r.is_mine),
                "status": 0 if r.spent else 1,
            }
        )
    result = []
    for r in rows:
        confirmed = r.status == TxStatus.CONFIRMED
        result.append(
            {
                "tx_hash": r.txid,
                "confirmation": confirmations(best, r.block_height if confirmed else None),
                "confirm_at": iso(r.confirm_at) if confirmed else None,
                "tx_at": iso(r.tx_at),
                "value": int(r.value),
                "inputs": inputs[r.id],
                "outputs": outputs[r.id],
            }
        )
    return result
