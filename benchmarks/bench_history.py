"""Benchmark of a node with history for the tests: mining it versus copying a mined one.

The story deployment of tests/test_e2e.py starts against a node with `--blocks` blocks of
history and unrelated payments (`cc_demo.history.make_history`). The suite mines it once per
session (tests/history_fixtures.py) and copies the node's data directory for each use; this
prints what each costs: wall time, this process's CPU and the node process's CPU.

    .venv/bin/python benchmarks/bench_history.py [--blocks 1000]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401 - the repository root on sys.path

from cc_demo.history import make_history
from cc_demo.support import DEMO_CONFIG
from firmware_sim.node.rpc_server import COOKIE_FILENAME
from tests.harness import Deployment


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--blocks", type=int, default=1000, help="blocks of history to mine, then copy"
    )
    args = parser.parse_args()
    print(f"workload: a regtest node with {args.blocks} blocks of history; load {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        source = Deployment(Path(tmp), "source", config=DEMO_CONFIG)
        t0, c0, n0 = time.perf_counter(), time.process_time(), _children_cpu()
        summary = make_history(source.config, args.blocks, env=source.env)
        mined = time.perf_counter() - t0
        print(
            f"mined: {mined:.1f} s wall, {time.process_time() - c0:.1f} s CPU here,"
            f" {_children_cpu() - n0:.1f} s CPU in the node ({summary})"
        )
        target = Deployment(Path(tmp), "target", config=DEMO_CONFIG)
        src = source.config.section("firmware_sim.node").path("datadir")
        dst = target.config.section("firmware_sim.node").path("datadir")
        t0, c0 = time.perf_counter(), time.process_time()
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(COOKIE_FILENAME))
        copied = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
        print(
            f"copied: {copied * 1000:.0f} ms wall, {(time.process_time() - c0) * 1000:.0f} ms CPU"
            f" ({size / 1e6:.1f} MB)"
        )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
