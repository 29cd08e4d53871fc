"""The node's data directory: one SQLite file with every block ever accepted and the mempool.

Blocks of abandoned branches stay stored (with their failure flag) so `reconsiderblock` can
bring them back after a restart. The UTXO set is not stored: it is rebuilt at start by
replaying the active chain, which takes well under a second for a test chain.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    hash BLOB PRIMARY KEY,
    prev BLOB NOT NULL,
    height INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    failed INTEGER NOT NULL DEFAULT 0,
    header BLOB NOT NULL,
    ntx INTEGER NOT NULL,
    size INTEGER NOT NULL,
    stripped INTEGER NOT NULL,
    raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS mempool (
    seq INTEGER PRIMARY KEY,
    raw BLOB NOT NULL,
    time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class StoredBlock:
    """A block's index entry as stored (the raw block is read on demand)."""

    hash: bytes
    prev: bytes
    height: int
    seq: int
    failed: bool
    header: bytes
    ntx: int
    size: int
    stripped: int


class Storage:
    """SQLite access; the caller (the node, under its lock) decides when to commit."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._db.commit()

    def load_index(self) -> list[StoredBlock]:
        rows = self._db.execute(
            "SELECT hash, prev, height, seq, failed, header, ntx, size, stripped "
            "FROM blocks ORDER BY seq"
        ).fetchall()
        return [
            StoredBlock(bytes(r[0]), bytes(r[1]), r[2], r[3], bool(r[4]), bytes(r[5]), *r[6:])
            for r in rows
        ]

    def put_block(self, entry: StoredBlock, raw: bytes) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO blocks "
            "(hash, prev, height, seq, failed, header, ntx, size, stripped, raw) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.hash,
                entry.prev,
                entry.height,
                entry.seq,
                int(entry.failed),
                entry.header,
                entry.ntx,
                entry.size,
                entry.stripped,
                raw,
            ),
        )

    def block_raw(self, block_hash: bytes) -> bytes:
        row = self._db.execute("SELECT raw FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        if row is None:
            raise KeyError(block_hash.hex())
        return bytes(row[0])

    def set_failed(self, block_hash: bytes, failed: bool) -> None:
        self._db.execute("UPDATE blocks SET failed = ? WHERE hash = ?", (int(failed), block_hash))

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def load_mempool(self) -> list[tuple[bytes, int]]:
        rows = self._db.execute("SELECT raw, time FROM mempool ORDER BY seq").fetchall()
        return [(bytes(r[0]), int(r[1])) for r in rows]

    def replace_mempool(self, entries: list[tuple[bytes, int]]) -> None:
        self._db.execute("DELETE FROM mempool")
        self._db.executemany(
            "INSERT INTO mempool (seq, raw, time) VALUES (?, ?, ?)",
            [(i, raw, t) for i, (raw, t) in enumerate(entries)],
        )

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*"))

    def commit(self) -> None:
        self._db.commit()

    def close(self) -> None:
        self._db.commit()
        self._db.close()
