"""Statements sent through the database driver itself, past SQLAlchemy's execution layer.

Fixed texts that nothing needs to compile, on paths where that layer costs as much as the
statement: the group commit's writes on PostgreSQL, and the `GET /tx` page on either database.
SQLAlchemy's execution context costs about 0.2 ms of CPU per statement, several times the
driver's own, and its result layer builds row metadata anew for every textual statement.
The rows of a multi-row statement go as one JSON text (`rows_json`) that the statement reads
with `json_to_recordset`: psycopg adapts one string at no cost, where for a Python list it
inspects every element to choose an array type (about 0.1 ms per list). Errors come back as
SQLAlchemy's own exceptions (`OperationalError`, ...), as if the statement had gone through
SQLAlchemy, so `custody.db.is_busy` and the API's error handler treat them alike, and a lost
connection is invalidated the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError


def rows_json(rows: Sequence[Mapping[str, object]]) -> str:
    """`rows` as the JSON text a `json_to_recordset` statement reads, each numbered (`n`, from
    0) so the statement can keep their order; timestamps as ISO text (microseconds kept)."""
    return json.dumps(
        [{"n": n, **row} for n, row in enumerate(rows)], default=_iso, ensure_ascii=False
    )


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a column value")


_CURSOR = "custody.driver_sql.cursor"


def _cursor(info: dict[Any, Any], driver: Any) -> Any:
    """The driver connection's own cursor, made once and kept in the pool's record of that
    connection: making a psycopg cursor costs about as much as running a short statement on
    it. A connection is used by one thread at a time, and a statement's rows are all fetched
    before the next runs on it."""
    cursor = info.get(_CURSOR)
    if cursor is None or cursor.connection is not driver:
        cursor = info[_CURSOR] = driver.cursor()
    return cursor


def rows(conn: Connection, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Run `sql` (the driver's own parameter style) on `conn`'s driver connection, in the
    transaction `conn` is in; its rows (none for a statement that returns none)."""
    pooled = conn.connection
    driver = pooled.driver_connection
    assert driver is not None  # a checked-out connection always has one
    dbapi = conn.dialect.loaded_dbapi
    cursor = _cursor(pooled.info, driver)
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description is not None else []
    except dbapi.Error as exc:
        pooled.info.pop(_CURSOR, None)  # a failed statement's cursor is not used again
        gone = conn.dialect.is_disconnect(exc, driver, cursor)
        if not gone:
            cursor.close()
        wrapped = DBAPIError.instance(
            sql,
            None,  # never the rows (amounts, addresses) in a message that may be logged
            exc,
            dbapi.Error,
            hide_parameters=True,
            connection_invalidated=gone,
            dialect=conn.dialect,
        )
        if gone:
            conn.invalidate(wrapped)
        raise wrapped from exc
