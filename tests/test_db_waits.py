"""Every wait of the API for its database ends before its caller's deadline, as a busy 503.

SQLite's write lock is bounded by its busy timeout (tests/test_db_contention.py); here the
two other waits: a connection from the pool (SQLAlchemy waits 30 s by default) and a
PostgreSQL row lock (unbounded by default). Each ends after `DB_WAIT_TIMEOUT` in an error
that `is_busy` recognises, which the API answers as 503 code 19.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from custody import driver_sql
from custody.app import api_engine
from custody.db import DB_WAIT_TIMEOUT, is_busy, make_engine
from tests.api_fixtures import scratch_pg_database

CALLER_DEADLINE = 12.0  # the merchant site's


def test_the_wait_bound_is_below_every_callers_deadline() -> None:
    assert DB_WAIT_TIMEOUT < CALLER_DEADLINE - 2


def test_a_pool_without_a_free_connection_fails_in_time(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert engine.pool.timeout() == DB_WAIT_TIMEOUT  # type: ignore[attr-defined]
    assert is_busy(PoolTimeout("QueuePool limit of size 5 overflow 10 reached"))
    engine.dispose()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with scratch_pg_database() as url:
        yield url


def test_a_postgresql_row_lock_wait_fails_in_time(pg_url: str) -> None:
    with psycopg.connect(pg_url) as holder:
        holder.execute("CREATE TABLE lock_probe (id int PRIMARY KEY)")
        holder.execute("INSERT INTO lock_probe VALUES (1)")
        holder.commit()
        holder.execute("SELECT id FROM lock_probe WHERE id = 1 FOR UPDATE")  # held
        engine = api_engine(pg_url)
        start = time.monotonic()
        with pytest.raises(OperationalError) as caught, engine.connect() as conn:
            conn.execute(text("SELECT id FROM lock_probe WHERE id = 1 FOR UPDATE"))
        took = time.monotonic() - start
        engine.dispose()
        holder.rollback()
    assert is_busy(caught.value)
    assert DB_WAIT_TIMEOUT - 0.5 <= took < DB_WAIT_TIMEOUT + 3


def test_a_lock_wait_through_the_driver_is_busy_as_through_sqlalchemy(pg_url: str) -> None:
    """The group commit's statements go to psycopg directly (`custody.driver_sql`): a lock
    wait that runs out is still SQLAlchemy's `OperationalError` that `is_busy` knows (a 503,
    the group failed at once), and its message names no parameter (a send's outs)."""
    with psycopg.connect(pg_url) as holder:
        holder.execute("CREATE TABLE driver_probe (id int PRIMARY KEY)")
        holder.execute("INSERT INTO driver_probe VALUES (1)")
        holder.commit()
        holder.execute("SELECT id FROM driver_probe WHERE id = 1 FOR UPDATE")  # held
        url = make_engine(pg_url).url
        engine = create_engine(url, connect_args={"options": "-c lock_timeout=200"})
        sql = "SELECT id FROM driver_probe WHERE id = 1 AND %(outs)s <> '' FOR UPDATE"
        with pytest.raises(OperationalError) as caught, engine.connect() as conn:
            driver_sql.rows(conn, sql, {"outs": "bcrt1q-secret-outs,1000"})
        engine.dispose()
        holder.rollback()
    assert is_busy(caught.value)
    assert "secret-outs" not in str(caught.value)
