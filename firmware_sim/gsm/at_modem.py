"""The firmware of a GSM modem: the SMS subset of the AT commands of 3GPP TS 27.005/27.007.

This module is the command layer only: it is fed the bytes the host wrote and emits, through
`write`, exactly the bytes a real modem would answer (echo, information responses, final
result codes, unsolicited `+CMTI`). The serial port it is attached to is someone else's job
(`firmware_sim.gsm.modem_port`), and so is the network (`submit`).

Behaviour worth knowing for clients, as on real modems:
- echo is on after power-up (`ATE0` turns it off); responses are `\\r\\n<line>\\r\\n`;
- the message format starts in PDU mode (`+CMGF: 0`): send `AT+CMGF=1` before any SMS
  command, otherwise they answer `+CMS ERROR: 303` (PDU mode is not implemented here);
- text crosses the port as UTF-8 and must use only characters of the GSM 7-bit alphabet;
- `+CMS ERROR` codes: 302 not allowed, 303 not supported, 304 bad destination number,
  305 text not in the GSM alphabet (or another bad text-mode parameter), 321 invalid memory
  index, 322 memory full, 331 no network service. Unknown commands answer `ERROR`.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cc_common.logs import TRACE
from firmware_sim.errors import FirmwareSimError, InvalidNumber, NetworkDown
from firmware_sim.gsm import gsm7
from firmware_sim.gsm.sms import Message, check_number

log = logging.getLogger(__name__)

CR, LF, BS, CTRL_Z, ESC = 0x0D, 0x0A, 0x08, 0x1A, 0x1B
MAX_LINE = 1024
MAX_TEXT = gsm7.MULTI_GSM7 * 10  # ten segments: what CMGS accepts in one go
DEFAULT_CAPACITY = 50


class CmsError(enum.IntEnum):
    """Message service failure result codes (27.005 section 3.2.5) used by this firmware."""

    OPERATION_NOT_ALLOWED = 302
    OPERATION_NOT_SUPPORTED = 303
    INVALID_NUMBER = 304
    INVALID_TEXT_PARAM = 305
    INVALID_MEMORY_INDEX = 321
    MEMORY_FULL = 322
    NO_NETWORK_SERVICE = 331


class SmsStatus(enum.Enum):
    """`<stat>` of a stored message in text mode."""

    REC_UNREAD = "REC UNREAD"
    REC_READ = "REC READ"
    STO_UNSENT = "STO UNSENT"
    STO_SENT = "STO SENT"


class Mode(enum.Enum):
    """What the firmware does with the next bytes."""

    COMMAND = "command"
    TEXT_ENTRY = "text-entry"


@dataclass
class Stored:
    """A message in SIM memory."""

    index: int
    status: SmsStatus
    sender: str
    text: str
    scts: datetime


class _Fail(Exception):
    """Ends a command line with a final result code other than OK."""

    def __init__(self, result: str) -> None:
        super().__init__(result)
        self.result = result


def _cms(code: CmsError) -> _Fail:
    return _Fail(f"+CMS ERROR: {int(code)}")


_ERROR = "ERROR"


def _split_outside_quotes(text: str, sep: str, *, keep_quotes: bool) -> tuple[list[str], bool]:
    """`text` cut at each `sep` outside double quotes; whether a quote was left open."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for c in text:
        if c == '"':
            quoted = not quoted
            if keep_quotes:
                current.append(c)
        elif c == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts, quoted


def _split_args(text: str) -> list[str]:
    """Split `a,"b,c",d` on commas outside quotes; quotes are removed."""
    args, unclosed = _split_outside_quotes(text, ",", keep_quotes=False)
    if unclosed:
        raise _Fail(_ERROR)
    return [a.strip() for a in args]


def _split_commands(body: str) -> list[str]:
    """Split the part after `AT` on ';' outside quotes."""
    parts, _ = _split_outside_quotes(body, ";", keep_quotes=True)
    return [p for p in parts if p.strip()]


def scts(ts: datetime) -> str:
    """Service centre time stamp `yy/MM/dd,hh:mm:ss+zz` (zz in quarters of an hour)."""
    ts = ts.astimezone(UTC)
    return ts.strftime("%y/%m/%d,%H:%M:%S") + "+00"


class AtModem:
    """The AT command state machine of one modem."""

    def __init__(
        self,
        number: str,
        *,
        write: Callable[[bytes], None],
        submit: Callable[[str, str], None],
        registered: Callable[[], bool],
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self.number = number
        self._write = write
        self._submit = submit
        self._registered = registered
        self.capacity = capacity
        self._lock = threading.RLock()
        self._buf = bytearray()
        self._mode = Mode.COMMAND
        self._echo = True
        self._text_mode = False
        self._charset = "GSM"
        self._announce = True
        self._dest = ""
        self._mr = 0
        self._memory: dict[int, Stored] = {}
        self._deferred: list[bytes] = []
        self.counters = {"commands": 0, "errors": 0, "sent": 0, "received": 0}

    # ----- bytes in -------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Take bytes written by the host; answers go out through `write`."""
        with self._lock:
            for b in data:
                if self._mode is Mode.COMMAND:
                    self._command_byte(b)
                else:
                    self._text_byte(b)

    def _command_byte(self, b: int) -> None:
        if self._echo:
            self._write(bytes([b]))
        if b == CR:
            line = bytes(self._buf)
            self._buf.clear()
            self._line(line)
        elif b == LF:
            pass
        elif b == BS:
            del self._buf[-1:]
        elif len(self._buf) < MAX_LINE:
            self._buf.append(b)

    def _text_byte(self, b: int) -> None:
        if b == CTRL_Z:
            text = self._buf.decode("utf-8", errors="replace")
            self._buf.clear()
            self._mode = Mode.COMMAND
            self._finish(self._send(text))
            return
        if b == ESC:
            self._buf.clear()
            self._mode = Mode.COMMAND
            self._finish("OK")
            return
        if self._echo:
            self._write(bytes([b]))
        if b == CR:
            self._buf.append(LF)
            self._write(b"\r\n> ")
        elif b == LF:
            if not self._buf.endswith(b"\n"):
                self._buf.append(LF)
        elif b == BS:
            del self._buf[-1:]
        elif len(self._buf) < MAX_TEXT * 4:
            self._buf.append(b)

    # ----- command lines --------------------------------------------------------------------

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").strip()
        start = line.upper().find("AT")
        if start < 0:
            return  # line noise: a modem waits for "AT"
        body = line[start + 2 :]
        self.counters["commands"] += 1
        log.log(TRACE, "modem %s <- %r", self.number, line)
        out: list[str] = []
        try:
            for cmd in _split_commands(body):
                if self._run(cmd.strip(), out):
                    self._emit(out)
                    return  # +CMGS switched to text entry: the rest of the line is ignored
        except _Fail as fail:
            self.counters["errors"] += 1
            self._emit(out)
            self._finish(fail.result)
            return
        self._emit(out)
        self._finish("OK")

    def _emit(self, lines: list[str]) -> None:
        for text in lines:
            self._write(b"\r\n" + text.encode("utf-8") + b"\r\n")
        lines.clear()

    def _finish(self, result: str) -> None:
        self._write(b"\r\n" + result.encode() + b"\r\n")
        for urc in self._deferred:
            self._write(urc)
        self._deferred.clear()

    def _run(self, cmd: str, out: list[str]) -> bool:
        """Run one command; True when it entered text entry (no final result yet)."""
        if not cmd:
            return False
        if cmd[0] != "+":
            self._basic(cmd, out)
            return False
        name, sep, rest = cmd.partition("=")
        name = name.upper()
        args: list[str] = []
        if not sep and name.endswith("?"):
            name, kind = name[:-1], "read"
        elif sep and rest == "?":
            kind = "test"
        elif sep:
            kind, args = "set", _split_args(rest)
        else:
            kind = "exec"
        handler = self._EXTENDED.get(name)
        if handler is None:
            raise _Fail(_ERROR)
        return bool(handler(self, kind, args, out))

    def _basic(self, cmd: str, out: list[str]) -> None:
        i = 0
        upper = cmd.upper()
        while i < len(upper):
            c = upper[i]
            j = i + 1
            if c == "&":
                j += 1
            while j < len(upper) and upper[j].isdigit():
                j += 1
            word, i = upper[i:j], j
            if word in ("E0", "E1", "E"):
                self._echo = word == "E1"
            elif word in ("Z", "Z0", "&F", "&F0"):
                self._reset()
            elif word in ("I", "I0"):
                out.append("ChainCloud simulated GSM modem")
            elif word in ("V1", "Q0", "&W", "&W0"):
                pass
            else:
                raise _Fail(_ERROR)

    def _reset(self) -> None:
        self._echo = True
        self._text_mode = False
        self._charset = "GSM"
        self._announce = True

    # ----- extended commands ----------------------------------------------------------------

    def _need_text_mode(self) -> None:
        if not self._text_mode:
            raise _cms(CmsError.OPERATION_NOT_SUPPORTED)

    def _cmgf(self, kind: str, args: list[str], out: list[str]) -> None:
        if kind == "read":
            out.append(f"+CMGF: {int(self._text_mode)}")
        elif kind == "test":
            out.append("+CMGF: (0,1)")
        elif kind == "set" and args in (["0"], ["1"]):
            self._text_mode = args == ["1"]
        else:
            raise _Fail(_ERROR)

    def _cscs(self, kind: str, args: list[str], out: list[str]) -> None:
        if kind == "read":
            out.append(f'+CSCS: "{self._charset}"')
        elif kind == "test":
            out.append('+CSCS: ("GSM","IRA")')
        elif kind == "set" and len(args) == 1 and args[0].upper() in ("GSM", "IRA"):
            self._charset = args[0].upper()
        else:
            raise _Fail(_ERROR)

    def _cnmi(self, kind: str, args: list[str], out: list[str]) -> None:
        if kind == "read":
            out.append(f"+CNMI: 2,{int(self._announce)},0,0,0")
        elif kind == "test":
            out.append("+CNMI: (0-2),(0,1),(0),(0),(0)")
        elif kind == "set" and args and all(a.isdigit() or a == "" for a in args):
            if len(args) > 1 and args[1]:
                if args[1] not in ("0", "1"):
                    raise _cms(CmsError.OPERATION_NOT_SUPPORTED)
                self._announce = args[1] == "1"
        else:
            raise _Fail(_ERROR)

    def _cmgs(self, kind: str, args: list[str], out: list[str]) -> bool:
        if kind == "test":
            return False
        if kind != "set" or not args or not args[0]:
            raise _Fail(_ERROR)
        self._need_text_mode()
        try:
            self._dest = check_number(args[0])
        except InvalidNumber:
            raise _cms(CmsError.INVALID_NUMBER) from None
        self._mode = Mode.TEXT_ENTRY
        self._buf.clear()
        self._write(b"\r\n> ")
        return True

    def _send(self, text: str) -> str:
        """Hand a finished text to the network; the final result code to answer."""
        if not gsm7.is_gsm7(text) or len(text) > MAX_TEXT:
            self.counters["errors"] += 1
            return f"+CMS ERROR: {int(CmsError.INVALID_TEXT_PARAM)}"
        try:
            self._submit(self._dest, text)
        except InvalidNumber:
            self.counters["errors"] += 1
            return f"+CMS ERROR: {int(CmsError.INVALID_NUMBER)}"
        except NetworkDown:
            self.counters["errors"] += 1
            return f"+CMS ERROR: {int(CmsError.NO_NETWORK_SERVICE)}"
        self._mr = (self._mr + 1) % 256
        self.counters["sent"] += 1
        return f"+CMGS: {self._mr}\r\n\r\nOK"

    def _index(self, args: list[str]) -> int:
        if not args or not args[0].isdigit():
            raise _Fail(_ERROR)
        index = int(args[0])
        if index not in self._memory:
            raise _cms(CmsError.INVALID_MEMORY_INDEX)
        return index

    def _cmgr(self, kind: str, args: list[str], out: list[str]) -> None:
        if kind == "test":
            return
        if kind != "set":
            raise _Fail(_ERROR)
        self._need_text_mode()
        msg = self._memory[self._index(args)]
        out.append(f'+CMGR: "{msg.status.value}","{msg.sender}",,"{scts(msg.scts)}"\r\n{msg.text}')
        if msg.status is SmsStatus.REC_UNREAD:
            msg.status = SmsStatus.REC_READ

    def _cmgl(self, kind: str, args: list[str], out: list[str]) -> None:
        if kind == "test":
            out.append('+CMGL: ("REC UNREAD","REC READ","STO UNSENT","STO SENT","ALL")')
            return
        self._need_text_mode()
        if kind == "exec":
            wanted = SmsStatus.REC_UNREAD.value
        elif kind == "set" and len(args) == 1:
            wanted = args[0].upper()
        else:
            raise _Fail(_ERROR)
        if wanted != "ALL" and wanted not in {s.value for s in SmsStatus}:
            raise _cms(CmsError.INVALID_TEXT_PARAM)
        lines = []
        for index in sorted(self._memory):
            msg = self._memory[index]
            if wanted in ("ALL", msg.status.value):
                lines.append(
                    f'+CMGL: {index},"{msg.status.value}","{msg.sender}",,"{scts(msg.scts)}"'
                    f"\r\n{msg.text}"
                )
                if msg.status is SmsStatus.REC_UNREAD:
                    msg.status = SmsStatus.REC_READ
        if lines:
            out.append("\r\n".join(lines))

    def _cmgd(self, kind: str, args: list[str], out: list[str]) -> None:
        if kind == "test":
            out.append(f"+CMGD: ({','.join(map(str, sorted(self._memory)))}),(0-4)")
            return
        if kind != "set" or not args or not args[0].isdigit():
            raise _Fail(_ERROR)
        flag = args[1] if len(args) > 1 and args[1] else "0"
        if flag not in ("0", "1", "2", "3", "4"):
            raise _Fail(_ERROR)
        if flag == "0":
            del self._memory[self._index(args)]
            return
        doomed = {
            "1": {SmsStatus.REC_READ},
            "2": {SmsStatus.REC_READ, SmsStatus.STO_SENT},
            "3": {SmsStatus.REC_READ, SmsStatus.STO_SENT, SmsStatus.STO_UNSENT},
            "4": set(SmsStatus),
        }[flag]
        for index in [i for i, m in self._memory.items() if m.status in doomed]:
            del self._memory[index]

    def _csq(self, kind: str, args: list[str], out: list[str]) -> None:
        if kind == "test":
            out.append("+CSQ: (0-31,99),(0-7,99)")
        elif kind == "exec":
            out.append("+CSQ: 21,0" if self._registered() else "+CSQ: 99,99")
        else:
            raise _Fail(_ERROR)

    def _creg(self, kind: str, args: list[str], out: list[str]) -> None:
        if kind == "read":
            out.append(f"+CREG: 0,{1 if self._registered() else 0}")
        elif kind == "test":
            out.append("+CREG: (0)")
        elif not (kind == "set" and args == ["0"]):
            raise _Fail(_ERROR)

    def _cnum(self, kind: str, args: list[str], out: list[str]) -> None:
        if kind == "exec":
            toa = 145 if self.number.startswith("+") else 129
            out.append(f'+CNUM: "","{self.number}",{toa}')
        elif kind != "test":
            raise _Fail(_ERROR)

    def _cpms(self, kind: str, args: list[str], out: list[str]) -> None:
        used, total = len(self._memory), self.capacity
        if kind == "read":
            out.append(f'+CPMS: "SM",{used},{total},"SM",{used},{total},"SM",{used},{total}')
        elif kind == "test":
            out.append('+CPMS: ("SM"),("SM"),("SM")')
        elif kind == "set" and args and all(a.upper() == "SM" for a in args):
            out.append(f"+CPMS: {used},{total},{used},{total},{used},{total}")
        else:
            raise _cms(CmsError.OPERATION_NOT_ALLOWED)

    def _cmee(self, kind: str, args: list[str], out: list[str]) -> None:
        if kind == "read":
            out.append("+CMEE: 1")
        elif not (kind == "set" and args and args[0] in ("0", "1", "2")) and kind != "test":
            raise _Fail(_ERROR)

    _EXTENDED: dict[str, Callable[..., bool | None]] = {}

    # ----- messages in ----------------------------------------------------------------------

    def store(self, msg: Message) -> int:
        """Put a received message in SIM memory and announce it; its index."""
        with self._lock:
            if len(self._memory) >= self.capacity:
                raise FirmwareSimError(f"modem {self.number}: SIM memory full")
            index = next(i for i in range(1, self.capacity + 1) if i not in self._memory)
            text = msg.text if gsm7.is_gsm7(msg.text) else gsm7.to_gsm7(msg.text)
            self._memory[index] = Stored(index, SmsStatus.REC_UNREAD, msg.sender, text, msg.sent_at)
            self.counters["received"] += 1
            if self._announce:
                urc = f'\r\n+CMTI: "SM",{index}\r\n'.encode()
                if self._mode is Mode.TEXT_ENTRY or self._buf:
                    self._deferred.append(urc)
                else:
                    self._write(urc)
            return index

    def stored_count(self) -> int:
        with self._lock:
            return len(self._memory)


def _ident(text: str) -> Callable[[AtModem, str, list[str], list[str]], None]:
    """A handler for an identification command that answers one fixed line."""

    def handler(modem: AtModem, kind: str, args: list[str], out: list[str]) -> None:
        if kind == "test":
            return
        if kind != "exec":
            raise _Fail(_ERROR)
        out.append(text)

    return handler


AtModem._EXTENDED.update(
    {
        "+CMGF": AtModem._cmgf,
        "+CSCS": AtModem._cscs,
        "+CNMI": AtModem._cnmi,
        "+CMGS": AtModem._cmgs,
        "+CMGR": AtModem._cmgr,
        "+CMGL": AtModem._cmgl,
        "+CMGD": AtModem._cmgd,
        "+CSQ": AtModem._csq,
        "+CREG": AtModem._creg,
        "+CNUM": AtModem._cnum,
        "+CPMS": AtModem._cpms,
        "+CMEE": AtModem._cmee,
        "+CGMI": _ident("ChainCloud"),
        "+CGMM": _ident("SIM-GSM-27005"),
        "+CGMR": _ident("firmware_sim 1.0"),
    }
)
