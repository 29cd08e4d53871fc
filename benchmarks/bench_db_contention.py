"""Benchmark: how long another SQLite writer waits while the watcher catches up.

Workload: the regtest node (firmware_sim, a real process) with N blocks the watcher has not
seen; one `Watcher.step()` connects them (a write transaction per block) in a thread, while the
main thread writes one small row per transaction in a loop, 50 ms apart (what the API does when
it stores a batch, or the send pipeline a transition). Both use their own engine on one SQLite
file, as the custody API and the custody worker do. Figures: the catch-up's duration, and the
probe writes' count and waits (max, p50, p99). A writer waiting seconds means the watcher holds
the write lock across its node calls and starves the others.

Run: `.venv/bin/python benchmarks/bench_db_contention.py [--blocks 600]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from custody.db import make_engine, make_session_factory, transaction  # noqa: E402
from custody.models import Base, KeyValue  # noqa: E402
from custody.watcher import Watcher, WatcherSettings  # noqa: E402
from tests.node_fixtures import Key, NodeProcess  # noqa: E402


def run(blocks: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-contention-") as tmp:
        node = NodeProcess(Path(tmp) / "node")
        node.start()
        try:
            rpc = node.rpc()
            url = f"sqlite:///{Path(tmp) / 'custody.db'}"
            probe_engine = make_engine(url)
            Base.metadata.create_all(probe_engine)
            probe = make_session_factory(probe_engine)
            watcher = Watcher(
                make_session_factory(make_engine(url)), rpc, WatcherSettings(start_height=0)
            )
            watcher.step()
            rpc.generate_to_address(blocks, Key.from_seed("bench-contention").address)
            done = threading.Event()
            took: list[float] = []

            def catch_up() -> None:
                start = time.monotonic()
                watcher.step()
                took.append(time.monotonic() - start)
                done.set()

            thread = threading.Thread(target=catch_up)
            thread.start()
            waits: list[float] = []
            while not done.is_set():
                start = time.monotonic()
                with transaction(probe) as s:
                    s.merge(KeyValue(key="bench_probe", value=str(start)))
                waits.append(time.monotonic() - start)
                time.sleep(0.05)
            thread.join()
        finally:
            node.stop()
    waits.sort()
    p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else 0.0
    print(f"workload: watcher catching up {blocks} blocks; a probe writer every 50 ms")
    print(f"load average: {os.getloadavg()[0]:.1f}")
    print(f"catch-up: {took[0]:.2f} s ({blocks / took[0]:.0f} blocks/s)")
    print(
        f"probe writes: {len(waits)}; wait max {max(waits, default=0):.3f} s, "
        f"p50 {statistics.median(waits) if waits else 0:.3f} s, p99 {p99:.3f} s, "
        f"total {sum(waits):.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=600, help="blocks to catch up (600)")
    run(parser.parse_args().blocks)


if __name__ == "__main__":
    main()
