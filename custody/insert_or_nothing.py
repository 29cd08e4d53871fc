"""One row inserted unless its key is taken: the database's own `ON CONFLICT DO NOTHING`.

Its own module because the events (imported by the journal, which `custody.db` imports) and
the cold statements both use it: in `custody.db` it would make an import cycle.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session


def insert_or_nothing(session: Session, table: Any, **values: Any) -> None:
    """Insert a row unless its key is taken already: the first of two concurrent writers keeps
    its row and the other goes on without an error."""
    postgres = session.get_bind().dialect.name == "postgresql"
    insert = pg_insert if postgres else sqlite_insert
    session.execute(insert(table).values(**values).on_conflict_do_nothing())
