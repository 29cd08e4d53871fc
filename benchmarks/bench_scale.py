"""Benchmark: an account's balance at 10 000 and 200 000 UTXOs on PostgreSQL (the maintained
balance of `custody.balance_sql` against summing the outputs).

Workload (all on 127.0.0.1):
- a temporary PostgreSQL database `cc_bench_<random>` (dropped at the end), migrated with
  Alembic; one account provisioned through the software HSM stand-in of the tests;
- N unspent outputs on its cold side, bulk-loaded with COPY (the balance triggers fire for
  every row, so the load time includes their cost), spread over N/100 blocks, 1 in 10 in
  the mempool; the tip is the last of those blocks;
- figures, each the median (p50) and p99 of `--reads` calls on one connection:
  - `balance`: `custody.balances.confirmed_balance_at` with min_confirmations 1 and 6 (what
    `GET /user` runs when its per-process cache misses),
  - `sum`: the statement the balance was before (summing the account side's outputs),
  - `new block`: one transaction that marks 100 mempool outputs mined in a new block (the
    watcher's update), triggers included, rolled back (so no commit is timed).

Covers the balance part of issue 14's scale benchmark only: `/tx` pages, `/tx/detail`, coin
selection and consolidation at 200 000 UTXOs are not measured here.

Run: `.venv/bin/python benchmarks/bench_scale.py [--sizes 10000 200000] [--reads 500]`.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from _common import samples_ms
from sqlalchemy import func, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from custody.admin_cli import upgrade_database  # noqa: E402
from custody.balances import confirmed_balance_at, verify_balances  # noqa: E402
from custody.db import make_engine, make_session_factory  # noqa: E402
from custody.models import Address, Chain, Utxo, Wallet  # noqa: E402
from tests.api_fixtures import SoftwareHsmStandIn, new_account  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PER_BLOCK = 100


def load_utxos(dsn: str, account_id: int, address_id: int, start: int, count: int) -> int:
    """COPY `count` cold UTXOs (ids start+1..); returns the tip height (blocks_seen reset)."""
    buf = io.StringIO()
    for i in range(start, start + count):
        height = "\\N" if i % 10 == 9 else str(100 + i // PER_BLOCK)
        buf.write(
            f"{i + 1}\t{account_id}\tCOLD\t{i:064x}\t0\t{1_000 + i % 997}\t{address_id}"
            f"\t{height}\t\\N\t\\N\n"
        )
    tip = 100 + (start + count - 1) // PER_BLOCK
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cols = "id, account_id, wallet, txid, vout, value, address_id, block_height, spent_by"
        cols += ", reserved_by_send"
        with cur.copy(f"COPY utxos ({cols}) FROM STDIN") as copy:
            copy.write(buf.getvalue())
        cur.execute("DELETE FROM blocks_seen")
        cur.execute(
            "INSERT INTO blocks_seen (height, block_hash, prev_hash, time) "
            "VALUES (%s, %s, %s, now())",
            (tip, f"{tip:064x}", f"{tip - 1:064x}"),
        )
        conn.commit()
        cur.execute("ANALYZE")
        conn.commit()
    return tip


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(p50 ms, p99 ms) of n calls."""
    wall, _ = samples_ms(fn, n)
    wall.sort()
    return statistics.median(wall), wall[min(n - 1, int(n * 0.99))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 200_000], help="UTXO counts, ascending"
    )
    ap.add_argument("--reads", type=int, default=500, help="calls per figure")
    args = ap.parse_args()
    name = f"cc_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores, shared)")
    try:
        upgrade_database(dsn)
        engine = make_engine(dsn)
        factory = make_session_factory(engine)
        account = new_account(factory, SoftwareHsmStandIn(), "bench")
        with factory() as s, s.begin():
            a = Address(
                account_id=account.id,
                wallet=Wallet.COLD,
                chain=Chain.CHANGE,
                index=0,
                address="bcrt1qbenchscale",
                script_pubkey=b"\0\x14" + bytes(20),
            )
            s.add(a)
            s.flush()
            address_id = a.id
        old_sum = select(func.coalesce(func.sum(Utxo.value), 0)).where(
            Utxo.account_id == account.id,
            Utxo.wallet == Wallet.COLD,
            Utxo.spent_by.is_(None),
            Utxo.block_height.is_not(None),
        )
        loaded = 0
        print(f"{'utxos':>8} {'figure':34} {'p50 ms':>8} {'p99 ms':>8}")
        for size in args.sizes:
            t0 = time.perf_counter()
            tip = load_utxos(dsn, account.id, address_id, loaded, size - loaded)
            load_s = time.perf_counter() - t0
            print(f"{size:>8} {'COPY of the new rows (triggers on)':34} {load_s * 1000:8.0f} total")
            loaded = size
            with factory() as s:
                assert verify_balances(s) == [], "maintained balance differs from the sum"
                for conf in (1, 6):
                    p50, p99 = timed(
                        lambda conf=conf, tip=tip: confirmed_balance_at(
                            s, tip, account.id, Wallet.COLD, conf
                        ),
                        args.reads,
                    )
                    print(f"{size:>8} {f'balance, min_conf {conf}':34} {p50:8.3f} {p99:8.3f}")
                p50, p99 = timed(lambda: s.execute(old_sum).scalar(), max(20, args.reads // 10))
                print(f"{size:>8} {'sum of the outputs (before)':34} {p50:8.3f} {p99:8.3f}")
                s.rollback()

            def new_block(tip: int = tip) -> None:
                with factory() as s:  # rolled back: every repetition starts alike
                    ids = s.execute(
                        select(Utxo.id)
                        .where(Utxo.account_id == account.id, Utxo.block_height.is_(None))
                        .limit(PER_BLOCK)
                    ).scalars()
                    s.execute(
                        text("UPDATE utxos SET block_height = :h WHERE id = ANY(:ids)"),
                        {"h": tip + 1, "ids": list(ids)},
                    )
                    s.rollback()

            p50, p99 = timed(new_block, 20)
            print(f"{size:>8} {'new block: 100 outputs mined':34} {p50:8.3f} {p99:8.3f}")
        engine.dispose()
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
