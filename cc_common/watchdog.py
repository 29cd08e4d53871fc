"""A watchdog over the requests a server process is serving, so a stall says where it is.

A request still running past its deadline (what its caller said it waits, `X-CC-Deadline`)
is logged once, at WARNING, with its request line and the Python stack of the thread serving
it: by then the caller has given up, and nothing else would ever name the line it is stuck
on. When every request thread of the process has been busy for a while, that is logged too:
new requests then wait in the server's queue, where no stack can show them.

A stack is file, line, function and source text only: no argument or local value, so no
amount, key or token reaches the log. Request lines are given without their query string.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

STACK_FRAMES = 30  # innermost frames shown per stuck thread
SATURATED_AFTER = 5.0  # seconds every request thread is busy before it is logged
_STDLIB = sysconfig.get_paths()["stdlib"]


@dataclass
class _Request:
    what: str
    thread_id: int
    thread_name: str
    started: float
    deadline: float
    reported: bool = False

    def overdue(self, now: float) -> bool:
        return not self.reported and now - self.started > self.deadline


def _short(path: str) -> str:
    """A source path without its install prefix: `requests/utils.py`, `threading.py`."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    for prefix in (os.getcwd(), _STDLIB):
        if path.startswith(prefix + os.sep):
            return path[len(prefix) + 1 :]
    return path


def thread_stack(thread_id: int, frames: int = STACK_FRAMES) -> str:
    """The current Python stack of thread `thread_id` on one line, outermost first, each frame
    `file:line function`, and the source line the innermost one is at."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return "(the thread has no Python frame)"
    summary = traceback.extract_stack(frame)[-frames:]
    where = " > ".join(f"{_short(f.filename)}:{f.lineno} {f.name}" for f in summary)
    innermost = next((f.line for f in reversed(summary) if f.line), "")
    return f"{where} | {innermost}" if innermost else where


class Watchdog:
    """In-flight requests of one process and a daemon thread that checks them every `every`
    seconds. `capacity` is how many requests the process serves at once (gunicorn's threads),
    if bounded; the thread starts on first use, so a server that forks workers gets one per
    worker."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        every: float = 0.5,
        capacity: int | None = None,
        saturated_after: float = SATURATED_AFTER,
    ) -> None:
        self.log = log
        self.every = every
        self.capacity = capacity
        self.saturated_after = saturated_after
        self._requests: dict[int, _Request] = {}
        self._keys = itertools.count(1)
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._saturated_since: float | None = None
        self._saturation_reported = False
        # A fork (gunicorn's workers) copies the lock as it was and none of the threads:
        # the child starts with its own lock, no requests and no watching thread yet.
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._requests = {}
        self._pid = None

    # -- the server's side ------------------------------------------------------------
    def begin(self, what: str, deadline: float) -> int:
        """Watch the current thread's request `what` for `deadline` seconds from now."""
        self._ensure_thread()
        thread = threading.current_thread()
        request = _Request(what, thread.ident or 0, thread.name, time.monotonic(), deadline)
        with self._lock:
            key = next(self._keys)
            self._requests[key] = request
        return key

    def extend(self, key: int, deadline: float) -> None:
        """Let request `key` run `deadline` seconds from its start (a long poll says so)."""
        with self._lock:
            request = self._requests.get(key)
            if request is not None:
                request.deadline = max(request.deadline, deadline)

    def end(self, key: int) -> None:
        with self._lock:
            request = self._requests.pop(key, None)
        if request is not None and request.reported:
            took = time.monotonic() - request.started
            self.log.warning(
                "watchdog: %s finished after %.1fs (deadline %.1fs)",
                request.what,
                took,
                request.deadline,
            )

    @contextmanager
    def watch(self, what: str, deadline: float) -> Iterator[int]:
        key = self.begin(what, deadline)
        try:
            yield key
        finally:
            self.end(key)

    # -- the watching side ------------------------------------------------------------
    def check(self, now: float | None = None) -> int:
        """Log every request newly past its deadline (and a saturation); returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            overdue = [r for r in self._requests.values() if r.overdue(now)]
            for r in overdue:
                r.reported = True
            in_flight = sorted(self._requests.values(), key=lambda r: r.started)
        for r in overdue:
            others = len(in_flight) - 1
            self.log.warning(
                "watchdog: %s still running after %.1fs (deadline %.1fs), %d other request(s) "
                "in flight; thread %s of pid %d is at: %s",
                r.what,
                now - r.started,
                r.deadline,
                others,
                r.thread_name,
                os.getpid(),
                thread_stack(r.thread_id),
            )
        self._check_saturation(now, in_flight)
        return len(overdue)

    def _check_saturation(self, now: float, in_flight: list[_Request]) -> None:
        if self.capacity is None or len(in_flight) < self.capacity:
            self._saturated_since = None
            self._saturation_reported = False
            return
        if self._saturated_since is None:
            self._saturated_since = now
        busy = now - self._saturated_since
        if busy >= self.saturated_after and not self._saturation_reported:
            self._saturation_reported = True
            lines = "; ".join(f"{r.what} ({now - r.started:.1f}s)" for r in in_flight)
            self.log.warning(
                "watchdog: all %d request threads busy for %.1fs, new requests wait in the "
                "server's queue: %s",
                self.capacity,
                busy,
                lines,
            )

    def _ensure_thread(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            self._pid = pid
        threading.Thread(target=self._run, name="request-watchdog", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            try:
                self.check()
            except Exception:  # the watchdog must outlive any surprise of its own
                self.log.exception("watchdog: check failed")
