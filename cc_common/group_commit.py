"""Group commit: concurrent requests share one durable commit (one fsync) of a SQLite file.

A state written by many request threads through one connection (the hot HSM's ledger and
state) would otherwise commit, and fsync, once per change, each behind the lock that orders
the changes: N requests arriving together queue for N fsyncs. Here a change is made under the
owner's lock inside an open transaction and numbered (`changed`); its caller then waits outside
that lock (`durable`) and the first waiter commits every change made so far, so the N wait for
about one fsync. No call returns before its own change is on disk, and if a commit fails,
every caller whose change it carried gets the error (the transaction was rolled back).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager


class GroupCommit:
    """Numbers the changes made under `lock` and makes them durable with `commit`."""

    def __init__(self, lock: AbstractContextManager[object], commit: Callable[[], None]) -> None:
        self._lock = lock
        self._commit = commit
        self._sync_lock = threading.Lock()
        self._changes = 0  # changes made (under `lock`)
        self._durable = 0  # changes committed or lost
        self._lost: list[tuple[int, int]] = []  # (first, last) changes a failed commit undid

    def changed(self) -> int:
        """The number of the change just made. Caller holds `lock`."""
        self._changes += 1
        return self._changes

    def durable(self, change: int) -> None:
        """Return once `change` is committed; raise if the commit carrying it failed."""
        with self._sync_lock:
            if self._durable < change:
                with self._lock:
                    upto = self._changes
                    try:
                        self._commit()
                    except sqlite3.Error:
                        self._lost.append((self._durable + 1, upto))
                        self._durable = upto
                        raise
                self._durable = upto
            if any(first <= change <= last for first, last in self._lost):
                raise sqlite3.OperationalError("the change was not saved (its commit failed)")
