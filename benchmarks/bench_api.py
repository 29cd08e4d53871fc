"""Benchmark: `GET /tx` (a page of 20) and `GET /user` under concurrent load against
`custody serve` (gunicorn) on PostgreSQL, with 1 000 and then 100 000 transactions in the
account.

Workload (all on 127.0.0.1):
- a temporary PostgreSQL database `cc_bench_<random>` on 127.0.0.1:5432 (dropped at the end),
  migrated with Alembic; one account provisioned through the software HSM stand-in of the
  tests; its cold batch 0 created, proven and verified (so `/user` shows an address);
- N transactions on the account's cold side, bulk-loaded with COPY: each with 1 input and 2
  outputs, 4 in 5 confirmed, plus one UTXO per transaction and the blocks they are in;
- `custody serve` with its defaults ([custody] workers = 2 gthread workers, 4 threads each);
- the load: LOAD_PROCS processes x LOAD_THREADS threads, each with one keep-alive HTTP
  connection (http.client), closed loop (next request when the answer arrives) for
  DURATION seconds after a warm-up. `/tx` requests start after a random transaction of the
  whole history (`?tx_hash=`), so every page is a fresh index range, not a cached one.
  The load generator shares the 2 cores with the server, so the figures are conservative.

Run: `.venv/bin/python benchmarks/bench_api.py [--sizes 1000 100000] [--duration 8]`.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import multiprocessing as mp
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cc_common.deployment import free_port  # noqa: E402
from custody.admin_cli import upgrade_database  # noqa: E402
from custody.app import create_app  # noqa: E402
from custody.batches import get_or_create_batch, set_batch_status  # noqa: E402
from custody.db import make_engine, make_session_factory  # noqa: E402
from custody.models import BatchStatus, Wallet  # noqa: E402
from tests.api_fixtures import SoftwareHsmStandIn, make_config, new_account  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
LOAD_PROCS = 2
LOAD_THREADS = 8
WARMUP = 1.5


def load_txs(dsn: str, account_id: int, start: int, count: int) -> None:
    """Bulk-load `count` cold-side transactions (ids start+1..) with inputs, outputs, UTXOs."""
    base = datetime(2024, 1, 1)
    addr = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        address_id = cur.execute(
            "SELECT id FROM addresses WHERE account_id = %s ORDER BY id LIMIT 1", (account_id,)
        ).fetchone()[0]
        txs, ins, outs, utxos = io.StringIO(), io.StringIO(), io.StringIO(), io.StringIO()
        for i in range(start, start + count):
            tid = i + 1
            txid = f"{i:064x}"
            confirmed = i % 5 != 4
            height = 100 + i // 10
            at = base + timedelta(seconds=i)
            status = "CONFIRMED" if confirmed else "MEMPOOL"
            bh = f"{height:064x}" if confirmed else "\\N"
            hgt = str(height) if confirmed else "\\N"
            conf_at = at.isoformat() if confirmed else "\\N"
            txs.write(
                f"{tid}\t{account_id}\tCOLD\t{txid}\t{status}\t{bh}\t{hgt}\t{10_000 + i}\t"
                f"{at.isoformat()}\t{conf_at}\n"
            )
            ins.write(f"{2 * tid}\t{tid}\t0\t{'aa' * 32}\t{i}\t{addr}\t50000\tfalse\n")
            for k in range(2):
                outs.write(
                    f"{2 * tid + k}\t{tid}\t{k}\t{addr}\t{1000 * (k + 1)}\t{str(k == 0).lower()}"
                    f"\t{str(k == 1).lower()}\n"
                )
            utxos.write(
                f"{tid}\t{account_id}\tCOLD\t{txid}\t0\t{10_000 + i}\t{address_id}\t{hgt}"
                "\t\\N\t\\N\n"
            )
        for table, cols, buf in (
            (
                "chain_txs",
                "id, account_id, wallet, txid, status, block_hash, block_height, "
                "value, tx_at, confirm_at",
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
                "id, account_id, wallet, txid, vout, value, address_id, block_height, "
                "spent_by, reserved_by_send",
                utxos,
            ),
        ):
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                copy.write(buf.getvalue())
        top = 100 + (start + count) // 10 + 1
        cur.execute("DELETE FROM blocks_seen")
        cur.execute(
            "INSERT INTO blocks_seen (height, block_hash, prev_hash, time) "
            "VALUES (%s, %s, %s, now())",
            (top, f"{top:064x}", f"{top - 1:064x}"),
        )
        for seq in (
            "chain_txs_id_seq",
            "chain_tx_inputs_id_seq",
            "chain_tx_outputs_id_seq",
            "utxos_id_seq",
        ):
            cur.execute(f"SELECT setval('{seq}', 10000000)")
        conn.commit()
        cur.execute("ANALYZE")
        conn.commit()


def _worker(
    port: int, token: str, kind: str, n_txs: int, duration: float, seed: int, out: mp.Queue
) -> None:
    import threading  # noqa: PLC0415

    rng = random.Random(seed)
    results: list[list[float]] = []
    errors = [0]
    start_at = time.monotonic() + WARMUP
    stop_at = start_at + duration

    def loop() -> None:
        lat: list[float] = []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"token": token}
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            if kind == "tx":
                path = f"/api/v1/open/tx?tx_hash={rng.randrange(max(1, n_txs - 20)):064x}"
            else:
                path = "/api/v1/open/user"
            t0 = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            dt = time.perf_counter() - t0
            if resp.status != 200 or (kind == "tx" and body.count(b'"tx_hash"') != 20):
                errors[0] += 1
            if now >= start_at:
                lat.append(dt)
        conn.close()
        results.append(lat)

    threads = [threading.Thread(target=loop) for _ in range(LOAD_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(([x for r in results for x in r], errors[0]))


def run_load(port: int, token: str, kind: str, n_txs: int, duration: float) -> dict[str, float]:
    q: mp.Queue = mp.Queue()
    procs = [
        mp.Process(target=_worker, args=(port, token, kind, n_txs, duration, s, q))
        for s in range(LOAD_PROCS)
    ]
    for p in procs:
        p.start()
    lat: list[float] = []
    errors = 0
    for _ in procs:
        part, err = q.get()
        lat += part
        errors += err
    for p in procs:
        p.join()
    lat.sort()
    return {
        "requests": len(lat),
        "rps": len(lat) / duration,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
        "errors": errors,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    ap.add_argument("--duration", type=float, default=8.0)
    args = ap.parse_args()

    name = f"cc_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    data_dir = Path(tempfile.mkdtemp(prefix="cc-bench-"))
    server = None
    try:
        upgrade_database(dsn)
        engine = make_engine(dsn)
        factory = make_session_factory(engine)
        hsm = SoftwareHsmStandIn()
        account = new_account(factory, hsm, "bench")
        config = make_config(data_dir, dsn, "http://127.0.0.1:9")
        get_or_create_batch(factory, hsm, config, account.id, Wallet.COLD, 0)
        with factory() as s, s.begin():
            set_batch_status(s, config, account.id, Wallet.COLD, 0, BatchStatus.VERIFIED)
            from sqlalchemy import text  # noqa: PLC0415

            s.execute(text("UPDATE api_tokens SET rate_limit_per_minute = 100000000"))
        create_app(config, hsm=hsm, session_factory=factory)  # import check only
        engine.dispose()

        port = free_port()
        raw = dict(config.raw)
        raw["custody"] = {**raw["custody"], "port": port}
        (data_dir / "run").mkdir(exist_ok=True)
        (data_dir / "chaincloud.toml").write_text(tomli_w.dumps(raw))
        server = subprocess.Popen(
            [sys.executable, "-m", "custody.cli", "serve", "--dir", str(data_dir)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        ready = data_dir / "run" / "custody-api.ready"
        deadline = time.monotonic() + 60
        while not ready.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("custody serve did not start: " + server.stderr.read().decode())
            time.sleep(0.1)

        print(__doc__.split("Run:")[0].strip(), "\n")
        print(
            f"machine: {os.cpu_count()} cores; load {LOAD_PROCS} procs x {LOAD_THREADS} "
            f"threads; {args.duration:.0f} s per row\n"
        )
        print(
            f"{'transactions':>12}  {'endpoint':<10} {'req/s':>8} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'errors':>6}"
        )
        loaded = 0
        rows = []
        for size in sorted(args.sizes):
            t0 = time.monotonic()
            load_txs(dsn, account.id, loaded, size - loaded)
            loaded = size
            print(
                f"  (loaded {size} transactions in {time.monotonic() - t0:.1f} s)", file=sys.stderr
            )
            for kind, label in (("tx", "GET /tx"), ("user", "GET /user")):
                r = run_load(port, account.cold_token, kind, size, args.duration)
                rows.append({"transactions": size, "endpoint": label, **r})
                print(
                    f"{size:>12}  {label:<10} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} "
                    f"{r['p99_ms']:>8.2f} {r['errors']:>6}",
                    flush=True,
                )
        print("\n" + json.dumps(rows))
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            c.execute(f'DROP DATABASE IF EXISTS "{name}"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
