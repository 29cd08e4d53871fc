"""Persistent message counters: what makes a replay after a restart still a replay.

Each end stores two values per link: the highest counter it accepted from the peer (written
before a message is acted on) and a reservation of its own sending counter (written once per
`LinkConfig.counter_reserve` messages, so a restart skips ahead instead of reusing counters).
Values only ever grow: `save` keeps the larger of the stored and the given value.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Protocol


class CounterStore(Protocol):
    """A tiny monotonic key -> int store."""

    def load(self, name: str) -> int:
        """The stored value, 0 if none."""
        ...

    def save(self, name: str, value: int) -> None:
        """Durably store max(stored, value) before returning."""
        ...


class MemoryCounterStore:
    """For tests and for links whose replay protection need not survive a restart."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._lock = threading.Lock()

    def load(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def save(self, name: str, value: int) -> None:
        with self._lock:
            self._values[name] = max(self._values.get(name, 0), value)


class JsonCounterStore:
    """A JSON file replaced atomically (write, fsync, rename) on every save."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self._values = {str(k): int(v) for k, v in data.items()}

    def load(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def save(self, name: str, value: int) -> None:
        with self._lock:
            if value <= self._values.get(name, 0):
                return
            self._values[name] = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self._values, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)


class SqliteCounterStore:
    """A table in an SQLite file (e.g. next to the HSM's own state)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS link_counters (name TEXT PRIMARY KEY, value INTEGER)"
        )

    def load(self, name: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM link_counters WHERE name = ?", (name,)
            ).fetchone()
        return int(row[0]) if row else 0

    def save(self, name: str, value: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO link_counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)",
                (name, value),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
