"""Calls across a process boundary: a deadline per hop, and a log line when slow or failed.

Every hop (site -> custody, custody -> hot HSM, hot -> cold over the link, worker -> node)
runs inside `timed(...)`, which logs at INFO the hop, the call, its outcome and duration when
the call failed or took more than a quarter of its deadline; a stall then names the hop that
stalled. A caller passes its remaining time along (`DEADLINE_HEADER`), so each inner hop's
deadline is shorter than its caller's and the innermost one gives up (and says so) first.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

DEADLINE_HEADER = "X-CC-Deadline"  # seconds the caller still waits for this answer
MARGIN = 0.5  # seconds an inner hop leaves its caller to answer in
MIN_SLOW = 0.5  # never call anything under half a second slow

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "cc_deadline", default=None
)


def slow_after(deadline: float) -> float:
    return max(MIN_SLOW, deadline / 4)


@contextmanager
def timed(
    log: logging.Logger,
    hop: str,
    what: str,
    deadline: float,
    answers: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Log `hop what: outcome in N s (deadline D s)` at INFO when failed or slow. Exceptions
    in `answers` are the other side's answer (a refusal), not a failure of the hop."""
    start = time.monotonic()
    outcome = "ok"
    try:
        yield
    except answers as exc:
        outcome = f"answered {type(exc).__name__}"
        raise
    except BaseException as exc:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        outcome = f"failed: {type(exc).__name__}: {message}"
        raise
    finally:
        took = time.monotonic() - start
        if outcome.startswith("failed") or took >= slow_after(deadline):
            log.info("%s %s: %s in %.2fs (deadline %.1fs)", hop, what, outcome, took, deadline)


@contextmanager
def caller_deadline(seconds: float | None) -> Iterator[None]:
    """Within this block the caller waits `seconds` more (None: it did not say)."""
    token = enter_caller_deadline(seconds)
    try:
        yield
    finally:
        leave_caller_deadline(token)


def enter_caller_deadline(seconds: float | None) -> contextvars.Token[float | None]:
    """`caller_deadline` for a scope that is not one block (a request's first and last
    hooks): from now on the caller waits `seconds` more, until `leave_caller_deadline`."""
    return _deadline.set(None if seconds is None else time.monotonic() + seconds)


def leave_caller_deadline(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def within_caller(timeout: float) -> float:
    """`timeout`, cut so that it ends `MARGIN` before the caller stops waiting."""
    end = _deadline.get()
    if end is None:
        return timeout
    return max(min(timeout, end - time.monotonic() - MARGIN), 0.1)


def parse_deadline(value: str | None) -> float | None:
    """The caller's `DEADLINE_HEADER`, if it is a sane number of seconds."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds <= 3600 else None
