"""custody's gunicorn worker: a thread per keep-alive connection, HTTP/1.1 read here.

gthread hands every request from its poller thread to a pool thread and back; under load
those hand-offs (queue, futures, re-registering the socket) cost a third of a request's CPU.
Here a connection's thread reads its requests itself, so a request costs one wake-up. The
arbiter still runs it (`worker_class`), with its heartbeat, max_requests and signals.

Bounds (the host faces the internet behind a proxy, or not): request line, header count and
header line length from gunicorn's `limit_request_*` settings; a body of `Content-Length`
bytes up to `max_body` (chunked bodies: 411); an idle keep-alive connection closed after
`keepalive` seconds; at most `threads` connections per worker, more wait in the listen
backlog, and while some wait the idle ones are closed. Bad input is a 4xx and the connection
closed; nothing of a request but its method and path is ever logged.
"""

from __future__ import annotations

import io
import os
import queue
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
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_CRLF = b"\r\n"
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


class _Limits:
    __slots__ = ("line", "fields", "field_size", "body", "keepalive")

    def __init__(self, cfg: Any, max_body: int) -> None:
        # gunicorn's meaning: 0 is "no limit" for the line and field size; we cap them anyway
        self.line = cfg.limit_request_line or 8190
        self.fields = cfg.limit_request_fields or 100
        self.field_size = cfg.limit_request_field_size or 8190
        self.body = max_body
        self.keepalive = max(float(cfg.keepalive), 0.0)


class _Connection:
    """One client connection: its socket, bytes read ahead (pipelining), idle or busy."""

    __slots__ = ("sock", "addr", "buf", "idle")

    def __init__(self, sock: socket.socket, addr: Any) -> None:
        self.sock = sock
        self.addr = addr
        self.buf = b""
        self.idle = True


def _parse_head(
    head: bytes, limits: _Limits
) -> tuple[str, bytes, str, list[tuple[str, str]], dict[str, str]]:
    """Method, target, version, headers (as sent) and the WSGI `HTTP_*` keys of one request
    head (without the final CRLF CRLF); `Refused` for anything not strictly HTTP/1.x."""
    lines = head.split(_CRLF)
    line = lines[0]
    if len(line) > limits.line:
        raise Refused(414, "request line too long")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise Refused(400, "malformed request line")
    method, target, version = parts
    if not method or not _TOKEN.issuperset(method):
        raise Refused(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/") and len(version) == 8 and version[5:6].isdigit():
            raise Refused(505, "HTTP version not supported")
        raise Refused(400, "malformed request line")
    if not target or any(c <= 32 or c == 127 for c in target):
        raise Refused(400, "malformed request target")
    if len(lines) - 1 > limits.fields:
        raise Refused(431, "too many header fields")
    headers: list[tuple[str, str]] = []
    env: dict[str, str] = {}
    for raw in lines[1:]:
        if len(raw) > limits.field_size:
            raise Refused(431, "header field too large")
        name, colon, value = raw.partition(b":")
        if not colon or not name or not _TOKEN.issuperset(name):
            raise Refused(400, "malformed header field")  # also obs-fold and "Name :"
        value = value.strip(b" \t")
        if any((c < 32 and c != 9) or c == 127 for c in value):
            raise Refused(400, "control character in a header value")
        n, v = name.decode("ascii"), value.decode("latin-1")
        headers.append((n, v))
        key = "HTTP_" + n.upper().replace("-", "_")
        if key in env:
            if key in ("HTTP_CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING", "HTTP_HOST"):
                raise Refused(400, f"repeated {n} header")
            env[key] += "," + v
        else:
            env[key] = v
    return method.decode("ascii"), target, version.decode("ascii"), headers, env


class CustodyWorker(Worker):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn worker: `threads` threads, each serving one connection's requests in turn."""

    max_body = MAX_BODY

    def init_process(self) -> None:
        self.limits = _Limits(self.cfg, self.max_body)
        self.capacity = max(int(self.cfg.threads), 1)
        self.pending: queue.SimpleQueue[_Connection | None] = queue.SimpleQueue()
        self.conns: set[_Connection] = set()
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
        import selectors  # noqa: PLC0415

        sel = selectors.DefaultSelector()
        for listener in self.sockets:
            sel.register(listener, selectors.EVENT_READ)
        tick = min(1.0, max(self.timeout / 2.0, 0.1))
        while self.alive:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
            if not self.slots.acquire(timeout=tick):
                # full: the waiting clients sit in the backlog; make room by closing the
                # connections that are only waiting for a next request
                if sel.select(0):
                    self._close_idle(all_of_them=False)
                continue
            ready = sel.select(tick)
            if not ready:
                self.slots.release()
                continue
            accepted = False
            for key, _ in ready:
                try:
                    sock, addr = key.fileobj.accept()  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = _Connection(sock, addr)
                with self.lock:
                    self.conns.add(conn)
                self.pending.put(conn)
                accepted = True
                break
            if not accepted:
                self.slots.release()
        sel.close()
        self._shutdown()

    def _shutdown(self) -> None:
        """Stop taking connections, let requests in flight finish (each then closes its
        connection), close idle ones at once, and wait up to `graceful_timeout`."""
        for listener in self.sockets:
            try:
                listener.close()
            except OSError:
                pass
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
            idle = [c for c in self.conns if c.idle and not c.buf]
        for conn in idle if all_of_them else idle[:1]:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # its thread's recv returns: it closes
            except OSError:
                pass

    # -- a connection's thread --------------------------------------------------------------

    def _serve_loop(self) -> None:
        while True:
            conn = self.pending.get()
            if conn is None:
                return
            try:
                self._serve(conn)
            except Exception:  # noqa: BLE001  (one connection's fault never ends the thread)
                self.log.exception("connection from %s failed", conn.addr)
            finally:
                with self.lock:
                    self.conns.discard(conn)
                try:
                    conn.sock.close()
                except OSError:
                    pass
                self.slots.release()

    def _serve(self, conn: _Connection) -> None:
        sock = conn.sock
        sock.settimeout(self.limits.keepalive or None)
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
        limit = self.limits.line + self.limits.fields * (self.limits.field_size + 2) + 4
        buf = conn.buf
        start = 0
        while True:
            end = buf.find(_HEAD_END, start)
            if end >= 0:
                conn.buf = buf[end + 4 :]
                return buf[:end]
            if not buf and not self.alive:
                raise _Closed
            if len(buf) > limit:
                if _CRLF not in buf[: self.limits.line + 2]:
                    raise Refused(414, "request line too long")
                raise Refused(431, "request header too large")
            start = max(len(buf) - 3, 0)
            try:
                chunk = conn.sock.recv(RECV)
            except TimeoutError:
                if buf:
                    raise Refused(408, "request head not complete in time") from None
                raise _Closed from None
            if not chunk:
                raise _Closed
            if not buf:
                conn.idle = False
                while chunk[:2] == _CRLF:  # a stray CRLF between requests is allowed
                    chunk = chunk[2:]
            buf += chunk
            conn.buf = buf

    def _read_body(self, conn: _Connection, length: int, expect: bool) -> bytes:
        buf = conn.buf
        if len(buf) < length and expect:
            conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if len(buf) >= length:
            conn.buf = buf[length:]
            return buf[:length]
        parts = [buf]
        got = len(buf)
        while got < length:
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
        head = self._read_head(conn)
        conn.idle = False
        method, target, version, _, hdrs = _parse_head(head, self.limits)
        te = hdrs.pop("HTTP_TRANSFER_ENCODING", None)
        if te is not None:
            raise Refused(411, "chunked request bodies are not accepted; send Content-Length")
        cl = hdrs.pop("HTTP_CONTENT_LENGTH", None)
        length = 0
        if cl is not None:
            if not cl.isdigit() or not cl.isascii() or len(cl) > 18:
                raise Refused(400, "malformed Content-Length")
            length = int(cl)
            if length > self.limits.body:
                raise Refused(413, f"request body over {self.limits.body} bytes")
        connection = hdrs.get("HTTP_CONNECTION", "").lower()
        if version == "HTTP/1.1":
            keep = "close" not in connection
        else:
            keep = "keep-alive" in connection
        expect = hdrs.get("HTTP_EXPECT", "").lower()
        if expect and expect != "100-continue":
            raise Refused(417, "unsupported Expect")
        body = self._read_body(conn, length, bool(expect) and version == "HTTP/1.1") if length else b""
        environ = self._environ(conn, method, target, version, hdrs, body, cl)
        keep = keep and self.alive
        with self.nr_lock:
            self.nr += 1
            if self.nr >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
        keep = self._respond(conn, environ, method, version, keep)
        conn.idle = True
        return keep and self.alive

    def _environ(
        self,
        conn: _Connection,
        method: str,
        target: bytes,
        version: str,
        hdrs: dict[str, str],
        body: bytes,
        cl: str | None,
    ) -> dict[str, Any]:
        path, _, query = target.partition(b"?")
        if path[:1] != b"/":
            if path == b"*" and method == "OPTIONS":
                pass
            elif path.startswith((b"http://", b"https://")):  # absolute form (RFC 9112 3.2.2)
                path = b"/" + path.split(b"/", 3)[3] if path.count(b"/") >= 3 else b"/"
            else:
                raise Refused(400, "malformed request target")
        path, _, _ = path.partition(b"#")
        environ: dict[str, Any] = hdrs  # the HTTP_* keys, reused
        ctype = environ.pop("HTTP_CONTENT_TYPE", None)
        if ctype is not None:
            environ["CONTENT_TYPE"] = ctype
        if cl is not None:
            environ["CONTENT_LENGTH"] = cl
        host, port = self._server
        addr = conn.addr
        environ.update(
            {
                "REQUEST_METHOD": method,
                "SCRIPT_NAME": "",
                "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
                "QUERY_STRING": query.decode("latin-1"),
                "RAW_URI": target.decode("latin-1"),
                "REQUEST_URI": target.decode("latin-1"),
                "SERVER_PROTOCOL": version,
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
        return environ

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
        out = [f"{version if version == 'HTTP/1.0' else 'HTTP/1.1'} {status}\r\n"]
        for name, value in headers:
            low = name.lower()
            if low in ("content-length", "connection", "transfer-encoding", "keep-alive"):
                continue
            out.append(f"{name}: {value}\r\n")
        out.append(_date())
        out.append(f"Content-Length: {len(body)}\r\n")
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
        try:
            sock.sendall(head.encode("ascii") + body)
        except OSError:
            pass

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
