"""On PostgreSQL, `GET /tx` pages are rendered as JSON by the database (the hot path of the
API benchmark). That is a second definition of the page next to the Python renderer used on
SQLite and by `/tx/detail`; this test keeps the two the same document, on data chosen to be
awkward: fractional timestamps, unconfirmed and removed transactions, blocks above the tip,
no block seen at all, no inputs, an address with JSON-special characters, a partial last page.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from custody.api import queries
from custody.db import make_engine, make_session_factory
from custody.models import (
    BlockSeen,
    ChainTx,
    ChainTxInput,
    ChainTxOutput,
    TxStatus,
    Wallet,
)
from tests.api_fixtures import emptied, new_account

ODD_ADDRESS = 'bcrt1q"quote\\backslash\u00e9'


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """The session's migrated PostgreSQL database, emptied for this test."""
    yield emptied(pg_database)


def seed(factory, account_id: int, wallet: Wallet, n: int) -> list[str]:
    base = datetime(2024, 3, 1, 12, 0, 0, 123456)
    txids = []
    with factory() as s, s.begin():
        for i in range(n):
            txid = f"{account_id:02x}{int(wallet):02x}{i:060x}"
            txids.append(txid)
            status = [TxStatus.CONFIRMED, TxStatus.MEMPOOL, TxStatus.REMOVED][i % 3]
            confirmed = status is TxStatus.CONFIRMED
            height = 200 + i * 7 if confirmed else None  # some above the tip
            tx = ChainTx(
                account_id=account_id,
                wallet=wallet,
                txid=txid,
                status=status,
                block_height=height,
                block_hash=f"{i:064x}" if confirmed else None,
                value=(-1) ** i * (1_000 + i * 37),
                tx_at=base + timedelta(seconds=i, microseconds=i * 1111),
                confirm_at=base + timedelta(minutes=i, microseconds=999_999) if confirmed else None,
            )
            if i % 4:
                tx.inputs = [
                    ChainTxInput(
                        sn=k,
                        prev_tx_hash=f"{i + k:064x}",
                        prev_out_sn=k,
                        address=ODD_ADDRESS if i % 5 == 0 else f"bcrt1qaddr{i}",
                        value=5_000 + k,
                        is_mine=bool(k % 2),
                    )
                    for k in range(i % 3 + 1)
                ]
            tx.outputs = [
                ChainTxOutput(
                    sn=k, address=f"bcrt1qout{i}-{k}", value=k * 10, is_mine=k == 0, spent=k == 1
                )
                for k in range(2)
            ]
            s.add(tx)
    return txids


def pages_agree(engine, account_id: int, wallet: Wallet, cursors: list[str | None]):
    for cursor in cursors:
        with engine.connect() as conn:
            python_page = queries.tx_page(conn, account_id, wallet, cursor)
            sql_text = queries.tx_page_json(conn, account_id, wallet, cursor)
        if python_page is None:
            assert sql_text is None, f"cursor {cursor}: SQL found a page Python did not"
            continue
        assert sql_text is not None, f"cursor {cursor}: SQL found no page"
        assert json.loads(sql_text) == python_page, f"cursor {cursor}: pages differ"


def test_sql_rendered_pages_equal_python_pages(pg_url: str, hsm) -> None:
    engine = make_engine(pg_url)
    factory = make_session_factory(engine)
    try:
        acct = new_account(factory, hsm, "pagejson")
        txids = seed(factory, acct.id, Wallet.COLD, 47)
        unknown = "ff" * 32
        cursors: list[str | None] = [None, *txids[::3], txids[-1], unknown]
        # no block seen at all: confirmations computed against no tip
        pages_agree(engine, acct.id, Wallet.COLD, cursors)
        with factory() as s, s.begin():
            tip = BlockSeen(
                height=260, block_hash="ab" * 32, prev_hash="00" * 32, time=datetime(2024, 3, 2)
            )
            s.add(tip)
        pages_agree(engine, acct.id, Wallet.COLD, cursors)
        # the other side of the account is empty: both say "no page" or "empty page" alike
        pages_agree(engine, acct.id, Wallet.HOT, [None, txids[0]])
    finally:
        engine.dispose()
