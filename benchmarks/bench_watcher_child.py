"""The watcher process of `bench_watcher.py`: one `Watcher` with the worker's engine settings
and nothing else imported, stepped on command (a `step` line on stdin, one `BW {json}` line
answered), so that its peak RSS is the watcher's own.

Run by `bench_watcher.py`; by hand: `bench_watcher_child.py --db URL --rpc-url URL
--rpc-user USER --rpc-password PASSWORD --start HEIGHT`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from custody.chain.rawblock import RawBlock
from custody.chain.rpc import BitcoinRPC
from custody.db import make_engine, make_session_factory
from custody.watcher import Watcher, WatcherSettings


class TimedWatcher(Watcher):
    """The watcher, counting the time spent reading and matching blocks (fetch, parse, the
    address and outpoint queries, the matches decoded) apart from recording them."""

    matching = 0.0

    def _read_block(self, block_hash: str, spent: set[str]) -> tuple[RawBlock, int]:
        t0 = time.perf_counter()
        try:
            return super()._read_block(block_hash, spent)
        finally:
            self.matching += time.perf_counter() - t0

    def _refresh_filters(self) -> None:
        t0 = time.perf_counter()
        try:
            super()._refresh_filters()
        finally:
            self.matching += time.perf_counter() - t0

    def _matched_blocks(self, raws: list[tuple[int, RawBlock]]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            return super()._matched_blocks(raws)
        finally:
            self.matching += time.perf_counter() - t0


def child(args: argparse.Namespace) -> int:
    """Steps a watcher on command (`step` lines on stdin), answering one JSON line each."""
    engine = make_engine(args.db, pool_size=2)
    factory = make_session_factory(engine)
    rpc = BitcoinRPC(args.rpc_url, args.rpc_user, args.rpc_password, timeout=120)
    watcher = TimedWatcher(
        factory,
        rpc,
        WatcherSettings(start_height=args.start, max_blocks_per_step=args.max_blocks),
    )
    t0, c0 = time.perf_counter(), time.process_time()
    watcher.load_filters()  # as the worker does before it says it is ready
    load = {
        "filter_load_s": time.perf_counter() - t0,
        "filter_load_cpu_s": time.process_time() - c0,
    }
    print("BW", json.dumps({"ready": True, **load}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        c0 = time.process_time()
        watcher.matching = 0.0
        result = watcher.step()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        answer = {
            "seconds": elapsed,
            "cpu_seconds": cpu,
            "matching": watcher.matching,
            "connected": result.connected,
            "height": result.height,
            "tip": result.tip,
            "maxrss_mb": rss_kb / 1024,
        }
        print("BW", json.dumps(answer), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", required=True, help="database URL")
    parser.add_argument("--rpc-url", required=True, help="node RPC URL")
    parser.add_argument("--rpc-user", required=True, help="node RPC user")
    parser.add_argument("--rpc-password", required=True, help="node RPC password")
    parser.add_argument("--start", type=int, required=True, help="first block height to watch")
    parser.add_argument("--max-blocks", type=int, default=500, help="blocks per watcher step")
    return child(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
