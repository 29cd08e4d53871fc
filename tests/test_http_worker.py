"""custody's gunicorn worker (custody/http_worker.py) under gunicorn's arbiter, over real sockets.

The worker reads internet-facing HTTP itself, so these pin what a production server must do:
keep-alive and pipelining, HTTP/1.0 and `Connection: close`, `Expect: 100-continue`, the
requests it refuses (chunked bodies, oversize lines, headers and bodies, duplicate lengths,
garbage) with a 4xx and a closed connection, the idle timeout, the cap on connections per
worker, graceful shutdown, gunicorn's heartbeat and max_requests, and errors logged without
the request's body.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cc_common.config import Config
from cc_common.deployment import free_port
from cc_common.errors import ConfigError
from custody.serve import gunicorn_options

ROOT = Path(__file__).resolve().parents[1]
WORKER = "custody.http_worker.CustodyWorker"


class Gunicorn:
    """`gunicorn -k CustodyWorker tests.http_worker_app:app` in its own process."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.gate = tmp / "gate"
        self.log = tmp / "gunicorn.log"
        env = {**os.environ, "CC_TEST_GATE": str(self.gate)}
        cmd = [sys.executable, "-m", "gunicorn", "-k", WORKER, "-b", f"127.0.0.1:{self.port}"]
        cmd += ["--control-socket", str(tmp / "g.ctl"), *args, "tests.http_worker_app:app"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=self.log.open("wb"))
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "gunicorn did not answer"
            try:
                with self.connect() as c:
                    c.send(b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n")
                    if c.answer()[0] == 200:
                        return
            except OSError:
                time.sleep(0.1)

    def connect(self, timeout: float = 10.0) -> Raw:
        return Raw(socket.create_connection(("127.0.0.1", self.port), timeout=timeout))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Raw:
    """A client connection that reads answers (several may arrive in one segment)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.reader.readline(65_536)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        status = self.line()
        assert status, "connection closed before an answer"
        code = int(status.split()[1])
        headers: dict[str, str] = {}
        while (line := self.line()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.reader.read(int(headers.get("content-length", "0")))
        return code, headers, body

    def json(self) -> dict[str, Any]:
        code, _, body = self.answer()
        assert code == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def closed(self) -> bool:
        """Whether the server closed the connection (EOF within the socket's timeout)."""
        try:
            return self.reader.read(1) == b""
        except (TimeoutError, ConnectionResetError):
            return False


DEFAULTS = ("-w", "1", "--threads", "4", "--keep-alive", "5")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Start gunicorn with the defaults and the given extra arguments (stopped afterwards)."""
    started: list[Gunicorn] = []

    def run(*args: str) -> Gunicorn:
        srv = Gunicorn(tmp_path, *DEFAULTS, *args)
        started.append(srv)
        return srv

    yield run
    for srv in started:
        srv.stop()


@pytest.fixture
def server(start: Callable[..., Gunicorn]) -> Gunicorn:
    return start()


def get(path: str, *extra: str, version: str = "1.1") -> bytes:
    head = [f"GET {path} HTTP/{version}", "Host: t", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: t", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_keep_alive_and_pipelined_requests(server: Gunicorn) -> None:
    with server.connect() as c:
        c.send(get("/a?x=1"))
        first = c.json()
        assert (first["method"], first["path"], first["query"]) == ("GET", "/a", "x=1")
        # three requests in one segment: answered in order on the same connection
        c.send(get("/b") + post("/c", b"k=v", "Content-Type: text/plain") + get("/d%20e"))
        b, p, d = c.json(), c.json(), c.json()
        assert [b["path"], p["path"], d["path"]] == ["/b", "/c", "/d e"]
        assert (p["body"], p["content_type"]) == ("k=v", "text/plain")
        assert b["pid"] == first["pid"]


def test_request_split_across_segments(server: Gunicorn) -> None:
    with server.connect() as c:
        c.send(b"\r\n")  # an empty line before a request is ignored
        for part in (
            b"POST /s?q",
            b"=1 HTTP/1.1\r\nHo",
            b"st: t\r\nContent-Length: 5\r",
            b"\n\r\nhel",
        ):
            c.send(part)
            time.sleep(0.05)
        c.send(b"lo" + get("/next"))
        first = c.json()
        assert (first["path"], first["query"], first["body"]) == ("/s", "q=1", "hello")
        assert c.json()["path"] == "/next"


def test_http_10_and_connection_close(server: Gunicorn) -> None:
    with server.connect() as c:
        c.send(get("/", version="1.0"))
        code, headers, _ = c.answer()
        assert (code, headers["connection"]) == (200, "close")
        assert c.closed()
    with server.connect() as c:
        c.send(get("/", "Connection: keep-alive", version="1.0"))
        assert c.answer()[1]["connection"] == "keep-alive"
        c.send(get("/again", "Connection: close"))
        assert c.json()["path"] == "/again"
        assert c.closed()


def test_expect_100_continue(server: Gunicorn) -> None:
    with server.connect() as c:
        c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert c.line() == b"HTTP/1.1 100 Continue\r\n"
        assert c.line() == b"\r\n"
        c.send(b"hello")
        assert c.json()["body"] == "hello"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            411,
        ),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"GET /" + b"a" * 5000, 414),  # refused before the line ends
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % k for k in range(120)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1048577\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 3 \r\nX: y\r\n folded\r\n\r\nabc", 400),
        (b"GET / HTTP/1.1\r\nBad Header: 1\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nExpect: something\r\n\r\n", 417),
    ],
    ids=[
        "chunked",
        "long-line",
        "long-line-unfinished",
        "many-headers",
        "big-header",
        "big-body",
        "two-lengths",
        "negative-length",
        "obs-fold",
        "space-in-name",
        "http2",
        "tls-hello",
        "double-space",
        "expect-other",
    ],
)
def test_refused_requests_are_4xx_and_close(
    server: Gunicorn, request_bytes: bytes, status: int
) -> None:
    with server.connect() as c:
        c.send(request_bytes)
        code, headers, _ = c.answer()
        assert (code, headers["connection"]) == (status, "close")
        assert c.closed()
    with server.connect() as c:  # and the worker serves the next client as before
        c.send(get("/after"))
        assert c.json()["path"] == "/after"


def test_idle_keep_alive_connection_is_closed(start: Callable[..., Gunicorn]) -> None:
    srv = start("--keep-alive", "1")
    with srv.connect(timeout=10) as c:
        c.send(get("/"))
        c.json()
        started = time.monotonic()
        assert c.closed()
        assert time.monotonic() - started < 8
    with srv.connect(timeout=20) as c:  # half a request, then silence: 408 after the read
        c.send(b"GET / HTTP/1.1\r\nHost")  # deadline, not the keep-alive timeout
        code, _, _ = c.answer()
        assert code == 408


def test_silent_new_connection_is_closed(start: Callable[..., Gunicorn]) -> None:
    """A client that connects and sends nothing holds its thread for the read deadline
    (10 s), not for the keep-alive timeout meant for a connection that was served."""
    server = start("--keep-alive", "60")
    with server.connect(timeout=30) as c:
        started = time.monotonic()
        assert c.closed()
        assert time.monotonic() - started < 20


def test_connections_past_the_cap_wait_and_idle_ones_make_room(server: Gunicorn) -> None:
    """4 threads: 4 requests in flight hold every slot; a fifth client waits in the backlog
    until one finishes. Idle keep-alive connections are closed for a waiting client."""
    busy = [server.connect() for _ in range(4)]
    for c in busy:
        c.send(get("/wait"))
    time.sleep(0.5)
    with server.connect(timeout=1.0) as late:
        late.send(get("/late"))
        with pytest.raises(TimeoutError):
            late.sock.recv(1, socket.MSG_PEEK)
        server.gate.touch()
        late.sock.settimeout(10)
        assert late.json()["path"] == "/late"
    for c in busy:
        assert c.json()["path"] == "/wait"
    # now the 4 kept-alive connections are idle: a new client still gets in
    with server.connect(timeout=10) as fresh:
        fresh.send(get("/fresh"))
        assert fresh.json()["path"] == "/fresh"
    for c in busy:
        c.sock.settimeout(0.5)
    assert sum(c.closed() for c in busy) >= 1
    for c in busy:
        c.__exit__()


def test_sigterm_finishes_requests_in_flight(start: Callable[..., Gunicorn]) -> None:
    server = start("--graceful-timeout", "20")
    with server.connect(timeout=20) as inflight, server.connect() as idle:
        idle.send(get("/"))
        idle.json()
        inflight.send(get("/wait"))
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        assert idle.closed()  # an idle connection is closed at once
        time.sleep(0.5)
        assert server.proc.poll() is None  # still finishing the request in flight
        server.gate.touch()
        code, headers, body = inflight.answer()
        assert (code, headers["connection"]) == (200, "close")
        assert json.loads(body)["path"] == "/wait"
        server.proc.wait(10)


def test_heartbeat_keeps_an_idle_worker_alive(start: Callable[..., Gunicorn]) -> None:
    server = start("--timeout", "2")
    with server.connect() as c:
        c.send(get("/"))
        pid = c.json()["pid"]
    time.sleep(4)  # twice the arbiter's timeout: a worker without heartbeat is killed
    with server.connect() as c:
        c.send(get("/"))
        assert c.json()["pid"] == pid
    assert "WORKER TIMEOUT" not in server.log.read_text()


def test_max_requests_restarts_the_worker(start: Callable[..., Gunicorn]) -> None:
    server = start("--max-requests", "3")
    pids = []
    for _ in range(6):
        with server.connect() as c:
            c.send(get("/"))
            pids.append(c.json()["pid"])
    assert len(set(pids)) >= 2
    assert "Autorestarting worker after current request." in server.log.read_text()


def test_errors_are_logged_without_the_request_body(server: Gunicorn) -> None:
    secret = b"outs=bc1qsecretaddress,123456789&vc_code=SECRETSIGNATURE"
    with server.connect() as c:
        c.send(post("/error?amount=987654321", secret))
        code, headers, _ = c.answer()
        assert (code, headers["connection"]) == (500, "close")
    text = server.log.read_text()
    assert "Error handling request POST /error" in text
    assert "RuntimeError: the app failed" in text
    for leaked in ("secretaddress", "SECRETSIGNATURE", "987654321"):
        assert leaked not in text


def test_worker_class_setting(tmp_path: Path) -> None:
    """`[custody] worker_class`: custody's worker by default, gunicorn's gthread on request,
    anything else refused before gunicorn starts."""

    def options(**custody: Any) -> dict[str, Any]:
        raw = {"custody": {"host": "127.0.0.1", "port": 1, **custody}}
        return gunicorn_options(Config(data_dir=tmp_path, path=tmp_path / "c.toml", raw=raw))

    assert options()["worker_class"] == WORKER
    assert options(worker_class="gthread")["worker_class"] == "gthread"
    with pytest.raises(ConfigError, match=r"worker_class must be one of \['custody', 'gthread'\]"):
        options(worker_class="sync")
