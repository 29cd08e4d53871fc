"""A Twilio-compatible SMS gateway on loopback: what the `twilio` client needs to send.

Implements `POST /2010-04-01/Accounts/{Sid}/Messages.json` (Basic auth with the account SID
and auth token; form fields To, From, Body) and `GET .../Messages/{MessageSid}.json`, with
Twilio's JSON shapes and error codes. Each accepted message is handed to the simulated carrier
from the gateway's network, so the recipient's phone or modem receives it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import re
import secrets
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from firmware_sim.errors import FirmwareSimError, StartupError
from firmware_sim.gsm import gsm7
from firmware_sim.gsm.carrier import Carrier

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
NETWORK = "twilio"
MAX_BODY = 1600
MAX_REQUEST = 64 * 1024
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_MESSAGES = re.compile(rf"^/{API_VERSION}/Accounts/([^/]+)/Messages\.json$")
_MESSAGE = re.compile(rf"^/{API_VERSION}/Accounts/([^/]+)/Messages/([^/]+)\.json$")


class TwilioError(FirmwareSimError):
    """An error answered in Twilio's JSON shape: `code` is Twilio's, `status` the HTTP one."""

    def __init__(self, status: int, twilio_code: int, message: str) -> None:
        super().__init__(message, code=twilio_code)
        self.status = status

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TwilioGateway:
    """The HTTP server and the messages it has accepted."""

    def __init__(
        self,
        host: str,
        port: int,
        account_sid: str,
        auth_token: str,
        numbers: Sequence[str],
        carrier: Carrier,
    ) -> None:
        self.host = host
        self.port = port
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.numbers = tuple(numbers)
        self._carrier = carrier
        self._messages: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        if not _is_loopback(self.host):
            raise StartupError(f"twilio gateway: host {self.host} is not a loopback address")
        handler = type("Handler", (_Handler,), {"gateway": self})
        try:
            self._server = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as exc:
            raise StartupError(
                f"twilio gateway: cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="twilio-gateway", daemon=True
        )
        self._thread.start()
        log.info("twilio gateway at %s for numbers %s", self.url, ", ".join(self.numbers))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def status(self) -> dict[str, Any]:
        with self._lock:
            count = len(self._messages)
        return {"url": self.url, "numbers": list(self.numbers), "messages": count}

    # ----- the API ------------------------------------------------------------------------

    def authenticate(self, header: str | None, path_sid: str) -> None:
        fail = TwilioError(HTTPStatus.UNAUTHORIZED, 20003, "Authenticate")
        if not header or not header.startswith("Basic "):
            raise fail
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise fail from None
        ok_user = hmac.compare_digest(user.encode(), self.account_sid.encode())
        ok_token = hmac.compare_digest(password.encode(), self._auth_token.encode())
        if not (ok_user and ok_token and path_sid == self.account_sid):
            raise fail

    def create_message(self, form: dict[str, str]) -> dict[str, Any]:
        to, sender, body = form.get("To", ""), form.get("From", ""), form.get("Body", "")
        if not to:
            raise TwilioError(HTTPStatus.BAD_REQUEST, 21604, "A 'To' phone number is required.")
        if not sender:
            raise TwilioError(
                HTTPStatus.BAD_REQUEST,
                21603,
                "A 'From' or 'MessagingServiceSid' parameter is required to send a message.",
            )
        if not body:
            raise TwilioError(HTTPStatus.BAD_REQUEST, 21602, "Message body is required.")
        if not _E164.match(to):
            raise TwilioError(
                HTTPStatus.BAD_REQUEST, 21211, f"The 'To' number {to} is not a valid phone number."
            )
        if sender not in self.numbers:
            raise TwilioError(
                HTTPStatus.BAD_REQUEST,
                21606,
                f"The From phone number {sender} is not a valid, SMS-capable inbound phone "
                "number or short code for your account.",
            )
        if len(body) > MAX_BODY:
            raise TwilioError(
                HTTPStatus.BAD_REQUEST,
                21617,
                "The concatenated message body exceeds the 1600 character limit.",
            )
        sid = "SM" + secrets.token_hex(16)
        now = format_datetime(datetime.now(UTC), usegmt=True)
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}"
        record: dict[str, Any] = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender,
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": str(gsm7.segment_count(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": f"{base}/Media.json"},
            "to": to,
            "uri": f"{base}.json",
        }
        answer = dict(record)
        with self._lock:
            self._messages[sid] = record
        try:
            msg_id = self._carrier.submit(sender, to, body, via=NETWORK)
        except FirmwareSimError as exc:
            log.warning("twilio %s from %s to %s failed: %s", sid, sender, to, exc.message)
            with self._lock:
                record.update(status="failed", error_code=30008, error_message=exc.message)
        else:
            log.info("twilio %s from %s to %s handed to the carrier as %s", sid, sender, to, msg_id)
            with self._lock:
                record.update(status="sent", date_sent=now)
        return answer

    def get_message(self, sid: str) -> dict[str, Any]:
        with self._lock:
            record = self._messages.get(sid)
            if record is None:
                raise TwilioError(
                    HTTPStatus.NOT_FOUND,
                    20404,
                    f"The requested resource /{API_VERSION}/Accounts/{self.account_sid}"
                    f"/Messages/{sid}.json was not found",
                )
            return dict(record)


class _Handler(BaseHTTPRequestHandler):
    gateway: TwilioGateway
    server_version = "firmware-sim-twilio/1.0"
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # http.server naming
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def _serve(self, method: str) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, MAX_REQUEST)) if length else b""
        try:
            if method == "POST" and (m := _MESSAGES.match(path)):
                self.gateway.authenticate(self.headers.get("Authorization"), m.group(1))
                form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
                self._answer(HTTPStatus.CREATED, self.gateway.create_message(form))
            elif method == "GET" and (m := _MESSAGE.match(path)):
                self.gateway.authenticate(self.headers.get("Authorization"), m.group(1))
                self._answer(HTTPStatus.OK, self.gateway.get_message(m.group(2)))
            else:
                raise TwilioError(
                    HTTPStatus.NOT_FOUND, 20404, f"The requested resource {path} was not found"
                )
        except TwilioError as exc:
            log.info("twilio %s %s: %d %s", method, path, exc.code, exc.message)
            self._answer(exc.status, exc.body())

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # http.server API
        log.debug("http %s " + format, self.client_address[0], *args)
