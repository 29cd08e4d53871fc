"""Derive an address range on two cores: this process one part, a helper process the rest.

Threads cannot do it: every libsecp256k1 call hands the GIL over, about 1000 times a batch
(benchmarks/RESULTS.md). So each process that derives batches keeps one helper process
(`derive_worker`), started with fork+exec (safe in a threaded process, unlike a bare fork),
lazily on the first large range or early by `start()`. While the helper boots, or while
another thread of this process uses it, or after it died, ranges are derived here alone:
the answer is the same either way, only the time differs. A dead or silent helper is logged
once, killed, and replaced after `RETRY_AFTER` seconds.

Per process: a forked child (gunicorn's workers, multiprocessing) drops its parent's helper
and starts its own when it needs one. The helper reads its requests from a pipe whose only
writer is this process, so it exits when this process closes the pipe (at exit) or dies.
Only public chain keys cross the pipe.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from . import derive_wire as wire
from .bip32 import ChainDeriver, ExtendedKey

log = logging.getLogger(__name__)

MIN_SPLIT = 128  # smaller ranges: a round trip to the helper costs more than half saves
# This process also turns every key into an address afterwards (~2.5 us a P2WPKH address,
# ~3 us a P2WSH one, against ~5.5 us to derive a key through the C extension, where it was
# ~14.5 us; benchmarks/RESULTS.md), so it derives a bit less than half: with two free cores
# both parts then end about together.
PARENT_SHARE = 0.45
ANSWER_TIMEOUT = 10.0  # seconds for half a range even on a badly loaded machine
RETRY_AFTER = 60.0


class HelperFailed(Exception):
    """The helper died, went silent or answered garbage."""


class _Helper:
    """One running helper process and the pipe ends that talk to it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wallet_core.derive_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._to = self.proc.stdin.fileno()
        self._from = self.proc.stdout.fileno()
        self.ready = False
        self.lock = threading.Lock()  # one request in flight

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_ready(self) -> bool:
        """True once the helper said it is ready (never waits)."""
        if not self.ready:
            if not select.select([self._from], [], [], 0)[0]:
                return False
            if self._read(1, time.monotonic() + ANSWER_TIMEOUT) != wire.READY:
                raise HelperFailed("bad ready byte")
            self.ready = True
        return True

    def ask(self, chains: Sequence[ChainDeriver], start: int, count: int) -> None:
        request = wire.encode_request([(d.key.chain_code, d.key.key) for d in chains], start, count)
        try:
            os.write(self._to, request)  # < PIPE_BUF: one write, never partial
        except OSError as exc:
            raise HelperFailed(f"cannot write to it: {exc}") from None

    def answer(self) -> bytes | None:
        """The packed keys asked for, or None if the helper could not derive them."""
        deadline = time.monotonic() + ANSWER_TIMEOUT
        status, size = wire.decode_answer_header(self._read(wire.answer_header_size(), deadline))
        payload = self._read(size, deadline)
        return payload if status == wire.OK else None

    def _read(self, size: int, deadline: float) -> bytes:
        parts = []
        while size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from], [], [], left)[0]:
                raise HelperFailed("no answer in time")
            chunk = os.read(self._from, size)
            if not chunk:
                raise HelperFailed(f"it exited (status {self.proc.poll()})")
            parts.append(chunk)
            size -= len(chunk)
        return b"".join(parts)

    def close(self, timeout: float = 2.0) -> None:
        """Close the pipe (the helper exits on its end) and reap it; kill it if it lingers."""
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def forget(self) -> None:
        """In a forked child: drop our copies of the parent's pipe ends, touch nothing else."""
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


class _Slot:
    """This process's helper (at most one) and when the last one failed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.helper: _Helper | None = None
        self.failed_at: float | None = None
        self.enabled = True
        self.served = 0


_SLOT = _Slot()
_INHERITED: list[_Helper] = []  # a parent's helpers, kept so no destructor reaps them here


def configure(*, enabled: bool) -> None:
    """Turn the helper on or off for this process (off: every range derives in process; a
    running helper idles until `close()`). Turning it on forgets an earlier failure."""
    _SLOT.enabled = enabled
    if enabled:
        _SLOT.failed_at = None


def start(wait: float = 0.0) -> bool:
    """Start this process's helper now, so it is ready before the first batch; with `wait`,
    poll up to that many seconds for it to be ready. True if it is ready."""
    deadline = time.monotonic() + wait
    while _current() is None:
        if time.monotonic() >= deadline or not _SLOT.enabled:
            return False
        time.sleep(0.01)
    return True


def served() -> int:
    """How many ranges helpers of this process have derived a part of (tests, diagnostics)."""
    return _SLOT.served


def helper_pid() -> int | None:
    """The running helper's process id (tests, diagnostics)."""
    helper = _SLOT.helper
    return helper.pid if helper is not None else None


def close() -> None:
    """Stop this process's helper (also run at exit)."""
    with _SLOT.lock:
        helper, _SLOT.helper = _SLOT.helper, None
    if helper is not None:
        helper.close()


def _current() -> _Helper | None:
    """The helper if it is ready, starting one (without waiting for it) when there is none."""
    if not _SLOT.enabled:
        return None
    with _SLOT.lock:
        helper = _SLOT.helper
        if helper is None:
            retry = _SLOT.failed_at is None or time.monotonic() - _SLOT.failed_at > RETRY_AFTER
            if not retry:
                return None
            try:
                helper = _SLOT.helper = _Helper()
            except OSError as exc:
                _SLOT.failed_at = time.monotonic()
                log.warning("cannot start the derivation helper (%s): deriving in process", exc)
                return None
            log.info("derivation helper started (pid %d)", helper.pid)
    if helper.ready:
        return helper
    if not helper.lock.acquire(blocking=False):  # another thread is reading its ready byte
        return None
    try:
        return helper if helper.check_ready() else None
    except HelperFailed as exc:
        _fail(helper, exc)
        return None
    finally:
        helper.lock.release()


def _fail(helper: _Helper, exc: HelperFailed) -> None:
    log.warning("derivation helper (pid %d) failed: %s; deriving in this process", helper.pid, exc)
    with _SLOT.lock:
        if _SLOT.helper is helper:
            _SLOT.helper = None
        _SLOT.failed_at = time.monotonic()
    helper.proc.kill()
    helper.close()


def derive_columns(chain_keys: Sequence[ExtendedKey], start: int, count: int) -> list[bytes]:
    """Child keys start..start+count-1 of each chain key, each chain's keys packed (33 bytes
    each): the first part (`PARENT_SHARE`) derived here, the rest by the helper meanwhile."""
    derivers = [ChainDeriver(k) for k in chain_keys]
    helper = _current() if count >= MIN_SPLIT and derivers else None
    if helper is None or not helper.lock.acquire(blocking=False):
        return [d.packed(start, count) for d in derivers]
    try:
        mid = start + int(count * PARENT_SHARE)
        end = start + count
        theirs: bytes | None = None
        try:
            helper.ask(derivers, mid, end - mid)
            try:
                mine = [d.packed(start, mid - start) for d in derivers]
            finally:
                theirs = helper.answer()  # also after an error here: the pipe stays in step
            _SLOT.served += 1  # under the helper's lock
        except HelperFailed as exc:
            _fail(helper, exc)
            mine = [d.packed(start, mid - start) for d in derivers]
    finally:
        helper.lock.release()
    if theirs is None:  # failed, or the helper found an invalid key: derive (and raise) here
        return [m + d.packed(mid, end - mid) for m, d in zip(mine, derivers, strict=True)]
    size = (end - mid) * wire.KEY_SIZE
    return [m + theirs[i * size : (i + 1) * size] for i, m in enumerate(mine)]


def split_keys(packed: bytes) -> list[bytes]:
    """Packed 33-byte keys as a list."""
    return [packed[i : i + wire.KEY_SIZE] for i in range(0, len(packed), wire.KEY_SIZE)]


def _after_fork_in_child() -> None:
    helper = _SLOT.helper
    _SLOT.lock = threading.Lock()  # another thread may have held it at the fork
    _SLOT.helper = None
    if helper is not None:
        helper.forget()
        _INHERITED.append(helper)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(close)
