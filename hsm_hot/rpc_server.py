"""The hot HSM's local RPC: `POST /rpc` on loopback, `Authorization: Bearer <rpc_secret>`.

Kept to the standard library (`socketserver`): one thread per connection, kept alive
(HTTP/1.1), the PKCS#11 session shared through the token layer's lock. Every answer is JSON,
HTTP 200 for results and refusals alike, 401 for a bad secret (compared in constant time). No
exception reaches the wire unconverted: ours carry their code, anything else is logged and
answered as code 900.

The HTTP is read here, not by `http.server`: its request parsing (the `email` package for
headers) and per-response writes cost the hot HSM more CPU per co-sign than checking the
PSBT. The subset read is what a loopback RPC needs: a request line, headers, a body of
`Content-Length` bytes (no chunked bodies), `Expect: 100-continue`, keep-alive by the
HTTP/1.0 and 1.1 rules; anything else is answered 400 and the connection closed.
"""

from __future__ import annotations

import hmac
import json
import logging
import socketserver
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from cc_common.errors import CustodyError
from cc_common.hops import DEADLINE_HEADER, caller_deadline, parse_deadline, timed
from cc_common.watchdog import Watchdog
from hsm_hot.errors import BadRequest, HotHsmError, Unauthorized

log = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024
MAX_LINE = 65_536  # a request line or a header line
MAX_HEADERS = 100
DEFAULT_DEADLINE = 60.0  # for the slow-call log when the caller did not say
Dispatch = Callable[[str, Mapping[str, Any]], Any]
# A call still running past its caller's deadline is logged with its thread's stack.
WATCHDOG = Watchdog(log)
_DEADLINE = DEADLINE_HEADER.lower().encode("ascii")
# headers whose repeats must agree (a second, different Content-Length hides a request)
_SINGLE = frozenset((b"content-length", b"authorization", b"transfer-encoding", _DEADLINE))


class _Malformed(Exception):
    """A request this server does not read; answered 400 (or `status`), then closed."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _Request:
    """One request's line and headers (names lower-cased, values as bytes)."""

    __slots__ = ("method", "path", "version", "headers")

    def __init__(self, method: bytes, path: bytes, version: bytes, headers: dict[bytes, bytes]):
        self.method = method
        self.path = path
        self.version = version
        self.headers = headers

    def header(self, name: bytes) -> bytes | None:
        return self.headers.get(name)

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only if asked."""
        connection = (self.headers.get(b"connection") or b"").lower()
        if self.version == b"HTTP/1.1":
            return b"close" not in connection
        return b"keep-alive" in connection

    def content_length(self) -> int:
        """The body's length; `_Malformed` if it is not one number (or a chunked body)."""
        if b"transfer-encoding" in self.headers:
            raise _Malformed("chunked request bodies are not accepted; send Content-Length")
        raw = self.headers.get(b"content-length")
        if raw is None:
            return 0
        if not raw.isdigit():
            raise _Malformed("Content-Length is not a number")
        return int(raw)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    dispatch: Dispatch
    expected_auth: bytes


class _Handler(socketserver.StreamRequestHandler):
    """One connection: requests read and answered in turn until either side closes it."""

    server: _Server
    # An answer goes out as one write; with Nagle's algorithm a write that follows another
    # (`100 Continue`, then the answer) waits for the client's delayed ACK (~40 ms on Linux).
    disable_nagle_algorithm = True

    def handle(self) -> None:
        try:
            while self._one():
                pass
        except (ConnectionError, TimeoutError) as exc:  # the client went away mid-request
            log.debug("%s: connection ended (%s)", self.client_address[0], type(exc).__name__)

    def _one(self) -> bool:
        """Read and answer one request; whether the connection stays open for another."""
        try:
            request = self._read_head()
        except _Malformed as exc:
            self._error(exc.status, BadRequest(exc.message), close=True)
            return False
        if request is None:
            return False  # the client closed the connection between requests
        keep = request.keep_alive
        try:
            length = request.content_length()
        except _Malformed as exc:
            self._error(exc.status, BadRequest(exc.message), close=True)
            return False
        refusal = self._refusal(request)
        if length > MAX_BODY:  # not read: the connection cannot be used again
            too_large = _error_body(BadRequest("request body missing or too large"))
            self._reply(*(refusal or (200, too_large)))
            return False
        if (
            refusal is None
            and length
            and request.version == b"HTTP/1.1"
            and (request.header(b"expect") or b"").lower() == b"100-continue"
        ):
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            return False  # the client closed mid-body
        status, answer = refusal or self._answer(request, body)
        self._reply(status, answer, close=not keep)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s %d", self.client_address[0], request.method, request.path, status)
        return keep

    def _read_head(self) -> _Request | None:
        line = self.rfile.readline(MAX_LINE + 1)
        if not line:
            return None
        if len(line) > MAX_LINE:
            raise _Malformed("request line too long", 414)
        parts = line.split()
        if len(parts) != 3 or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
            raise _Malformed("bad request line")
        headers: dict[bytes, bytes] = {}
        for _ in range(MAX_HEADERS + 1):
            raw = self.rfile.readline(MAX_LINE + 1)
            if raw in (b"\r\n", b"\n"):
                return _Request(parts[0], parts[1], parts[2], headers)
            if not raw:
                raise ConnectionResetError("closed in the headers")
            if len(raw) > MAX_LINE:
                raise _Malformed("header line too long", 431)
            name, colon, value = raw.partition(b":")
            name = name.lower()
            if not colon or not name or name != name.strip():
                raise _Malformed("malformed header line")
            value = value.strip()
            if name in _SINGLE and headers.get(name, value) != value:
                raise _Malformed(f"conflicting {name.decode('latin-1')} headers")
            headers.setdefault(name, value)
        raise _Malformed("too many headers", 431)

    def _refusal(self, request: _Request) -> tuple[int, dict[str, Any]] | None:
        """The answer to a request refused before its body is read, if it is one."""
        if request.method != b"POST":
            return 405, _error_body(BadRequest("use POST /rpc"))
        given = request.header(b"authorization") or b""
        if not hmac.compare_digest(given, self.server.expected_auth):
            return 401, _error_body(Unauthorized("unauthorized"))
        if request.path != b"/rpc":
            path = request.path.decode("latin-1")
            return 404, _error_body(BadRequest(f"no such endpoint {path}"))
        return None

    def _answer(self, request: _Request, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) of an authorized `POST /rpc`."""
        if not body:
            return 200, _error_body(BadRequest("request body missing or too large"))
        try:
            method, params = parse_call(body)
        except HotHsmError as exc:
            return 200, _error_body(exc)
        deadline = request.header(_DEADLINE)
        waits = parse_deadline(deadline.decode("latin-1") if deadline else None)
        try:
            with (
                caller_deadline(waits),
                WATCHDOG.watch(f"rpc {method[:40]}", waits or DEFAULT_DEADLINE),
                timed(log, "rpc", method, waits or DEFAULT_DEADLINE, answers=(CustodyError,)),
            ):
                result = self.server.dispatch(method, params)
        except CustodyError as exc:
            return 200, _error_body(exc)
        except Exception:
            log.exception("%s failed", method)
            return 200, _error_body(HotHsmError(f"{method}: internal error"))
        return 200, {"result": result}

    def _error(self, status: int, exc: CustodyError, *, close: bool) -> None:
        self._reply(status, _error_body(exc), close=close)

    def _reply(self, status: int, body: Mapping[str, Any], *, close: bool = True) -> None:
        """The whole answer in one write (status line, headers, JSON body)."""
        data = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n"
        )
        if close:
            head += "Connection: close\r\n"
        self.wfile.write(head.encode("ascii") + b"\r\n" + data)


def _error_body(exc: CustodyError) -> dict[str, Any]:
    return {"error": {"code": int(exc.code), "message": exc.message}}


def parse_call(data: bytes) -> tuple[str, Mapping[str, Any]]:
    """`(method, params)` of a request body; `BadRequest` for anything else."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested arrays/objects
        raise BadRequest("request body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("method"), str):
        raise BadRequest('expected {"method": ..., "params": {...}}')
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequest("params must be an object")
    return body["method"], params


class RpcServer:
    """Serves `dispatch(method, params)` on `host:port` in a background thread."""

    def __init__(self, host: str, port: int, secret: str, dispatch: Dispatch) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.dispatch = dispatch
        self._server.expected_auth = f"Bearer {secret}".encode()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="hot-rpc", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        log.info("RPC listening on %s:%d", *self.address)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
