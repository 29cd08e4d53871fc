"""Append-only audit log of every signature the hot HSM makes: who, what, how much; never keys."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class AuditLog:
    """One JSON object per line; fsync'd, so a crash loses no record of a signature given.

    `record` returns only once its line is on disk. Concurrent records share fsyncs (group
    commit): each line is appended at once, then one fsync covers every line appended before
    it started, so N threads signing at the same time wait for about one fsync, not N.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()  # the file descriptor and the append count
        self._sync_lock = threading.Lock()  # one fsync at a time
        self._fd: int | None = None
        self._appended = 0
        self._synced = 0

    def record(self, event: str, **fields: Any) -> None:
        """Append one record and return once it is on disk."""
        self.sync(self.append(event, **fields))

    def append(self, event: str, **fields: Any) -> int:
        """Write one record without waiting for the disk; returns its number for `sync`. A
        caller that must not answer before the record is durable calls `sync` before that
        (meanwhile it may wait for other disk work, and other records may share the fsync)."""
        line = json.dumps({"at": time.time(), "event": event, **fields}, sort_keys=True)
        data = (line + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            written = os.write(self._fd, data)
            if written != len(data):  # a regular file takes it whole, or raises (disk full)
                raise OSError(f"audit log: short write ({written} of {len(data)} bytes)")
            self._appended += 1
            return self._appended

    def sync(self, mine: int) -> None:
        """Return once record number `mine` (and every one before it) is on disk."""
        with self._sync_lock:
            if self._synced >= mine:
                return  # an fsync that started after our append covered it
            with self._lock:
                upto = self._appended
                fd = self._fd
            if fd is None:
                raise OSError("audit log: closed before its records were synced")
            os.fsync(fd)
            self._synced = upto

    def close(self) -> None:
        with self._sync_lock, self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
                self._synced = self._appended

    def head(self) -> dict[str, Any]:
        """The newest record's time and event (read from the file's tail, not the whole log)."""
        try:
            with self.path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - 4096))
                tail = f.read().splitlines()
        except FileNotFoundError:
            return {"last_event": "", "last_at": None}
        for raw in reversed(tail):
            try:
                last = json.loads(raw)
            except ValueError:
                continue  # the first line of the window may be cut
            return {"last_event": str(last.get("event", "")), "last_at": last.get("at")}
        return {"last_event": "", "last_at": None}

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text(encoding="utf-8").splitlines() if x]
