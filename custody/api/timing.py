"""Each API request's duration and outcome, logged when slow or failed, the caller's
deadline (`X-CC-Deadline`) handed to the calls this request makes (the hot HSM's), and a
watchdog that logs the stack of a request still running past that deadline."""

from __future__ import annotations

import logging
import time

from flask import Response, g, request

from cc_common.hops import DEADLINE_HEADER, caller_deadline, parse_deadline, slow_after
from cc_common.watchdog import Watchdog

log = logging.getLogger(__name__)

# `[custody] threads` (per gunicorn worker): enough that requests waiting for a group commit
# (a few ms each) leave threads to reads, and that one group can take every waiting write.
DEFAULT_THREADS = 16
DEFAULT_DEADLINE = 30.0  # for the slow-request log when the caller did not say
# One per process (each gunicorn worker after its fork): its thread serves every app in it.
WATCHDOG = Watchdog(log)


def set_capacity(threads: int) -> None:
    """How many requests a worker serves at once (`[custody] threads`): all of them busy
    for seconds is logged, since new requests then queue where no stack shows them."""
    WATCHDOG.capacity = threads


def allow(seconds: float) -> None:
    """The current request may run `seconds` from its start (a long poll's own wait)."""
    key = g.get("_cc_watch")
    if key is not None:
        WATCHDOG.extend(key, seconds)


def start() -> None:
    g._cc_started = time.monotonic()
    waits = parse_deadline(request.headers.get(DEADLINE_HEADER))
    g._cc_waits = waits
    scope = caller_deadline(waits)
    scope.__enter__()
    g._cc_deadline_scope = scope
    # the path only: a query string is the caller's data, not where the stall is
    g._cc_watch = WATCHDOG.begin(f"{request.method} {request.path}", waits or DEFAULT_DEADLINE)


def finish(response: Response) -> Response:
    started = g.get("_cc_started")
    if started is not None:
        took = time.monotonic() - started
        deadline = g.get("_cc_waits") or DEFAULT_DEADLINE
        if response.status_code >= 500 or took >= slow_after(deadline):
            log.info(
                "site->custody %s %s: HTTP %d in %.2fs (deadline %.1fs)",
                request.method,
                request.path,
                response.status_code,
                took,
                deadline,
            )
    return response


def teardown(_exc: BaseException | None) -> None:
    key = g.pop("_cc_watch", None)
    if key is not None:
        WATCHDOG.end(key)
    scope = g.pop("_cc_deadline_scope", None)
    if scope is not None:
        scope.__exit__(None, None, None)
