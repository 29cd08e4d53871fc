"""Benchmark: `GET /tx` (a page of 20) and `GET /user` under concurrent load against
`custody serve` (gunicorn) on PostgreSQL, with 1 000 and then 100 000 transactions in the
account.

Workload (all on 127.0.0.1):
- a temporary PostgreSQL database `cc_bench_<random>` on 127.0.0.1:5432 (dropped at the end),
  migrated with Alembic; one account provisioned through the software HSM stand-in of the
  tests; its cold batch 0 created, proven and verified (so `/user` shows an address);
- N transactions on the account's cold side, bulk-loaded with COPY: each with 1 input and 2
  outputs, 4 in 5 confirmed, plus one UTXO per transaction and the blocks they are in;
- `custody serve` with its defaults ([custody] workers = 2, its default worker class and threads);
- the load: 16 keep-alive HTTP connections, closed loop (next request when the answer
  arrives) for DURATION seconds after a warm-up, from one of two load generators:
  - `wrk` (C, event loop; 2 threads x 8 connections; a Lua script picks the `tx_hash` of
    each request at random from a file of every txid of the account and checks each answer:
    status 200 and, for `/tx`, 20 transactions). It costs little CPU, so it measures the
    server rather than the client. Used when `wrk` is on PATH (`apt-get install wrk`).
  - `python` (2 processes x 8 threads, one http.client connection each): always available,
    but it spends a large share of the 2 cores itself, so its figures are conservative.
  `--load auto` (default) runs wrk when installed, else python (and says so); `--load both`
  runs both, one row each. `/tx` requests start after a random transaction of the whole
  history (`?tx_hash=`), so every page is a fresh index range, not a cached one.
  Either generator shares the 2 cores with the server.

Run: `.venv/bin/python benchmarks/bench_api.py [--sizes 1000 100000] [--duration 8]
[--load auto|wrk|python|both] [--repeat N]`.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
from _common import run_threads
from _custody_db import bench_run, copy_history, lift_rate_limits, verified_account

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve import custody_server  # noqa: E402
from custody.app import create_app  # noqa: E402
from custody.models import Wallet  # noqa: E402

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
        copy_history(
            cur,
            "id, account_id, wallet, txid, status, block_hash, block_height, value, tx_at,"
            " confirm_at",
            txs,
            ins,
            outs,
            utxos,
        )
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
    with psycopg.connect(dsn, autocommit=True) as conn:
        # a steady state, as after autovacuum (the load updated each new transaction once)
        conn.execute("VACUUM ANALYZE")


def _worker(
    port: int, token: str, kind: str, n_txs: int, duration: float, seed: int, out: mp.Queue
) -> None:

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

    run_threads(loop, LOAD_THREADS)
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
        "load": "python",
        "requests": len(lat),
        "rps": len(lat) / duration,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
        "errors": errors,
    }


WRK_SCRIPT = r"""
-- One request per call: GET /tx after a random txid of the account, or GET /user.
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end
function init(args)
  kind, token = args[1], args[2]
  local headers = {token = token}
  -- formatted once, around a marker: the load generator shares the 2 cores with the server
  hashes = {}
  if kind == "tx" then
    for line in io.lines(args[3]) do hashes[#hashes + 1] = line end
    local template = wrk.format("GET", "/api/v1/open/tx?tx_hash=@HASH@", headers)
    local at = template:find("@HASH@", 1, true)
    before, after = template:sub(1, at - 1), template:sub(at + 6)
  else
    user_request = wrk.format("GET", "/api/v1/open/user", headers)
  end
  math.randomseed(os.time() * 100 + id)
  errors = 0
end
function request()
  if kind == "tx" then
    return before .. hashes[math.random(1, #hashes)] .. after
  end
  return user_request
end
function response(status, hdrs, body)
  if status ~= 200 then
    errors = errors + 1
  elseif kind == "tx" then
    local _, n = body:gsub('"tx_hash"', "")
    if n ~= 20 then errors = errors + 1 end
  end
end
function done(summary, latency, requests)
  local e = 0
  for _, t in ipairs(threads) do e = e + t:get("errors") end
  local s = summary.errors
  e = e + s.connect + s.read + s.write + s.timeout
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e))
end
"""
WRK_THREADS = 2
WRK_CONNECTIONS = LOAD_PROCS * LOAD_THREADS


def run_wrk(
    port: int, token: str, kind: str, hashes_file: Path, duration: float, script: Path
) -> dict[str, float]:
    """One closed-loop wrk run (after a warm-up run whose figures are dropped)."""
    url = f"http://127.0.0.1:{port}/api/v1/open/{kind}"

    def wrk(seconds: float) -> str:
        cmd = [
            "wrk",
            f"-t{WRK_THREADS}",
            f"-c{WRK_CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
            "--",
            kind,
            token,
            str(hashes_file),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60)
        return out.stdout

    wrk(WARMUP)
    m = re.search(
        r"BENCH requests=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+) errors=(\d+)",
        wrk(duration),
    )
    if m is None:
        raise RuntimeError("wrk gave no summary")
    requests, dur_us, p50, p99, errors = (int(x) for x in m.groups())
    return {
        "load": "wrk",
        "requests": requests,
        "rps": requests / (dur_us / 1e6),
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "errors": errors,
    }


def write_hashes(path: Path, n_txs: int) -> None:
    """Every txid a `/tx` request may start after (all but the last page), one a line."""
    path.write_text("".join(f"{i:064x}\n" for i in range(max(1, n_txs - 20))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1000, 100_000],
        help="transactions on the account, one row per size (default: 1000 100000)",
    )
    ap.add_argument(
        "--duration", type=float, default=8.0, help="seconds of load per row (default: 8)"
    )
    ap.add_argument(
        "--load",
        choices=("auto", "wrk", "python", "both"),
        default="auto",
        help="load generator: wrk when installed (auto), python, or both",
    )
    ap.add_argument("--workers", type=int, help="[custody] workers (default: the service's)")
    ap.add_argument("--threads", type=int, help="[custody] threads (default: the service's)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row (best and median shown)")
    ap.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="after loading each size, keep the server up this many seconds (for profiling)",
    )
    args = ap.parse_args()
    have_wrk = shutil.which("wrk") is not None
    if args.load == "auto":
        generators = ["wrk"] if have_wrk else ["python"]
        if not have_wrk:
            print("wrk is not installed (apt-get install wrk): using the Python load generator")
    elif args.load == "both":
        generators = ["wrk", "python"] if have_wrk else ["python"]
        if not have_wrk:
            print("wrk is not installed (apt-get install wrk): Python load generator only")
    else:
        if args.load == "wrk" and not have_wrk:
            raise SystemExit("wrk is not installed (apt-get install wrk)")
        generators = [args.load]

    stack, dsn, data_dir = bench_run()
    try:
        db = verified_account(dsn, data_dir, Wallet.COLD)
        account, config = db.account, db.config
        lift_rate_limits(db.factory)
        create_app(config, hsm=db.hsm, session_factory=db.factory)  # import check only
        db.engine.dispose()

        overrides = {k: getattr(args, k) for k in ("workers", "threads") if getattr(args, k)}
        port = stack.enter_context(custody_server(config, data_dir, **overrides))
        print(__doc__.split("Run:")[0].strip(), "\n")
        script = data_dir / "bench.lua"
        script.write_text(WRK_SCRIPT)
        hashes_file = data_dir / "tx_hashes.txt"
        print(
            f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; "
            f"load generators: {', '.join(generators)}; {args.duration:.0f} s per run, "
            f"{args.repeat} run(s) per row (req/s: best and median; latency of the best run)\n"
        )
        print(
            f"{'transactions':>12}  {'endpoint':<10} {'load':<7} {'req/s':>8} {'median':>8} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'loadavg':>7}"
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
            write_hashes(hashes_file, size)
            if args.hold:
                print(
                    f"  (holding: server on port {port}, "
                    f"token {account.cold_token}, dir {data_dir})",
                    flush=True,
                )
                time.sleep(args.hold)
            for gen in generators:
                for kind, label in (("tx", "GET /tx"), ("user", "GET /user")):
                    runs = []
                    for _ in range(max(1, args.repeat)):
                        if gen == "wrk":
                            r = run_wrk(
                                port, account.cold_token, kind, hashes_file, args.duration, script
                            )
                        else:
                            r = run_load(port, account.cold_token, kind, size, args.duration)
                        runs.append({**r, "loadavg": os.getloadavg()[0]})
                    best = max(runs, key=lambda x: x["rps"])
                    median = sorted(x["rps"] for x in runs)[len(runs) // 2]
                    errors = sum(x["errors"] for x in runs)
                    rows.append(
                        {
                            "transactions": size,
                            "endpoint": label,
                            **best,
                            "median_rps": median,
                            "errors": errors,
                            "runs": [round(x["rps"]) for x in runs],
                        }
                    )
                    print(
                        f"{size:>12}  {label:<10} {gen:<7} {best['rps']:>8.0f} {median:>8.0f} "
                        f"{best['p50_ms']:>8.2f} {best['p99_ms']:>8.2f} {errors:>6} "
                        f"{best['loadavg']:>7.2f}",
                        flush=True,
                    )
        print("\n" + json.dumps(rows))
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
