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
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
            cur.close()

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


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
    """Whether `exc` is SQLite's `database is locked`: the write lock stayed taken for the
    whole busy timeout."""
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


def is_postgres(session: Session) -> bool:
    """Row locks (`FOR UPDATE`) and `SKIP LOCKED` are used only where the database has them."""
    return session.get_bind().dialect.name == "postgresql"


def default_owner(role: str) -> str:
    """A worker identity unique across hosts, processes and instances (lease holder)."""
    return f"{role}:{socket.gethostname()[:20]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE/DELETE matched (its result is a `CursorResult`; `execute` is typed wider)."""
    return cast(CursorResult[Any], result).rowcount
