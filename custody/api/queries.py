"""Lean read queries behind the views: Core statements on indexed columns, no ORM objects.

`GET /tx` must stay flat as an account grows to 100 000 transactions: the page comes from
`ix_chain_txs_page` (account, wallet, id), then the page's inputs and outputs in one query
each. On PostgreSQL the whole page is one statement that also renders the JSON answer
(`tx_page_json`): one round trip, and no row objects, dicts or JSON encoding in Python, which
were most of the request's CPU. Its output is the same document `_render` builds.
`GET /user` is one statement too (`user_stmt`). The balance is `custody.balances`' confirmed
balance (the one the watcher and sends use: the maintained total less the newest blocks'
outputs, never a sum over the account), cached per process and keyed by the chain tip
and the side's newest transaction, so it is recomputed only when something it depends on
changed (and at the latest after `BALANCE_TTL` seconds).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import BindParameter, Connection, Select, bindparam, func, or_, select

from custody.api import iso
from custody.balances import Conn, confirmations, confirmed_balance_at
from custody.batches import usable_statuses
from custody.models import (
    Account,
    Address,
    AddressBatch,
    BlockSeen,
    Chain,
    ChainTx,
    ChainTxInput,
    ChainTxOutput,
    DepositState,
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


_TX_COLUMNS = (
    ChainTx.id,
    ChainTx.txid,
    ChainTx.status,
    ChainTx.block_height,
    ChainTx.value,
    ChainTx.tx_at,
    ChainTx.confirm_at,
    ChainTx.state,
    ChainTx.state_at,
    ChainTx.has_dust,
)


_BEST = select(func.max(BlockSeen.height)).scalar_subquery().label("best")
# Statements are built once (bind parameters), so a request only binds and executes.
_A: BindParameter[int] = bindparam("account_id")
_W: BindParameter[str] = bindparam("wallet")
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
_IDS: BindParameter[list[int]] = bindparam("ids", expanding=True)
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


# PostgreSQL: the page rendered as JSON by the database. `row_to_json` writes compact JSON
# (no spaces) with keys in column order and ISO-8601 timestamps (`2016-08-02T12:51:34` after
# `date_trunc('second', ...)`, as `iso()` writes them); nested arrays are joined as text and
# cast to json, so they are embedded verbatim. Same fields, order and values as `_render`.
_PG_TX_JSON = """
  SELECT row_to_json(r)::text
  FROM (
    SELECT
      p.txid AS tx_hash,
      CASE WHEN p.status = 'CONFIRMED' AND p.block_height <= b.h
           THEN b.h - p.block_height + 1 ELSE 0 END AS confirmation,
      CASE WHEN p.status = 'CONFIRMED' THEN date_trunc('second', p.confirm_at) END
        AS confirm_at,
      date_trunc('second', p.tx_at) AS tx_at,
      p.value AS value,
      (SELECT ('[' || coalesce(string_agg(row_to_json(i)::text, ',' ORDER BY i.sn), '')
               || ']')::json
       FROM (SELECT sn, prev_tx_hash, prev_out_sn, address, value, is_mine
             FROM chain_tx_inputs WHERE chain_tx_id = p.id) i) AS inputs,
      (SELECT ('[' || coalesce(string_agg(row_to_json(o)::text, ',' ORDER BY o.sn), '')
               || ']')::json
       FROM (SELECT sn, address, value, is_mine, CASE WHEN spent THEN 0 ELSE 1 END AS status
             FROM chain_tx_outputs WHERE chain_tx_id = p.id) o) AS outputs,
      lower(p.state) AS cc_state,
      date_trunc('second', p.state_at) AS cc_state_at,
      p.has_dust AS cc_dust
  ) r
"""


def _pg_page_sql(after: bool) -> str:
    """The page statement: the first page, or the page after the transaction `%(txid)s`
    (then an index range on `ix_chain_txs_page` after the cursor's id, however many
    transactions come before it). Its row: (cursor found, page JSON)."""
    cursor = """
      SELECT id FROM chain_txs
      WHERE account_id = %(account_id)s AND wallet = %(wallet)s AND txid = %(txid)s"""
    # Only constants are formatted in: every value is a bound parameter.
    return f"""
WITH page AS (
  SELECT id, txid, status, block_height, value, tx_at, confirm_at, state, state_at, has_dust
  FROM chain_txs
  WHERE account_id = %(account_id)s AND wallet = %(wallet)s AND status <> 'REMOVED'
    {f"AND id > ({cursor})" if after else ""}
  ORDER BY id
  LIMIT {PAGE_SIZE}
),
best AS (SELECT max(height) AS h FROM blocks_seen)
SELECT
  {f"EXISTS ({cursor})" if after else "true"},
  '[' || coalesce((
    SELECT string_agg(({_PG_TX_JSON}), ',' ORDER BY p.id) FROM page p CROSS JOIN best b
  ), '') || ']'
"""  # noqa: S608


_PG_PAGE_FIRST = _pg_page_sql(after=False)
_PG_PAGE_AFTER = _pg_page_sql(after=True)
assert TxStatus.CONFIRMED.name == "CONFIRMED" and TxStatus.REMOVED.name == "REMOVED"


def tx_page_json(
    session: Connection, account_id: int, wallet: Wallet, after_txid: str | None
) -> str | None:
    """`tx_page` as its JSON text, rendered by PostgreSQL in one statement (PostgreSQL only).

    Runs on the DBAPI connection directly (psycopg prepares it after a few executions), as
    the hot path of `GET /tx`. None when `after_txid` is not a transaction of this side.
    """
    params = {"account_id": account_id, "wallet": wallet.name, "txid": after_txid}
    sql = _PG_PAGE_FIRST if after_txid is None else _PG_PAGE_AFTER
    # psycopg's own connection (None only for a closed one, never here).
    cur = session.connection.driver_connection.execute(sql, params)  # type: ignore[union-attr]
    found, body = cur.fetchone()
    return body if found else None


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
    for o in session.execute(_OUTPUTS, {"ids": ids}):
        outputs[o.chain_tx_id].append(
            {
                "sn": o.sn,
                "address": o.address,
                "value": int(o.value),
                "is_mine": bool(o.is_mine),
                "status": 0 if o.spent else 1,
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
                "cc_state": DepositState(r.state).value,
                "cc_state_at": iso(r.state_at),
                "cc_dust": bool(r.has_dust),
            }
        )
    return result
