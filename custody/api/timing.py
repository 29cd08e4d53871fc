"""Each API request's duration and outcome, logged when slow or failed, the caller's
deadline (`X-CC-Deadline`) handed to the calls this request makes (the hot HSM's), and a
watchdog that logs the stack of a request still running past that deadline."""

from __future__ import annotations

import logging
import time
from contextvars import Token

from flask import Request, Response, g, request

from cc_common.hops import (
    DEADLINE_HEADER,
    enter_caller_deadline,
    leave_caller_deadline,
    parse_deadline,
    slow_after,
)
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
    state = g.get(_STATE)
    if state is not None:
        WATCHDOG.extend(state.watch, seconds)


class _Timing:
    """What a request's first hook leaves for its last ones (one `g` slot: every access to
    `g` or `request` goes through a context-local proxy)."""

    __slots__ = ("started", "waits", "scope", "watch")

    def __init__(
        self, started: float, waits: float | None, scope: Token[float | None], watch: int
    ) -> None:
        self.started = started
        self.waits = waits
        self.scope = scope
        self.watch = watch


_STATE = "_cc_timing"
# `X-CC-Deadline` as the WSGI environ names it
_DEADLINE_ENV = "HTTP_" + DEADLINE_HEADER.upper().replace("-", "_")


def start(req: Request | None = None) -> None:
    """`before_request` (or called by one with the request at hand, `req`)."""
    if req is None:
        req = request._get_current_object()  # type: ignore[attr-defined]  # the proxy's own
    started = time.monotonic()
    waits = parse_deadline(req.environ.get(_DEADLINE_ENV))
    scope = enter_caller_deadline(waits)
    # the path only: a query string is the caller's data, not where the stall is
    watch = WATCHDOG.begin(f"{req.method} {req.path}", waits or DEFAULT_DEADLINE)
    setattr(g, _STATE, _Timing(started, waits, scope, watch))


def finish(response: Response) -> Response:
    state = g.get(_STATE)
    if state is not None:
        took = time.monotonic() - state.started
        deadline = state.waits or DEFAULT_DEADLINE
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
    state = g.pop(_STATE, None)
    if state is not None:
        WATCHDOG.end(state.watch)
        leave_caller_deadline(state.scope)
