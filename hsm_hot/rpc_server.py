"""The hot HSM's local RPC: `POST /rpc` on loopback, `Authorization: Bearer <rpc_secret>`.

Kept to the standard library (`ThreadingHTTPServer`): one thread per request, the PKCS#11
session shared through the token layer's lock. Every answer is JSON, HTTP 200 for results and
refusals alike, 401 for a bad secret (compared in constant time). No exception reaches the
wire unconverted: ours carry their code, anything else is logged and answered as code 900.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cc_common.errors import CustodyError
from cc_common.hops import DEADLINE_HEADER, caller_deadline, parse_deadline, timed
from cc_common.watchdog import Watchdog
from hsm_hot.errors import BadRequest, HotHsmError, Unauthorized

log = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024
DEFAULT_DEADLINE = 60.0  # for the slow-call log when the caller did not say
Dispatch = Callable[[str, Mapping[str, Any]], Any]
# A call still running past its caller's deadline is logged with its thread's stack.
WATCHDOG = Watchdog(log)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    dispatch: Dispatch
    expected_auth: bytes


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # The answer goes out as two writes (headers, then body): with Nagle's algorithm the body
    # waits for the client's delayed ACK of the headers (~40 ms on Linux) on every call.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # base signature
        log.debug("%s %s", self.address_string(), format % args)

    def _reply(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, exc: CustodyError) -> None:
        self._reply(status, {"error": {"code": int(exc.code), "message": exc.message}})

    def do_GET(self) -> None:  # http.server naming
        self._error(405, BadRequest("use POST /rpc"))

    def do_POST(self) -> None:  # http.server naming
        given = self.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, self.server.expected_auth):
            self._drain()
            self._error(401, Unauthorized("unauthorized"))
            return
        if self.path != "/rpc":
            self._drain()
            self._error(404, BadRequest(f"no such endpoint {self.path}"))
            return
        try:
            method, params = self._read_call()
        except HotHsmError as exc:
            self._error(200, exc)
            return
        waits = parse_deadline(self.headers.get(DEADLINE_HEADER))
        try:
            with (
                caller_deadline(waits),
                WATCHDOG.watch(f"rpc {method[:40]}", waits or DEFAULT_DEADLINE),
                timed(log, "rpc", method, waits or DEFAULT_DEADLINE, answers=(CustodyError,)),
            ):
                result = self.server.dispatch(method, params)
        except CustodyError as exc:
            self._error(200, exc)
            return
        except Exception:
            log.exception("%s failed", method)
            self._error(200, HotHsmError(f"{method}: internal error"))
            return
        self._reply(200, {"result": result})

    def _drain(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if 0 < length <= MAX_BODY:
            self.rfile.read(length)
        else:
            self.close_connection = True

    def _read_call(self) -> tuple[str, Mapping[str, Any]]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self.close_connection = True
            raise BadRequest("request body missing or too large")
        return parse_call(self.rfile.read(length))


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
