"""The per-test PostgreSQL database (`db_url` in tests/api_fixtures.py) is emptied between
tests, not recreated: what `emptied` leaves must be indistinguishable from a new database."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from custody.models import AccountBalance, Address, Base, BlockSeen, Utxo
from tests.api_fixtures import TestAccount, emptied, seen_block

API = "/api/v1/open"


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_emptied_leaves_no_row_and_restarts_every_sequence(
    db_url: str, session_factory: sessionmaker[Session], account: TestAccount, client: Any
) -> None:
    client.get(f"{API}/address/batch/0", headers=account.cold)
    with session_factory() as s, s.begin():
        s.add(seen_block(1))
        address = s.execute(select(Address)).scalars().first()
        assert address is not None
        # an unspent output: the balance triggers write account_balances on its deletion too
        s.add(Utxo(account_id=account.id, wallet=address.wallet, txid="ab" * 32, vout=0,
                   value=1000, address_id=address.id, block_height=1))  # fmt: skip
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(BlockSeen)) == 1
        assert s.scalar(select(func.count()).select_from(AccountBalance)) > 0
        used = s.execute(text("SELECT count(*) FROM pg_sequences WHERE last_value IS NOT NULL"))
        assert used.scalar_one() > 0  # the account's rows took ids
    emptied(db_url)
    with session_factory() as s:
        for table in Base.metadata.sorted_tables:
            assert s.scalar(select(func.count()).select_from(table)) == 0, table.name
        used = s.execute(text("SELECT count(*) FROM pg_sequences WHERE last_value IS NOT NULL"))
        assert used.scalar_one() == 0  # the next row of every table gets id 1 again
