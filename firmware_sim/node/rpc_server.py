"""HTTP transport of the RPC interface, as Bitcoin Core's `httprpc.cpp` does it.

POST `/` (or `/wallet/<name>`) with Basic auth (rpcuser/rpcpassword or the cookie), a JSON-RPC
1.0 request or a batch. RPC errors come back with HTTP 500 (404 for an unknown method, 400 for
an invalid request), a failed login with 401 and an empty body. Calls are logged at DEBUG
without parameters that could be secret and never with the credentials.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from firmware_sim.node import rpc_scan  # noqa: F401 (registers scantxoutset)
from firmware_sim.node.errors import RPCCode, RPCError
from firmware_sim.node.formatting import dumps, use_regtest
from firmware_sim.node.node import Node
from firmware_sim.node.rpc_methods import METHODS

log = logging.getLogger(__name__)

COOKIE_USER = "__cookie__"
COOKIE_FILENAME = ".cookie"


def write_cookie(datadir: Path) -> tuple[Path, str]:
    """Write `<datadir>/.cookie` (`__cookie__:<hex>`, mode 0600) as bitcoind does at start."""
    secret = secrets.token_hex(32)
    path = datadir / COOKIE_FILENAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{COOKIE_USER}:{secret}", encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path, secret


class Dispatcher:
    """JSON-RPC request objects -> replies, with Core's error mapping."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def call(self, request: Any) -> tuple[dict[str, Any], int]:
        """One request object -> (reply, HTTP status it would get on its own)."""
        req_id = request.get("id") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict):
                raise RPCError(RPCCode.INVALID_REQUEST, "Invalid Request object")
            method_name = request.get("method")
            if not isinstance(method_name, str):
                raise RPCError(RPCCode.INVALID_REQUEST, "Method must be a string")
            params = request.get("params", [])
            method = METHODS.get(method_name)
            if method is None:
                raise RPCError(RPCCode.METHOD_NOT_FOUND, "Method not found")
            args = self._positional(method.name, method.params, method.required, params)
            log.debug("rpc %s (%d params)", method_name, len(args))
            result = method.handler(self.node, *args)
            return {"result": result, "error": None, "id": req_id}, 200
        except RPCError as exc:
            log.debug("rpc error %d: %s", exc.code, exc.message)
            statuses: dict[int, int] = {RPCCode.INVALID_REQUEST: 400, RPCCode.METHOD_NOT_FOUND: 404}
            status = statuses.get(exc.code, 500)
            return {"result": None, "error": exc.to_json(), "id": req_id}, status
        except Exception as exc:  # never kill the server thread
            log.exception("internal error in rpc call")
            err = RPCError(RPCCode.MISC_ERROR, f"Internal error: {exc}")
            return {"result": None, "error": err.to_json(), "id": req_id}, 500

    @staticmethod
    def _positional(name: str, names: tuple[str, ...], required: int, params: Any) -> list[Any]:
        if params is None:
            params = []
        if isinstance(params, dict):
            unknown = [k for k in params if k not in names]
            if unknown:
                raise RPCError(RPCCode.INVALID_PARAMETER, f"Unknown named parameter {unknown[0]}")
            args = [params.get(n) for n in names]
            while args and args[-1] is None:
                args.pop()
            params = args
        if not isinstance(params, list):
            raise RPCError(RPCCode.INVALID_REQUEST, "Params must be an array or object")
        if len(params) < required or len(params) > len(names):
            usage = " ".join(n if i < required else f"( {n} )" for i, n in enumerate(names))
            raise RPCError(RPCCode.MISC_ERROR, f"{name} {usage}".strip())
        if any(params[i] is None for i in range(required)):
            raise RPCError(RPCCode.INVALID_PARAMETER, f"{names[0]} must not be null")
        return list(params)

    def handle_body(self, body: bytes) -> tuple[int, bytes]:
        try:
            request = json.loads(body, parse_float=Decimal)
        except ValueError:
            err = RPCError(RPCCode.PARSE_ERROR, "Parse error")
            return 500, self._encode({"result": None, "error": err.to_json(), "id": None})
        if isinstance(request, list):
            return 200, self._encode([self.call(r)[0] for r in request])
        reply, status = self.call(request)
        return status, self._encode(reply)

    @staticmethod
    def _encode(value: Any) -> bytes:
        return (dumps(value) + "\n").encode()


class RPCServer(ThreadingHTTPServer):
    """One thread per connection; the node's lock serialises state changes."""

    daemon_threads = True
    allow_reuse_address = True  # TIME_WAIT after a restart; a live listener still fails

    def __init__(self, address: tuple[str, int], dispatcher: Dispatcher, user: str, password: str):
        self.dispatcher = dispatcher
        self.credentials: list[bytes] = [f"{user}:{password}".encode()]
        super().__init__(address, RPCHandler)

    def add_cookie(self, secret: str) -> None:
        self.credentials.append(f"{COOKIE_USER}:{secret}".encode())

    def authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:].strip(), validate=True)
        except ValueError:
            return False
        return any(hmac.compare_digest(given, c) for c in self.credentials)


class RPCHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, a keep-alive client's delayed ACK
    # holds the second one back ~40 ms, which made every call take 40 ms.
    disable_nagle_algorithm = True
    server: RPCServer

    def handle(self) -> None:
        use_regtest()
        super().handle()

    def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "application/json")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # http.server naming
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if not self.server.authorized(self.headers.get("Authorization")):
            log.warning("incorrect rpc password attempt from %s", self.client_address[0])
            self._send(401, b"", {"WWW-Authenticate": 'Basic realm="jsonrpc"'})
            return
        if not (self.path == "/" or self.path.startswith("/wallet/")):
            self._send(404, b"")
            return
        status, payload = self.server.dispatcher.handle_body(body)
        self._send(status, payload)

    def do_GET(self) -> None:
        self._send(405, b"JSONRPC server handles only POST requests")

    def log_message(self, format: str, *args: Any) -> None:
        log.log(5, "http %s " + format, self.client_address[0], *args)
