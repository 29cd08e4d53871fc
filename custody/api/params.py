"""Request input common to every endpoint: the query string, JSON or form bodies, batch_no.

The query string is checked against what the endpoint takes, so a misspelt parameter is a
400 naming it, never silently ignored (a client paging with `tx_hsah=` would loop forever).
POST bodies are accepted as the documented form encoding or as `application/json` with the
same field names; either way the views see one mapping of strings.
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import Request, request

from custody.batches import MAX_BATCH_NO
from custody.errors import BadRequest

API_BLUEPRINTS = frozenset({"time", "user", "addresses", "txs"})
# endpoint -> the query parameters it takes (none unless listed)
QUERY = {
    "txs.list_txs": frozenset({"tx_hash"}),
    "addresses.get_history": frozenset({"since_address"}),
}
MAX_FIELD = 20_000


def check_query(req: Request | None = None) -> None:
    """`before_request` (or called by one with the request at hand, `req`): unknown or
    repeated query parameters are a 400."""
    if req is None:
        req = request._get_current_object()  # type: ignore[attr-defined]  # the proxy's own
    if not req.args or req.blueprint not in API_BLUEPRINTS or req.endpoint is None:
        return
    allowed = QUERY.get(req.endpoint, frozenset())
    unknown = sorted(set(req.args) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) if allowed else "no query parameters"
        raise BadRequest(
            f"unknown query parameter {', '.join(unknown)} (this endpoint takes {takes})"
        )
    for key in req.args:
        if len(req.args.getlist(key)) > 1:
            raise BadRequest(f"query parameter {key} is given more than once")


def body_fields() -> Mapping[str, str]:
    """The POST body's fields: form-encoded, or a JSON object of strings and integers."""
    if not request.is_json:
        return request.form
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object of fields")
    fields: dict[str, str] = {}
    for key, value in body.items():
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise BadRequest(f"{key} must be a string or an integer")
        text = str(value)
        if len(text) > MAX_FIELD:
            raise BadRequest(f"{key} is too long")
        fields[str(key)] = text
    return fields


def parse_batch_no(text: str) -> int:
    """A batch number from the path: the same 400 for -1, `abc` and 10^20."""
    if not text.isascii() or not text.isdigit() or len(text) > 10 or int(text) > MAX_BATCH_NO:
        raise BadRequest(f"batch_no must be an integer from 0 to {MAX_BATCH_NO}")
    return int(text)
