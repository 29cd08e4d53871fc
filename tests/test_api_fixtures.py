"""The per-test PostgreSQL database (`db_url` in tests/api_fixtures.py) is emptied between
tests, not recreated: what `emptied` leaves must be indistinguishable from a new database."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from custody.models import Base, BlockSeen
from tests.api_fixtures import TestAccount, emptied, seen_block


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_emptied_leaves_no_row_and_restarts_every_sequence(
    db_url: str, session_factory: sessionmaker[Session], account: TestAccount
) -> None:
    with session_factory() as s, s.begin():
        s.add(seen_block(1))
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(BlockSeen)) == 1
        used = s.execute(text("SELECT count(*) FROM pg_sequences WHERE last_value IS NOT NULL"))
        assert used.scalar_one() > 0  # the account's rows took ids
    emptied(db_url)
    with session_factory() as s:
        for table in Base.metadata.sorted_tables:
            assert s.scalar(select(func.count()).select_from(table)) == 0, table.name
        used = s.execute(text("SELECT count(*) FROM pg_sequences WHERE last_value IS NOT NULL"))
        assert used.scalar_one() == 0  # the next row of every table gets id 1 again
