"""Group commit: the writes that request threads of one process hand in while a commit is
under way are written together in the next transaction, each writer woken with its own result.

Every write of the API that appends to the hash-chained journal holds the journal's lock from
its append until its commit, so one-transaction-per-request serialises them all at about
1 / (locked statements + commit). Here a group of waiting writes pays that once.

No committer thread: a waiting writer leads when no other does, takes every waiting write
(up to `max_group`), writes them in one transaction and wakes the others; a writer whose
write a leader took is woken done and answers at once, while the next leader (one of the
writers still waiting) writes the writes that came meanwhile. Alone, a request commits its
own write in its own thread with no hand-off, and there is no thread to start after
gunicorn's fork or to stop.

A group that fails is written again one write per transaction, so a bad write fails alone,
except when the error is the database being busy (`is_busy`): a retry one by one would only
wait again, each, for the same lock, so every writer of the group gets that error (a 503,
nothing written). A writer is answered only after its transaction committed (or failed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_GROUP = 64


class _Ticket(Generic[T, R]):
    __slots__ = ("item", "done", "result", "error")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommitter(Generic[T, R]):
    """Writes items in groups with `write(items) -> results` (one transaction per call, its
    results in the items' order); `submit(item)` returns the item's result or raises its error."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Sequence[R]],
        *,
        max_group: int = MAX_GROUP,
        shared_error: Callable[[BaseException], bool] = lambda exc: False,
    ) -> None:
        self._write = write
        self._max = max(1, max_group)
        self._shared_error = shared_error
        self._queue: list[_Ticket[T, R]] = []
        self._queue_lock = threading.Lock()
        # Waiters sleep on this (with the queue's lock) until their write is done or nobody
        # leads: a writer whose write a group took answers at once, never waiting while the
        # next leader writes the whole of the next group.
        self._changed = threading.Condition(self._queue_lock)
        self._leading = False  # one leader at a time writes a group (set under `_changed`)
        self.groups = 0  # transactions committed or failed (for tests and benchmarks)
        self.written = 0

    def submit(self, item: T) -> R:
        ticket: _Ticket[T, R] = _Ticket(item)
        with self._changed:
            self._queue.append(ticket)
        while self._lead_or_wait(ticket):
            try:
                with self._queue_lock:
                    group = self._queue[: self._max]
                    del self._queue[: self._max]
                self._run(group)
            finally:
                with self._changed:
                    self._leading = False
                    self._changed.notify_all()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]  # set with done, unless error

    def _lead_or_wait(self, ticket: _Ticket[T, R]) -> bool:
        """Wait until `ticket` is done (False) or nobody leads, then lead (True)."""
        with self._changed:
            while not ticket.done:
                if not self._leading:
                    self._leading = True
                    return True
                self._changed.wait()
            return False

    def _run(self, group: list[_Ticket[T, R]]) -> None:
        try:
            self._finish(group, self._write([t.item for t in group]))
        except BaseException as exc:
            if not isinstance(exc, Exception):  # the thread is being stopped: nobody waits
                self._fail(group, exc)
                raise
            if len(group) == 1 or self._shared_error(exc):
                self._fail(group, exc)
            else:
                log.warning(
                    "a group of %d writes failed (%s): writing them one by one",
                    len(group),
                    type(exc).__name__,
                )
                for t in group:
                    self._run([t])
                return
        self.groups += 1
        self.written += len(group)

    @staticmethod
    def _fail(group: list[_Ticket[T, R]], exc: BaseException) -> None:
        for t in group:
            t.error = exc
            t.done = True

    @staticmethod
    def _finish(group: list[_Ticket[T, R]], results: Sequence[R]) -> None:
        if len(results) != len(group):
            raise RuntimeError(f"{len(results)} results for {len(group)} writes")
        for t, r in zip(group, results, strict=True):
            t.result = r
            t.done = True
