"""Waiting for a condition by polling with a deadline, never by a fixed sleep.

Tests, the demo and tools wait for other processes (a ready file, a row, an SMS); each caller
says which exception a missed deadline becomes (a test failure, a failed demo step).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL_INTERVAL = 0.05


def poll_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str = "condition",
    *,
    interval: float = POLL_INTERVAL,
    error: Callable[[str], Exception] = TimeoutError,
) -> T:
    """Call `predicate` until it returns something truthy, and return that; at the deadline
    raise `error("timed out after ...s waiting for <what>")`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)
