"""The `/tx` page and `/tx/detail` document's contract, on SQLite and PostgreSQL alike.

The document is defined once (`custody.api.tx_json`, one SQL template, four primitives
spelled per database); this holds what it must say on each database, on data chosen to be
awkward: fractional timestamps, unconfirmed and removed transactions, blocks above the tip,
no block seen at all, no inputs, an address with JSON-special characters, a partial last page,
a cursor of the other side and an unknown one.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from custody.admin_cli import alembic_config, upgrade_database
from custody.api import tx_json
from custody.db import make_engine, make_session_factory
from custody.models import BlockSeen, ChainTx, ChainTxInput, ChainTxOutput, TxStatus, Wallet
from custody.openapi_spec import SCHEMAS
from tests.api_fixtures import new_account

ODD_ADDRESS = 'bcrt1q"quote\\backslash\u00e9'
BASE = datetime(2024, 3, 1, 12, 0, 0, 123456)


def seed(factory: sessionmaker[Session], account_id: int, n: int) -> list[dict[str, Any]]:
    """`n` cold transactions; returns what each should look like (None for a removed one)."""
    expected: list[dict[str, Any]] = []
    with factory() as s, s.begin():
        for i in range(n):
            txid = f"{account_id:02x}{i:062x}"
            status = [TxStatus.CONFIRMED, TxStatus.MEMPOOL, TxStatus.REMOVED][i % 3]
            confirmed = status is TxStatus.CONFIRMED
            height = 200 + i * 7 if confirmed else None  # some above the tip
            tx_at = BASE + timedelta(seconds=i, microseconds=i * 1111)
            confirm_at = BASE + timedelta(minutes=i, microseconds=999_999)
            inputs = [
                {
                    "sn": k,
                    "prev_tx_hash": f"{i + k:064x}",
                    "prev_out_sn": k,
                    "address": ODD_ADDRESS if i % 5 == 0 else f"bcrt1qaddr{i}",
                    "value": 5_000 + k,
                    "is_mine": bool(k % 2),
                }
                for k in (range(i % 3 + 1) if i % 4 else ())
            ]
            outputs = [
                {
                    "sn": k,
                    "address": f"bcrt1qout{i}-{k}",
                    "value": k * 10,
                    "is_mine": k == 0,
                    "spent": k == 1,
                }
                for k in (1, 0)  # stored out of order: the document orders by sn
            ]
            tx = ChainTx(
                account_id=account_id,
                wallet=Wallet.COLD,
                txid=txid,
                status=status,
                block_height=height,
                block_hash=f"{i:064x}" if confirmed else None,
                value=(-1) ** i * (1_000 + i * 37),
                tx_at=tx_at,
                confirm_at=confirm_at if confirmed else None,
                state_at=tx_at,
                has_dust=i % 7 == 0,
            )
            tx.inputs = [ChainTxInput(**x) for x in inputs]
            tx.outputs = [ChainTxOutput(**x) for x in outputs]
            s.add(tx)
            expected.append(
                {
                    "tx_hash": txid,
                    "height": height,
                    "confirm_at": confirm_at.replace(microsecond=0).isoformat()
                    if confirmed
                    else None,
                    "tx_at": tx_at.replace(microsecond=0).isoformat(),
                    "value": (-1) ** i * (1_000 + i * 37),
                    "inputs": inputs,
                    "outputs": [
                        {
                            **{k: v for k, v in o.items() if k != "spent"},
                            "status": 0 if o["spent"] else 1,
                        }
                        for o in sorted(outputs, key=lambda o: o["sn"])
                    ],
                    "cc_state": "seen",
                    "cc_state_at": tx_at.replace(microsecond=0).isoformat(),
                    "cc_dust": i % 7 == 0,
                    "removed": status is TxStatus.REMOVED,
                }
            )
    return expected


def document(want: dict[str, Any], tip: int | None) -> dict[str, Any]:
    """The document `want` should render as with the watcher's best block at `tip`."""
    h = want["height"]
    confirmations = 0 if tip is None or h is None or h > tip else tip - h + 1
    doc = {k: v for k, v in want.items() if k not in ("height", "removed")}
    return {**doc, "confirmation": confirmations}


KEYS = list(SCHEMAS["Tx"]["properties"])  # the documented field order


def check_pages(engine: Any, account_id: int, txs: list[dict[str, Any]], tip: int | None) -> None:
    visible = [document(t, tip) for t in txs if not t["removed"]]
    with engine.connect() as conn:
        first = tx_json.tx_page(conn, account_id, Wallet.COLD, None)
        assert first is not None
        assert json.loads(first) == visible[: tx_json.PAGE_SIZE]
        assert list(json.loads(first)[0]) == KEYS
        for n, t in enumerate(txs):
            # after any transaction (a removed one too): the next visible ones
            after = [document(x, tip) for x in txs[n + 1 :] if not x["removed"]]
            page = tx_json.tx_page(conn, account_id, Wallet.COLD, t["tx_hash"])
            assert page is not None and json.loads(page) == after[: tx_json.PAGE_SIZE], n
            detail = tx_json.tx_detail(conn, account_id, Wallet.COLD, t["tx_hash"])
            if t["removed"]:
                assert detail is None
            else:
                assert detail is not None and json.loads(detail) == document(t, tip)
        # unknown cursors and the other side: no page, no detail
        assert tx_json.tx_page(conn, account_id, Wallet.COLD, "ff" * 32) is None
        assert tx_json.tx_page(conn, account_id, Wallet.HOT, txs[0]["tx_hash"]) is None
        assert tx_json.tx_page(conn, account_id, Wallet.HOT, None) == "[]"
        assert tx_json.tx_detail(conn, account_id, Wallet.HOT, txs[0]["tx_hash"]) is None


def texts(engine: Any, account_id: int, txs: list[dict[str, Any]]) -> list[str | None]:
    """Every page and detail's text, as the API answers them."""
    with engine.connect() as conn:
        pages = [tx_json.tx_page(conn, account_id, Wallet.COLD, None)]
        for t in txs:
            pages.append(tx_json.tx_page(conn, account_id, Wallet.COLD, t["tx_hash"]))
            pages.append(tx_json.tx_detail(conn, account_id, Wallet.COLD, t["tx_hash"]))
    return pages


def store_all(factory: sessionmaker[Session]) -> None:
    with factory() as s, s.begin():
        s.execute(text(tx_json.backfill_statement(s.get_bind().dialect.name)))
        assert s.scalar(select(func.count()).where(ChainTx.inputs_json.is_(None))) == 0


@pytest.mark.parametrize("stored", [False, True], ids=["built", "stored"])
def test_tx_document_contract(
    session_factory: sessionmaker[Session], hsm: Any, stored: bool
) -> None:
    """The same document whether the arrays are built at read or stored by the writer."""
    engine = session_factory.kw["bind"]
    acct = new_account(session_factory, hsm, "txjson")
    txs = seed(session_factory, acct.id, 47)
    if stored:
        built = texts(engine, acct.id, txs)
        store_all(session_factory)
        assert texts(engine, acct.id, txs) == built  # byte for byte
    check_pages(engine, acct.id, txs, None)  # no block seen at all
    with session_factory() as s, s.begin():
        s.add(BlockSeen(height=260, block_hash="ab" * 32, prev_hash="00" * 32, time=BASE))
    check_pages(engine, acct.id, txs, 260)


def test_stale_arrays_are_found_and_restored(
    session_factory: sessionmaker[Session], hsm: Any
) -> None:
    """A change to an output or an input without `store_arrays` is what `stale_arrays`
    reports (the worker tests' teardown relies on it); `store_arrays` shows the change."""
    engine = session_factory.kw["bind"]
    acct = new_account(session_factory, hsm, "stale")
    txs = seed(session_factory, acct.id, 4)
    store_all(session_factory)
    with session_factory() as s, s.begin():
        ids = s.scalars(select(ChainTx.id).order_by(ChainTx.id)).all()
        assert tx_json.stale_arrays(s) == []
        s.execute(
            update(ChainTxOutput)
            .where(ChainTxOutput.chain_tx_id == ids[0], ChainTxOutput.sn == 0)
            .values(spent=True)
        )
        s.execute(
            update(ChainTxInput)
            .where(ChainTxInput.chain_tx_id == ids[1], ChainTxInput.sn == 0)
            .values(address="bcrt1qfilled", value=77)
        )
        assert tx_json.stale_arrays(s) == [ids[0], ids[1]]
    with engine.connect() as conn:
        detail = tx_json.tx_detail(conn, acct.id, Wallet.COLD, txs[0]["tx_hash"])
    assert detail is not None and json.loads(detail)["outputs"][0]["status"] == 1  # as stored
    with session_factory() as s, s.begin():
        tx_json.store_arrays(s, select(ChainTx.id).where(ChainTx.id.in_([ids[0], ids[1]])))
        assert tx_json.stale_arrays(s) == []
    with engine.connect() as conn:
        first = json.loads(tx_json.tx_page(conn, acct.id, Wallet.COLD, None) or "")
    assert first[0]["outputs"][0]["status"] == 0
    assert first[1]["inputs"][0] == {**txs[1]["inputs"][0], "address": "bcrt1qfilled", "value": 77}


def test_a_lost_connection_is_invalidated(session_factory: sessionmaker[Session], hsm: Any) -> None:
    """The page is read with the driver's cursor: a connection the server dropped still fails
    as SQLAlchemy's error, and leaves the pool instead of failing every later read."""
    engine = session_factory.kw["bind"]
    if engine.dialect.name != "postgresql":
        pytest.skip("a backend is terminated on PostgreSQL only")
    acct = new_account(session_factory, hsm, "lost")
    seed(session_factory, acct.id, 3)
    with engine.connect() as conn:
        assert tx_json.tx_page(conn, acct.id, Wallet.COLD, None) is not None
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with psycopg.connect(engine.url.set(drivername="postgresql").render_as_string(False)) as c:
            c.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DBAPIError) as caught:
            tx_json.tx_page(conn, acct.id, Wallet.COLD, None)
        assert caught.value.connection_invalidated and conn.invalidated
    with engine.connect() as conn:
        assert tx_json.tx_page(conn, acct.id, Wallet.COLD, None) is not None


def test_migration_stores_the_arrays_of_recorded_transactions(empty_db_url: str, hsm: Any) -> None:
    """0009 adds the stored arrays and fills them for the transactions already recorded:
    the pages read them stored, the same text as when built, on both databases."""
    upgrade_database(empty_db_url)
    engine = make_engine(empty_db_url)
    factory = make_session_factory(engine)
    acct = new_account(factory, hsm, "migrated")
    txs = seed(factory, acct.id, 23)
    built = texts(engine, acct.id, txs)
    command.downgrade(alembic_config(empty_db_url), "0008")  # as recorded before 0009
    upgrade_database(empty_db_url)
    with factory() as s:
        unstored = select(func.count()).where(
            ChainTx.inputs_json.is_(None) | ChainTx.outputs_json.is_(None)
        )
        assert s.scalar(unstored) == 0
        assert tx_json.stale_arrays(s) == []
    assert texts(engine, acct.id, txs) == built
    engine.dispose()
