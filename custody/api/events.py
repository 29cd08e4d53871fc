"""`GET /events`: the token's side of the account's event log, with long polling.

A client remembers the last `seq` it processed and asks `after=` it; with `wait=SECONDS` the
request returns as soon as an event arrives, or empty when the wait is over, so a client that
was down catches up from its number and then follows live.
"""

from __future__ import annotations

import time

from flask import Blueprint, request

from custody import events
from custody.api import timing
from custody.auth import any_token, current_principal
from custody.errors import BadRequest
from custody.extensions import db
from custody.models import EventSide, Wallet

bp = Blueprint("events", __name__)

MAX_WAIT = 30.0
POLL_EVERY = 0.25
LONG_POLL_SLACK = 5.0  # seconds a long poll may run past its wait before the watchdog speaks
DEFAULT_LIMIT = 100


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw[:20]!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, got {value}")
    return value


def _wait_arg() -> float:
    raw = request.args.get("wait")
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"wait must be a number of seconds, got {raw[:20]!r}") from None
    if not 0 <= value <= MAX_WAIT:
        raise BadRequest(f"wait must be between 0 and {MAX_WAIT:g} seconds, got {value:g}")
    return value


@bp.get("/events")
@any_token
def list_events() -> dict[str, object]:
    """Events after `after` (default 0), at most `limit` (1-500, default 100), oldest first."""
    p = current_principal()
    after = _int_arg("after", 0, 0, 2**31 - 1)
    limit = _int_arg("limit", DEFAULT_LIMIT, 1, events.MAX_PAGE)
    wait = _wait_arg()
    timing.allow(wait + LONG_POLL_SLACK)
    viewer = EventSide.COLD if p.wallet is Wallet.COLD else EventSide.HOT
    deadline = time.monotonic() + wait
    while True:
        found = events.page(db.reader, p.account_id, viewer, after, limit)
        if found or time.monotonic() >= deadline:
            break
        time.sleep(min(POLL_EVERY, max(0.0, deadline - time.monotonic())))
    last = found[-1]["seq"] if found else after
    return {"events": found, "last_seq": last}
