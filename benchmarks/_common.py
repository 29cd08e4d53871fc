"""What the benchmark scripts share: repeated timing of one workload and a thread fan-out.

The scripts run as `.venv/bin/python benchmarks/bench_X.py`, so this folder is on `sys.path`
and they `import _common`; importing it also puts the repository root there, for the
packages (and `tests`) a script drives.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def samples_ms(fn: Callable[[], object], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of each of `runs` calls of `fn`, in call order (the CPU time
    is this process's: on a shared machine the wall time also counts other work)."""
    wall, cpu = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return wall, cpu


def run_threads(target: Callable[[], None], n: int) -> None:
    """Run `target` in `n` threads at once and wait for all of them."""
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def timed_shares(fn: Callable[[T], object], items: Sequence[T], n: int) -> tuple[float, float]:
    """Call `fn` on every item from `n` threads at once, thread k taking items k, k+n, ...;
    (wall seconds, this process's CPU seconds) from the first start to the last join."""
    shares = [items[k::n] for k in range(n)]
    threads = [
        threading.Thread(target=lambda share=share: [fn(item) for item in share])
        for share in shares
    ]
    c0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, time.process_time() - c0
