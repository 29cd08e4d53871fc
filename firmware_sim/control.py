"""The control channel of the simulated hardware: a Unix socket speaking JSON lines.

Test-only controls (faults, carrier settings, inboxes, injected SMS) live here, apart from
every data path: the serial ports and modems carry only what real hardware would.

Wire format, one JSON object per line each way:
    -> {"op": "fault", "args": {"kind": "flip", "direction": "hot-to-cold", "count": 3}}
    <- {"ok": true, "result": {...}}   or   {"ok": false, "error": {"code": 462, "message": ...}}
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firmware_sim.errors import (
    BadRequest,
    ControlError,
    ControlUnavailable,
    FirmwareSimError,
    StartupError,
    error_for_code,
)

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20
UNIX_PATH_MAX = 107


class Op(enum.Enum):
    """Requests the control channel understands."""

    PING = "ping"
    STATUS = "status"
    FAULT = "fault"
    CLEAR_FAULTS = "clear_faults"
    SET_BAUD = "set_baud"
    CARRIER = "carrier"
    SET_CARRIER = "set_carrier"
    INBOX = "inbox"
    INJECT_SMS = "inject_sms"
    SMS_LOG = "sms_log"


Dispatcher = Callable[[Op, dict[str, Any]], Any]


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(MAX_LINE)
            if not line:
                return
            reply = self.server.answer(line)
            self.wfile.write(json.dumps(reply).encode() + b"\n")
            self.wfile.flush()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    dispatcher: Dispatcher

    def answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise BadRequest("a request is a JSON object")
            try:
                op = Op(request.get("op"))
            except ValueError:
                raise BadRequest(f"unknown op {request.get('op')!r}") from None
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise BadRequest("args must be an object")
            return {"ok": True, "result": self.dispatcher(op, args)}
        except json.JSONDecodeError:
            err: FirmwareSimError = BadRequest("request is not valid JSON")
        except FirmwareSimError as exc:
            err = exc
        except (TypeError, ValueError, KeyError) as exc:
            err = BadRequest(f"bad arguments: {exc}")
        return {"ok": False, "error": {"code": err.code, "message": err.message}}


class ControlServer:
    """Serves `dispatcher` on a Unix socket at `path` (mode 0600)."""

    def __init__(self, path: Path, dispatcher: Dispatcher) -> None:
        self.path = path
        self._dispatcher = dispatcher
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def check_free(self) -> None:
        """Refuse early if another instance answers here; remove a stale socket file."""
        if len(os.fsencode(self.path)) > UNIX_PATH_MAX:
            raise StartupError(f"control socket path too long for a Unix socket: {self.path}")
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise StartupError(f"another firmware-sim answers on {self.path}; stop it first")
            self.path.unlink()

    def start(self) -> None:
        self.check_free()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old_umask = os.umask(0o177)
        try:
            server = _Server(str(self.path), _Handler)
        except OSError as exc:
            raise StartupError(f"cannot bind control socket {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        server.dispatcher = self._dispatcher
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="control", daemon=True)
        self._thread.start()
        log.info("control socket at %s", self.path)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class ControlClient:
    """Talks to a running `firmware-sim serve` through its control socket."""

    def __init__(self, path: Path | str, *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, op: Op | str, **args: Any) -> Any:
        """Send one request and return its result, or raise the error the server raised."""
        name = op.value if isinstance(op, Op) else op
        request = json.dumps({"op": name, "args": args}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(str(self.path))
                s.sendall(request)
                with s.makefile("rb") as reader:
                    line = reader.readline(MAX_LINE)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlUnavailable(
                f"firmware-sim is not running (nothing answers on {self.path})"
            ) from None
        except OSError as exc:
            raise ControlError(f"control socket {self.path}: {exc}") from None
        if not line:
            raise ControlError(f"control socket {self.path} closed without an answer")
        reply = json.loads(line)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise error_for_code(
                int(err.get("code", FirmwareSimError.code)), str(err.get("message", "failed"))
            )
        return reply.get("result")

    # ----- general --------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return self.call(Op.PING)

    def status(self) -> dict[str, Any]:
        return self.call(Op.STATUS)

    # ----- serial line ----------------------------------------------------------------------

    def fault(
        self,
        kind: str,
        direction: str = "both",
        *,
        count: int = 0,
        window: int = 0,
        seconds: float = 0.0,
    ) -> dict[str, Any]:
        return self.call(
            Op.FAULT, kind=kind, direction=direction, count=count, window=window, seconds=seconds
        )

    def flip_bits(self, count: int, direction: str = "both", *, window: int = 0) -> dict[str, Any]:
        """Flip a bit in each of the next `count` bytes, or `count` bits within `window` bytes."""
        return self.fault("flip", direction, count=count, window=window)

    def drop_bytes(self, count: int, direction: str = "both") -> dict[str, Any]:
        return self.fault("drop", direction, count=count)

    def insert_garbage(self, count: int, direction: str = "both") -> dict[str, Any]:
        return self.fault("garbage", direction, count=count)

    def cut(self, seconds: float, direction: str = "both") -> dict[str, Any]:
        return self.fault("cut", direction, seconds=seconds)

    def clear_faults(self, direction: str = "both") -> dict[str, Any]:
        return self.call(Op.CLEAR_FAULTS, direction=direction)

    def set_baud(self, baud: int) -> dict[str, Any]:
        return self.call(Op.SET_BAUD, baud=baud)

    # ----- carrier --------------------------------------------------------------------------

    def carrier(self) -> dict[str, dict[str, Any]]:
        """Settings of every network: delay_ms, loss, duplicate, state."""
        return self.call(Op.CARRIER)

    def set_carrier(
        self,
        network: str | None = None,
        *,
        delay_ms: int | None = None,
        loss: float | None = None,
        duplicate: float | None = None,
        state: str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Change one network's settings (all networks when `network` is None)."""
        return self.call(
            Op.SET_CARRIER,
            network=network,
            delay_ms=delay_ms,
            loss=loss,
            duplicate=duplicate,
            state=state,
        )

    def inbox(self, number: str, *, clear: bool = False) -> list[dict[str, Any]]:
        """Messages received by a plain phone (or a gateway number)."""
        return self.call(Op.INBOX, number=number, clear=clear)

    def wait_inbox(self, number: str, count: int = 1, *, timeout: float = 10.0) -> list[dict]:
        """Poll the inbox of `number` until it holds `count` messages or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.inbox(number)
            if len(messages) >= count or time.monotonic() >= deadline:
                return messages
            time.sleep(0.02)

    def inject_sms(self, to: str, text: str, sender: str) -> str:
        """Have the carrier deliver `text` to `to` as if sent by `sender` (may be spoofed)."""
        return self.call(Op.INJECT_SMS, to=to, text=text, sender=sender)["id"]

    def sms_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self.call(Op.SMS_LOG, limit=limit)
