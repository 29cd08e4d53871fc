"""Benchmark: `GET /address/batch/<n>` creating a new batch, as the custody API answers it.

Workload: the custody app (Flask test client, in process) on a fresh SQLite database in a
temporary directory and, when reachable, a temporary PostgreSQL database; one account
provisioned through the tests' software HSM stand-in; then batches 0..N-1 requested in turn
on the cold side (1000 P2WPKH addresses) and on the hot side (1000 2-of-3 P2WSH addresses).
Each request derives the 1000 addresses, gets the proof from the (stand-in) cold HSM, verifies
it against the pinned identity key and stores the batch with its 1000 address rows.
The target: a batch request answers in well under a second.

Run: `.venv/bin/python benchmarks/bench_batch.py [--batches 5]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from custody.admin_cli import upgrade_database  # noqa: E402
from custody.app import create_app  # noqa: E402
from custody.db import make_engine, make_session_factory  # noqa: E402
from tests.api_fixtures import (  # noqa: E402
    SoftwareHsmStandIn,
    _pg_reachable,
    make_config,
    new_account,
    scratch_pg_database,
)

API = "/api/v1/open"


def measure(url: str, tmp: Path, batches: int) -> dict[str, list[float]]:
    upgrade_database(url)
    factory = make_session_factory(make_engine(url))
    hsm = SoftwareHsmStandIn()
    account = new_account(factory, hsm, "bench-batch")
    app = create_app(make_config(tmp, url, "http://127.0.0.1:9"), hsm=hsm, session_factory=factory)
    client = app.test_client()
    times: dict[str, list[float]] = {"cold": [], "hot": []}
    for side in ("cold", "hot"):
        headers = getattr(account, side)
        for n in range(batches):
            t0 = time.perf_counter()
            r = client.get(f"{API}/address/batch/{n}", headers=headers)
            times[side].append(time.perf_counter() - t0)
            assert r.status_code == 200 and len(r.json) == 1000, r.json
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    print(__doc__.split("Run:")[0].strip())
    print()
    head = ("database", "side", "batches", "best ms", "median ms", "max ms")
    print(f"{head[0]:<11} {head[1]:<5} {head[2]:>7} {head[3]:>8} {head[4]:>10} {head[5]:>7}")
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        backends = [("sqlite", f"sqlite:///{tmp / 'bench.db'}")]
        reason = _pg_reachable()
        if reason is None:
            backends.append(("postgresql", stack.enter_context(scratch_pg_database())))
        else:
            print(f"(PostgreSQL skipped: {reason})")
        for name, url in backends:
            sub = tmp / name
            sub.mkdir()
            for side, ts in measure(url, sub, args.batches).items():
                ms = [t * 1000 for t in ts]
                print(
                    f"{name:<11} {side:<5} {len(ms):>7} {min(ms):>8.1f} "
                    f"{statistics.median(ms):>10.1f} {max(ms):>7.1f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
