"""The SQL of the spending policy, in the cold state database (`ColdStore`'s connection).

Three tables: the policy in force per account (absent = the account is still pending its
confirmation at the cold console), the changes asked for (a loosening waits there until it
applies or the owner cancels it), and the sends co-signed (amount, destinations, time) that
the rolling limits are counted over.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cc_common.window import WindowSums, floor_below
from hsm_cold.store import SPARE, ColdStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS account_policies (
    account INTEGER PRIMARY KEY,
    policy TEXT NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    vdevice_fingerprint TEXT NOT NULL,
    confirmed_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_changes (
    id TEXT PRIMARY KEY,
    account INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    policy TEXT NOT NULL,
    requested_at REAL NOT NULL,
    applies_at REAL NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_spends (
    account INTEGER NOT NULL,
    user_tx_no TEXT NOT NULL,
    total_sat INTEGER NOT NULL,
    destinations TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (account, user_tx_no)
);
CREATE INDEX IF NOT EXISTS ix_policy_spends_at ON policy_spends (account, at);
CREATE TABLE IF NOT EXISTS policy_destinations (
    account INTEGER NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (account, address)
);
"""
# Every address a send paid, one row each, so "paid before?" is an index lookup and does not
# grow with the account's history; filled from `policy_spends` when the table is first made.
_BACKFILL_DESTINATIONS = (
    "INSERT OR IGNORE INTO policy_destinations (account, address)"
    " SELECT account, value FROM policy_spends, json_each(policy_spends.destinations)"
)


class ChangeState(StrEnum):
    PENDING = "pending"  # a loosening waiting for its delay
    APPLIED = "applied"
    CANCELLED = "cancelled"  # by the owner
    SUPERSEDED = "superseded"  # a later change replaced it before it applied


@dataclass(frozen=True)
class PolicyRow:
    account: int
    policy: str
    seq: int
    vdevice_fingerprint: str
    confirmed_at: float


@dataclass(frozen=True)
class ChangeRow:
    id: str
    account: int
    seq: int
    policy: str
    requested_at: float
    applies_at: float
    state: ChangeState


class PolicyStore:
    """Policy rows over the cold state's connection (one lock, atomic units). The sends of the
    last day and hour come from `cc_common.window` sums beside `policy_spends`, loaded again
    after a transaction of the store failed (see `ColdStore`)."""

    def __init__(self, store: ColdStore) -> None:
        self.store = store
        self._spends = WindowSums(1)  # total_sat; keys: rowid in policy_spends
        self._spends_failures = -1  # `store.failures` when `_spends` was loaded: -1, never
        with store.transaction() as db:
            new = not db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'policy_destinations'"
            ).fetchone()
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if new:
                db.execute(_BACKFILL_DESTINATIONS)

    # -- the policy in force -------------------------------------------------------------------
    def get(self, account: int) -> PolicyRow | None:
        with self.store.reading() as db:
            row = db.execute(
                "SELECT account, policy, seq, vdevice_fingerprint, confirmed_at"
                " FROM account_policies WHERE account = ?",
                (account,),
            ).fetchone()
        return None if row is None else PolicyRow(*row)

    def confirm(self, account: int, policy: str, fingerprint: str, now: float) -> bool:
        """Set the first policy and mark the account confirmed; False if it already was."""
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO account_policies"
                " (account, policy, seq, vdevice_fingerprint, confirmed_at, updated_at)"
                " VALUES (?, ?, 0, ?, ?, ?)",
                (account, policy, fingerprint, now, now),
            )
        return cur.rowcount == 1

    def all_rows(self) -> list[PolicyRow]:
        with self.store.reading() as db:
            rows = db.execute(
                "SELECT account, policy, seq, vdevice_fingerprint, confirmed_at"
                " FROM account_policies ORDER BY account"
            ).fetchall()
        return [PolicyRow(*r) for r in rows]

    # -- changes -------------------------------------------------------------------------------
    def claim_seq(self, db: sqlite3.Connection, account: int, seq: int) -> bool:
        """Inside a transaction: take `seq` if it is above the last one accepted."""
        cur = db.execute(
            "UPDATE account_policies SET seq = ? WHERE account = ? AND seq < ?",
            (seq, account, seq),
        )
        return cur.rowcount == 1

    def apply_now(self, account: int, seq: int, policy: str, change_id: str, now: float) -> bool:
        """A tightening: in force at once; any waiting loosening is superseded."""
        with self.store.transaction() as db:
            if not self.claim_seq(db, account, seq):
                return False
            self._supersede(db, account)
            db.execute(
                "UPDATE account_policies SET policy = ?, updated_at = ? WHERE account = ?",
                (policy, now, account),
            )
            db.execute(
                "INSERT INTO policy_changes VALUES (?, ?, ?, ?, ?, ?, ?)",
                (change_id, account, seq, policy, now, now, ChangeState.APPLIED.value),
            )
        return True

    def add_pending(
        self, account: int, seq: int, policy: str, change_id: str, now: float, applies_at: float
    ) -> bool:
        """A loosening: waits until `applies_at`; replaces any loosening still waiting."""
        with self.store.transaction() as db:
            if not self.claim_seq(db, account, seq):
                return False
            self._supersede(db, account)
            db.execute(
                "INSERT INTO policy_changes VALUES (?, ?, ?, ?, ?, ?, ?)",
                (change_id, account, seq, policy, now, applies_at, ChangeState.PENDING.value),
            )
        return True

    def _supersede(self, db: sqlite3.Connection, account: int) -> None:
        db.execute(
            "UPDATE policy_changes SET state = ? WHERE account = ? AND state = ?",
            (ChangeState.SUPERSEDED.value, account, ChangeState.PENDING.value),
        )

    def apply_due(self, account: int, now: float) -> list[ChangeRow]:
        """Apply the account's waiting loosening whose delay has passed; the ones applied.

        Most co-signs find none: that is one read, and a transaction only when one is due (the
        store's lock held from the read on, so nothing changes the rows in between)."""
        with self.store.reading() as db:
            due = db.execute(
                "SELECT 1 FROM policy_changes WHERE account = ? AND state = ? AND applies_at <= ?"
                " LIMIT 1",
                (account, ChangeState.PENDING.value, now),
            ).fetchone()
            if due is None:
                return []
            return self._apply_due(account, now)

    def _apply_due(self, account: int, now: float) -> list[ChangeRow]:
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT id, account, seq, policy, requested_at, applies_at, state"
                " FROM policy_changes WHERE account = ? AND state = ? AND applies_at <= ?"
                " ORDER BY seq",
                (account, ChangeState.PENDING.value, now),
            ).fetchall()
            for row in rows:
                db.execute(
                    "UPDATE account_policies SET policy = ?, updated_at = ? WHERE account = ?",
                    (row[3], now, account),
                )
                db.execute(
                    "UPDATE policy_changes SET state = ? WHERE id = ?",
                    (ChangeState.APPLIED.value, row[0]),
                )
        return [_change(r) for r in rows]

    def pending(self, account: int | None = None) -> list[ChangeRow]:
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT id, account, seq, policy, requested_at, applies_at, state"
                " FROM policy_changes WHERE state = ? AND (? IS NULL OR account = ?)"
                " ORDER BY requested_at",
                (ChangeState.PENDING.value, account, account),
            ).fetchall()
        return [_change(r) for r in rows]

    def cancel(self, change_id: str, owner_phone: str) -> ChangeRow | None:
        """Cancel a waiting change of an account whose owner has this number."""
        with self.store.transaction() as db:
            row = db.execute(
                "SELECT c.id, c.account, c.seq, c.policy, c.requested_at, c.applies_at, c.state"
                " FROM policy_changes c JOIN accounts a ON a.account = c.account"
                " WHERE c.id = ? AND c.state = ? AND a.owner_phone = ?",
                (change_id, ChangeState.PENDING.value, owner_phone),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE policy_changes SET state = ? WHERE id = ?",
                (ChangeState.CANCELLED.value, change_id),
            )
        return _change(row)

    def change_by_seq(self, account: int, seq: int) -> ChangeRow | None:
        """The change the V-device sent under `seq` (to answer it again, unchanged)."""
        with self.store.reading() as db:
            row = db.execute(
                "SELECT id, account, seq, policy, requested_at, applies_at, state"
                " FROM policy_changes WHERE account = ? AND seq = ?",
                (account, seq),
            ).fetchone()
        return None if row is None else _change(row)

    def change_id_taken(self, change_id: str) -> bool:
        with self.store.reading() as db:
            row = db.execute("SELECT 1 FROM policy_changes WHERE id = ?", (change_id,)).fetchone()
        return row is not None

    # -- sends ---------------------------------------------------------------------------------
    def window(
        self, account: int, now: float, destinations: Iterable[str]
    ) -> tuple[int, int, frozenset[str]]:
        """(sat in the last 24 h, sends in the last hour, which of `destinations` were paid
        before)."""
        wanted = sorted(set(destinations))
        with self.store.reading() as db:
            day = self._sent_since(db, account, now - 86_400)[1]
            hour = self._sent_since(db, account, now - 3_600)[0]
            paid = {
                address
                for address in wanted
                if db.execute(
                    "SELECT 1 FROM policy_destinations WHERE account = ? AND address = ?",
                    (account, address),
                ).fetchone()
            }
        return day, hour, frozenset(paid)

    def _sent_since(self, db: sqlite3.Connection, account: int, t: float) -> tuple[int, int]:
        """(sends, sat) of the account after `t`."""
        if self._spends_failures != self.store.failures:
            (newest,) = db.execute("SELECT MAX(at) FROM policy_spends").fetchone()
            floor = floor_below(newest)
            rows = db.execute(
                "SELECT account, at, rowid, total_sat FROM policy_spends WHERE at > ?", (floor,)
            )
            self._spends.load(rows, floor)
            self._spends_failures = self.store.failures
        held = self._spends.since(account, t)
        if held is None:
            return self._sent_since_sql(db, account, t)
        self._spends.forget_before(t - SPARE)
        return held[0], held[1][0]

    @staticmethod
    def _sent_since_sql(db: sqlite3.Connection, account: int, t: float) -> tuple[int, int]:
        """`_sent_since` by a scan of the rows (for times older than the sums hold)."""
        n, total = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(total_sat), 0) FROM policy_spends"
            " WHERE account = ? AND at > ?",
            (account, t),
        ).fetchone()
        return int(n), int(total)

    def record_send(
        self, account: int, user_tx_no: str, total: int, destinations: list[str], now: float
    ) -> None:
        paid = sorted(set(destinations))
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO policy_spends VALUES (?, ?, ?, ?, ?)",
                (account, user_tx_no, total, json.dumps(paid), now),
            )
            if cur.rowcount == 1:
                self._spends.add(account, float(now), int(cur.lastrowid or 0), (total,))
                db.executemany(
                    "INSERT OR IGNORE INTO policy_destinations (account, address) VALUES (?, ?)",
                    [(account, address) for address in paid],
                )


def _change(row: tuple[Any, ...]) -> ChangeRow:
    return ChangeRow(row[0], row[1], row[2], row[3], row[4], row[5], ChangeState(row[6]))
