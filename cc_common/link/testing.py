"""An emulated serial line for tests and benchmarks: two pty pairs joined by a relay thread.

Each side opens its pty slave path as a serial port, exactly as it would a real device. The
relay forwards at `baudrate / 10` bytes per second per direction (a pty ignores the baud rate)
and injects faults on the way: bit flips, dropped bytes, inserted garbage, a cut line. It can
also capture what passed and inject arbitrary bytes, for replay and forgery tests.

This is test equipment, not part of the link: production opens a real device or the
firmware_sim relay by URL.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import select
import threading
import time
import tty
from dataclasses import dataclass, field
from enum import Enum


class Way(Enum):
    """A direction on the line: from side A to side B, or back."""

    A_TO_B = "a->b"
    B_TO_A = "b->a"


@dataclass
class Faults:
    """Per-direction fault rates: per byte for flips and drops, per chunk for garbage."""

    flip: float = 0.0
    drop: float = 0.0
    garbage: float = 0.0
    cut: bool = False


@dataclass
class _Pipe:
    src: int
    dst: int
    faults: Faults = field(default_factory=Faults)
    pending: bytearray = field(default_factory=bytearray)
    tokens: float = 0.0
    forwarded: int = 0
    capture: bytearray | None = None
    flips: int = 0
    drops: int = 0
    garbage: int = 0


def _pty_pair() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


class PtyLine:
    """Side A at `a_path`, side B at `b_path`; faults and captures per `Way`."""

    def __init__(self, baudrate: int | None = 115200, seed: int = 1) -> None:
        self._a_master, self._a_slave, self.a_path = _pty_pair()
        self._b_master, self._b_slave, self.b_path = _pty_pair()
        self.baudrate = baudrate
        self._rate = baudrate / 10 if baudrate else None
        self._burst = max(32.0, self._rate * 0.004) if self._rate else 0.0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._pipes = {
            Way.A_TO_B: _Pipe(self._a_master, self._b_master),
            Way.B_TO_A: _Pipe(self._b_master, self._a_master),
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pty-line", daemon=True)
        self._thread.start()

    def __enter__(self) -> PtyLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for fd in (self._a_master, self._a_slave, self._b_master, self._b_slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- controls ----------------------------------------------------------------------------

    def set_faults(self, way: Way | None = None, **faults: float | bool) -> None:
        """Set fault rates for one direction, or both when `way` is None."""
        with self._lock:
            for w in [way] if way else list(Way):
                self._pipes[w].faults = Faults(**faults)  # type: ignore[arg-type]  # names are Faults fields

    def clear_faults(self) -> None:
        self.set_faults()

    def cut(self, on: bool = True) -> None:
        """Cut (or restore) the line both ways: everything sent meanwhile is lost."""
        with self._lock:
            for pipe in self._pipes.values():
                pipe.faults = Faults(cut=on)
                if on:
                    pipe.pending.clear()

    def start_capture(self, way: Way) -> None:
        with self._lock:
            self._pipes[way].capture = bytearray()

    def captured(self, way: Way) -> bytes:
        with self._lock:
            cap = self._pipes[way].capture
            return bytes(cap) if cap is not None else b""

    def inject(self, way: Way, data: bytes) -> None:
        """Deliver `data` as if it had been sent on the line in direction `way`."""
        with self._lock:
            self._pipes[way].pending += data

    def forwarded(self, way: Way) -> int:
        """Bytes delivered in direction `way` so far."""
        return self._pipes[way].forwarded

    def fault_counts(self) -> dict[str, int]:
        return {
            f"{w.value} {k}": getattr(p, k)
            for w, p in self._pipes.items()
            for k in ("flips", "drops", "garbage")
        }

    # -- relay thread ------------------------------------------------------------------------

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            busy = any(p.pending for p in self._pipes.values())
            timeout = 0.001 if busy else 0.02
            try:
                ready, _, _ = select.select([self._a_master, self._b_master], [], [], timeout)
            except (OSError, ValueError):
                return
            now = time.monotonic()
            elapsed, last = now - last, now
            with self._lock:
                for pipe in self._pipes.values():
                    if pipe.src in ready:
                        self._read(pipe)
                    self._forward(pipe, elapsed)

    def _read(self, pipe: _Pipe) -> None:
        try:
            data = os.read(pipe.src, 65536)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EIO):
                return
            raise
        faults = pipe.faults
        if faults.cut or not data:
            return
        if faults.flip or faults.drop:
            out = bytearray()
            for sent in data:
                if faults.drop and self._rng.random() < faults.drop:
                    pipe.drops += 1
                    continue
                byte = sent
                if faults.flip and self._rng.random() < faults.flip:
                    byte ^= 1 << self._rng.randrange(8)
                    pipe.flips += 1
                out.append(byte)
            data = bytes(out)
        if faults.garbage and self._rng.random() < faults.garbage:
            pos = self._rng.randrange(len(data) + 1)
            junk = self._rng.randbytes(self._rng.randrange(1, 24))
            data = data[:pos] + junk + data[pos:]
            pipe.garbage += 1
        pipe.pending += data

    def _forward(self, pipe: _Pipe, elapsed: float) -> None:
        if not pipe.pending:
            pipe.tokens = min(pipe.tokens + elapsed * (self._rate or 0), self._burst)
            return
        if self._rate is None:
            n = len(pipe.pending)
        else:
            pipe.tokens = min(pipe.tokens + elapsed * self._rate, self._burst)
            n = min(int(pipe.tokens), len(pipe.pending))
        if n <= 0:
            return
        try:
            written = os.write(pipe.dst, pipe.pending[:n])
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EIO):
                return
            raise
        if pipe.capture is not None:
            pipe.capture += pipe.pending[:written]
        del pipe.pending[:written]
        pipe.forwarded += written
        if self._rate is not None:
            pipe.tokens -= written
