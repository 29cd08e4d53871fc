"""Benchmark: `POST /tx/request` sustained against `custody serve` (gunicorn, 2 workers) on
PostgreSQL, with `GET /tx` reads at the same time.

Workload (all on 127.0.0.1):
- a temporary PostgreSQL database `cc_bench_<random>` (dropped at the end), migrated with
  Alembic; one account provisioned through the software HSM stand-in of the tests, its cold
  batch 0 verified, `--txs` transactions on its cold side (bulk-loaded as in `bench_api.py`)
  for the reads;
- the hot HSM's RPC served by that stand-in on a loopback port: custody asks it only for the
  channel key that `vc_code`s are checked against (`channel_key`, once per channel and server
  process, then cached), so the figures are custody's own;
- `custody serve` with `[custody] workers = 2`, the service's default threads each, and its
  default worker class (custody's own; `--worker-class gthread` for gunicorn's);
- precomputed send requests, each a distinct `user_tx_no` paying one regtest address, signed
  with the V-device channel key the stand-in vouches for (a real `vc_code`, checked by
  custody's ECDSA verification); form-encoded, as the V-device posts them;
- the load: two `wrk` processes for `--duration` seconds at once, after a warm-up: writes
  (`--write-connections` keep-alive connections posting the next unused request; a request
  counts as accepted when the answer is 200 `{"result":true}`) and reads (`GET /tx` after a
  random transaction of the account, `--read-connections` connections, 20 transactions
  checked per page). Both share the 2 cores with the server and PostgreSQL.

Target (issue 14): at least 500 accepted requests/s with reads still at least 1,000/s.

Run: `.venv/bin/python benchmarks/bench_api_write.py [--duration 10] [--txs 10000]
[--write-connections 16] [--read-connections 8] [--worker-class custody|gthread]` (needs
`wrk`: `apt-get install wrk`); a count of 0 leaves that side out (writes alone, reads alone).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _cpu import cpu_seconds, pg_backend_pids, process_tree, total_cpu
from _custody_db import bench_run, lift_rate_limits, verified_account
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_api import WRK_SCRIPT, load_txs, write_hashes  # noqa: E402
from benchmarks.serve import custody_server  # noqa: E402
from cc_common.deployment import free_port  # noqa: E402
from custody.models import Send, Wallet  # noqa: E402
from custody.serve import DEFAULT_WORKER_CLASS, WORKER_CLASSES  # noqa: E402
from tests.api_fixtures import (  # noqa: E402
    SoftwareHsmStandIn,
    sign_vc_code,
)

PAYEE = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
WARMUP = 2.0

WRITE_SCRIPT = r"""
-- POST /tx/request: each thread posts its own share of the precomputed bodies, in order.
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads - 1)
end
function init(args)
  local n, path = tonumber(args[2]), args[3]
  token = args[1]
  bodies, k, accepted, refused = {}, 0, 0, 0
  local i = 0
  for line in io.lines(path) do
    if i % n == id then bodies[#bodies + 1] = line end
    i = i + 1
  end
  local headers = {token = token, ["Content-Type"] = "application/x-www-form-urlencoded"}
  -- formatted here, once: the load generator shares the 2 cores with the server
  for j, body in ipairs(bodies) do
    bodies[j] = wrk.format("POST", "/api/v1/open/tx/request", headers, body)
  end
end
function request()
  k = k + 1
  if k > #bodies then k = #bodies end  -- exhausted: repeats (refused as duplicates)
  return bodies[k]
end
function response(status, hdrs, body)
  if status == 200 and body:find('"result":true', 1, true) then
    accepted = accepted + 1
  else
    refused = refused + 1
  end
end
function done(summary, latency, requests)
  local a, r = 0, 0
  for _, t in ipairs(threads) do a = a + t:get("accepted"); r = r + t:get("refused") end
  local s = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d accepted=%d refused=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), a, r,
    s.connect + s.read + s.write + s.timeout))
end
"""


class _StandInRpc(BaseHTTPRequestHandler):
    """The hot HSM's RPC, as far as `POST /tx/request` uses it (`channel_key`)."""

    hsm: SoftwareHsmStandIn
    secret: str

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {self.secret}":
            answer: dict[str, Any] = {"error": {"code": 601, "message": "unauthorized"}}
        elif body.get("method") == "channel_key":
            answer = {"result": self.hsm.channel_key(**body["params"])}
        else:
            answer = {"error": {"code": 600, "message": "not served by the stand-in"}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def bodies(prefix: str, count: int) -> list[str]:
    """`count` distinct signed send requests (`user_tx_no` PREFIX-i), form-encoded."""
    out = []
    for i in range(count):
        form = {
            "coin_code": "BTC",
            "user_tx_no": f"{prefix}-{i}",
            "outs": f"{PAYEE},{10_000 + i}",
            "is_dynamic_fee": "1",
            "c_id": "7",
        }
        form["vc_code"] = sign_vc_code(form)
        out.append(urllib.parse.urlencode(form))
    return out


def write_bodies(path: Path, count: int) -> None:
    """`count` distinct signed send requests, form-encoded, one a line."""
    path.write_text("".join(body + "\n" for body in bodies("bench", count)))


def wrk(url: str, script: Path, seconds: float, conns: int, *args: str) -> subprocess.Popen[str]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    cmd += ["-s", str(script), url, "--", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summary(proc: subprocess.Popen[str]) -> dict[str, float]:
    """wrk's figures, and the CPU seconds it used (`cpu`)."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    m = re.search(r"BENCH (.*)", out)
    if m is None:
        raise RuntimeError(f"wrk gave no summary: {out} {err}")
    figures: dict[str, float] = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    figures["cpu"] = usage.ru_utime + usage.ru_stime
    return figures


def server_pids(data_dir: Path) -> list[int]:
    """The `custody serve` master started on `data_dir`, and its workers."""
    needle = f"--dir\0{data_dir}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "cmdline").read_bytes():
                return process_tree(int(entry.name))
        except OSError:
            continue
    raise RuntimeError("custody serve is not running")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of measured load")
    ap.add_argument("--txs", type=int, default=10_000, help="transactions the reads page through")
    ap.add_argument(
        "--write-connections",
        type=int,
        default=16,
        help="wrk connections posting (0: no writes). Each write waits for its group's commit "
        "(~25-30 ms under this load), so a writer posts ~35-40 times a second: the target's "
        "500/s needs about 16 writers in flight",
    )
    ap.add_argument(
        "--read-connections", type=int, default=8, help="wrk connections reading (0: no reads)"
    )
    ap.add_argument(
        "--worker-class",
        choices=sorted(WORKER_CLASSES),
        default=DEFAULT_WORKER_CLASS,
        help="custody serve's [custody] worker_class (how a gunicorn worker reads HTTP)",
    )
    ap.add_argument("--max-rate", type=int, default=1500, help="requests/s the bodies suffice for")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    stack, dsn, data_dir = bench_run()
    try:
        db = verified_account(dsn, data_dir, Wallet.COLD)
        engine, factory, hsm, account, config = db.engine, db.factory, db.hsm, db.account, db.config
        lift_rate_limits(factory)
        load_txs(dsn, account.id, 0, args.txs)

        secret = secrets.token_hex(16)
        handler = type("Rpc", (_StandInRpc,), {"hsm": hsm, "secret": secret})
        rpc = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        threading.Thread(target=rpc.serve_forever, daemon=True).start()
        stack.callback(rpc.shutdown)
        config.raw["hsm_hot"] = {
            "rpc_host": "127.0.0.1",
            "rpc_port": rpc.server_address[1],
            "rpc_secret": secret,
        }
        port = stack.enter_context(
            custody_server(config, data_dir, workers=2, worker_class=args.worker_class)
        )

        t0 = time.perf_counter()
        all_bodies = data_dir / "all.txt"
        n_warm = int(args.max_rate * WARMUP)
        write_bodies(all_bodies, int(args.max_rate * (args.duration + 2)) + n_warm)
        lines = all_bodies.read_text().splitlines(keepends=True)
        (data_dir / "warm.txt").write_text("".join(lines[:n_warm]))
        bodies = data_dir / "bodies.txt"
        bodies.write_text("".join(lines[n_warm:]))
        print(f"  (signed the requests in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        hashes = data_dir / "hashes.txt"
        write_hashes(hashes, args.txs)
        (data_dir / "write.lua").write_text(WRITE_SCRIPT)
        (data_dir / "read.lua").write_text(WRK_SCRIPT)
        base = f"http://127.0.0.1:{port}/api/v1/open"
        print(__doc__.split("Target")[0].strip(), "\n")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
        print(f"worker class: {args.worker_class}")
        # warm-up (figures dropped): both workers hold the channel key, statements prepared
        warm = wrk(
            f"{base}/tx/request",
            data_dir / "write.lua",
            WARMUP,
            4,
            account.hot_token,
            "1",
            str(data_dir / "warm.txt"),
        )
        summary(warm)
        watched = server_pids(data_dir)
        # backends opened during the run (the readers' pool) count from zero
        pg0 = {pid: cpu_seconds(pid) for pid in pg_backend_pids(dsn)}
        server0 = total_cpu(watched)
        load0 = os.getloadavg()[0]
        writes = None
        if args.write_connections:
            writes = wrk(
                f"{base}/tx/request",
                data_dir / "write.lua",
                args.duration,
                args.write_connections,
                account.hot_token,
                "1",
                str(bodies),
            )
        reads = None
        if args.read_connections:
            reads = wrk(
                f"{base}/tx",
                data_dir / "read.lua",
                args.duration,
                args.read_connections,
                "tx",
                account.cold_token,
                str(hashes),
            )
        w = summary(writes) if writes is not None else None
        r = summary(reads) if reads is not None else None
        if w is None and r is None:
            raise SystemExit("nothing to measure: --write-connections and --read-connections are 0")
        server_cpu = total_cpu(watched) - server0
        pg_cpu = sum(cpu_seconds(pid) - pg0.get(pid, 0.0) for pid in pg_backend_pids(dsn))
        load1 = os.getloadavg()[0]
        with factory() as s:
            stored = s.execute(select(func.count(Send.id))).scalar()
            # a group commit stamps its sends with one request_at: sends per group
            groups = s.execute(select(func.count(func.distinct(Send.request_at)))).scalar()
        w_s = (w or r or {})["duration_us"] / 1e6
        if w is not None:
            print(
                f"\nwrites: {w['accepted'] / w_s:7.0f} accepted/s ({w['accepted']} accepted, "
                f"{w['refused']} refused, {w['errors']} errors; {stored} sends stored, "
                f"{stored / max(groups or 1, 1):.1f} per group commit), "
                f"p50 {w['p50_us'] / 1000:.2f} ms, p99 {w['p99_us'] / 1000:.2f} ms"
            )
        if r is not None:
            print(
                f"reads:  {r['requests'] / (r['duration_us'] / 1e6):7.0f} GET /tx/s "
                f"({r['errors']} errors), p50 {r['p50_us'] / 1000:.2f} ms, "
                f"p99 {r['p99_us'] / 1000:.2f} ms"
            )
        served = sum(x["requests"] for x in (w, r) if x is not None)
        wrk_cpu = sum(x["cpu"] for x in (w, r) if x is not None)
        print(
            f"CPU over the {w_s:.1f} s measured: custody serve {server_cpu:.2f} s "
            f"({server_cpu / w_s * 100:.0f}% of a core), its PostgreSQL backends {pg_cpu:.2f} s, "
            f"wrk {wrk_cpu:.2f} s; per request (writes and reads): custody "
            f"{server_cpu / max(served, 1) * 1000:.2f} ms, PostgreSQL "
            f"{pg_cpu / max(served, 1) * 1000:.2f} ms"
        )
        print(f"load average: {load0:.2f} at the start of the measured run, {load1:.2f} at its end")
        engine.dispose()
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
