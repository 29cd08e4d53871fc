"""Database engine and sessions for custody, from configuration.

SQLite (the embedded default) gets WAL, foreign keys and a busy timeout so several worker
processes can share one file; PostgreSQL is used as is. Engines are made by the app factory and
by each worker, never at import time.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from custody import balance_journal
from custody.errors import DatabaseUnavailable

# How long a SQLite writer waits for the write lock before `database is locked`: well under
# the shortest caller's deadline (the merchant site waits 15 s for a batch), so a writer held
# up by another one fails in time with an answer and a log line (`is_busy`) instead of
# outliving its caller. The watcher does not hold the lock across node calls, so a healthy
# wait is milliseconds.
SQLITE_BUSY_TIMEOUT = 5.0
# The same bound on the request path's other waits for the database: a connection from the
# pool (SQLAlchemy's default waits 30 s, longer than any caller) and, on PostgreSQL, a row
# lock (`lock_timeout`; unbounded by default). Each ends in `is_busy`: a logged 503.
DB_WAIT_TIMEOUT = SQLITE_BUSY_TIMEOUT


def database_url(config: Config) -> str:
    return config.section("custody").str("database_url")


def shown_url(url: str) -> str:
    """`url` fit for an operator's screen or a log: the password is hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(malformed database URL)"


def _unreachable(url: str) -> Callable[[ExceptionContext], None]:
    def handle(ctx: ExceptionContext) -> None:
        if ctx.connection is None:  # the connection itself failed, not a statement
            reason = str(ctx.original_exception).strip().splitlines()
            raise DatabaseUnavailable(
                f"database unreachable at {shown_url(url)}: {reason[0] if reason else '?'}"
            ) from None

    return handle


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for `url` with the settings this service needs on each backend. A failed
    connection raises `DatabaseUnavailable` (one line naming the URL, password hidden)."""
    engine = _make_engine(url, pool_size=pool_size)
    event.listen(engine, "handle_error", _unreachable(url))
    return engine


def _make_engine(url: str, *, pool_size: int) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
            pool_timeout=DB_WAIT_TIMEOUT,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
            cur.close()

        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=DB_WAIT_TIMEOUT,
    )


def postgres_lock_timeout() -> dict[str, Any]:
    """`connect_args` bounding a PostgreSQL row-lock wait to `DB_WAIT_TIMEOUT` (the API's)."""
    return {"options": f"-c lock_timeout={int(DB_WAIT_TIMEOUT * 1000)}"}


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that journal every maintained-balance change they make (`balance_journal`)."""
    factory = sessionmaker(engine, expire_on_commit=False)
    balance_journal.install(factory)
    return factory


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed at the end of the block, rolled back on error."""
    with factory() as session, session.begin():
        yield session


def is_busy(exc: BaseException) -> bool:
    """Whether `exc` is a wait for the database that ran out: SQLite's `database is locked`
    (the write lock stayed taken for the whole busy timeout), no pooled connection free in
    time, or PostgreSQL's `lock_timeout` (SQLSTATE 55P03)."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, OperationalError):
        return False
    return "database is locked" in str(exc.orig) or getattr(exc.orig, "sqlstate", None) == "55P03"


def is_postgres(session: Session) -> bool:
    """Row locks (`FOR UPDATE`) and `SKIP LOCKED` are used only where the database has them."""
    return session.get_bind().dialect.name == "postgresql"


def default_owner(role: str) -> str:
    """A worker identity unique across hosts, processes and instances (lease holder)."""
    return f"{role}:{socket.gethostname()[:20]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE/DELETE matched (its result is a `CursorResult`; `execute` is typed wider)."""
    return cast(CursorResult[Any], result).rowcount
