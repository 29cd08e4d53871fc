"""The custody database an API benchmark runs on: a fresh PostgreSQL database with one
account whose first address batch is verified, history bulk-loaded with COPY, dropped at the
end (`bench_api`, `bench_api_write`, `bench_scale`)."""

from __future__ import annotations

import contextlib
import io
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path)
import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from custody.admin_cli import upgrade_database
from custody.api.tx_json import backfill_statement
from custody.batches import get_or_create_batch, set_batch_status
from custody.db import make_engine, make_session_factory
from custody.models import BatchStatus, Wallet
from tests.api_fixtures import SoftwareHsmStandIn, TestAccount, make_config, new_account

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"

# The columns the loaders write besides `chain_txs` (whose columns each loader chooses).
_CHILD_COLUMNS = (
    ("chain_tx_inputs", "id, chain_tx_id, sn, prev_tx_hash, prev_out_sn, address, value, is_mine"),
    ("chain_tx_outputs", "id, chain_tx_id, sn, address, value, is_mine, spent"),
    (
        "utxos",
        "id, account_id, wallet, txid, vout, value, address_id, block_height, spent_by,"
        " reserved_by_send",
    ),
)


def bench_run() -> tuple[contextlib.ExitStack, str, Path]:
    """A new empty database on the local server (its DSN) and a data folder, with the exit
    stack of the run: closing it drops the database last, after what the run entered."""
    name = f"cc_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    stack = contextlib.ExitStack()
    stack.callback(_drop_database, name)
    data_dir = Path(tempfile.mkdtemp(prefix="cc-bench-"))
    return stack, PG_ADMIN.rsplit("/", 1)[0] + "/" + name, data_dir


def _drop_database(name: str) -> None:
    """Drop a benchmark's database, ending the sessions still open on it."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class BenchAccount:
    """A migrated database with one account, and what a benchmark drives it with."""

    engine: Engine
    factory: sessionmaker[Session]
    hsm: SoftwareHsmStandIn
    account: TestAccount
    config: Config


def lift_rate_limits(factory: sessionmaker[Session]) -> None:
    """Every token's per-minute limit out of reach: a benchmark measures the server's rate,
    not the limiter's."""
    with factory() as s, s.begin():
        s.execute(text("UPDATE api_tokens SET rate_limit_per_minute = 100000000"))


def verified_account(dsn: str, data_dir: Path, wallet: Wallet) -> BenchAccount:
    """Migrate `dsn` and add an account whose `wallet` side has a verified address batch 0."""
    upgrade_database(dsn)
    engine = make_engine(dsn)
    factory = make_session_factory(engine)
    hsm = SoftwareHsmStandIn()
    account = new_account(factory, hsm, "bench")
    config = make_config(data_dir, dsn, "http://127.0.0.1:9")
    get_or_create_batch(factory, hsm, config, account.id, wallet, 0)
    with factory() as s, s.begin():
        set_batch_status(s, config, account.id, wallet, 0, BatchStatus.VERIFIED)
    return BenchAccount(engine, factory, hsm, account, config)


def copy_history(
    cur: psycopg.Cursor[Any],
    tx_columns: str,
    txs: io.StringIO,
    ins: io.StringIO,
    outs: io.StringIO,
    utxos: io.StringIO,
) -> None:
    """COPY the tab-separated rows of transactions, their inputs and outputs, and UTXOs;
    then store the transactions' `GET /tx` arrays, as the watcher does when it records one
    (leaves a dead version of each new transaction row: VACUUM before measuring)."""
    tables = (("chain_txs", tx_columns), *_CHILD_COLUMNS)
    for (table, cols), buf in zip(tables, (txs, ins, outs, utxos), strict=True):
        with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
            copy.write(buf.getvalue())
    cur.execute(backfill_statement("postgresql"))
