"""Typed fields of a decoded request (link payload, RPC params), checked at the boundary.

Both HSMs take JSON-like mappings from another process; a missing field or a wrong type must
become that package's own `BadRequest` with the field's name, never a `KeyError`/`TypeError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cc_errors import CustodyError


def field(
    payload: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    *,
    error: type[CustodyError],
    noun: str = "field",
) -> Any:
    """`payload[key]` of type `kind` (a bool is not an int here), else `error`."""
    if key not in payload:
        raise error(f"missing {noun} {key!r}")
    value = payload[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise error(f"{noun} {key!r} has the wrong type")
    return value


def text_field(
    payload: Mapping[str, Any],
    key: str,
    max_len: int,
    *,
    error: type[CustodyError],
    noun: str = "field",
) -> str:
    """A non-empty string of at most `max_len` characters, else `error`."""
    value: str = field(payload, key, str, error=error, noun=noun)
    if not value or len(value) > max_len:
        raise error(f"{noun} {key!r} is empty or too long")
    return value


def hex_txid(value: str) -> str | None:
    """`value` lowercased when it reads as a txid (32 bytes in hex), else None."""
    txid = value.lower()
    try:
        return txid if len(bytes.fromhex(txid)) == 32 else None
    except ValueError:
        return None
