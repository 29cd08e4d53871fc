"""One SQLite transaction shape for the processes' own state files (cold HSM, V-device).

Their connections run in autocommit mode (`isolation_level=None`) so that each change says
where its transaction starts: `BEGIN IMMEDIATE` takes the write lock at once, so a reader
never blocks a change midway and two writers queue instead of failing at commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT around the block, ROLLBACK if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
