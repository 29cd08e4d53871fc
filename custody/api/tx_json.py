"""The `GET /tx` page and `GET /tx/detail` document, defined once and rendered by the database.

One SQL template (`_statement`) says which transactions, in which order, with which fields:
each transaction becomes one JSON object built by the database (its inputs and outputs as
nested arrays), so a request binds, executes and joins the rows' text; no row objects, dicts
or JSON encoding in Python. The template names four primitives whose spelling differs between
PostgreSQL and SQLite (`_Spelling`): a JSON object, an ordered JSON array of a related table's
rows, an ISO-8601 timestamp without fractions (as `custody.api.iso` writes it) and a JSON
boolean. Everything else is the same text on both, so the two databases cannot drift apart;
`tests/test_api_tx_json.py` holds the document's contract on both.

`GET /tx` stays flat as an account grows: the page is an index range on `ix_chain_txs_page`
(account, wallet, id) after the cursor's id (keyset pagination, found by the unique
(account, wallet, txid) index), however deep the cursor is.
"""

# ruff: noqa: S608  (the SQL is built from this module's constants only; values are bound)

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from custody.models import DepositState, TxStatus, Wallet

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


_POSTGRESQL = _Spelling(
    param="%({})s",
    obj="json_build_object({})",
    obj_text="json_build_object({})::text",
    array="(SELECT coalesce(json_agg({obj} ORDER BY {order}), '[]'::json) FROM {source})",
    iso="""to_char({}, 'YYYY-MM-DD"T"HH24:MI:SS')""",
    boolean="{}",
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
)
_SPELLINGS = {"postgresql": _POSTGRESQL, "sqlite": _SQLITE}


class Query(Enum):
    FIRST = "first"  # the first page
    AFTER = "after"  # the page after transaction :txid
    DETAIL = "detail"  # transaction :txid alone


def _pairs(*items: tuple[str, str]) -> str:
    return ", ".join(f"'{k}', {v}" for k, v in items)


def _children(sp: _Spelling, table: str, *items: tuple[str, str]) -> str:
    """A JSON array of the rows of `table` (with its alias) that belong to transaction `p`,
    in `sn` order, each an object of `items`."""
    alias = table.split()[1]
    return sp.array.format(
        obj=sp.obj.format(_pairs(*items)),
        source=f"{table} WHERE {alias}.chain_tx_id = p.id",
        order=f"{alias}.sn",
    )


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
    inputs = _children(
        sp,
        "chain_tx_inputs i",
        ("sn", "i.sn"),
        ("prev_tx_hash", "i.prev_tx_hash"),
        ("prev_out_sn", "i.prev_out_sn"),
        ("address", "i.address"),
        ("value", "i.value"),
        ("is_mine", boolean("i.is_mine")),
    )
    outputs = _children(
        sp,
        "chain_tx_outputs o",
        ("sn", "o.sn"),
        ("address", "o.address"),
        ("value", "o.value"),
        ("is_mine", boolean("o.is_mine")),
        ("status", "CASE WHEN o.spent THEN 0 ELSE 1 END"),
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
  SELECT id, txid, status, block_height, value, tx_at, confirm_at, state, state_at, has_dust
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


def _rows(conn: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
    """The statement's rows, read with the driver's own cursor: SQLAlchemy's result layer
    builds its row metadata anew for every textual statement (about as much CPU as the driver's
    whole execute and fetch of a page), and adds nothing to rows of one text column. Errors are
    wrapped and a lost connection invalidated as SQLAlchemy itself would (`is_busy`, the pool)."""
    raw = conn.connection.dbapi_connection
    assert raw is not None  # a live Connection holds its DBAPI connection
    dbapi = conn.dialect.loaded_dbapi
    cursor = raw.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    except dbapi.Error as exc:
        gone = conn.dialect.is_disconnect(exc, raw, cursor)
        if gone:
            conn.invalidate()
        raise DBAPIError.instance(
            sql, params, exc, dbapi.Error, connection_invalidated=gone, dialect=conn.dialect
        ) from exc
    finally:
        if not conn.invalidated:
            cursor.close()


def tx_page(
    conn: Connection, account_id: int, wallet: Wallet, after_txid: str | None
) -> str | None:
    """Up to PAGE_SIZE transactions of one side, oldest first, after `after_txid` (the first
    page without it), as a JSON array's text. None when `after_txid` is not a transaction of
    this side."""
    dialect = conn.dialect.name
    params: dict[str, Any] = {"account_id": account_id, "wallet": wallet.name, "txid": after_txid}
    query = Query.FIRST if after_txid is None else Query.AFTER
    rows = _rows(conn, _statement(dialect, query), params)
    if not rows and after_txid is not None and not _rows(conn, _CURSOR[dialect], params):
        return None
    return "[" + ",".join(r[0] for r in rows) + "]"


def tx_detail(conn: Connection, account_id: int, wallet: Wallet, txid: str) -> str | None:
    """One transaction of one side as a JSON object's text (the same document as in a page),
    or None when this side has no such transaction."""
    params = {"account_id": account_id, "wallet": wallet.name, "txid": txid}
    rows = _rows(conn, _statement(conn.dialect.name, Query.DETAIL), params)
    return str(rows[0][0]) if rows else None
