"""Benchmark of the tests' per-test PostgreSQL reset: what each way of emptying costs.

Before every PostgreSQL test of the API (`db_url` in tests/api_fixtures.py) and of the workers
(`factory` in tests/worker_fixtures.py) the database is made as new. This times, on one
migrated database with empty tables (as between tests), alternating `--runs` times each:
`TRUNCATE ... RESTART IDENTITY CASCADE` (the old API reset), `drop_all` + `create_all` (the
old worker reset) and `emptied` (DELETE children first and sequence restarts, one round trip).

    .venv/bin/python benchmarks/bench_test_db_reset.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from _common import samples_ms
from sqlalchemy import text

from custody.admin_cli import upgrade_database
from custody.db import make_engine
from custody.models import Base
from tests.api_fixtures import emptied, scratch_pg_database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=10, help="resets timed per way (median and max reported)"
    )
    args = parser.parse_args()
    tables = len(Base.metadata.sorted_tables)
    print(f"workload: reset a migrated custody database ({tables} tables, empty), {args.runs} runs")
    print(f"load average before: {os.getloadavg()}")
    with scratch_pg_database() as url:
        upgrade_database(url)
        engine = make_engine(url, pool_size=4)
        names = ", ".join(t.name for t in Base.metadata.sorted_tables)

        def truncate() -> None:
            with engine.begin() as conn:
                conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))

        def recreate() -> None:
            Base.metadata.drop_all(engine)
            Base.metadata.create_all(engine)

        ways: dict[str, Callable[[], object]] = {
            "TRUNCATE": truncate,
            "drop_all + create_all": recreate,
            "emptied": lambda: emptied(url),
        }
        results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in ways}
        for _ in range(args.runs):
            for name, fn in ways.items():
                wall, cpu = samples_ms(fn, 1)
                results[name][0].extend(wall)
                results[name][1].extend(cpu)
        engine.dispose()
    for name, (wall, cpu) in results.items():
        print(
            f"{name}: median {statistics.median(wall):.0f} ms wall (max {max(wall):.0f}),"
            f" {statistics.median(cpu):.1f} ms CPU here"
        )
    print(f"load average after: {os.getloadavg()} at {time.strftime('%H:%M:%S')}")


if __name__ == "__main__":
    main()
