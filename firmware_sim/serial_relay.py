"""The null-modem cable between the two HSM ports: line rate and injected faults.

Two pseudo-terminals are joined by a relay, one lane per direction. Each lane paces bytes
as a UART would at the configured baud rate with 8N1 framing (10 bits per byte, so baud/10
bytes per second): a byte reaches the far end when its last bit would have. Timing is kept
on a virtual schedule, so a late wake-up of the thread does not slow the line down.

Faults are injected on command (control channel, never the data path) per direction:
- flip: one random bit in each of the next `count` bytes, or, with a `window`, `count`
  bits at random distinct positions within the next `window` bytes;
- drop: the next `count` bytes vanish;
- garbage: `count` random bytes are put on the line now;
- cut: nothing passes for `seconds`; bytes sent meanwhile are lost.

Test equipment uses the same line in process: random noise at given rates (`Noise`), a capture
of what was delivered, and bytes put on the line as if a party had sent them (replay, forgery).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import random
import select
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cc_common.logs import TRACE
from firmware_sim.errors import BadRequest
from firmware_sim.pty_pair import PtyPort

log = logging.getLogger(__name__)

BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
TICK = 0.01  # seconds of line time moved per write: small enough to look continuous
LANE_BUFFER = 4096  # what a UART's FIFO and driver buffer hold before the writer waits
MAX_FAULT_COUNT = 1 << 20


class Direction(enum.Enum):
    """Which way a fault acts."""

    HOT_TO_COLD = "hot-to-cold"
    COLD_TO_HOT = "cold-to-hot"
    BOTH = "both"


class FaultKind(enum.Enum):
    FLIP = "flip"
    DROP = "drop"
    GARBAGE = "garbage"
    CUT = "cut"


@dataclass(frozen=True)
class Fault:
    """One fault to inject; `count`/`window` for bytes and bits, `seconds` for a cut."""

    kind: FaultKind
    count: int = 0
    window: int = 0
    seconds: float = 0.0

    def check(self) -> Fault:
        if self.kind is FaultKind.CUT:
            if not 0 < self.seconds <= 3600:
                raise BadRequest(f"cut needs 0 < seconds <= 3600, got {self.seconds}")
            return self
        if not 0 < self.count <= MAX_FAULT_COUNT:
            raise BadRequest(f"{self.kind.value} needs 0 < count <= {MAX_FAULT_COUNT}")
        bad_window = self.window * 8 < self.count or self.window > MAX_FAULT_COUNT
        if self.kind is FaultKind.FLIP and self.window and bad_window:
            raise BadRequest(f"cannot flip {self.count} bits within {self.window} bytes")
        return self


@dataclass(frozen=True)
class Noise:
    """Random faults at rates: per byte for flips and drops, per delivered chunk for garbage."""

    flip: float = 0.0
    drop: float = 0.0
    garbage: float = 0.0


class Lane:
    """One direction of the line: reads what `src`'s client wrote, delivers to `dst`."""

    def __init__(
        self, name: str, src: PtyPort, dst: PtyPort, baud: int, seed: int | None = None
    ) -> None:
        self.name = name
        self._src = src
        self._dst = dst
        self._rate = baud / BITS_PER_BYTE
        self.baud = baud
        self._rng = random.Random(seed)  # noise, not crypto
        self._noise = Noise()
        self._capture: bytearray | None = None
        self._put = bytearray()
        self._lock = threading.Lock()
        self._flips: deque[int] = deque()
        self._drop = 0
        self._garbage = bytearray()
        self._cut_until = 0.0
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self.counters = dict.fromkeys(
            ("bytes_in", "bytes_out", "dropped", "flipped_bits", "garbage", "cut_lost", "overrun"),
            0,
        )

    # ----- control ------------------------------------------------------------------------

    def set_baud(self, baud: int) -> None:
        with self._lock:
            self.baud = baud
            self._rate = baud / BITS_PER_BYTE

    def set_noise(self, noise: Noise) -> None:
        with self._lock:
            self._noise = noise

    def put(self, data: bytes) -> None:
        """Deliver `data` as if the sending side had written it (replays, forgeries)."""
        with self._lock:
            self._put.extend(data)
        self._wake()

    def start_capture(self) -> None:
        with self._lock:
            self._capture = bytearray()

    def captured(self) -> bytes:
        with self._lock:
            return bytes(self._capture) if self._capture is not None else b""

    def inject(self, fault: Fault) -> None:
        with self._lock:
            if fault.kind is FaultKind.FLIP:
                if fault.window:
                    masks = [0] * fault.window
                    for pos in self._rng.sample(range(fault.window * 8), fault.count):
                        masks[pos // 8] |= 1 << (pos % 8)
                else:
                    masks = [1 << self._rng.randrange(8) for _ in range(fault.count)]
                for i, mask in enumerate(masks):
                    if i < len(self._flips):
                        self._flips[i] |= mask
                    else:
                        self._flips.append(mask)
            elif fault.kind is FaultKind.DROP:
                self._drop += fault.count
            elif fault.kind is FaultKind.GARBAGE:
                self._garbage.extend(self._rng.randbytes(fault.count))
            else:
                self._cut_until = max(self._cut_until, time.monotonic() + fault.seconds)
        log.info("fault on %s: %s", self.name, _describe(fault))
        self._wake()

    def clear(self) -> None:
        with self._lock:
            self._flips.clear()
            self._drop = 0
            self._garbage.clear()
            self._cut_until = 0.0
            self._noise = Noise()

    def status(self) -> dict[str, Any]:
        with self._lock:
            pending = {
                "flip_bits": sum(bin(m).count("1") for m in self._flips),
                "drop": self._drop,
                "garbage": len(self._garbage),
                "cut_for": round(max(0.0, self._cut_until - time.monotonic()), 3),
            }
            return {"baud": self.baud, "pending": pending, "counters": dict(self.counters)}

    # ----- thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"lane-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        buf = bytearray()
        buf_since = 0.0  # when the oldest byte in `buf` arrived
        line_free = 0.0  # when the line finished the last byte it carried
        inflight = b""
        due = 0.0
        watch_both = [self._wake_r, self._src.master_fd]
        watch_wake = [self._wake_r]
        while not self._stop:
            # Unlocked peek (each change wakes this loop, which then looks again under the lock):
            # most turns have nothing injected and need no lock.
            if self._garbage or self._put:
                with self._lock:
                    buf_since = self._take_garbage(buf, buf_since)
            rate = self._rate
            now = time.monotonic()
            if not inflight and buf:
                n = min(len(buf), max(1, int(rate * TICK)))
                inflight = bytes(buf[:n])
                del buf[:n]
                due = max(line_free, buf_since) + n / rate
            if inflight and now >= due:
                self._deliver(inflight)
                line_free, inflight = due, b""
                continue
            watch = watch_both if len(buf) < LANE_BUFFER else watch_wake
            timeout = max(0.0, due - now) if inflight else None
            try:
                ready, _, _ = select.select(watch, [], [], timeout)
            except (OSError, ValueError):
                return  # descriptors closed under us: shutting down
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 1024)
            if self._src.master_fd in ready:
                # Under the lock, garbage injected before these bytes were written goes first.
                with self._lock:
                    if self._garbage or self._put:
                        buf_since = self._take_garbage(buf, buf_since)
                    data = self._src.read(max(0, LANE_BUFFER - len(buf)))
                if data:
                    if not buf:
                        buf_since = time.monotonic()
                    buf.extend(data)
                    self.counters["bytes_in"] += len(data)

    def _take_garbage(self, buf: bytearray, buf_since: float) -> float:
        """Move injected garbage and put bytes onto the line (lock held); the new
        `buf_since`."""
        if not buf:
            buf_since = time.monotonic()
        buf.extend(self._garbage)
        self.counters["garbage"] += len(self._garbage)
        self._garbage.clear()
        buf.extend(self._put)
        self._put.clear()
        return buf_since

    def _deliver(self, chunk: bytes) -> None:
        with self._lock:
            if time.monotonic() < self._cut_until:
                self.counters["cut_lost"] += len(chunk)
                return
            # no fault pending (the usual case): no Python loop over the bytes
            faulty = self._drop or self._flips
            out = self._apply_faults(chunk) if faulty else bytearray(chunk)
            out = self._add_noise(out)
        if not out:
            return
        written = self._dst.write(bytes(out))
        if self._capture is not None:
            with self._lock:
                self._capture += out[:written]
        self.counters["bytes_out"] += written
        self.counters["overrun"] += len(out) - written
        log.log(TRACE, "%s: %d bytes", self.name, written)

    def _apply_faults(self, chunk: bytes) -> bytearray:
        """`chunk` after the pending drops and flips, byte by byte (lock held)."""
        out = bytearray()
        for sent in chunk:
            if self._drop:
                self._drop -= 1
                self.counters["dropped"] += 1
                continue
            b = sent
            if self._flips:
                mask = self._flips.popleft()
                b ^= mask
                self.counters["flipped_bits"] += bin(mask).count("1")
            out.append(b)
        return out

    def _add_noise(self, data: bytearray) -> bytearray:
        """Random drops, flips and garbage at the noise rates (lock held)."""
        noise = self._noise
        if not (noise.flip or noise.drop or noise.garbage):
            return data
        out = bytearray()
        for sent in data:
            if noise.drop and self._rng.random() < noise.drop:
                self.counters["dropped"] += 1
                continue
            b = sent
            if noise.flip and self._rng.random() < noise.flip:
                b ^= 1 << self._rng.randrange(8)
                self.counters["flipped_bits"] += 1
            out.append(b)
        if noise.garbage and self._rng.random() < noise.garbage:
            junk = self._rng.randbytes(self._rng.randrange(1, 24))
            pos = self._rng.randrange(len(out) + 1)
            out[pos:pos] = junk
            self.counters["garbage"] += len(junk)
        return out


def _describe(fault: Fault) -> str:
    if fault.kind is FaultKind.CUT:
        return f"cut for {fault.seconds}s"
    if fault.kind is FaultKind.FLIP:
        where = f"within the next {fault.window} byte(s)" if fault.window else "one per byte"
        return f"flip {fault.count} bit(s) {where}"
    return f"{fault.kind.value} {fault.count} byte(s)"


class SerialLine:
    """The hot and cold ports, joined by a paced, fault-injectable null-modem relay."""

    def __init__(self, hot_link: Path, cold_link: Path, baud: int, seed: int | None = None) -> None:
        if baud <= 0:
            raise BadRequest(f"baud must be positive, got {baud}")
        self.hot = PtyPort(hot_link)
        self.cold = PtyPort(cold_link)
        self.baud = baud
        self.seed = seed
        self._lanes: dict[Direction, Lane] = {}

    def start(self) -> None:
        try:
            self.hot.open()
            self.cold.open()
        except BaseException:
            self.close()
            raise
        self._lanes = {
            Direction.HOT_TO_COLD: Lane(
                Direction.HOT_TO_COLD.value, self.hot, self.cold, self.baud, self.seed
            ),
            Direction.COLD_TO_HOT: Lane(
                Direction.COLD_TO_HOT.value,
                self.cold,
                self.hot,
                self.baud,
                None if self.seed is None else self.seed + 1,
            ),
        }
        for lane in self._lanes.values():
            lane.start()
        log.info("serial line up at %d baud: %s <-> %s", self.baud, self.hot.link, self.cold.link)

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.stop()
        self._lanes = {}
        self.hot.close()
        self.cold.close()

    def lanes(self, direction: Direction) -> list[Lane]:
        if direction is Direction.BOTH:
            return list(self._lanes.values())
        return [self._lanes[direction]]

    def inject(self, fault: Fault, direction: Direction) -> None:
        fault = fault.check()
        for lane in self.lanes(direction):
            lane.inject(fault)

    def clear(self, direction: Direction = Direction.BOTH) -> None:
        for lane in self.lanes(direction):
            lane.clear()
        log.info("faults cleared (%s)", direction.value)

    def set_noise(self, noise: Noise, direction: Direction = Direction.BOTH) -> None:
        for lane in self.lanes(direction):
            lane.set_noise(noise)

    def put(self, direction: Direction, data: bytes) -> None:
        """Bytes on the line as if the sending side of `direction` had written them."""
        for lane in self.lanes(direction):
            lane.put(data)

    def start_capture(self, direction: Direction) -> None:
        for lane in self.lanes(direction):
            lane.start_capture()

    def captured(self, direction: Direction) -> bytes:
        return b"".join(lane.captured() for lane in self.lanes(direction))

    def fault_counts(self) -> dict[str, int]:
        """Faults applied so far, per lane and kind."""
        return {
            f"{lane.name} {kind}": lane.counters[kind]
            for lane in self._lanes.values()
            for kind in ("flipped_bits", "dropped", "garbage", "cut_lost")
        }

    def set_baud(self, baud: int) -> None:
        if isinstance(baud, bool) or not isinstance(baud, int) or not 50 <= baud <= 4_000_000:
            raise BadRequest(f"baud must be an integer in 50..4000000, got {baud!r}")
        self.baud = baud
        for lane in self._lanes.values():
            lane.set_baud(baud)
        log.info("serial line now at %d baud", baud)

    def status(self) -> dict[str, Any]:
        return {
            "hot": {"link": str(self.hot.link), "device": self.hot.device},
            "cold": {"link": str(self.cold.link), "device": self.cold.device},
            "baud": self.baud,
            "lanes": {d.value: lane.status() for d, lane in self._lanes.items()},
        }
