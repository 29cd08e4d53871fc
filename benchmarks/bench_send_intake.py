"""Benchmark: the cost of one `POST /tx/request` (and one `GET /tx`) inside the custody app,
without HTTP, gunicorn or a load generator: what a request costs custody itself.

Workload: a temporary PostgreSQL database (`cc_bench_<random>`, dropped at the end) with one
account (`_custody_db.verified_account`) and `--txs` cold-side transactions; the app built by
`create_app` with the software HSM stand-in (it only vouches for the channel key, once);
`--requests` distinct signed send requests (form-encoded, one output each) posted through
Flask's test client:
- sequentially from one thread: wall and CPU (this process's) per request, and the same for
  `GET /tx` after a random transaction (20 per page);
- then from `--threads` threads at once (each its own share of fresh requests): accepted/s,
  and this process's CPU per request (the group commit gathers the waiting writes).
`--profile` prints the top functions (cProfile, CPU time) of the sequential writes.

Run: `.venv/bin/python benchmarks/bench_send_intake.py [--requests 300] [--threads 8]
[--profile]`.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import statistics
import time

from _common import timed_shares
from _custody_db import bench_run, lift_rate_limits, verified_account
from bench_api import load_txs
from bench_api_write import bodies

from custody.app import create_app
from custody.extensions import send_intake_committer
from custody.models import Wallet

API = "/api/v1/open"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="writes per phase")
    ap.add_argument("--txs", type=int, default=2000, help="transactions the reads page through")
    ap.add_argument("--threads", type=int, default=8, help="threads posting at once")
    ap.add_argument("--profile", action="store_true", help="cProfile the sequential writes")
    ap.add_argument("--sort", default="tottime", help="the profile's order (pstats key)")
    args = ap.parse_args()
    stack, dsn, data_dir = bench_run()
    try:
        db = verified_account(dsn, data_dir, Wallet.COLD)
        load_txs(dsn, db.account.id, 0, args.txs)
        lift_rate_limits(db.factory)
        app = create_app(db.config, hsm=db.hsm)
        client = app.test_client()
        hot = {"token": db.account.hot_token, "Content-Type": "application/x-www-form-urlencoded"}
        cold = {"token": db.account.cold_token}
        form = "application/x-www-form-urlencoded"
        warm, seq, par = (bodies(p, args.requests) for p in ("warm", "seq", "par"))
        print(__doc__.split("Run:")[0].strip(), "\n")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
        for body in warm[:50]:
            assert client.post(f"{API}/tx/request", headers=hot, data=body, content_type=form)

        def post(body: str) -> None:
            r = client.post(f"{API}/tx/request", headers=hot, data=body, content_type=form)
            if r.status_code != 200 or r.json != {"result": True}:
                raise SystemExit(f"refused: {r.status_code} {r.get_data(as_text=True)}")

        walls, cpus, own = [], [], []
        prof = cProfile.Profile(time.thread_time) if args.profile else None
        for body in seq:
            c0, t0, th0 = time.process_time(), time.perf_counter(), time.thread_time()
            if prof is not None:
                prof.enable()
            post(body)
            if prof is not None:
                prof.disable()
            walls.append((time.perf_counter() - t0) * 1000)
            cpus.append((time.process_time() - c0) * 1000)
            own.append((time.thread_time() - th0) * 1000)
        print(
            f"POST /tx/request, one thread, {len(seq)} requests: wall p50 "
            f"{statistics.median(walls):.2f} ms, CPU mean {statistics.mean(cpus):.2f} ms "
            f"(the request's thread: {statistics.mean(own):.2f} ms), "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        hashes = [f"{i:064x}" for i in range(max(1, args.txs - 20))]
        walls, cpus = [], []
        for _ in range(len(seq)):
            h = random.choice(hashes)
            c0, t0 = time.process_time(), time.perf_counter()
            r = client.get(f"{API}/tx?tx_hash={h}", headers=cold)
            assert r.status_code == 200
            walls.append((time.perf_counter() - t0) * 1000)
            cpus.append((time.process_time() - c0) * 1000)
        print(
            f"GET /tx, one thread, {len(seq)} requests: wall p50 {statistics.median(walls):.2f} "
            f"ms, CPU mean {statistics.mean(cpus):.2f} ms"
        )
        committer = app.extensions[send_intake_committer.key]
        groups0, written0 = committer.groups, committer.written
        wall, cpu = timed_shares(post, par, args.threads)
        print(
            f"POST /tx/request, {args.threads} threads, {len(par)} requests: "
            f"{len(par) / wall:.0f} accepted/s, CPU {cpu / len(par) * 1000:.2f} ms per request, "
            f"{(committer.written - written0) / max(1, committer.groups - groups0):.1f} "
            f"requests per group commit, load average {os.getloadavg()[0]:.2f}"
        )
        if prof is not None:
            pstats.Stats(prof).sort_stats(args.sort).print_stats(45)
        db.engine.dispose()
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
