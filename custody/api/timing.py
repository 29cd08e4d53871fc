"""Each API request's duration and outcome, logged when slow or failed, and the caller's
deadline (`X-CC-Deadline`) handed to the calls this request makes (the hot HSM's)."""

from __future__ import annotations

import logging
import time

from flask import Response, g, request

from cc_common.hops import DEADLINE_HEADER, caller_deadline, parse_deadline, slow_after

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = 30.0  # for the slow-request log when the caller did not say


def start() -> None:
    g._cc_started = time.monotonic()
    waits = parse_deadline(request.headers.get(DEADLINE_HEADER))
    g._cc_waits = waits
    scope = caller_deadline(waits)
    scope.__enter__()
    g._cc_deadline_scope = scope


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
    scope = g.pop("_cc_deadline_scope", None)
    if scope is not None:
        scope.__exit__(None, None, None)
