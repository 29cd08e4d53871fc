"""One SQLite transaction shape for the processes' own state files (cold HSM, V-device).

Their connections run in autocommit mode (`isolation_level=None`) so that each change says
where its transaction starts: `BEGIN IMMEDIATE` takes the write lock at once, so a reader
never blocks a change midway and two writers queue instead of failing at commit.

Inside an open transaction a nested block is a savepoint: several changes that must be durable
together (a co-signature's records) then cost one commit, one fsync, and a nested block that
raises still undoes only its own changes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT around the block, ROLLBACK if it raises; a savepoint if a
    transaction is already open on `db` (the caller holds whatever lock guards it)."""
    if db.in_transaction:
        with _savepoint(db):
            yield db
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@contextmanager
def _savepoint(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("SAVEPOINT nested")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK TO nested")
        db.execute("RELEASE nested")
        raise
    db.execute("RELEASE nested")


def join(db: sqlite3.Connection) -> None:
    """Open the transaction the next changes join (`BEGIN IMMEDIATE`), unless one is open: for
    a state whose changes share one later commit (`cc_common.group_commit`)."""
    if not db.in_transaction:
        db.execute("BEGIN IMMEDIATE")


def commit(db: sqlite3.Connection) -> None:
    """Make every change since `join` durable; if that fails, none of them is kept."""
    if not db.in_transaction:
        return
    try:
        db.execute("COMMIT")
    except sqlite3.Error:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
