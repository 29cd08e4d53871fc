"""The frame layer: delimiting, integrity, acknowledgement and retransmission.

Delimiting is COBS with a 0x00 delimiter rather than SLIP: COBS guarantees that 0x00 never
appears inside an encoded frame, with a bounded overhead of one byte per 254 (SLIP doubles
every escaped byte, so a MAC-heavy frame can grow by up to 100%). Resynchronisation after
garbage is therefore trivial and exact: discard up to the next 0x00. Each frame is also
*preceded* by a 0x00, so garbage that arrived without a delimiter cannot swallow our frame.

Frame before COBS (big-endian)::

    0x20|acks<<4|type:u8  seq:u16  payload  crc32:u32     (CRC-32/IEEE over the bytes before it)

The first byte carries the header's version (2: the top three bits 001), whether
acknowledgements precede the payload, and the type. Version 1 frames (``version:u8 type:u8
seq:u16``, one byte longer) are still read.

DATA frames are acknowledged by ACK frames that carry their seq (an ACK's payload lists more
seqs, so one ACK answers a burst), or by acknowledgements riding on a DATA or BUNDLE frame going
the other way: a first byte with `ACKS_FLAG` set starts its payload with ``n:u8 seq:u16 * n``.
A receiver holds its acknowledgements for up to `LinkConfig.ack_delay` (never more than half the
smallest retransmission timeout) so that they leave with the next frame it sends, in the HSM
pair almost always the answer to the request acknowledged (or the next request): that saves
an ACK frame (11 bytes) per message each way. Only when nothing leaves in time is an ACK frame
written. A retransmitted frame carries the acknowledgements due when it leaves, so
retransmissions and duplicates are recognised by seq and data payload, never by the
acknowledgements riding on them. A BUNDLE frame is a DATA frame carrying several payloads,
each as ``length:u16 payload``, delivered in order: payloads a sender hands over at once
(`send_many`: the cold side's answers when a group needs several messages) leave in one
frame, saving per payload the frame's header, CRC and delimiters. Payloads sent one
by one are not bundled even when they wait for the line: the receiver could act on none of a
bundle before its last byte arrived, and at 115200 baud with 8 requests in flight that lost
overlap cost more than the bytes saved (43.0 -> 39.2 sends/s, benchmarks/RESULTS.md). A bundle
is acknowledged, retransmitted and deduplicated as one frame; what it carries is not merged at
any layer above (each payload is still its own authenticated session message).

A damaged frame whose header still reads as DATA (or BUNDLE) is answered by a NAK with that
(unverified) seq: the sender retransmits it at once if it is still unacked, otherwise ignores
it. Unacknowledged frames are retransmitted on an adaptive timeout with exponential backoff, at
most `max_tries` times. A receiver remembers (seq, crc) of recent DATA and BUNDLE frames and
delivers each once, re-acknowledging retransmissions it already delivered.

The CRC only catches line noise. It authenticates nothing: that is the session layer's job, and
nothing above this module sees bytes of the line.
"""

from __future__ import annotations

import logging
import random
import struct
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from cc_common.link.errors import LinkBusy, LinkClosed, LinkTooLarge
from cc_common.link.port import ByteStream
from cc_common.link.settings import LinkConfig
from cc_common.logs import TRACE

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1  # the version 1 header, still read
DELIMITER = 0
HEADER = struct.Struct(">BBH")  # version 1
HEADER2 = struct.Struct(">BH")  # version 2: 0x20|flags|type, seq
VERSION2 = 0x20
VERSION_MASK = 0xE0
TYPE_MASK = 0x0F
CRC = struct.Struct(">I")
SEQ = struct.Struct(">H")
FRAME_OVERHEAD = HEADER2.size + CRC.size
SEQ_MOD = 1 << 16
MAX_SEQS_PER_ACK = 64
ACKS_FLAG = 0x10  # on a DATA or BUNDLE frame: acknowledgements precede the payload
BUNDLE_ITEM = struct.Struct(">H")
MAX_BUNDLE = 32  # payloads per BUNDLE frame
INFINITY = float("inf")


def wire_size(payload_len: int) -> int:
    """Worst-case bytes on the wire for a frame carrying `payload_len` bytes."""
    raw = payload_len + FRAME_OVERHEAD
    return raw + raw // 254 + 1 + 2


class CobsError(ValueError):
    """Not a valid COBS encoding (only raised inside this module)."""


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result contains no 0x00."""
    out = bytearray()
    for part in data.split(b"\x00"):
        segment = part
        while len(segment) >= 254:
            out.append(0xFF)
            out += segment[:254]
            segment = segment[254:]
        out.append(len(segment) + 1)
        out += segment
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of `cobs_encode`; raises `CobsError` on a zero byte or a truncated block."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise CobsError("zero byte inside a frame")
        end = i + code
        if end > n:
            raise CobsError("truncated block")
        block = data[i + 1 : end]
        if 0 in block:
            raise CobsError("zero byte inside a frame")
        out += block
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


class FrameType(IntEnum):
    DATA = 1
    ACK = 2
    NAK = 3
    BUNDLE = 4

    @property
    def carries_data(self) -> bool:
        return self in (FrameType.DATA, FrameType.BUNDLE)


class Reject(StrEnum):
    """Why the decoder dropped bytes between two delimiters."""

    BAD_COBS = "bad COBS"
    SHORT = "too short"
    OVERSIZE = "oversize"
    BAD_CRC = "bad CRC"
    BAD_VERSION = "bad version"
    BAD_TYPE = "bad frame type"
    BAD_ACKS = "bad acknowledgement list"


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    seq: int
    payload: bytes = b""
    acks: tuple[int, ...] = ()  # seqs acknowledged by a DATA or BUNDLE frame (at most 64)

    def encode(self) -> bytes:
        """The frame as written on the line, delimiters included."""
        return encode_frame(self)


def bundle_payload(payloads: Sequence[bytes]) -> bytes:
    """The payload of a BUNDLE frame: each payload as ``length:u16 payload``."""
    return b"".join(BUNDLE_ITEM.pack(len(p)) + p for p in payloads)


def split_bundle(payload: bytes) -> list[bytes] | None:
    """The payloads of a BUNDLE frame, or None if its lengths do not add up (none is empty)."""
    out: list[bytes] = []
    at, end = 0, len(payload)
    while at < end:
        if at + BUNDLE_ITEM.size > end:
            return None
        (n,) = BUNDLE_ITEM.unpack_from(payload, at)
        at += BUNDLE_ITEM.size
        if n == 0 or at + n > end:
            return None
        out.append(payload[at : at + n])
        at += n
    return out or None


def frame_body(frame: Frame) -> bytes:
    """The bytes covered by the CRC."""
    if not frame.acks:
        return HEADER2.pack(VERSION2 | frame.type, frame.seq % SEQ_MOD) + frame.payload
    if not frame.type.carries_data or len(frame.acks) > MAX_SEQS_PER_ACK:
        raise ValueError("only DATA and BUNDLE frames carry acknowledgements, at most 64")
    return (
        HEADER2.pack(VERSION2 | ACKS_FLAG | frame.type, frame.seq % SEQ_MOD)
        + bytes((len(frame.acks),))
        + b"".join(SEQ.pack(s % SEQ_MOD) for s in frame.acks)
        + frame.payload
    )


def encode_frame(frame: Frame) -> bytes:
    body = frame_body(frame)
    return b"\x00" + cobs_encode(body + CRC.pack(zlib.crc32(body))) + b"\x00"


class FrameDecoder:
    """Turns a byte stream into frames. Never raises: hostile input is dropped and counted."""

    def __init__(self, max_frame: int = LinkConfig.max_frame, name: str = "link") -> None:
        self.max_frame = max_frame
        self.name = name
        self._max_encoded = max_frame + max_frame // 254 + 1
        self._buf = bytearray()
        self._discarding = False
        self.rejects: Counter[Reject] = Counter()
        self.frames = 0
        self._naks: list[int] = []

    def feed(self, data: bytes) -> list[Frame]:
        """Frames completed by `data`, in order."""
        frames: list[Frame] = []
        start = 0
        while True:
            end = data.find(DELIMITER, start)
            if end < 0:
                self._append(data[start:])
                return frames
            self._append(data[start:end])
            if self._buf and not self._discarding:
                frame = self._decode(bytes(self._buf))
                if frame is not None:
                    frames.append(frame)
            self._buf.clear()
            self._discarding = False
            start = end + 1

    def take_naks(self) -> list[int]:
        """Seqs read from the headers of damaged DATA frames since the last call."""
        naks, self._naks = self._naks, []
        return naks

    def _append(self, chunk: bytes) -> None:
        if self._discarding or not chunk:
            return
        if len(self._buf) + len(chunk) > self._max_encoded:
            self._buf.clear()
            self._discarding = True
            self._reject(Reject.OVERSIZE)
        else:
            self._buf += chunk

    def _decode(self, encoded: bytes) -> Frame | None:
        try:
            raw = cobs_decode(encoded)
        except CobsError:
            return self._reject(Reject.BAD_COBS)
        if len(raw) > self.max_frame:
            return self._reject(Reject.OVERSIZE)
        if len(raw) < FRAME_OVERHEAD:
            return self._reject(Reject.SHORT)
        body, (crc,) = raw[: -CRC.size], CRC.unpack(raw[-CRC.size :])
        first = body[0]
        if first & VERSION_MASK == VERSION2:
            ftype, flags = first & TYPE_MASK, first & ~(VERSION_MASK | TYPE_MASK)
            (seq,) = SEQ.unpack_from(body, 1)
            size = HEADER2.size
        elif first == PROTOCOL_VERSION and len(body) >= HEADER.size:
            _, ftype, seq = HEADER.unpack_from(body)
            flags, size = 0, HEADER.size
        else:
            ftype = flags = seq = size = -1
        if zlib.crc32(body) != crc:
            if ftype in (FrameType.DATA, FrameType.BUNDLE):
                self._naks.append(seq)
            return self._reject(Reject.BAD_CRC)
        if size < 0:
            return self._reject(Reject.BAD_VERSION)
        try:
            frame_type = FrameType(ftype)
        except ValueError:
            return self._reject(Reject.BAD_TYPE)
        payload = body[size:]
        acks: tuple[int, ...] = ()
        if flags & ACKS_FLAG:
            if not frame_type.carries_data or not payload:
                return self._reject(Reject.BAD_TYPE)
            n = payload[0]
            if n == 0 or n > MAX_SEQS_PER_ACK or len(payload) < 1 + 2 * n:
                return self._reject(Reject.BAD_ACKS)
            acks = tuple(SEQ.unpack_from(payload, 1 + 2 * i)[0] for i in range(n))
            payload = payload[1 + 2 * n :]
        self.frames += 1
        return Frame(frame_type, seq, payload, acks)

    def _reject(self, reason: Reject) -> Frame | None:
        """Count and log a dropped frame; the decode result is nothing."""
        self.rejects[reason] += 1
        log.debug(
            "%s: dropped bytes on the line (%s; %d so far)", self.name, reason, self.rejects[reason]
        )
        return None


@dataclass(slots=True)
class _Outgoing:
    seq: int
    payload: bytes
    tags: tuple[Hashable, ...] = ()
    batch: int = 0  # payloads handed over by one `send_many` share it (and may be bundled)
    wire: bytes = b""  # encoded each time it leaves (with the acknowledgements then due)
    type: FrameType = FrameType.DATA
    tries: int = 0
    tx_done: float = 0.0
    deadline: float = 0.0


@dataclass
class _RtoEstimator:
    """Jacobson/Karels retransmission timeout from ACK delays (Karn: first tries only)."""

    config: LinkConfig
    srtt: float | None = None
    rttvar: float = 0.0
    rto: float = field(init=False)

    def __post_init__(self) -> None:
        self.rto = self.config.initial_rto

    def sample(self, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(max(self.srtt + 4 * self.rttvar, self.config.min_rto), self.config.max_rto)


PayloadHandler = Callable[[bytes], None]
GiveUpHandler = Callable[[Hashable], None]


class FrameLink:
    """Reliable delivery of payloads over a `ByteStream`: a reader and a writer thread.

    `send()` never blocks on the line: frames wait in a backlog until the window has room.
    The writer paces DATA frames to the configured line rate (keeping only `PACING_LEAD`
    seconds of data in the OS and line buffers) so that ACKs, written at once by the reader,
    are not stuck behind kilobytes of queued requests and the retransmission timers measure
    the line, not our own queue. `on_payload` and `on_give_up` run in the reader thread and
    must not block.
    """

    PACING_LEAD = 0.015

    def __init__(
        self,
        port: ByteStream,
        on_payload: PayloadHandler,
        *,
        config: LinkConfig | None = None,
        on_give_up: GiveUpHandler | None = None,
        name: str = "link",
    ) -> None:
        self.config = config or LinkConfig()
        self.name = name
        self._port = port
        self._on_payload = on_payload
        self._on_give_up = on_give_up
        self._decoder = FrameDecoder(self.config.max_frame, name)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._write_lock = threading.Lock()
        self._seq = random.randrange(SEQ_MOD)
        self._batches = 0
        self._unacked: dict[int, _Outgoing] = {}
        self._backlog: deque[_Outgoing] = deque()
        self._retx: deque[_Outgoing] = deque()
        self._recent: dict[tuple[int, int], float] = {}
        self._next_prune = 0.0
        self._line_free = 0.0
        self._acks: list[int] = []  # seqs received and not yet acknowledged
        self._ack_due = INFINITY
        self._ack_delay = min(self.config.ack_delay, self.config.min_rto / 2)
        self._rto = _RtoEstimator(self.config)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.counts: Counter[str] = Counter()
        self.max_payload = self.config.max_frame - FRAME_OVERHEAD

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for target, role in ((self._read_loop, "reader"), (self._write_loop, "writer")):
            thread = threading.Thread(target=target, name=f"{self.name}-{role}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self._port.close()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def stats(self) -> dict[str, int]:
        """Counters of frames and bytes, and of dropped input by reason."""
        out = dict(self.counts)
        out.update({f"rejected {r}": n for r, n in self._decoder.rejects.items()})
        out["unacked"] = len(self._unacked)
        out["backlog"] = len(self._backlog)
        return out

    @property
    def rto(self) -> float:
        return self._rto.rto

    # -- sending -----------------------------------------------------------------------------

    def send(self, payload: bytes, tag: Hashable = None) -> None:
        """Queue `payload` for reliable delivery; `tag` is handed to `on_give_up` on failure."""
        self.send_many([payload], [tag])

    def send_many(self, payloads: Sequence[bytes], tags: Sequence[Hashable] = ()) -> None:
        """Queue several payloads at once, so that they leave in one BUNDLE frame (as many as
        fit); `tags[i]` goes with `payloads[i]` (see `send`)."""
        if self._stop.is_set():
            raise LinkClosed(f"{self.name}: link is closed")
        for payload in payloads:
            if len(payload) > self.max_payload:
                raise LinkTooLarge(
                    f"{self.name}: message of {len(payload)} bytes exceeds the "
                    f"{self.max_payload}-byte frame limit"
                )
        with self._wake:
            if len(self._backlog) + len(payloads) > self.config.max_backlog:
                raise LinkBusy(f"{self.name}: {len(self._backlog)} frames already queued")
            self._batches += 1
            for n, payload in enumerate(payloads):
                tag = tags[n] if n < len(tags) else None
                seq = self._seq
                self._seq = (seq + 1) % SEQ_MOD
                tagged = () if tag is None else (tag,)
                self._backlog.append(_Outgoing(seq, payload, tagged, self._batches))
            self._wake.notify_all()

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                out = self._next_to_write()
                if out is None:
                    continue
                if isinstance(out, bytes):  # acknowledgements alone, their delay up
                    self._occupy(len(out), time.monotonic())
                    self.counts["ack out"] += 1
                    wire = out
                else:
                    out.wire = encode_frame(
                        Frame(out.type, out.seq, out.payload, self._take_acks("acks carried"))
                    )
                    self._arm(out)
                    wire = out.wire
            self._write(wire)

    def _next_to_write(self) -> _Outgoing | bytes | None:
        """Wait until the line has room and a frame is due: a DATA or BUNDLE frame (to carry
        the acknowledgements due), or an ACK frame whose delay is up. Caller holds `_wake`."""
        now = time.monotonic()
        wait = self._line_free - now - self.PACING_LEAD
        if wait > 0:
            self._wake.wait(min(wait, max(self._ack_due - now, 0.0)))
            now = time.monotonic()
            if not (self._acks and now >= self._ack_due):
                return None
        while self._retx:
            out = self._retx.popleft()
            if self._unacked.get(out.seq) is out:
                return out
        if self._backlog and len(self._unacked) < self.config.window:
            out = self._take_backlog()
            self._unacked[out.seq] = out
            return out
        if self._acks:
            if now >= self._ack_due:
                acks = self._take_acks("ack frames")
                return encode_frame(
                    Frame(FrameType.ACK, acks[0], b"".join(SEQ.pack(s) for s in acks[1:]))
                )
            self._wake.wait(self._ack_due - now)
            return None
        self._wake.wait(0.05)
        return None

    def _take_acks(self, count: str) -> tuple[int, ...]:
        """Up to 64 acknowledgements due, oldest first. Caller holds `_wake`."""
        acks, self._acks = self._acks[:MAX_SEQS_PER_ACK], self._acks[MAX_SEQS_PER_ACK:]
        if acks:
            self.counts[count] += len(acks)
        if not self._acks:
            self._ack_due = INFINITY
        return tuple(acks)

    def _take_backlog(self) -> _Outgoing:
        """The next frame: the oldest waiting payload as DATA, or with those of its `send_many`
        queued behind it (as many as fit) as one BUNDLE under its seq. Caller holds `_wake`."""
        first = self._backlog.popleft()
        items = [first]
        size = BUNDLE_ITEM.size + len(first.payload)
        while self._backlog and len(items) < MAX_BUNDLE and self._backlog[0].batch == first.batch:
            size += BUNDLE_ITEM.size + len(self._backlog[0].payload)
            if size > self.max_payload:
                break
            items.append(self._backlog.popleft())
        if len(items) == 1:
            return first
        payload = bundle_payload([i.payload for i in items])
        self.counts["bundles out"] += 1
        self.counts["bundled payloads out"] += len(items)
        return _Outgoing(
            first.seq,
            payload,
            tuple(t for i in items for t in i.tags),
            first.batch,
            type=FrameType.BUNDLE,
        )

    def _arm(self, out: _Outgoing) -> None:
        """Account a (re)transmission of `out` and set its timer. Caller holds `_lock`."""
        out.tries += 1
        out.tx_done = self._occupy(len(out.wire), time.monotonic())
        backoff = self._rto.rto * (2 ** (out.tries - 1))
        out.deadline = out.tx_done + min(backoff, self.config.max_rto)
        if out.tries > 1:
            self.counts["retransmits"] += 1
        self.counts["data out"] += 1

    def _occupy(self, nbytes: int, now: float) -> float:
        """When `nbytes` written now will have left the line (10 bits per byte)."""
        self._line_free = max(now, self._line_free) + nbytes * 10 / self.config.baudrate
        return self._line_free

    def _write(self, wire: bytes) -> None:
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "%s >> %s", self.name, wire.hex())
        with self._write_lock:
            if self._port.write(wire):
                self.counts["bytes out"] += len(wire)

    def _send_naks(self, seqs: list[int]) -> None:
        """NAK frames, written at once (a retransmission is wanted as soon as possible)."""
        for i in range(0, len(seqs), MAX_SEQS_PER_ACK):
            chunk = seqs[i : i + MAX_SEQS_PER_ACK]
            extra = b"".join(SEQ.pack(s) for s in chunk[1:])
            wire = encode_frame(Frame(FrameType.NAK, chunk[0], extra))
            with self._lock:
                self._occupy(len(wire), time.monotonic())
            self.counts["nak out"] += 1
            self._write(wire)

    # -- receiving ---------------------------------------------------------------------------

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            data = self._port.read()
            if data:
                self._receive(data)
            self._check_timers()

    def _receive(self, data: bytes) -> None:
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "%s << %s", self.name, data.hex())
        self.counts["bytes in"] += len(data)
        acks: list[int] = []
        for frame in self._decoder.feed(data):
            if frame.type.carries_data:
                if frame.acks:
                    self.counts["acks in data"] += len(frame.acks)
                    self._receive_ack(frame.acks)
                acks.append(frame.seq)
                self._receive_data(frame)
            elif frame.type == FrameType.ACK:
                self.counts["ack in"] += 1
                payload = frame.payload
                extra = [SEQ.unpack_from(payload, i)[0] for i in range(0, len(payload) - 1, 2)]
                self._receive_ack([frame.seq, *extra])
            else:
                self.counts["nak in"] += 1
                self._receive_nak(frame.seq)
        if acks:
            with self._wake:
                if not self._acks:
                    self._ack_due = time.monotonic() + self._ack_delay
                self._acks.extend(acks)
                self._wake.notify_all()
        naks = self._decoder.take_naks()
        if naks:
            self._send_naks(naks)

    def _receive_data(self, frame: Frame) -> None:
        now = time.monotonic()
        key = (frame.seq, zlib.crc32(frame.payload))
        if key in self._recent:
            self.counts["duplicates"] += 1
            log.debug("%s: duplicate DATA frame seq=%d re-acknowledged", self.name, frame.seq)
            return
        self._recent[key] = now + self.config.dedupe_horizon
        if now >= self._next_prune:
            self._recent = {k: t for k, t in self._recent.items() if t > now}
            self._next_prune = now + 1.0
        self.counts["data in"] += 1
        payloads = [frame.payload]
        if frame.type == FrameType.BUNDLE:
            bundled = split_bundle(frame.payload)
            if bundled is None:  # the CRC held, so the sender built it wrong: nothing of it
                self.counts["malformed bundles"] += 1
                log.warning("%s: malformed BUNDLE frame seq=%d dropped", self.name, frame.seq)
                return
            self.counts["bundled payloads in"] += len(bundled)
            payloads = bundled
        for payload in payloads:
            try:
                self._on_payload(payload)
            except Exception:
                log.exception("%s: payload handler failed", self.name)

    def _receive_ack(self, seqs: Sequence[int]) -> None:
        now = time.monotonic()
        with self._wake:
            for seq in seqs:
                out = self._unacked.pop(seq, None)
                if out is not None and out.tries == 1:
                    self._rto.sample(now - out.tx_done)
            self._wake.notify_all()

    def _receive_nak(self, seq: int) -> None:
        with self._wake:
            out = self._unacked.get(seq)
            if out is None or out.tries >= self.config.max_tries or out.deadline == INFINITY:
                return
            log.debug("%s: NAK for seq=%d, retransmitting", self.name, seq)
            out.deadline = INFINITY
            self._retx.append(out)
            self._wake.notify_all()

    def _check_timers(self) -> None:
        now = time.monotonic()
        failed: list[_Outgoing] = []
        with self._wake:
            for out in list(self._unacked.values()):
                if out.deadline > now:
                    continue
                if out.tries >= self.config.max_tries:
                    del self._unacked[out.seq]
                    failed.append(out)
                else:
                    out.deadline = INFINITY  # until the writer re-arms it
                    self._retx.append(out)
            if failed or self._retx:
                self._wake.notify_all()
        for out in failed:
            self.counts["gave up"] += 1
            log.warning("%s: gave up on frame seq=%d after %d tries", self.name, out.seq, out.tries)
            for tag in out.tags:
                self._give_up(tag)

    def _give_up(self, tag: Hashable) -> None:
        if self._on_give_up is None:
            return
        try:
            self._on_give_up(tag)
        except Exception:
            log.exception("%s: give-up handler failed", self.name)
