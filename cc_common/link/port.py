"""The byte layer: a pyserial port opened from a URL or device path, reopened after failures.

The line between the HSMs can disappear under us (a cable pulled, a USB adapter re-enumerated,
the emulation relay restarted). Nothing above this module sees a `serial` or `OSError`
exception: a failed read returns no bytes and a failed write drops its bytes (the framer
retransmits), while the port is reopened with exponential backoff.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Protocol

import serial
import serial.serialposix

from cc_common.link.errors import LinkPortError

log = logging.getLogger(__name__)


class ByteStream(Protocol):
    """What the framer needs from a byte link (a `SerialPort`, or a fake in tests)."""

    def read(self) -> bytes: ...

    def write(self, data: bytes) -> bool: ...

    def close(self) -> None: ...


Opener = Callable[[str, int, float], serial.SerialBase]
READ_MAX = 4096  # bytes taken per read (a frame longer than this arrives in several reads)
_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


def _open_pyserial(url: str, baudrate: int, timeout: float) -> serial.SerialBase:
    return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, write_timeout=5.0)


class SerialPort:
    """A pyserial port that survives the device going away.

    `read()` is called from one reader thread only; `write()` may be called from any thread.
    """

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 115200,
        read_timeout: float = 0.02,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        opener: Opener = _open_pyserial,
        must_open: bool = True,
    ) -> None:
        self.url = url
        self.baudrate = baudrate
        self.read_timeout = read_timeout
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._backoff = backoff_min
        self._opener = opener
        self._lock = threading.Lock()
        self._ser: serial.SerialBase | None = None
        self._next_attempt = 0.0
        self._closed = False
        self.reopens = 0
        if must_open:
            try:
                self._ser = opener(url, baudrate, read_timeout)
            except (serial.SerialException, OSError, ValueError) as exc:
                raise LinkPortError(f"link: cannot open serial port {url!r}: {exc}") from exc

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def read(self) -> bytes:
        """Bytes that arrived within the read timeout (possibly none); never raises."""
        ser = self._ser
        if ser is None:
            self._try_reopen()
            return b""
        if type(ser) is serial.serialposix.Serial and ser.fd is not None:
            return self._read_fd(ser, ser.fd)
        try:
            data = ser.read(1)
            if data:
                waiting = ser.in_waiting  # type: ignore[attr-defined]  # every port type has it; SerialBase stub does not
                if waiting:
                    data += ser.read(waiting)
            return bytes(data)
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            # TypeError/AttributeError: pyserial's socket/posix ports after a concurrent close.
            self._fail(ser, f"read failed: {exc}")
            return b""

    def _read_fd(self, ser: serial.SerialBase, fd: int) -> bytes:
        """`read` of a device port (a tty, our pty): one `select` and one `os.read` of what
        waits, where pyserial's `read(1)`, `in_waiting` and `read(n)` take two of each plus an
        ioctl per arrival. Its failures are pyserial's: an error other than a retry, or a port
        that is readable but gives no bytes (the device went away), fails the port."""
        try:
            ready, _, _ = select.select((fd,), (), (), self.read_timeout)
            if not ready:
                return b""
            data = os.read(fd, READ_MAX)
        except OSError as exc:
            if exc.errno in _RETRY:
                return b""
            self._fail(ser, f"read failed: {exc}")
            return b""
        except (TypeError, ValueError) as exc:  # the port closed under us
            self._fail(ser, f"read failed: {exc}")
            return b""
        if not data:
            self._fail(ser, "read failed: readable but no data (device disconnected?)")
        return data

    def write(self, data: bytes) -> bool:
        """Write all of `data`; False (bytes dropped) if the port is down."""
        with self._lock:
            ser = self._ser
            if ser is None:
                return False
            try:
                ser.write(data)
                return True
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                self._fail_locked(ser, f"write failed: {exc}")
                return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ser, self._ser = self._ser, None
        if ser is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                ser.close()

    def _fail(self, ser: serial.SerialBase, reason: str) -> None:
        with self._lock:
            self._fail_locked(ser, reason)

    def _fail_locked(self, ser: serial.SerialBase, reason: str) -> None:
        if self._ser is not ser:
            return
        log.warning("link port %s: %s; reopening", self.url, reason)
        self._ser = None
        with contextlib.suppress(serial.SerialException, OSError):
            ser.close()
        self._backoff = self._backoff_min
        self._next_attempt = time.monotonic() + self._backoff

    def _try_reopen(self) -> None:
        now = time.monotonic()
        if self._closed:
            time.sleep(self.read_timeout)
            return
        if now < self._next_attempt:
            time.sleep(min(self.read_timeout, self._next_attempt - now))
            return
        try:
            ser = self._opener(self.url, self.baudrate, self.read_timeout)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._backoff = min(self._backoff * 2, self._backoff_max)
            self._next_attempt = now + self._backoff
            log.debug(
                "link port %s: reopen failed (%s); next try in %.2fs", self.url, exc, self._backoff
            )
            return
        with self._lock:
            if self._closed:
                ser.close()
                return
            self._ser = ser
            self.reopens += 1
        self._backoff = self._backoff_min
        log.info("link port %s: reopened", self.url)
