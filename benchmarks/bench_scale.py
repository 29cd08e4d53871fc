"""Benchmark: one account at exchange size on PostgreSQL: 200 000 UTXOs and 1 000 000
transactions, each figure against the same account at 10 000 UTXOs (50 000 transactions).

Workload (all on 127.0.0.1):
- a temporary PostgreSQL database `cc_bench_<random>` (dropped at the end), migrated with
  Alembic; one account provisioned through the software HSM stand-in of the tests, its hot
  batch 0 created, proven and verified (so `/user` shows an address), 100 hot change
  addresses derived from its real keys;
- its hot side bulk-loaded with COPY (the balance triggers fire, so the load time includes
  them; then VACUUM ANALYZE, so no autovacuum runs during the figures): 5 transactions per
  UTXO, each with 1 input and 2 outputs, 10 per block; every 5th
  transaction's first output is an unspent UTXO (values 10 000 to ~1 000 000 sat, spread over
  the 100 addresses); 1 transaction in 20 in the mempool; the tip is the last block;
- `custody serve` (gunicorn, the service's defaults: 2 workers) on that database; each HTTP
  figure is the p50 / p99 of `--reads` requests in a row on one keep-alive connection:
  `GET /user` (hot token: account, next address, the maintained balance), `GET /tx` first
  page, `GET /tx?tx_hash=` after a random transaction of the whole history (a deep page),
  `GET /tx/detail/<random txid>`;
- in-process, each in a transaction rolled back afterwards (p50 / p99 of `--builds` runs):
  `build send`: what the send worker does from PENDING to BUILT for a 3 000 000 sat payment
  at 2 sat/vB (coin selection over the candidates it reads, UTXOs reserved, change address,
  PSBT, journal); `build consolidation`: the 50 smallest confirmed coins to a new change
  address (`custody.consolidation._build`, PSBT included);
- the maintained balance against summing the outputs (what `/user` did before), and a new
  block marking 100 mempool outputs mined (triggers included, rolled back).

Targets (issue 14): each figure at 200 000 UTXOs at most 2x its figure at 10 000; `/user` p50
at most 5 ms.

Run: `.venv/bin/python benchmarks/bench_scale.py [--sizes 10000 200000] [--reads 300]
[--builds 20]`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from _common import samples_ms
from sqlalchemy import func, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve import custody_server  # noqa: E402
from custody import consolidation  # noqa: E402
from custody.admin_cli import upgrade_database  # noqa: E402
from custody.balance_journal import journal_balances  # noqa: E402
from custody.balances import confirmed_balance_at, verify_balances  # noqa: E402
from custody.batches import get_or_create_batch, set_batch_status  # noqa: E402
from custody.db import make_engine, make_session_factory  # noqa: E402
from custody.models import Account, BatchStatus, Chain, Send, SendStatus, Utxo, Wallet  # noqa: E402
from custody.sends import SendWorker, ensure_address  # noqa: E402
from tests.api_fixtures import SoftwareHsmStandIn, make_config, new_account  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
TXS_PER_UTXO = 5
TXS_PER_BLOCK = 10
ADDRESSES = 100
PAYEE = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
API = "/api/v1/open"


def txid_of(i: int) -> str:
    return f"{i:064x}"


def load(dsn: str, account_id: int, address_ids: list[int], start: int, count: int) -> int:
    """COPY transactions start..start+count (ids start+1..) with their inputs, outputs and
    UTXOs on the hot side; returns the new tip (blocks_seen holds it alone)."""
    base = datetime(2024, 1, 1)
    txs, ins, outs, utxos = io.StringIO(), io.StringIO(), io.StringIO(), io.StringIO()
    for i in range(start, start + count):
        tid, txid = i + 1, txid_of(i)
        mempool = i % 20 == 19
        height = 100 + i // TXS_PER_BLOCK
        at = (base + timedelta(seconds=i)).isoformat()
        hgt, bh = ("\\N", "\\N") if mempool else (str(height), f"{height:064x}")
        status, conf_at = ("MEMPOOL", "\\N") if mempool else ("CONFIRMED", at)
        value = 10_000 + (i * 7919) % 1_000_000
        txs.write(
            f"{tid}\t{account_id}\tHOT\t{txid}\t{status}\t{bh}\t{hgt}\t{value}\t{at}\t{conf_at}"
            f"\t{'SEEN' if mempool else 'FINAL'}\t{at}\tfalse\n"
        )
        ins.write(f"{tid}\t{tid}\t0\t{'aa' * 32}\t{i}\t{PAYEE}\t{value + 5_000}\tfalse\n")
        for k in range(2):
            outs.write(
                f"{2 * tid + k}\t{tid}\t{k}\t{PAYEE}\t{value}\t{str(k == 0).lower()}\tfalse\n"
            )
        if i % TXS_PER_UTXO == 0:
            addr = address_ids[(i // TXS_PER_UTXO) % len(address_ids)]
            utxos.write(f"{tid}\t{account_id}\tHOT\t{txid}\t0\t{value}\t{addr}\t{hgt}\t\\N\t\\N\n")
    tip = 100 + (start + count - 1) // TXS_PER_BLOCK
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for table, cols, buf in (
            (
                "chain_txs",
                "id, account_id, wallet, txid, status, block_hash, block_height, value, tx_at,"
                " confirm_at, state, state_at, has_dust",
                txs,
            ),
            (
                "chain_tx_inputs",
                "id, chain_tx_id, sn, prev_tx_hash, prev_out_sn, address, value, is_mine",
                ins,
            ),
            ("chain_tx_outputs", "id, chain_tx_id, sn, address, value, is_mine, spent", outs),
            (
                "utxos",
                "id, account_id, wallet, txid, vout, value, address_id, block_height, spent_by,"
                " reserved_by_send",
                utxos,
            ),
        ):
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                copy.write(buf.getvalue())
        cur.execute("DELETE FROM blocks_seen")
        cur.execute(
            "INSERT INTO blocks_seen (height, block_hash, prev_hash, time) "
            "VALUES (%s, %s, %s, now())",
            (tip, f"{tip:064x}", f"{tip - 1:064x}"),
        )
        for seq in ("chain_txs", "chain_tx_inputs", "chain_tx_outputs", "utxos"):
            cur.execute(f"SELECT setval('{seq}_id_seq', 100000000)")
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        # a steady state, as after autovacuum: no vacuum of the new rows during the figures
        conn.execute("VACUUM ANALYZE")
    return tip


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(p50 ms, p99 ms) of n calls."""
    wall, _ = samples_ms(fn, n)
    wall.sort()
    return statistics.median(wall), wall[min(n - 1, int(n * 0.99))]


class Client:
    """One keep-alive connection to the API; `get` checks the status and returns the body."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"token": token}

    def get(self, path: str) -> Any:
        self.conn.request("GET", API + path, headers=self.headers)
        r = self.conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
        return json.loads(body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 200_000], help="UTXO counts, ascending"
    )
    ap.add_argument("--reads", type=int, default=300, help="HTTP requests per figure")
    ap.add_argument("--builds", type=int, default=20, help="send / consolidation builds")
    args = ap.parse_args()
    name = f"cc_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    data_dir = Path(tempfile.mkdtemp(prefix="cc-bench-"))
    print(__doc__.split("Targets")[0].strip(), "\n")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start\n")
    stack = contextlib.ExitStack()
    rows: list[dict[str, Any]] = []
    try:
        upgrade_database(dsn)
        engine = make_engine(dsn)
        factory = make_session_factory(engine)
        hsm = SoftwareHsmStandIn()
        account = new_account(factory, hsm, "bench")
        config = make_config(data_dir, dsn, "http://127.0.0.1:9")
        get_or_create_batch(factory, hsm, config, account.id, Wallet.HOT, 0)
        with factory() as s, s.begin():
            set_batch_status(s, config, account.id, Wallet.HOT, 0, BatchStatus.VERIFIED)
            acct = s.get(Account, account.id)
            assert acct is not None
            addrs = [ensure_address(s, acct, Chain.CHANGE, i) for i in range(ADDRESSES)]
            address_ids = [a.id for a in addrs]
            s.execute(text("UPDATE api_tokens SET rate_limit_per_minute = 100000000"))
            send = Send(
                account_id=account.id,
                user_tx_no="bench-1",
                outs=f"{PAYEE},3000000",
                vc_code="",
                c_id="",
                status=SendStatus.PENDING,
            )
            s.add(send)
            s.flush()
            send_id = send.id
        port = stack.enter_context(custody_server(config, data_dir))
        worker = SendWorker(factory, None, None)  # type: ignore[arg-type]  # builds only
        rng = random.Random(1)
        loaded_utxos = 0

        def row(size: int, figure: str, p50: float, p99: float) -> None:
            rows.append({"utxos": size, "figure": figure, "p50_ms": p50, "p99_ms": p99})
            print(f"{size:>8} {figure:34} {p50:8.2f} {p99:8.2f}", flush=True)

        print(f"{'utxos':>8} {'figure':34} {'p50 ms':>8} {'p99 ms':>8}")
        for size in args.sizes:
            n_txs = size * TXS_PER_UTXO
            t0 = time.perf_counter()
            tip = load(
                dsn,
                account.id,
                address_ids,
                loaded_utxos * TXS_PER_UTXO,
                n_txs - loaded_utxos * TXS_PER_UTXO,
            )
            print(
                f"  (COPY to {n_txs} transactions, {size} UTXOs: {time.perf_counter() - t0:.1f} s)"
            )
            loaded_utxos = size
            client = Client(port, account.hot_token)  # a fresh connection after the load
            with factory() as s, s.begin():  # COPY bypassed the session: journal it now
                journal_balances(s)
            with factory() as s:
                assert verify_balances(s) == [], "maintained balance differs from the sum"

            row(size, "GET /user", *timed(lambda c=client: c.get("/user"), args.reads))
            row(size, "GET /tx first page", *timed(lambda c=client: c.get("/tx"), args.reads))
            deep = [txid_of(rng.randrange(n_txs - 100)) for _ in range(args.reads)]
            it = iter(deep)
            row(
                size,
                "GET /tx deep page (random cursor)",
                *timed(lambda it=it, c=client: c.get(f"/tx?tx_hash={next(it)}"), args.reads),
            )
            it = iter(deep)
            row(
                size,
                "GET /tx/detail (random txid)",
                *timed(lambda it=it, c=client: c.get(f"/tx/detail/{next(it)}"), args.reads),
            )

            def build_send() -> None:
                with factory() as s:
                    snd = s.get(Send, send_id)
                    assert snd is not None
                    worker._build_in(s, snd, 2.0)
                    assert snd.status is SendStatus.BUILT, snd.state_reason
                    s.rollback()

            def build_consolidation() -> None:
                with factory() as s:
                    consolidation._build(s, account.id, 50, 2.0, 1)
                    s.rollback()

            row(size, "build send (coin selection)", *timed(build_send, args.builds))
            row(size, "build consolidation (50 inputs)", *timed(build_consolidation, args.builds))

            old_sum = select(func.coalesce(func.sum(Utxo.value), 0)).where(
                Utxo.account_id == account.id,
                Utxo.wallet == Wallet.HOT,
                Utxo.spent_by.is_(None),
                Utxo.block_height.is_not(None),
            )
            with factory() as s:
                row(
                    size,
                    "balance, min_conf 1 (maintained)",
                    *timed(
                        lambda tip=tip: confirmed_balance_at(s, tip, account.id, Wallet.HOT, 1),
                        args.reads,
                    ),
                )
                row(
                    size,
                    "sum of the outputs (before)",
                    *timed(lambda q=old_sum: s.execute(q).scalar(), 20),
                )
                s.rollback()

            def new_block(tip: int = tip) -> None:
                with factory() as s:  # rolled back: every repetition starts alike
                    ids = s.execute(
                        select(Utxo.id)
                        .where(
                            Utxo.account_id == account.id,
                            Utxo.wallet == Wallet.HOT,
                            Utxo.block_height.is_(None),
                        )
                        .limit(100)
                    ).scalars()
                    s.execute(
                        text("UPDATE utxos SET block_height = :h WHERE id = ANY(:ids)"),
                        {"h": tip + 1, "ids": list(ids)},
                    )
                    s.rollback()

            row(size, "new block: 100 outputs mined", *timed(new_block, 20))
        engine.dispose()
        if len(args.sizes) > 1:
            lo, hi = args.sizes[0], args.sizes[-1]
            print(f"\nratio {hi} / {lo} UTXOs (target at most 2x; /user p50 at most 5 ms):")
            for r in rows:
                if r["utxos"] == hi:
                    base = next(x for x in rows if x["utxos"] == lo and x["figure"] == r["figure"])
                    print(f"  {r['figure']:34} {r['p50_ms'] / base['p50_ms']:5.2f}x")
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
        print(json.dumps(rows))
    finally:
        stack.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
