"""Lean read queries behind `GET /user`: Core statements on indexed columns, no ORM objects.

(`GET /tx` and `/tx/detail` are `custody.api.tx_json`.) `GET /user` is one statement
(`user_stmt`). The balance is `custody.balances`' confirmed balance (the one the watcher and
sends use: the maintained total less the newest blocks' outputs, never a sum over the
account), cached per process and keyed by the chain tip and the side's newest transaction, so
it is recomputed only when something it depends on changed (and at the latest after
`BALANCE_TTL` seconds).
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from sqlalchemy import Select, bindparam, or_, select

from custody.balances import Conn, confirmed_balance_at
from custody.batches import usable_statuses
from custody.models import (
    Account,
    Address,
    AddressBatch,
    BlockSeen,
    Chain,
    ChainTx,
    Wallet,
)

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
    return balance_at_key(session, account_id, wallet, min_conf, row[0], row[1], row[2])


def balance_at_key(
    session: Conn,
    account_id: int,
    wallet: Wallet,
    min_conf: int,
    height: int | None,
    block_hash: str | None,
    newest_id: int | None,
) -> int:
    """`balance` for a cache key (tip height and hash, newest transaction id) the caller
    already read; 0 before the first block."""
    if height is None:
        return 0
    height, block_hash = int(height), str(block_hash)
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


@functools.cache
def user_stmt(wallet: Wallet, require_verified: bool) -> Select[Any]:
    """Everything `GET /user` reads, in one statement: the account's columns for the side,
    the balance cache key (tip height and hash, the side's newest transaction) and the
    receiving address `batches.next_address` finds on its fast path (the lowest one not
    handed out from the side's next index on, in a usable batch; NULL when there is none
    there, and the caller then asks `next_address` itself)."""
    cold = wallet is Wallet.COLD
    start = Account.cold_receive_next if cold else Account.hot_receive_next

    def next_col(col: Any) -> Any:  # mirrors batches._next_stmt, correlated to the account
        return (
            select(col)
            .join(AddressBatch, Address.batch_id == AddressBatch.id)
            .where(
                Address.account_id == Account.id,
                Address.wallet == wallet,
                Address.chain == Chain.RECEIVE,
                Address.handed_out_at.is_(None),
                Address.index >= start,
                # or-ed equalities, not IN: an IN list is re-rendered on every execution
                or_(*(AddressBatch.status == st for st in usable_statuses(require_verified))),
            )
            .order_by(Address.index)
            .limit(1)
            .scalar_subquery()
        )

    tip = select(BlockSeen.height, BlockSeen.block_hash).order_by(BlockSeen.height.desc()).limit(1)
    newest = (
        select(ChainTx.id)
        .where(ChainTx.account_id == Account.id, ChainTx.wallet == wallet)
        .order_by(ChainTx.id.desc())
        .limit(1)
    )
    return select(
        Account.id,
        Account.name,
        Account.status,
        Account.network,
        Account.created_at,
        (Account.cold_descriptor if cold else Account.hot_descriptor).label("descriptor"),
        start.label("receive_next"),
        next_col(Address.index).label("next_index"),
        next_col(Address.address).label("next_address"),
        tip.with_only_columns(BlockSeen.height).scalar_subquery().label("tip_height"),
        tip.with_only_columns(BlockSeen.block_hash).scalar_subquery().label("tip_hash"),
        newest.scalar_subquery().label("newest_id"),
    ).where(Account.id == bindparam("account_id"))
