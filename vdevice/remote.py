"""HTTP clients of the two services the phone talks to: the merchant site and custody.

`requests` exceptions stop here: a connection failure, a timeout, a 5xx or an answer that is
not JSON becomes `RemoteError` (transient, retried by the loop); a 4xx with the uniform
`{"code", "message"}` body becomes `RemoteRefused`. Tokens go in headers and are never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import requests

from cc_common.reference import BatchVerdict
from vdevice.errors import RemoteError, RemoteRefused

log = logging.getLogger(__name__)

SITE_TOKEN_HEADER = "X-VDevice-Token"  # noqa: S105 (header name, as the merchant site's)
CUSTODY_TOKEN_HEADER = "token"  # noqa: S105 (a header name; reference section 1)
CODE_ALREADY_ACCEPTED = 3  # custody: this user_tx_no was accepted before (reference section 1)
CODE_UNKNOWN_CHANNEL = 41  # custody: c_id is not (yet) a live channel on the cold HSM


class _Client:
    def __init__(self, name: str, base_url: str, headers: Mapping[str, str], timeout: float):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers.update(headers)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, form: Mapping[str, str] | None = None) -> Any:
        url = self.base_url + path
        try:
            resp = self.http.request(method, url, data=form, timeout=self.timeout)
        except requests.RequestException as exc:
            raise RemoteError(f"{self.name}: {method} {path}: {type(exc).__name__}") from None
        try:
            body = resp.json()
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            body = None
        if 400 <= resp.status_code < 500:
            code = body.get("code") if isinstance(body, dict) else None
            message = body.get("message") if isinstance(body, dict) else None
            raise RemoteRefused(
                f"{self.name}: {method} {path}: HTTP {resp.status_code}: {message or resp.reason}",
                status=resp.status_code,
                remote_code=code if isinstance(code, int) else None,
            )
        if resp.status_code != 200 or body is None:
            raise RemoteError(
                f"{self.name}: {method} {path}: HTTP {resp.status_code}", status=resp.status_code
            )
        log.debug("%s: %s %s -> %d", self.name, method, path, resp.status_code)
        return body

    def get_object(self, path: str) -> dict[str, Any]:
        """GET `path`, whose answer must be a JSON object."""
        body = self.call("GET", path)
        if not isinstance(body, dict):
            raise RemoteError(f"{self.name}: GET {path.partition('?')[0]} did not answer an object")
        return body


class SiteClient(_Client):
    """The merchant site's section-2 API (`/batch`, `/vtest`)."""

    def __init__(self, base_url: str, token: str, timeout: float) -> None:
        super().__init__("site", base_url, {SITE_TOKEN_HEADER: token} if token else {}, timeout)

    def pending_batch(self) -> dict[str, Any]:
        return self.get_object("/batch")

    def report_batch(self, batch_no: int, status: BatchVerdict, address_type: int) -> None:
        self.call(
            "POST",
            "/batch",
            {"batch_no": str(batch_no), "status": str(int(status)), "type": str(address_type)},
        )

    def pending_vtest(self, skip: Sequence[str] = ()) -> dict[str, Any]:
        """The oldest withdrawal not handled, past `skip` (the sends in flight or held for the
        owner; our extension: a site without it answers the oldest, which the phone waits on)."""
        path = "/vtest"
        if skip:
            path += "?" + urlencode({"skip": ",".join(skip)})
        return self.get_object(path)

    def report_vtest(self, vtest_id: str, tx_hash: str) -> None:
        self.call("POST", "/vtest", {"vtest_id": vtest_id, "tx_hash": tx_hash})


class CustodyClient(_Client):
    """The custody API with the account's hot token (section 1 and our batch-status call)."""

    def __init__(self, base_url: str, hot_token: str, timeout: float) -> None:
        super().__init__("custody", base_url, {CUSTODY_TOKEN_HEADER: hot_token}, timeout)

    def user(self) -> dict[str, Any]:
        return self.get_object("/user")

    def report_batch(self, batch_no: int, status: BatchVerdict, address_type: int) -> None:
        self.call(
            "POST",
            f"/address/batch/{batch_no}/status",
            {"status": str(int(status)), "type": str(address_type)},
        )

    def request_send(self, form: Mapping[str, str]) -> bool:
        """POST /tx/request; True if accepted now, False if custody already had it (code 3)."""
        try:
            self.call("POST", "/tx/request", form)
        except RemoteRefused as exc:
            if exc.remote_code == CODE_ALREADY_ACCEPTED:
                return False
            raise
        return True

    def send_statement(self, user_tx_no: str) -> Any:
        """The cold HSM's signed final word on `user_tx_no` (our extension; closes a number
        custody holds no send for), or None if custody gave none."""
        body = self.call("POST", "/tx/" + quote(user_tx_no, safe="") + "/statement")
        return body.get("cold_statement") if isinstance(body, dict) else None

    def send_state(self, user_tx_no: str) -> dict[str, Any]:
        body = self.call("GET", "/tx/" + quote(user_tx_no, safe=""))
        if not isinstance(body, dict):
            raise RemoteError("custody: GET /tx/<user_tx_no> did not answer an object")
        return body
