"""Input validation kept out of the views: each helper returns a typed value or raises
`BadRequest` naming the field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flask import request

from cc_common.reference import REPORTABLE
from examples.merchant_site.errors import BadRequest
from examples.merchant_site.models import AddressType, BatchStatus

MAX_FIELD = 20_000
TX_HASH = re.compile(r"[0-9a-fA-F]{64}")


def request_data() -> Mapping[str, Any]:
    """A JSON object body if one was sent, else the form (the reference uses forms)."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest("the JSON body must be an object")
        return body
    return request.form


def text(data: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise BadRequest(f"{name} is required")
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > MAX_FIELD:
        raise BadRequest(f"{name} must be a string of at most {MAX_FIELD} characters")
    return value.strip()


def integer(data: Mapping[str, Any], name: str, *, default: int | None = None) -> int:
    value = text(data, name, required=default is None)
    if value == "" and default is not None:
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(value)


def address_type(data: Mapping[str, Any], name: str = "type") -> AddressType:
    """`1`/`2` as the reference writes them, or `hot`/`cold` for people."""
    value = text(data, name).lower()
    by_name = {"1": AddressType.HOT, "2": AddressType.COLD, "hot": AddressType.HOT}
    by_name["cold"] = AddressType.COLD
    if value not in by_name:
        raise BadRequest(f"{name} must be 1 (hot) or 2 (cold)")
    return by_name[value]


def batch_verdict(data: Mapping[str, Any]) -> BatchStatus:
    value = text(data, "status")
    if value not in {str(int(v)) for v in REPORTABLE}:
        raise BadRequest("status must be 2 (verified) or 3 (failed)")
    return BatchStatus(int(value))


def dynamic(data: Mapping[str, Any]) -> int:
    value = integer(data, "dynamic", default=1)
    if value not in (0, 1):
        raise BadRequest("dynamic must be 0 or 1")
    return value


def tx_hash(data: Mapping[str, Any]) -> str | None:
    """`tx_hash` absent or empty means the send failed (reference section 2)."""
    value = text(data, "tx_hash", required=False)
    if not value:
        return None
    if not TX_HASH.fullmatch(value):
        raise BadRequest("tx_hash must be 64 hex digits (or empty for a failed send)")
    return value.lower()
