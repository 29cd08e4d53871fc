"""Webhook signatures: HMAC-SHA256 over the timestamp and the exact body.

Header `CC-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`. A
receiver recomputes the HMAC over the raw body it received with the endpoint's secret,
compares in constant time, and refuses a timestamp outside its replay window (default 5
minutes either way); it then ignores an event whose (account_id, seq) it has processed before,
since a delivery interrupted after the POST is sent again.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from cc_common.errors import CustodyError

SIGNATURE_HEADER = "CC-Signature"
DEFAULT_TOLERANCE = 300


class WebhookSignatureInvalid(CustodyError):
    """The signature header is missing, malformed, or does not match the body."""

    code = 605


class WebhookSignatureStale(CustodyError):
    """The signed timestamp is outside the replay window."""

    code = 606


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def signature_header(secret: str, body: bytes, now: float | None = None) -> str:
    ts = int(time.time() if now is None else now)
    return f"t={ts},v1={signature(secret, ts, body)}"


def verify(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE,
) -> int:
    """Check `header` for `body`; returns the signed timestamp or raises why not."""
    if not header:
        raise WebhookSignatureInvalid(f"missing {SIGNATURE_HEADER} header")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        raise WebhookSignatureInvalid(f"malformed {SIGNATURE_HEADER} header") from None
    if not hmac.compare_digest(given, signature(secret, ts, body)):
        raise WebhookSignatureInvalid("signature does not match the body")
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        raise WebhookSignatureStale(
            f"signed {int(current - ts)} s ago, outside the {tolerance} s replay window"
        )
    return ts
