"""The cold HSM's persistent state: accounts, used request numbers, channels, alerts.

The only module of the cold HSM that speaks SQL. Secrets are stored only as blobs already
encrypted under the token's AES key (see `cc_common.token`); this module never sees a
plaintext seed. SQLite in the cold state directory, one connection guarded by a lock
(the cold HSM is a single process and its link server calls in from one thread at a time).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account INTEGER PRIMARY KEY,
    network TEXT NOT NULL,
    receiving_seed BLOB NOT NULL,
    cosigner_seed BLOB NOT NULL,
    hot_pubkey BLOB NOT NULL,
    recovery_xpub TEXT NOT NULL,
    recovery_fingerprint BLOB NOT NULL DEFAULT x'',
    vdevice_identity BLOB NOT NULL,
    settlement_descriptor TEXT NOT NULL,
    settlement_index INTEGER NOT NULL DEFAULT 0,
    frozen INTEGER NOT NULL DEFAULT 0,
    frozen_reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS used_requests (
    account INTEGER NOT NULL,
    user_tx_no TEXT NOT NULL,
    txid TEXT NOT NULL,
    signed_at REAL NOT NULL,
    PRIMARY KEY (account, user_tx_no)
);
CREATE TABLE IF NOT EXISTS channels (
    account INTEGER NOT NULL,
    c_id TEXT NOT NULL,
    channel_pubkey BLOB NOT NULL,
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (account, c_id)
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    account INTEGER,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    handed_over INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    blob BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class AccountRecord:
    """An account as the cold HSM keeps it (seeds still encrypted)."""

    account: int
    network: str
    receiving_seed: bytes
    cosigner_seed: bytes
    hot_pubkey: bytes
    recovery_xpub: str
    vdevice_identity: bytes
    settlement_descriptor: str
    settlement_index: int = 0
    frozen: bool = False
    frozen_reason: str = ""
    recovery_fingerprint: bytes = b""


@dataclass(frozen=True)
class ChannelRecord:
    account: int
    c_id: str
    channel_pubkey: bytes
    expires_at: float


@dataclass(frozen=True)
class AlertRecord:
    id: int
    at: float
    account: int | None
    kind: str
    message: str


class ColdStore:
    """SQLite-backed state of the cold HSM."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of change (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- secrets (already encrypted blobs) -------------------------------------------------
    def put_secret(self, name: str, blob: bytes) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO secrets (name, blob) VALUES (?, ?)", (name, blob))

    def get_secret(self, name: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT blob FROM secrets WHERE name = ?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    # -- accounts ---------------------------------------------------------------------------
    def add_account(self, rec: AccountRecord) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO accounts (account, network, receiving_seed, cosigner_seed, hot_pubkey,"
                " recovery_xpub, recovery_fingerprint, vdevice_identity, settlement_descriptor,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.account,
                    rec.network,
                    rec.receiving_seed,
                    rec.cosigner_seed,
                    rec.hot_pubkey,
                    rec.recovery_xpub,
                    rec.recovery_fingerprint,
                    rec.vdevice_identity,
                    rec.settlement_descriptor,
                    time.time(),
                ),
            )

    def get_account(self, account: int) -> AccountRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT account, network, receiving_seed, cosigner_seed, hot_pubkey, recovery_xpub,"
                " vdevice_identity, settlement_descriptor, settlement_index, frozen, frozen_reason,"
                " recovery_fingerprint FROM accounts WHERE account = ?",
                (account,),
            ).fetchone()
        if row is None:
            return None
        return AccountRecord(
            account=row[0],
            network=row[1],
            receiving_seed=bytes(row[2]),
            cosigner_seed=bytes(row[3]),
            hot_pubkey=bytes(row[4]),
            recovery_xpub=row[5],
            vdevice_identity=bytes(row[6]),
            settlement_descriptor=row[7],
            settlement_index=row[8],
            frozen=bool(row[9]),
            frozen_reason=row[10],
            recovery_fingerprint=bytes(row[11]),
        )

    def list_accounts(self) -> list[tuple[int, bool, str]]:
        """(account, frozen, reason) for every account, for the cold console."""
        with self._lock:
            rows = self._db.execute(
                "SELECT account, frozen, frozen_reason FROM accounts ORDER BY account"
            ).fetchall()
        return [(r[0], bool(r[1]), r[2]) for r in rows]

    def set_frozen(self, account: int, frozen: bool, reason: str = "") -> bool:
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE accounts SET frozen = ?, frozen_reason = ? WHERE account = ?",
                (int(frozen), reason if frozen else "", account),
            )
        return cur.rowcount == 1

    def next_settlement_index(self, account: int) -> int:
        """Reserve the next settlement-address index of the account."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT settlement_index FROM accounts WHERE account = ?", (account,)
            ).fetchone()
            db.execute(
                "UPDATE accounts SET settlement_index = settlement_index + 1 WHERE account = ?",
                (account,),
            )
        return int(row[0])

    # -- used request numbers -----------------------------------------------------------------
    def request_used(self, account: int, user_tx_no: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM used_requests WHERE account = ? AND user_tx_no = ?",
                (account, user_tx_no),
            ).fetchone()
        return row is not None

    def used_request_txid(self, account: int, user_tx_no: str) -> str | None:
        """The txid co-signed under `user_tx_no`, or None if it was never used."""
        with self._lock:
            row = self._db.execute(
                "SELECT txid FROM used_requests WHERE account = ? AND user_tx_no = ?",
                (account, user_tx_no),
            ).fetchone()
        return None if row is None else str(row[0])

    def mark_request_used(self, account: int, user_tx_no: str, txid: str) -> bool:
        """Record `user_tx_no` as co-signed; False if it already was (atomic check-and-set)."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO used_requests (account, user_tx_no, txid, signed_at)"
                " VALUES (?, ?, ?, ?)",
                (account, user_tx_no, txid, time.time()),
            )
        return cur.rowcount == 1

    # -- channels -------------------------------------------------------------------------------
    def put_channel(self, rec: ChannelRecord) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO channels (account, c_id, channel_pubkey, expires_at,"
                " created_at) VALUES (?, ?, ?, ?, ?)",
                (rec.account, rec.c_id, rec.channel_pubkey, rec.expires_at, time.time()),
            )

    def get_channel(self, account: int, c_id: str) -> ChannelRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT account, c_id, channel_pubkey, expires_at FROM channels"
                " WHERE account = ? AND c_id = ?",
                (account, c_id),
            ).fetchone()
        if row is None:
            return None
        return ChannelRecord(row[0], row[1], bytes(row[2]), row[3])

    # -- alerts ----------------------------------------------------------------------------------
    def add_alert(self, account: int | None, kind: str, message: str) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO alerts (at, account, kind, message) VALUES (?, ?, ?, ?)",
                (time.time(), account, kind, message),
            )
        return int(cur.lastrowid or 0)

    def take_alerts(self) -> list[AlertRecord]:
        """Alerts not yet handed over to the hot side, marked handed over (at most once)."""
        with self.transaction() as db:
            rows = db.execute(
                "SELECT id, at, account, kind, message FROM alerts WHERE handed_over = 0"
                " ORDER BY id"
            ).fetchall()
            db.execute("UPDATE alerts SET handed_over = 1 WHERE handed_over = 0")
        return [AlertRecord(*r) for r in rows]

    def pending_alert_count(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM alerts WHERE handed_over = 0").fetchone()
        return int(row[0])

    def list_alerts(self, limit: int = 100) -> list[AlertRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, at, account, kind, message FROM alerts ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [AlertRecord(*r) for r in rows]
