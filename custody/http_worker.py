"""custody's gunicorn worker: a thread per keep-alive connection, HTTP/1.1 read here.

gthread hands every request from its poller thread to a pool thread and back; under load
those hand-offs (queue, futures, re-registering the socket) cost a third of a request's CPU.
Here a connection's thread reads its requests itself, so a request costs one wake-up. The
arbiter still runs it (`worker_class`), with its heartbeat, max_requests and signals.

Bounds (the host faces the internet behind a proxy, or not): request line, header count and
header line length from gunicorn's `limit_request_*` settings; a body of `Content-Length`
bytes up to `max_body` (chunked bodies: 411); an idle keep-alive connection closed after
`keepalive` seconds, a new one that sends nothing in `READ_TIMEOUT`, a request not whole
`READ_TIMEOUT` after its first byte (408); at most `threads` connections per worker, more
wait in the listen backlog, and while some wait the oldest idle keep-alive connection is
closed, one every `FULL_WAIT`. Bad input is a 4xx and the connection closed; nothing of a
request but its method and path is ever logged.

Not served, as the API needs none of it: chunked request bodies, streamed responses (an
answer is joined and sent with its length), gunicorn's access log and request hooks, and a
proxy's `X-Forwarded-Proto` (`wsgi.url_scheme` is "http": the API builds no absolute URL).
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

from gunicorn.workers.base import Worker

MAX_BODY = 1024 * 1024  # the API's forms are a few KB; batches and PSBTs well under this
RECV = 65_536
READ_TIMEOUT = 10.0  # from a request's first byte to its last: a slow sender holds no thread long
FULL_WAIT = 0.05  # how often a full worker looks for clients waiting in the backlog
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a token (RFC 9110 5.6.2): methods, names
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")  # no space, no control character
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # no control character but tab
# the WSGI key of the headers most requests carry, without building it each time
_ENV_KEYS = {
    n.encode(): "HTTP_" + n.upper().replace("-", "_")
    for n in (
        "Host",
        "host",
        "Content-Type",
        "content-type",
        "Content-Length",
        "content-length",
        "Connection",
        "connection",
        "User-Agent",
        "user-agent",
        "Accept",
        "accept",
        "Accept-Encoding",
        "accept-encoding",
        "token",
        "Token",
        "X-CC-Deadline",
    )
}
_CRLF = b"\r\n"
# set by this worker, never taken from the app
# headers a request may carry once (a second, different one hides a request)
_SINGLE = frozenset(("HTTP_CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING", "HTTP_HOST"))
_HOP_BY_HOP = frozenset(("content-length", "connection", "transfer-encoding", "keep-alive"))
_HEAD_END = b"\r\n\r\n"


class Refused(Exception):
    """A request this worker does not read: answered with `status`, then the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Closed(Exception):
    """The peer went away (or the worker closed an idle connection)."""


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class Limits:
    """What one request may hold; gunicorn's `limit_request_*` settings (0, gunicorn's "no
    limit", is taken as its default: this reader has no unbounded mode)."""

    __slots__ = ("line", "fields", "field_size", "body", "keepalive")

    def __init__(
        self,
        line: int = 4094,
        fields: int = 100,
        field_size: int = 8190,
        body: int = MAX_BODY,
        keepalive: float = 30.0,
    ) -> None:
        self.line = line or 4094
        self.fields = fields or 100
        self.field_size = field_size or 8190
        self.body = body
        self.keepalive = max(keepalive, 0.0)

    @classmethod
    def from_cfg(cls, cfg: Any, body: int) -> Limits:
        return cls(
            cfg.limit_request_line,
            cfg.limit_request_fields,
            cfg.limit_request_field_size,
            body,
            float(cfg.keepalive),
        )


class _Connection:
    """One client connection: its socket, bytes read ahead (pipelining), idle or busy."""

    __slots__ = ("sock", "addr", "buf", "idle", "served")

    def __init__(self, sock: socket.socket, addr: Any) -> None:
        self.sock = sock
        self.addr = addr
        self.buf = b""
        self.idle = True
        self.served = 0


class Head:
    """One request head as read: the WSGI keys it gives (`env`), the body's length, whether
    the client keeps the connection and wants `100 Continue`."""

    __slots__ = ("method", "version", "env", "length", "keep", "expect")

    def __init__(
        self, method: str, version: str, env: dict[str, Any], length: int, keep: bool, expect: bool
    ) -> None:
        self.method = method
        self.version = version
        self.env = env
        self.length = length
        self.keep = keep
        self.expect = expect


def read_head(head: bytes, limits: Limits) -> Head:
    """Read one request head (without its final CRLF CRLF); `Refused` for anything that is
    not strictly HTTP/1.x within `limits`."""
    lines = head.split(_CRLF)
    line = lines[0]
    if len(line) > limits.line:
        raise Refused(414, "request line too long")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise Refused(400, "malformed request line")
    raw_method, target, raw_version = parts
    if _METHOD.fullmatch(raw_method) is None:
        raise Refused(400, "malformed method")
    if raw_version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if raw_version[:5] == b"HTTP/" and len(raw_version) == 8 and raw_version[5:6].isdigit():
            raise Refused(505, "HTTP version not supported")
        raise Refused(400, "malformed request line")
    if _TARGET.fullmatch(target) is None:
        raise Refused(400, "malformed request target")
    if len(lines) - 1 > limits.fields:
        raise Refused(431, "too many header fields")
    method, version = raw_method.decode("ascii"), raw_version.decode("ascii")
    env: dict[str, Any] = {}
    for raw in lines[1:]:
        if len(raw) > limits.field_size:
            raise Refused(431, "header field too large")
        name, colon, value = raw.partition(b":")
        if not colon or _METHOD.fullmatch(name) is None:  # also obs-fold and "Name :"
            raise Refused(400, "malformed header field")
        value = value.strip(b" \t")
        if _VALUE.fullmatch(value) is None:
            raise Refused(400, "control character in a header value")
        key = _ENV_KEYS.get(name) or "HTTP_" + name.decode("ascii").upper().replace("-", "_")
        v = value.decode("latin-1")
        if key in env:
            if key in _SINGLE:
                raise Refused(400, f"repeated {name.decode('ascii')} header")
            env[key] += "," + v
        else:
            env[key] = v
    if "HTTP_TRANSFER_ENCODING" in env:
        raise Refused(411, "chunked request bodies are not accepted; send Content-Length")
    length = 0
    cl = env.pop("HTTP_CONTENT_LENGTH", None)
    if cl is not None:
        if not cl.isascii() or not cl.isdigit() or len(cl) > 18:
            raise Refused(400, "malformed Content-Length")
        length = int(cl)
        if length > limits.body:
            raise Refused(413, f"request body over {limits.body} bytes")
        env["CONTENT_LENGTH"] = cl
    ctype = env.pop("HTTP_CONTENT_TYPE", None)
    if ctype is not None:
        env["CONTENT_TYPE"] = ctype
    connection = env.get("HTTP_CONNECTION", "").lower()
    keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    expect = env.get("HTTP_EXPECT", "").lower()
    if expect and expect != "100-continue":
        raise Refused(417, "unsupported Expect")
    path, _, query = target.partition(b"?")
    if path[:1] != b"/":
        if path.startswith((b"http://", b"https://")):  # absolute form (RFC 9112 3.2.2)
            path = b"/" + path.split(b"/", 3)[3] if path.count(b"/") >= 3 else b"/"
        elif not (path == b"*" and method == "OPTIONS"):
            raise Refused(400, "malformed request target")
    path = path.partition(b"#")[0]
    uri = target.decode("latin-1")
    env["REQUEST_METHOD"] = method
    env["SCRIPT_NAME"] = ""
    env["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
    env["QUERY_STRING"] = query.partition(b"#")[0].decode("latin-1")
    env["RAW_URI"] = uri
    env["REQUEST_URI"] = uri
    env["SERVER_PROTOCOL"] = version
    return Head(method, version, env, length, keep, bool(expect) and version == "HTTP/1.1")


class CustodyWorker(Worker):
    """gunicorn worker: `threads` threads, each serving one connection's requests in turn."""

    max_body = MAX_BODY
    alive: bool  # set by gunicorn's Worker, cleared by its SIGTERM handler

    def init_process(self) -> None:
        self.limits = Limits.from_cfg(self.cfg, self.max_body)
        self.capacity = max(int(self.cfg.threads), 1)
        self.pending: queue.SimpleQueue[_Connection | None] = queue.SimpleQueue()
        self.conns: dict[_Connection, None] = {}  # oldest first
        self.lock = threading.Lock()
        self.slots = threading.Semaphore(self.capacity)
        self.nr_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        super().init_process()

    # -- the arbiter's side: accept, heartbeat, shutdown ---------------------------------

    def run(self) -> None:
        for listener in self.sockets:
            listener.setblocking(False)
        for k in range(self.capacity):
            t = threading.Thread(target=self._serve_loop, name=f"http-{k}", daemon=True)
            t.start()
            self.threads.append(t)
        sel = selectors.DefaultSelector()
        for listener in self.sockets:
            sel.register(listener, selectors.EVENT_READ)
        tick = min(1.0, max(self.timeout / 2.0, 0.1))
        while self.alive:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
            if not self.slots.acquire(timeout=FULL_WAIT):
                # full: new clients wait in the listen backlog; make room for them by closing
                # a connection that only waits for its next request
                if sel.select(0):
                    self._close_idle(all_of_them=False)
                continue
            ready = sel.select(tick)
            conn = None
            for key, _ in ready:
                try:
                    sock, addr = key.fileobj.accept()  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = _Connection(sock, addr)
                break
            if conn is None:
                self.slots.release()
                continue
            with self.lock:
                self.conns[conn] = None
            self.pending.put(conn)
        sel.close()
        self._shutdown()

    def _shutdown(self) -> None:
        """Stop taking connections, let requests in flight finish (each then closes its
        connection), close idle ones at once, and wait up to `graceful_timeout`."""
        for listener in self.sockets:
            with contextlib.suppress(OSError):
                listener.close()
        self._close_idle(all_of_them=True)
        for _ in self.threads:
            self.pending.put(None)
        end = time.monotonic() + float(self.cfg.graceful_timeout)
        for t in self.threads:
            while t.is_alive() and time.monotonic() < end:
                self.notify()
                t.join(0.2)
                self._close_idle(all_of_them=True)

    def _close_idle(self, *, all_of_them: bool) -> None:
        with self.lock:
            idle = [c for c in self.conns if c.idle and c.served and not c.buf]
        for conn in idle if all_of_them else idle[:1]:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)  # its thread's recv returns: it closes

    # -- a connection's thread --------------------------------------------------------------

    def _serve_loop(self) -> None:
        while True:
            conn = self.pending.get()
            if conn is None:
                return
            try:
                self._serve(conn)
            except Exception:  # one connection's fault never ends the thread
                self.log.exception("connection from %s failed", conn.addr)
            finally:
                with self.lock:
                    self.conns.pop(conn, None)
                with contextlib.suppress(OSError):
                    conn.sock.close()
                self.slots.release()

    def _serve(self, conn: _Connection) -> None:
        sock = conn.sock
        while True:
            try:
                keep = self._one(conn)
            except Refused as e:
                self._refuse(sock, e)
                return
            except (_Closed, OSError):
                return
            if not keep:
                return

    def _read_head(self, conn: _Connection) -> bytes:
        """Bytes up to the blank line ending a request head (the rest stays in `buf`)."""
        limits = self.limits
        limit = limits.line + limits.fields * (limits.field_size + 2) + 4
        buf: bytes | bytearray = conn.buf
        start = 0
        deadline = 0.0
        line_ended = False
        while True:
            end = buf.find(_HEAD_END, start)
            if end >= 0:
                conn.buf = bytes(buf[end + 4 :])
                return bytes(buf[:end])
            if not buf and not self.alive and conn.served:
                raise _Closed  # shutting down: an accepted client still gets one answer
            if not line_ended:
                line_ended = _CRLF in buf[: limits.line + 2]
                if not line_ended and len(buf) > limits.line + 2:
                    raise Refused(414, "request line too long")  # before the rest arrives
            if len(buf) > limit:
                raise Refused(431, "request header too large")
            start = max(len(buf) - 3, 0)
            if buf:
                deadline = deadline or time.monotonic() + READ_TIMEOUT
                conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = conn.sock.recv(RECV)
            except TimeoutError:
                if buf:
                    raise Refused(408, "request head not complete in time") from None
                raise _Closed from None
            if not chunk:
                raise _Closed
            if buf:
                if isinstance(buf, bytes):  # a head in several segments: append in place,
                    buf = bytearray(buf)  # not a copy of all so far per segment
                buf += chunk
            else:
                conn.idle = False
                buf = chunk.lstrip(_CRLF)  # a stray CRLF between requests is allowed

    def _read_body(self, conn: _Connection, length: int, expect: bool) -> bytes:
        buf = conn.buf
        if len(buf) < length and expect:
            conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if len(buf) >= length:
            conn.buf = buf[length:]
            return buf[:length]
        parts = [buf]
        got = len(buf)
        deadline = time.monotonic() + READ_TIMEOUT
        while got < length:
            conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = conn.sock.recv(min(RECV, length - got))
            except TimeoutError:
                raise Refused(408, "request body not complete in time") from None
            if not chunk:
                raise _Closed
            parts.append(chunk)
            got += len(chunk)
        conn.buf = b""
        return b"".join(parts)

    def _one(self, conn: _Connection) -> bool:
        """Read and answer one request; whether the connection stays open."""
        if conn.buf:
            conn.idle = False
        # a new connection sends its first request soon; a kept-alive one may idle longer
        conn.sock.settimeout((self.limits.keepalive if conn.served else 0) or READ_TIMEOUT)
        raw = self._read_head(conn)
        conn.idle = False
        head = read_head(raw, self.limits)
        body = self._read_body(conn, head.length, head.expect) if head.length else b""
        environ = head.env
        host, port = self._server
        addr = conn.addr
        environ.update(
            {
                "SERVER_NAME": host,
                "SERVER_PORT": port,
                "REMOTE_ADDR": addr[0] if isinstance(addr, tuple) else "",
                "REMOTE_PORT": str(addr[1]) if isinstance(addr, tuple) else "",
                "wsgi.version": (1, 0),
                "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(body),
                "wsgi.errors": sys.stderr,
                "wsgi.multithread": True,
                "wsgi.multiprocess": self.cfg.workers > 1,
                "wsgi.run_once": False,
                "wsgi.input_terminated": True,
            }
        )
        keep = head.keep and self.alive and self.limits.keepalive > 0
        with self.nr_lock:
            self.nr += 1
            if self.nr >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
        keep = self._respond(conn, environ, head.method, head.version, keep)
        conn.served += 1
        conn.idle = True
        return keep and self.alive

    @property
    def _server(self) -> tuple[str, str]:
        server = getattr(self, "_server_cache", None)
        if server is None:
            name = self.sockets[0].getsockname() if self.sockets else ("", 0)
            server = (str(name[0]), str(name[1])) if isinstance(name, tuple) else (str(name), "")
            self._server_cache = server
        return server

    def _respond(
        self, conn: _Connection, environ: dict[str, Any], method: str, version: str, keep: bool
    ) -> bool:
        state: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            if exc_info is not None and state:
                raise exc_info[1].with_traceback(exc_info[2])
            state[:] = [status, headers]
            return _no_write

        try:
            result: Iterable[bytes] = self.wsgi(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            # the method and path only: a form or query may carry amounts and addresses
            self.log.exception("Error handling request %s %s", method, environ["PATH_INFO"])
            self._send_simple(conn.sock, 500, "internal error", keep=False)
            return False
        if not state:
            self._send_simple(conn.sock, 500, "internal error", keep=False)
            return False
        status, headers = state
        keep = keep and self.alive  # a SIGTERM during the request: this is its last answer
        out = [f"{version if version == 'HTTP/1.0' else 'HTTP/1.1'} {status}\r\n"]
        length = str(len(body))
        for name, value in headers:
            low = name.lower()
            if low in _HOP_BY_HOP:
                if low == "content-length" and method == "HEAD":
                    length = value  # what a GET would have sent
                continue
            out.append(f"{name}: {value}\r\n")
        out.append(_date())
        if status[:3] not in ("204", "304") and status[:1] != "1":
            out.append(f"Content-Length: {length}\r\n")
        else:
            body = b""
        out.append("Connection: keep-alive\r\n\r\n" if keep else "Connection: close\r\n\r\n")
        data = "".join(out).encode("latin-1")
        if method != "HEAD":
            data += body
        conn.sock.sendall(data)
        return keep

    def _send_simple(self, sock: socket.socket, status: int, message: str, *, keep: bool) -> None:
        body = (message + "\n").encode("ascii", "replace")
        head = (
            f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep else 'close'}"
            "\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            sock.sendall(head.encode("ascii") + body)

    def _refuse(self, sock: socket.socket, e: Refused) -> None:
        self.log.debug("refused a request: %d %s", e.status, e.message)
        self._send_simple(sock, e.status, e.message, keep=False)


_DATE: list[Any] = [0, ""]


def _date() -> str:
    """The `Date` header line, made once a second."""
    now = int(time.time())
    if _DATE[0] != now:
        _DATE[:] = [now, f"Date: {formatdate(now, usegmt=True)}\r\n"]
    return str(_DATE[1])


def _no_write(data: bytes) -> None:
    raise RuntimeError("the write() callable of start_response is not supported")
