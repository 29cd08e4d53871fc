"""A GSM modem driven by AT commands (3GPP TS 27.005 text mode) over a pyserial port.

Three layers, and nothing above this module sees AT text:
- bytes: the serial port, opened from a URL or device path (`serial.serial_for_url`);
- lines: `_LineReader`, a thread whose `LineCutter` cuts the byte stream into lines and
  separates unsolicited result codes (`+CMTI`, ...) from command responses and the `> ` prompt;
- commands: `GsmModem`, SMS operations (`send`, `receive`, `wait_for_messages`, ...) with
  `+CMS ERROR` codes translated into typed exceptions at one place.

Behaviour worth knowing: a `+CMTI` emitted while the port is closed is lost, so every
(re)open is followed by a listing; the first listing after a (re)open also picks up messages
left read but undeleted by a crash (at-least-once delivery; the channel protocol makes
duplicates harmless). A broken port or a modem that stops answering is reopened later,
with exponential backoff. Message bodies are logged only at TRACE level.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import PurePath
from types import TracebackType

import serial

from cc_common.logs import TRACE
from cc_common.sms.errors import (
    InvalidNumber,
    InvalidText,
    ModemCommandError,
    ModemError,
    ModemTimeout,
    ModemUnavailable,
    NoNetworkService,
    SmsError,
    SmsSendError,
)

log = logging.getLogger(__name__)

CTRL_Z = b"\x1a"
ESC = b"\x1b"
DEFAULT_TIMEOUT = 5.0
DEFAULT_SEND_TIMEOUT = 60.0
DEFAULT_POLL_INTERVAL = 2.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
READ_SLICE = 0.1  # how long the reader thread blocks in one read, so it notices `close`

# ASCII digits, at most 9: a code `int` always reads (`\d` would also match other scripts').
_FINAL = re.compile(
    r"^(OK|ERROR|NO CARRIER|\+CMS ERROR: ?([0-9]{1,9})|\+CME ERROR: ?([0-9]{1,9}))$"
)
_URC_PREFIXES = ("+CMTI:", "+CDSI:", "RING", "+CRING:")
_BODY_HEADERS = ("+CMGL:", "+CMGR:")  # in text mode the next line is the message text
_NUMBER = re.compile(r"^\+?[0-9]{3,20}$")
_SCTS = re.compile(r"^(\d\d)/(\d\d)/(\d\d),(\d\d):(\d\d):(\d\d)([+-]\d\d)$")

_UrcHandler = Callable[[str], None]
_CmsMapper = Callable[[int], SmsError]


class _Kind(enum.Enum):
    """What the line reader hands to the command layer."""

    LINE = "line"
    BODY = "body"  # the text line after a +CMGL/+CMGR header, taken verbatim
    PROMPT = "prompt"  # `> ` after AT+CMGS, which has no line end
    URC = "urc"  # an unsolicited result code, routed aside by the reader
    DOWN = "down"  # the port broke; the reader thread has ended


@dataclass(frozen=True)
class _Item:
    kind: _Kind
    text: str = ""


@dataclass(frozen=True)
class IncomingSms:
    """One received message, already deleted from the SIM."""

    index: int
    sender: str
    timestamp: datetime | None
    text: str


@dataclass(frozen=True)
class SignalQuality:
    """`AT+CSQ`: RSSI 0-31 and bit error rate 0-7; None where the modem reports 99."""

    rssi: int | None
    ber: int | None

    @property
    def dbm(self) -> int | None:
        return None if self.rssi is None else -113 + 2 * self.rssi


def _small_uint(text: str) -> int | None:
    """A short ASCII decimal (indexes, references, codes), else None: `str.isdigit` also accepts
    digits `int` refuses ("²"), and `int` refuses strings of thousands of digits."""
    return int(text) if 0 < len(text) <= 9 and text.isascii() and text.isdigit() else None


def split_args(text: str) -> list[str]:
    """Split `a,"b,c",d` on commas outside quotes, removing the quotes."""
    args: list[str] = []
    current: list[str] = []
    quoted = False
    for c in text:
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            args.append("".join(current).strip())
            current = []
        else:
            current.append(c)
    args.append("".join(current).strip())
    return args


def parse_scts(text: str) -> datetime | None:
    """Service centre time stamp `yy/MM/dd,hh:mm:ss±zz` (zz in quarter hours), or None."""
    m = _SCTS.match(text)
    if not m:
        return None
    yy, mo, dd, hh, mi, ss, zz = m.groups()
    try:
        tz = timezone(timedelta(minutes=15 * int(zz)))
        return datetime(2000 + int(yy), int(mo), int(dd), int(hh), int(mi), int(ss), tzinfo=tz)
    except ValueError:
        return None


def _send_error(cms: int) -> SmsSendError:
    """The one place `+CMS ERROR` codes of a send become exceptions."""
    if cms == 304:
        return InvalidNumber()
    if cms == 305:
        return InvalidText()
    if cms == 331:
        return NoNetworkService()
    return SmsSendError(cms)


def _command_error(cms: int) -> SmsError:
    return ModemCommandError(cms)


class LineCutter:
    """Cuts the modem's byte stream into items: lines, the body after a `+CMGL`/`+CMGR` header
    (taken verbatim), URCs and the `> ` prompt. Keeps the unfinished line between feeds."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._expect_body = False

    def feed(self, data: bytes) -> list[_Item]:
        items: list[_Item] = []
        self._buf += data
        while (end := self._buf.find(b"\r\n")) >= 0:
            raw = bytes(self._buf[:end])
            del self._buf[: end + 2]
            text = raw.decode("utf-8", errors="replace")
            if self._expect_body:
                self._expect_body = False
                items.append(_Item(_Kind.BODY, text))
                continue
            text = text.strip().lstrip("\x1b")  # echoed lines end with a bare CR
            if not text:
                continue
            if text.startswith(_URC_PREFIXES):
                items.append(_Item(_Kind.URC, text))
                continue
            self._expect_body = text.startswith(_BODY_HEADERS)
            items.append(_Item(_Kind.LINE, text))
        if not self._expect_body and bytes(self._buf).strip() == b">":
            self._buf.clear()
            items.append(_Item(_Kind.PROMPT))
        return items


class _LineReader:
    """The line layer: a thread reading the port, cutting lines, routing URCs aside."""

    def __init__(self, ser: serial.SerialBase, on_urc: _UrcHandler, label: str) -> None:
        self._ser = ser
        self._on_urc = on_urc
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._stop = threading.Event()
        self.alive = True
        self._thread = threading.Thread(target=self._run, name=f"modem-{label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cutter = LineCutter()
        try:
            while not self._stop.is_set():
                data = self._ser.read(self._ser.in_waiting or 1)  # type: ignore[attr-defined]  # every port type has it; SerialBase stub does not
                if not data:
                    continue
                for item in cutter.feed(data):
                    if item.kind is _Kind.URC:
                        self._on_urc(item.text)
                    else:
                        self._queue.put(item)
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            # TypeError/AttributeError: pyserial's read on a port closed under it.
            if not self._stop.is_set():
                log.warning("modem port read failed: %s", exc)
        finally:
            self.alive = False
            self._queue.put(_Item(_Kind.DOWN))

    def write(self, data: bytes) -> None:
        self._ser.write(data)
        self._ser.flush()

    def get(self, deadline: float) -> _Item | None:
        """The next item, or None at `deadline`."""
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                return self._queue.get_nowait()
            return self._queue.get(timeout=remaining)
        except queue.Empty:
            return None

    def drain(self) -> None:
        """Drop stale response lines (a late answer to a command that timed out)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item.kind is _Kind.DOWN:
                self._queue.put(item)
                return
            log.log(TRACE, "dropping stale modem output %r", item.text)

    def settle(self, quiet: float = 0.15, limit: float = 1.0) -> None:
        """Wait until nothing arrived for `quiet` seconds (at most `limit`), dropping it."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            item = self.get(min(end, time.monotonic() + quiet))
            if item is None:
                return
            if item.kind is _Kind.DOWN:
                self._queue.put(item)
                return

    def close(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2 * READ_SLICE + 1.0)
        with contextlib.suppress(serial.SerialException, OSError):
            self._ser.close()


class GsmModem:
    """One GSM modem (one SIM) behind a serial port; every method is thread-safe.

    `port_url` is what `Section.port_url` returns: a device path or a pyserial URL.
    `own_number` is the SIM's number from configuration, used when `AT+CNUM` has none.
    `timeout` bounds each command; `send_timeout` bounds the network part of a send.
    """

    def __init__(
        self,
        port_url: str,
        *,
        own_number: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        baudrate: int = 115200,
        name: str | None = None,
        lazy: bool = False,
    ) -> None:
        self.port_url = port_url
        self.name = name or PurePath(port_url).name or port_url
        self.timeout = timeout
        self.send_timeout = max(send_timeout, timeout)
        self.poll_interval = poll_interval
        self._baudrate = baudrate
        self._configured_number = own_number
        self._lock = threading.RLock()
        self._reader: _LineReader | None = None
        self._closed = False
        self._failures = 0
        self._retry_at = 0.0
        self._recover_read = True
        self._announced = threading.Event()
        if not lazy:
            with self._lock:
                self._ensure_open()

    # ----- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> GsmModem:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the port; the modem object cannot be used afterwards."""
        with self._lock:
            self._closed = True
            self._drop()
        self._announced.set()  # wake a waiter so it notices

    def __repr__(self) -> str:
        return f"GsmModem({self.name!r})"

    def _drop(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _fail(self, why: str) -> None:
        """Close the port after an error and schedule a reopen with backoff."""
        self._drop()
        delay = min(BACKOFF_MAX, BACKOFF_MIN * (2**self._failures))
        self._failures += 1
        self._retry_at = time.monotonic() + delay
        log.warning("modem %s: %s; reopening in %.1fs", self.name, why, delay)

    def _ensure_open(self) -> _LineReader:
        if self._closed:
            raise ModemUnavailable(f"modem {self.name} is closed")
        if self._reader is not None and self._reader.alive:
            return self._reader
        self._drop()
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise ModemUnavailable(f"modem {self.name} is down; next attempt in {wait:.1f}s")
        try:
            ser = serial.serial_for_url(
                self.port_url, baudrate=self._baudrate, timeout=READ_SLICE, write_timeout=5.0
            )
            ser.reset_input_buffer()
        except (serial.SerialException, OSError, ValueError) as exc:
            self._fail(f"cannot open {self.port_url}: {exc}")
            raise ModemUnavailable(f"modem {self.name}: cannot open its port: {exc}") from None
        self._reader = _LineReader(ser, self._urc, self.name)
        try:
            self._initialise(self._reader)
        except ModemError as exc:
            if self._reader is not None:  # not yet dropped by a timeout or a broken port
                self._fail(f"initialisation failed: {exc.message}")
            raise ModemUnavailable(f"modem {self.name}: initialisation failed") from None
        self._failures = 0
        self._recover_read = True
        self._announced.set()  # +CMTI sent while the port was closed are lost: list now
        log.info("modem %s ready on %s", self.name, self.port_url)
        return self._reader

    def _initialise(self, reader: _LineReader) -> None:
        # ESC leaves a text entry a crashed process may have left open; whatever it
        # answers is dropped before the first command.
        self._write(reader, ESC + b"\r")
        reader.settle()
        for cmd in ("AT", "ATE0", "AT+CMGF=1", 'AT+CSCS="GSM"', "AT+CNMI=2,1,0,0,0"):
            self._run(reader, cmd, self.timeout, _command_error)

    # ----- the command layer ----------------------------------------------------------------

    def _urc(self, line: str) -> None:
        """Called by the reader thread for each unsolicited result code."""
        log.debug("modem %s: %s", self.name, line)
        if line.startswith("+CMTI:"):
            self._announced.set()

    def _write(self, reader: _LineReader, data: bytes) -> None:
        try:
            reader.write(data)
        except (serial.SerialException, OSError) as exc:
            self._fail(f"write failed: {exc}")
            raise ModemUnavailable(f"modem {self.name}: write failed") from None

    def _next(self, reader: _LineReader, deadline: float, what: str) -> _Item:
        item = reader.get(deadline)
        if item is None:
            self._fail(f"no answer to {what}")
            raise ModemTimeout(f"modem {self.name} did not answer {what} in time")
        if item.kind is _Kind.DOWN:
            self._fail(f"port broke during {what}")
            raise ModemUnavailable(f"modem {self.name}: port broke during {what}")
        return item

    def _collect(
        self,
        reader: _LineReader,
        what: str,
        echo: str | None,
        deadline: float,
        on_cms: _CmsMapper,
    ) -> list[_Item]:
        """Information lines up to the final result code; errors raised as exceptions."""
        lines: list[_Item] = []
        while True:
            item = self._next(reader, deadline, what)
            if item.kind is _Kind.PROMPT:
                continue
            if item.kind is _Kind.LINE:
                if echo is not None and item.text == echo:
                    continue
                final = _FINAL.match(item.text)
                if final:
                    if final.group(1) == "OK":
                        return lines
                    if final.group(2) is not None:
                        raise on_cms(int(final.group(2)))
                    raise ModemError(f"modem {self.name} answered {item.text!r} to {what}")
            log.log(TRACE, "modem %s -> %r", self.name, item.text)
            lines.append(item)

    def _run(
        self, reader: _LineReader, cmd: str, timeout: float, on_cms: _CmsMapper
    ) -> list[_Item]:
        reader.drain()
        log.log(TRACE, "modem %s <- %r", self.name, cmd)
        self._write(reader, cmd.encode() + b"\r")
        return self._collect(reader, cmd, cmd, time.monotonic() + timeout, on_cms)

    def _command(self, cmd: str) -> list[_Item]:
        with self._lock:
            reader = self._ensure_open()
            return self._run(reader, cmd, self.timeout, _command_error)

    def _info(self, cmd: str, prefix: str) -> list[str]:
        """The arguments of the first `<prefix> ...` line of `cmd`'s answer."""
        for item in self._command(cmd):
            if item.kind is _Kind.LINE and item.text.startswith(prefix):
                return split_args(item.text[len(prefix) :])
        raise ModemError(f"modem {self.name}: no {prefix} line in the answer to {cmd}")

    # ----- SMS operations -------------------------------------------------------------------

    def send(self, number: str, text: str) -> int:
        """Send `text` to `number`; the message reference. Long texts go concatenated."""
        if not _NUMBER.match(number):
            raise InvalidNumber(f"not a phone number: {number!r}")
        if "\x1a" in text or "\x1b" in text:
            raise InvalidText("text holds a control character that ends text entry")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        cmd = f'AT+CMGS="{number}"'
        with self._lock:
            reader = self._ensure_open()
            reader.drain()
            log.log(TRACE, "modem %s <- %r", self.name, cmd)
            self._write(reader, cmd.encode() + b"\r")
            deadline = time.monotonic() + self.timeout
            while True:
                item = self._next(reader, deadline, "AT+CMGS")
                if item.kind is _Kind.PROMPT:
                    break
                if item.text == cmd:
                    continue
                final = _FINAL.match(item.text)
                if final and final.group(2) is not None:
                    raise _send_error(int(final.group(2)))
                if final:
                    raise ModemError(f"modem {self.name} answered {item.text!r} instead of > ")
            log.log(TRACE, "modem %s <- text %r", self.name, text)
            self._write(reader, text.encode("utf-8") + CTRL_Z)
            lines = self._collect(
                reader, "the text", None, time.monotonic() + self.send_timeout, _send_error
            )
        for item in lines:
            ref = parse_cmgs(item.text) if item.kind is _Kind.LINE else None
            if ref is not None:
                log.info("modem %s sent %d chars to %s", self.name, len(text), number)
                return ref
        raise ModemError(f"modem {self.name}: send answered OK without +CMGS")

    def receive(self) -> list[IncomingSms]:
        """Unread messages, oldest first, each deleted from the SIM once read."""
        with self._lock:
            recovering = self._recover_read
            status = "ALL" if recovering else "REC UNREAD"
            items = self._command(f'AT+CMGL="{status}"')
            found = parse_listing(items, self.name)
            for sms in found:
                try:
                    self._command(f"AT+CMGD={sms.index}")
                except ModemCommandError as exc:
                    if exc.cms != 321:  # already gone: fine
                        raise
            if recovering:
                self._recover_read = False
        found.sort(key=lambda m: (m.timestamp is None, m.timestamp or 0, m.index))
        for sms in found:
            log.info("modem %s received %d chars from %s", self.name, len(sms.text), sms.sender)
        return found

    def wait_for_messages(self, timeout: float) -> list[IncomingSms]:
        """Messages as soon as a `+CMTI` announces one, polling as a fallback; [] at timeout.

        Errors are retried until `timeout`; the last one is raised if the final attempt
        failed too, so a dead modem is not mistaken for a quiet one.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._announced.clear()
            error: SmsError | None = None
            try:
                found = self.receive()
            except ModemError as exc:
                if self._closed:
                    raise
                error, found = exc, []
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if error is not None:
                    raise error
                return []
            self._announced.wait(min(remaining, self.poll_interval))

    def signal_quality(self) -> SignalQuality:
        return parse_csq(self._info("AT+CSQ", "+CSQ:"), self.name)

    def registered(self) -> bool:
        """True when the SIM is registered on its home network or roaming (`AT+CREG?`)."""
        return parse_creg(self._info("AT+CREG?", "+CREG:"))

    def own_number(self) -> str:
        """The SIM's number from `AT+CNUM`, else the configured one."""
        try:
            args = self._info("AT+CNUM", "+CNUM:")
        except (ModemUnavailable, ModemTimeout):
            raise
        except ModemError:
            args = []  # many SIMs do not store their own number
        number = parse_cnum(args)
        if number is not None:
            return number
        if self._configured_number:
            return self._configured_number
        raise ModemError(f"modem {self.name}: the SIM does not report its number")


# ----- answers of the commands above, one parser each --------------------------------------------


def parse_listing(items: list[_Item], name: str) -> list[IncomingSms]:
    """The messages of an `AT+CMGL` answer: each `+CMGL:` header and the body line after it."""
    found: list[IncomingSms] = []
    pending: list[str] | None = None
    for item in items:
        if item.kind is _Kind.LINE and item.text.startswith("+CMGL:"):
            pending = split_args(item.text[len("+CMGL:") :])
        elif item.kind is _Kind.BODY and pending is not None:
            args, pending = pending, None
            index = _small_uint(args[0]) if len(args) >= 3 else None
            if index is None:
                raise ModemError(f"modem {name}: malformed +CMGL header")
            if args[1] not in ("REC UNREAD", "REC READ"):
                continue  # our own stored outgoing messages, if any
            stamp = parse_scts(args[4]) if len(args) > 4 else None
            found.append(IncomingSms(index, args[2], stamp, item.text))
    return found


def parse_csq(args: list[str], name: str) -> SignalQuality:
    """`+CSQ: <rssi>,<ber>`."""
    rssi, ber = (_small_uint(a) for a in (args + ["", ""])[:2])
    if rssi is None or ber is None:
        raise ModemError(f"modem {name}: malformed +CSQ answer")
    return SignalQuality(None if rssi == 99 else rssi, None if ber == 99 else ber)


def parse_creg(args: list[str]) -> bool:
    """`+CREG: [<n>,]<stat>`: registered at home (1) or roaming (5)."""
    stat = args[1] if len(args) > 1 else args[0]
    return stat in ("1", "5")


def parse_cnum(args: list[str]) -> str | None:
    """The number in `+CNUM: <alpha>,<number>,<type>`, if the SIM stores one."""
    return args[1] if len(args) > 1 and args[1] else None


def parse_cmgs(line: str) -> int | None:
    """The message reference of a `+CMGS: <mr>` line, else None."""
    if not line.startswith("+CMGS:"):
        return None
    return _small_uint(line[len("+CMGS:") :].strip())
