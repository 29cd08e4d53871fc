"""The hot RPC's HTTP, both ends: the server's own request reader and custody's client.

The server reads HTTP itself (not `http.server`), so these pin what it must keep: answers on
a kept-alive connection, refusals that leave the connection usable, the requests it does not
read (chunked, oversize, conflicting lengths, a broken request line) answered 400 and closed,
`Expect: 100-continue`, HTTP/1.0 closing. The client keeps one connection per thread and
opens a new one when the server closed the idle one.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from custody.errors import HsmUnavailableError
from custody.hsm_client import HotHsmClient, HsmRefused
from hsm_hot.errors import BadRequest
from hsm_hot.rpc_server import RpcServer

SECRET = "s" * 32
AUTH = f"Authorization: Bearer {SECRET}\r\n".encode()


def _dispatch(method: str, params: Mapping[str, Any]) -> Any:
    if method == "refuse":
        raise BadRequest("refused as asked")
    return {"method": method, "params": dict(params)}


@pytest.fixture
def server() -> Iterator[RpcServer]:
    srv = RpcServer("127.0.0.1", 0, SECRET, _dispatch)
    srv.start()
    yield srv
    srv.stop()


class _Raw:
    """A raw client connection with one buffered reader (answers may arrive together)."""

    def __init__(self, srv: RpcServer) -> None:
        self.sock = socket.create_connection(srv.address, timeout=5)
        self.reader = self.sock.makefile("rb")

    def __enter__(self) -> _Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()
        self.sock.close()

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> tuple[int, dict[bytes, bytes], Any]:
        """One HTTP answer: status, headers (lower-case names), JSON body."""
        status = int(self.reader.readline().split()[1])
        headers = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, json.loads(self.reader.read(int(headers[b"content-length"])))

    def interim(self, n: int) -> bytes:
        return self.reader.read(n)

    def closed(self) -> bool:
        return self.reader.read(1) == b""


def _post(body: bytes, *, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    head = b"POST /rpc " + version + b"\r\n" + AUTH + extra
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_answers_on_one_kept_alive_connection(server: RpcServer) -> None:
    with _Raw(server) as sock:
        for n in range(3):
            sock.sendall(_post(json.dumps({"method": "m", "params": {"n": n}}).encode()))
            status, headers, body = sock.answer()
            assert status == 200 and b"connection" not in headers
            assert body == {"result": {"method": "m", "params": {"n": n}}}


def test_pipelined_requests_are_answered_in_order(server: RpcServer) -> None:
    calls = b"".join(_post(json.dumps({"method": f"m{n}"}).encode()) for n in range(3))
    with _Raw(server) as sock:
        sock.sendall(calls)
        assert [sock.answer()[2]["result"]["method"] for _ in range(3)] == ["m0", "m1", "m2"]


def test_refusals_keep_the_connection(server: RpcServer) -> None:
    body = b'{"method": "m"}'
    with _Raw(server) as sock:
        sock.sendall(b"POST /rpc HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status, _, answer = sock.answer()
        assert status == 401 and answer["error"]["code"] == 908
        sock.sendall(b"POST /other HTTP/1.1\r\n" + AUTH + b"Content-Length: 2\r\n\r\n{}")
        status, _, answer = sock.answer()
        assert status == 404 and answer["error"]["message"] == "no such endpoint /other"
        sock.sendall(b"GET /rpc HTTP/1.1\r\n\r\n")
        status, _, answer = sock.answer()
        assert (status, answer["error"]["code"]) == (405, 904)
        sock.sendall(_post(b"not json"))
        assert sock.answer()[2]["error"]["message"] == "request body is not JSON"
        sock.sendall(_post(b'{"method": "refuse"}'))
        assert sock.answer()[2]["error"] == {"code": 904, "message": "refused as asked"}
        sock.sendall(_post(body))
        assert sock.answer()[0] == 200  # the same connection still serves


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (b"BOGUS\r\n\r\n", 400, "bad request line"),
        (b"POST /rpc HTTP/2.0\r\n\r\n", 400, "bad request line"),
        (
            b"POST /rpc HTTP/1.1\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n",
            400,
            "chunked request bodies are not accepted; send Content-Length",
        ),
        (
            b"POST /rpc HTTP/1.1\r\n" + AUTH + b"Content-Length: 2\r\nContent-Length: 9\r\n\r\n",
            400,
            "conflicting content-length headers",
        ),
        (
            b"POST /rpc HTTP/1.1\r\n" + AUTH + b"Content-Length: -1\r\n\r\n",
            400,
            "Content-Length is not a number",
        ),
        (b"POST /rpc HTTP/1.1\r\n" + AUTH + b" folded: x\r\n\r\n", 400, "malformed header line"),
        (
            b"POST /rpc HTTP/1.1\r\n" + AUTH + b"Content-Length: 99999999\r\n\r\n",
            200,
            "request body missing or too large",
        ),
        (b"POST /rpc HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431, "too many headers"),
    ],
)
def test_what_it_does_not_read_is_refused_and_closed(
    server: RpcServer, request_bytes: bytes, status: int, message: str
) -> None:
    with _Raw(server) as sock:
        sock.sendall(request_bytes)
        got, headers, answer = sock.answer()
        assert (got, answer["error"]["message"]) == (status, message)
        assert headers[b"connection"] == b"close" and sock.closed()


def test_expect_100_continue_gets_the_interim_answer(server: RpcServer) -> None:
    body = b'{"method": "m"}'
    with _Raw(server) as sock:
        sock.sendall(
            b"POST /rpc HTTP/1.1\r\n" + AUTH + b"Expect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.interim(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.answer()[2] == {"result": {"method": "m", "params": {}}}


def test_http_1_0_is_answered_then_closed_unless_kept_alive(server: RpcServer) -> None:
    body = b'{"method": "m"}'
    with _Raw(server) as sock:
        sock.sendall(_post(body, version=b"HTTP/1.0"))
        status, headers, _ = sock.answer()
        assert status == 200 and headers[b"connection"] == b"close" and sock.closed()
    with _Raw(server) as sock:
        sock.sendall(_post(body, version=b"HTTP/1.0", extra=b"Connection: keep-alive\r\n"))
        assert sock.answer()[0] == 200
        sock.sendall(_post(body, extra=b"Connection: close\r\n"))
        status, headers, _ = sock.answer()
        assert status == 200 and headers[b"connection"] == b"close" and sock.closed()


# -- custody's client --------------------------------------------------------------------------


class _CountingServer:
    """A one-connection-at-a-time HTTP server that counts connections and can close each
    after its first answer (as a restarted hot HSM leaves a client's idle connection)."""

    def __init__(self, *, close_after_answer: bool) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.close_after_answer = close_after_answer
        self.connections = 0
        self.idle = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn, conn.makefile("rb") as f:
                while f.readline():
                    length = 0
                    while (h := f.readline()) not in (b"\r\n", b""):
                        if h.lower().startswith(b"content-length:"):
                            length = int(h.split(b":")[1])
                    call = json.loads(f.read(length))
                    body = json.dumps({"result": call["method"]}).encode()
                    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                    conn.sendall(head + body)
                    if self.close_after_answer:
                        break
            self.idle.set()

    def close(self) -> None:
        self.listener.close()


def test_client_keeps_one_connection_per_thread() -> None:
    srv = _CountingServer(close_after_answer=False)
    try:
        client = HotHsmClient(srv.url, SECRET, timeout=5)
        assert [client.call(f"m{n}") for n in range(5)] == [f"m{n}" for n in range(5)]
        assert srv.connections == 1
    finally:
        srv.close()


def test_client_reconnects_when_the_server_closed_its_idle_connection() -> None:
    srv = _CountingServer(close_after_answer=True)
    try:
        client = HotHsmClient(srv.url, SECRET, timeout=5)
        assert client.call("first") == "first"
        assert srv.idle.wait(5)  # the server has closed the connection the client kept
        assert client.call("second") == "second"
        assert srv.connections == 2
    finally:
        srv.close()


def test_client_maps_answers_and_failures(server: RpcServer) -> None:
    host, port = server.address
    client = HotHsmClient(f"http://{host}:{port}", SECRET, timeout=5)
    with pytest.raises(HsmRefused) as info:
        client.call("refuse")
    assert (info.value.code, info.value.message) == (904, "refused as asked")
    wrong = HotHsmClient(f"http://{host}:{port}", "x" * 32, timeout=5)
    with pytest.raises(HsmRefused) as info:
        wrong.call("m")
    assert info.value.code == 908
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    gone = HotHsmClient(f"http://127.0.0.1:{closed_port}", SECRET, timeout=2)
    with pytest.raises(HsmUnavailableError, match="hot HSM unreachable"):
        gone.call("m")
    with pytest.raises(ValueError, match="plain http"):
        HotHsmClient("https://127.0.0.1:1", SECRET)


def test_client_gives_up_at_its_timeout() -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        host, port = silent.getsockname()[:2]
        client = HotHsmClient(f"http://{host}:{port}", SECRET, timeout=0.3)
        with pytest.raises(HsmUnavailableError, match="did not answer m within 0.3s"):
            client.call("m")
    finally:
        silent.close()
