"""The `GET /tx` page and `GET /tx/detail` document, defined once and rendered by the database.

One SQL template (`_statement`) says which transactions, in which order, with which fields:
each transaction becomes one JSON object built by the database (its inputs and outputs as
nested arrays), so a request binds, executes and joins the rows' text; no row objects, dicts
or JSON encoding in Python. The template names five primitives whose spelling differs between
PostgreSQL and SQLite (`_Spelling`): a JSON object, an ordered JSON array of a related table's
rows, an ISO-8601 timestamp without fractions (as `custody.api.iso` writes it), a JSON
boolean and a stored array read back. Everything else is the same text on both, so the two
databases cannot drift apart; `tests/test_api_tx_json.py` holds the document's contract on
both.

`GET /tx` stays flat as an account grows: the page is an index range on `ix_chain_txs_page`
(account, wallet, id) after the cursor's id (keyset pagination, found by the unique
(account, wallet, txid) index), however deep the cursor is.

The `inputs` and `outputs` arrays are built by the same template when a transaction is
recorded or its inputs or outputs change, and stored in its row (`store_arrays`, called by
the watcher, the one writer of those tables, in the transaction that writes them): a page then
reads one index range of `chain_txs` instead of 2 subqueries per transaction (its database CPU
about halved). A row without them stored (bulk loads) has them built at read, byte for byte
the same.
"""

# ruff: noqa: S608  (the SQL is built from this module's constants only; values are bound)

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import Connection, Select, literal_column, select, update
from sqlalchemy.orm import Session

from custody import driver_sql
from custody.models import ChainTx, DepositState, TxStatus, Wallet

PAGE_SIZE = 20


@dataclass(frozen=True)
class _Spelling:
    """How one database spells the template's primitives."""

    param: str  # a bound parameter, `{}` the name
    obj: str  # a JSON object from `key, value, ...`, as text when outermost
    obj_text: str  # the outermost object, cast to text
    array: str  # ordered JSON array: {obj} per row of {source}, ordered by {order}
    iso: str  # timestamp as 2016-08-02T12:51:34
    boolean: str  # a JSON true/false
    stored: str  # a stored array (`chain_txs.inputs_json`) as JSON


_POSTGRESQL = _Spelling(
    param="%({})s",
    obj="json_build_object({})",
    obj_text="json_build_object({})::text",
    array="(SELECT coalesce(json_agg({obj} ORDER BY {order}), '[]'::json) FROM {source})",
    iso="""to_char({}, 'YYYY-MM-DD"T"HH24:MI:SS')""",
    boolean="{}",
    stored="{}",
)
# SQLite's JSON subtype does not cross a subquery: json() restores it, so nested documents
# are embedded as JSON, not as strings. Its json_group_array takes rows in the order the
# ordered subquery yields them (SQLite 3.40 has no ORDER BY inside an aggregate).
_SQLITE = _Spelling(
    param=":{}",
    obj="json_object({})",
    obj_text="json_object({})",
    array=(
        "json((SELECT json_group_array(json(j)) FROM "
        "(SELECT {obj} AS j FROM {source} ORDER BY {order})))"
    ),
    iso="strftime('%Y-%m-%dT%H:%M:%S', {})",
    boolean="json(CASE WHEN {} THEN 'true' ELSE 'false' END)",
    stored="json({})",
)
_SPELLINGS = {"postgresql": _POSTGRESQL, "sqlite": _SQLITE}


_STORED = ("inputs_json", "outputs_json")


class Query(Enum):
    FIRST = "first"  # the first page
    AFTER = "after"  # the page after transaction :txid
    DETAIL = "detail"  # transaction :txid alone


def _pairs(*items: tuple[str, str]) -> str:
    return ", ".join(f"'{k}', {v}" for k, v in items)


def _children(sp: _Spelling, parent: str, table: str, *items: tuple[str, str]) -> str:
    """A JSON array of the rows of `table` (with its alias) that belong to transaction
    `parent` (its id column), in `sn` order, each an object of `items`."""
    alias = table.split()[1]
    return sp.array.format(
        obj=sp.obj.format(_pairs(*items)),
        source=f"{table} WHERE {alias}.chain_tx_id = {parent}",
        order=f"{alias}.sn",
    )


@functools.cache
def _arrays(dialect: str, parent: str) -> tuple[str, str]:
    """The `inputs` and `outputs` arrays of the transaction whose id is `parent`."""
    sp = _SPELLINGS[dialect]
    inputs = _children(
        sp,
        parent,
        "chain_tx_inputs i",
        ("sn", "i.sn"),
        ("prev_tx_hash", "i.prev_tx_hash"),
        ("prev_out_sn", "i.prev_out_sn"),
        ("address", "i.address"),
        ("value", "i.value"),
        ("is_mine", sp.boolean.format("i.is_mine")),
    )
    outputs = _children(
        sp,
        parent,
        "chain_tx_outputs o",
        ("sn", "o.sn"),
        ("address", "o.address"),
        ("value", "o.value"),
        ("is_mine", sp.boolean.format("o.is_mine")),
        ("status", "CASE WHEN o.spent THEN 0 ELSE 1 END"),
    )
    return inputs, outputs


@functools.cache
def _statement(dialect: str, query: Query) -> str:
    """The statement for `query` in `dialect`: one row per transaction, its JSON text."""
    sp = _SPELLINGS[dialect]
    a, w, t = sp.param.format("account_id"), sp.param.format("wallet"), sp.param.format("txid")
    iso, boolean = sp.iso.format, sp.boolean.format
    side = f"account_id = {a} AND wallet = {w}"
    where = {
        Query.FIRST: "",
        Query.AFTER: f"AND id > (SELECT id FROM chain_txs WHERE {side} AND txid = {t})",
        Query.DETAIL: f"AND txid = {t}",
    }[query]
    # stored when the writer recorded or changed them (`store_arrays`), built here otherwise
    inputs, outputs = (
        sp.stored.format(f"coalesce(p.{col}, {built})")
        for col, built in zip(_STORED, _arrays(dialect, "p.id"), strict=True)
    )
    confirmed = f"p.status = '{TxStatus.CONFIRMED.name}'"
    document = sp.obj_text.format(
        _pairs(
            ("tx_hash", "p.txid"),
            (
                "confirmation",
                f"CASE WHEN {confirmed} AND p.block_height <= b.h "
                "THEN b.h - p.block_height + 1 ELSE 0 END",
            ),
            ("confirm_at", f"CASE WHEN {confirmed} THEN {iso('p.confirm_at')} END"),
            ("tx_at", iso("p.tx_at")),
            ("value", "p.value"),
            ("inputs", inputs),
            ("outputs", outputs),
            ("cc_state", "lower(p.state)"),
            ("cc_state_at", iso("p.state_at")),
            ("cc_dust", boolean("p.has_dust")),
        )
    )
    return f"""
WITH page AS (
  SELECT id, txid, status, block_height, value, tx_at, confirm_at, state, state_at, has_dust,
    inputs_json, outputs_json
  FROM chain_txs
  WHERE {side} AND status <> '{TxStatus.REMOVED.name}' {where}
  ORDER BY id
  LIMIT {1 if query is Query.DETAIL else PAGE_SIZE}
),
best AS (SELECT max(height) AS h FROM blocks_seen)
SELECT {document} FROM page p CROSS JOIN best b ORDER BY p.id"""


_CURSOR = {
    d: f"SELECT 1 FROM chain_txs WHERE account_id = {sp.param.format('account_id')} "
    f"AND wallet = {sp.param.format('wallet')} AND txid = {sp.param.format('txid')}"
    for d, sp in _SPELLINGS.items()
}
# the stored spellings the template compares with (enums stored by name)
assert all(s.name.lower() == s.value for s in DepositState)


def store_arrays(s: Session, which: Select[Any] | Sequence[int]) -> None:
    """Store the `inputs` and `outputs` arrays of transactions `which` (ids, or a select of
    them) in their rows, as the page shows them, so a page reads them instead of building
    them from 3 tables per transaction (about half of its database CPU). Every writer of
    `chain_tx_inputs` or `chain_tx_outputs` calls this in the transaction that writes them
    (`stale_arrays` finds a row one forgot); a row never stored (NULL) is built at read."""
    if isinstance(which, Select):
        which = which.correlate(None)  # a select of chain_txs, not of the row being updated
    elif not which:
        return
    inputs, outputs = _arrays(s.get_bind().dialect.name, "chain_txs.id")
    s.execute(
        update(ChainTx)
        .where(ChainTx.id.in_(which))
        .values(inputs_json=literal_column(inputs), outputs_json=literal_column(outputs))
        .execution_options(synchronize_session=False)
    )


def backfill_statement(dialect: str) -> str:
    """An UPDATE storing the arrays of every transaction that has none stored yet (for the
    migration that added them, and for bulk loads that bypass the writers)."""
    inputs, outputs = _arrays(dialect, "chain_txs.id")
    return (
        f"UPDATE chain_txs SET {_STORED[0]} = {inputs}, {_STORED[1]} = {outputs} "
        f"WHERE {_STORED[0]} IS NULL OR {_STORED[1]} IS NULL"
    )


def stale_arrays(conn: Connection | Session) -> list[int]:
    """Ids of the transactions whose stored arrays differ from their rows' (for tests and
    checks: each is a writer that changed inputs or outputs without `store_arrays`)."""
    dialect = conn.get_bind().dialect.name if isinstance(conn, Session) else conn.dialect.name
    sp = _SPELLINGS[dialect]
    text = "{}::text" if dialect == "postgresql" else "{}"
    differs = " OR ".join(
        f"{text.format(sp.stored.format(f'chain_txs.{col}'))} <> {text.format(built)}"
        for col, built in zip(_STORED, _arrays(dialect, "chain_txs.id"), strict=True)
    )
    stored = " AND ".join(f"chain_txs.{col} IS NOT NULL" for col in _STORED)
    rows = conn.execute(
        select(ChainTx.id).where(literal_column(f"({stored}) AND ({differs})")).order_by(ChainTx.id)
    )
    return list(rows.scalars())


def tx_page(
    conn: Connection, account_id: int, wallet: Wallet, after_txid: str | None
) -> str | None:
    """Up to PAGE_SIZE transactions of one side, oldest first, after `after_txid` (the first
    page without it), as a JSON array's text. None when `after_txid` is not a transaction of
    this side."""
    dialect = conn.dialect.name
    params: dict[str, Any] = {"account_id": account_id, "wallet": wallet.name, "txid": after_txid}
    query = Query.FIRST if after_txid is None else Query.AFTER
    rows = driver_sql.rows(conn, _statement(dialect, query), params)
    if not rows and after_txid is not None and not driver_sql.rows(conn, _CURSOR[dialect], params):
        return None
    return "[" + ",".join(r[0] for r in rows) + "]"


def tx_detail(conn: Connection, account_id: int, wallet: Wallet, txid: str) -> str | None:
    """One transaction of one side as a JSON object's text (the same document as in a page),
    or None when this side has no such transaction."""
    params = {"account_id": account_id, "wallet": wallet.name, "txid": txid}
    rows = driver_sql.rows(conn, _statement(conn.dialect.name, Query.DETAIL), params)
    return str(rows[0][0]) if rows else None
