"""Persistence of the hot HSM's policy usage: the only place its limits touch SQL.

Two tables in their own SQLite file in the hot state directory: signing requests (for the
per-minute limit) and signed amounts and fees (for the daily limits). WAL with full sync.
Callers serialise access (`PolicyLedger` holds a lock around each decision and its write) and
group commits: changes join the transaction `begin` opens, and one `commit` (one fsync) makes
those of every concurrent request durable at once. The window questions (`*_since`) are
answered from `cc_common.window` sums of the rows of the last two days, kept beside the tables.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cc_common import sqlite_tx
from cc_common.window import WindowSums, floor_below

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS requests (account INTEGER NOT NULL, at REAL NOT NULL);"
    "CREATE TABLE IF NOT EXISTS sends (account INTEGER NOT NULL, at REAL NOT NULL,"
    " amount INTEGER NOT NULL, txid TEXT NOT NULL);"
    # each limit decision sums a time window of one account: an index, not a table scan
    "CREATE INDEX IF NOT EXISTS ix_requests_at ON requests (account, at);"
    "CREATE INDEX IF NOT EXISTS ix_sends_at ON sends (account, at);"
)
_ADDED_COLUMNS = (("sends", "fee", "INTEGER NOT NULL DEFAULT 0"),)


class LedgerStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        for table, column, decl in _ADDED_COLUMNS:  # a state made by an older version
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        self._requests = WindowSums(0)
        self._sends = WindowSums(2)  # amount, fee
        self._reload()

    def _reload(self) -> None:
        """The window sums from the tables (at start, and after a commit that failed)."""
        for table, sums, values in (
            ("requests", self._requests, ""),
            ("sends", self._sends, ", amount, fee"),
        ):
            (newest,) = self._db.execute(f"SELECT MAX(at) FROM {table}").fetchone()  # noqa: S608
            floor = floor_below(newest)
            rows = self._db.execute(
                f"SELECT account, at, rowid{values} FROM {table} WHERE at > ?",  # noqa: S608
                (floor,),
            )
            sums.load(rows, floor)

    def begin(self) -> None:
        """Open the transaction the next changes join, unless one is open."""
        sqlite_tx.join(self._db)

    def commit(self) -> None:
        """Make every change since `begin` durable; if that fails, none of them is kept."""
        try:
            sqlite_tx.commit(self._db)
        except sqlite3.Error:
            self._reload()
            raise

    def requests_since(self, account: int, since: float) -> int:
        held = self._requests.since(account, since)
        if held is not None:
            return held[0]
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM requests WHERE account = ? AND at > ?", (account, since)
        ).fetchone()
        return int(n)

    def add_request(self, account: int, at: float) -> None:
        cur = self._db.execute("INSERT INTO requests (account, at) VALUES (?, ?)", (account, at))
        self._requests.add(account, at, int(cur.lastrowid or 0))

    def prune_requests(self, before: float) -> None:
        self._db.execute("DELETE FROM requests WHERE at < ?", (before,))
        self._requests.drop_until(before)

    def forget_sends_before(self, before: float) -> None:
        """Let the window sums forget sends at or before `before` (the table keeps them)."""
        self._sends.drop_until(before)

    def spent_since(self, account: int, since: float) -> int:
        held = self._sends.since(account, since)
        if held is not None:
            return held[1][0]
        (total,) = self._db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM sends WHERE account = ? AND at > ?",
            (account, since),
        ).fetchone()
        return int(total)

    def fees_since(self, account: int, since: float) -> int:
        held = self._sends.since(account, since)
        if held is not None:
            return held[1][1]
        (total,) = self._db.execute(
            "SELECT COALESCE(SUM(fee), 0) FROM sends WHERE account = ? AND at > ?",
            (account, since),
        ).fetchone()
        return int(total)

    def add_send(self, account: int, at: float, amount: int, txid: str, fee: int = 0) -> int:
        cur = self._db.execute(
            "INSERT INTO sends (account, at, amount, txid, fee) VALUES (?, ?, ?, ?, ?)",
            (account, at, amount, txid, fee),
        )
        send_id = int(cur.lastrowid or 0)
        self._sends.add(account, at, send_id, (amount, fee))
        return send_id

    def remove_send(self, send_id: int) -> None:
        self._db.execute("DELETE FROM sends WHERE rowid = ?", (send_id,))
        self._sends.remove(send_id)

    def close(self) -> None:
        self.commit()
        self._db.close()
