"""The two custody API calls the merchant site makes (reference section 1), with its tokens.

Every failure (network, custody's `{"code","message"}` error, a malformed answer) becomes one
`CustodyUnavailable`; the token is sent in the `token` header and never logged.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import requests

from cc_common.hops import DEADLINE_HEADER, timed
from examples.merchant_site.errors import CustodyUnavailable

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/open"
BATCH_SIZE = 1000
_ADDRESS = re.compile(r"[0-9A-Za-z]{14,90}")
# Below what the site's own callers wait (15 s in the demo); custody's hot HSM call is cut
# to it through the deadline header, so the innermost hop gives up first and logs it.
DEFAULT_TIMEOUT = 12.0


class CustodyClient:
    def __init__(
        self, base_url: str, timeout: float = DEFAULT_TIMEOUT, http: requests.Session | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # A session only if given (one per thread): by default each call is its own request.
        self._get_url = http.get if http is not None else requests.get

    def _headers(self, token: str) -> dict[str, str]:
        return {"token": token, DEADLINE_HEADER: f"{self.timeout:.2f}"}

    def _get(self, path: str, token: str) -> Any:
        url = f"{self.base_url}{API_PREFIX}{path}"
        try:
            with timed(log, "site->custody", f"GET {path}", self.timeout):
                resp = self._get_url(url, headers=self._headers(token), timeout=self.timeout)
        except requests.RequestException as exc:
            log.warning("custody API unreachable at %s: %s", self.base_url, type(exc).__name__)
            raise CustodyUnavailable(f"custody API unreachable at {self.base_url}") from None
        try:
            body = resp.json()
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            body = None
        if resp.status_code != 200:
            detail = body.get("message") if isinstance(body, dict) else None
            raise CustodyUnavailable(
                f"custody API refused GET {path}: HTTP {resp.status_code}"
                + (f", {detail}" if detail else "")
            )
        if body is None:
            raise CustodyUnavailable(f"custody API answered GET {path} with no JSON")
        return body

    def fetch_batch(self, token: str, batch_no: int) -> list[dict[str, Any]]:
        """`GET /address/batch/<n>`: exactly 1000 `{"index","address"}`, from index n*1000."""
        body = self._get(f"/address/batch/{batch_no}", token)
        first = batch_no * BATCH_SIZE
        if not isinstance(body, list) or len(body) != BATCH_SIZE:
            raise CustodyUnavailable(f"custody returned a malformed batch {batch_no}")
        result = []
        for n, entry in enumerate(body):
            if (
                not isinstance(entry, dict)
                or entry.get("index") != first + n
                or not isinstance(entry.get("address"), str)
                or not _ADDRESS.fullmatch(entry["address"])
            ):
                raise CustodyUnavailable(f"custody returned a malformed batch {batch_no}")
            result.append({"index": first + n, "address": entry["address"]})
        return result

    def next_address(self, token: str) -> tuple[int, str]:
        """`GET /address/next`: the next unused receiving address."""
        body = self._get("/address/next", token)
        if (
            not isinstance(body, dict)
            or type(body.get("index")) is not int
            or not isinstance(body.get("address"), str)
        ):
            raise CustodyUnavailable("custody returned a malformed next address")
        return body["index"], body["address"]

    def events(self, token: str, after: int, *, wait: float = 0.0) -> list[dict[str, Any]]:
        """Custody's events after `after` that `token`'s side sees (long poll up to `wait`)."""
        body = self._get(f"/events?after={int(after)}&wait={wait:g}", token)
        found = body.get("events") if isinstance(body, dict) else None
        if not isinstance(found, list) or not all(isinstance(e, dict) for e in found):
            raise CustodyUnavailable("custody API answered /events without an event list")
        return found
