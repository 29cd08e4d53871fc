"""Benchmark: custody's CPU per API request in the app itself, called through its WSGI
callable (no HTTP parsing, no gunicorn, no test client): the app path's own share of what
`bench_api_write.py` measures under gunicorn.

Workload: the database of `bench_api_write.py` (a temporary PostgreSQL database
`cc_bench_<random>`, dropped at the end, one account with a verified cold batch 0 and `--txs`
cold-side transactions; its helpers, not a copy); the app built by `create_app` with the
software HSM stand-in (it only vouches for the channel key, once). Every request is a WSGI
environ built before the clock starts, as a server would hand it over (headers, a
form-encoded body in `wsgi.input`), and its answer is read to the end and closed. Phases,
each after a warm-up:
- `GET /time` (the request machinery alone: hooks, routing, a constant answer);
- `POST /tx/request`, one thread: `--requests` distinct signed sends of one output each (a
  group of one per commit);
- `GET /tx` after a random transaction (20 a page);
- `POST /tx/request` from `--threads` threads at once (the group commit gathers the waiting
  writes): this process's CPU per accepted request.
Printed per phase: this process's CPU per request (mean and median of the calls; the
threaded phase: total / requests). Every answer is checked (200 and the expected body).
`--profile PHASE` also prints the top functions (cProfile, CPU time) of that sequential phase.

Run: `.venv/bin/python benchmarks/bench_api_path.py [--requests 1000] [--threads 16]
[--profile post]`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

from _common import timed_shares
from _custody_db import bench_run, lift_rate_limits, verified_account
from bench_api import load_txs
from bench_api_write import bodies

from custody.app import API_PREFIX, create_app
from custody.extensions import send_intake_committer
from custody.models import Wallet

FORM = "application/x-www-form-urlencoded"
PHASES = ("time", "post", "tx")  # the sequential ones (cProfile sees one thread)


def environ(method: str, path: str, token: str, query: str = "", body: str = "") -> dict[str, Any]:
    """What a WSGI server hands the app for one request on 127.0.0.1 (HTTP/1.1, keep-alive)."""
    data = body.encode()
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "21000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:21000",
        "HTTP_TOKEN": token,
        "HTTP_CONNECTION": "keep-alive",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(data),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if data:
        env["CONTENT_TYPE"] = FORM
        env["CONTENT_LENGTH"] = str(len(data))
    return env


class Caller:
    """Calls the WSGI app and checks each answer's status and (where given) body."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, env: dict[str, Any], expect: bytes | None = None) -> None:
        status: list[str] = []

        def start_response(s: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
            status.append(s)

        result = self.app(env, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not status or not status[0].startswith("200") or (expect and body != expect):
            raise SystemExit(f"{env['REQUEST_METHOD']} {env['PATH_INFO']}: {status} {body!r}")


def timed(
    call: Caller, envs: list[dict[str, Any]], expect: bytes | None, prof: cProfile.Profile | None
) -> list[float]:
    """CPU milliseconds (this process) of each call, in order."""
    out = []
    for env in envs:
        c0 = time.process_time()
        if prof is not None:
            prof.enable()
        call(env, expect)
        if prof is not None:
            prof.disable()
        out.append((time.process_time() - c0) * 1000)
    return out


def report(name: str, cpus: list[float]) -> None:
    print(
        f"{name:<28} {len(cpus):5d} requests: CPU per request mean {statistics.mean(cpus):.3f} ms,"
        f" median {statistics.median(cpus):.3f} ms, load average {os.getloadavg()[0]:.2f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests per phase")
    ap.add_argument("--txs", type=int, default=2000, help="transactions GET /tx pages through")
    ap.add_argument("--threads", type=int, default=16, help="threads posting at once (last phase)")
    ap.add_argument(
        "--profile", choices=PHASES, help="cProfile this phase (CPU time) and print its top"
    )
    ap.add_argument("--sort", default="tottime", help="the profile's order (a pstats key)")
    ap.add_argument("--top", type=int, default=40, help="functions the profile prints")
    args = ap.parse_args()
    stack, dsn, data_dir = bench_run()
    try:
        db = verified_account(dsn, data_dir, Wallet.COLD)
        load_txs(dsn, db.account.id, 0, args.txs)
        lift_rate_limits(db.factory)
        app = create_app(db.config, hsm=db.hsm)
        call = Caller(app)
        hot, cold = db.account.hot_token, db.account.cold_token
        n = args.requests
        post = f"{API_PREFIX}/tx/request"

        def posts(prefix: str) -> list[dict[str, Any]]:
            return [environ("POST", post, hot, body=b) for b in bodies(prefix, n)]

        def reads() -> list[dict[str, Any]]:
            hashes = [f"{i:064x}" for i in range(max(1, args.txs - 20))]
            return [
                environ("GET", f"{API_PREFIX}/tx", cold, f"tx_hash={random.choice(hashes)}")
                for _ in range(n)
            ]

        times = [environ("GET", f"{API_PREFIX}/time", cold) for _ in range(2 * n)]
        warm_posts, seq_posts, par_posts = posts("warm"), posts("seq"), posts("par")
        warm_reads, seq_reads = reads(), reads()
        accepted = b'{"result":true}\n'
        print(__doc__.split("Run:")[0].strip(), "\n")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
        print(f"modules from: {os.path.dirname(os.path.dirname(create_app.__code__.co_filename))}")

        prof = cProfile.Profile(time.process_time) if args.profile else None

        def profiled(phase: str) -> cProfile.Profile | None:
            return prof if args.profile == phase else None

        timed(call, times[:n], None, None)
        report("GET /time", timed(call, times[n:], None, profiled("time")))
        timed(call, warm_posts, accepted, None)
        report("POST /tx/request, 1 thread", timed(call, seq_posts, accepted, profiled("post")))
        timed(call, warm_reads, None, None)
        report("GET /tx", timed(call, seq_reads, None, profiled("tx")))

        committer = app.extensions[send_intake_committer.key]
        groups0, written0 = committer.groups, committer.written
        wall, cpu = timed_shares(lambda e: call(e, accepted), par_posts, args.threads)
        print(
            f"{f'POST /tx/request, {args.threads} threads':<28} {n:5d} requests: CPU per request "
            f"{cpu / n * 1000:.3f} ms, {n / wall:.0f} accepted/s, "
            f"{(committer.written - written0) / max(1, committer.groups - groups0):.1f} per "
            f"group commit, load average {os.getloadavg()[0]:.2f}"
        )
        if prof is not None:
            pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)
        db.engine.dispose()
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
