"""The hot HSM's own spending limits, enforced whatever custody says.

A hacked custody API can ask the hot HSM for anything; these limits bound what it can get even
before the cold HSM checks the V-device's signature. Usage is persisted (SQLite in the hot
state directory) so a restart does not reset the daily total.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cc_common.config import Section
from hsm_hot.errors import PolicyRefused, RateLimited

DAY = 86_400.0
MINUTE = 60.0


@dataclass(frozen=True)
class HotPolicy:
    """Per-account limits (satoshi and counts)."""

    max_send_sat: int = 1_000_000_000  # 10 BTC per send
    max_daily_sat: int = 5_000_000_000  # 50 BTC per rolling 24 h
    max_outputs: int = 20
    max_requests_per_minute: int = 60

    @classmethod
    def from_section(cls, section: Section) -> HotPolicy:
        d = cls()
        return cls(
            max_send_sat=section.int("max_send_sat", d.max_send_sat),
            max_daily_sat=section.int("max_daily_sat", d.max_daily_sat),
            max_outputs=section.int("max_outputs", d.max_outputs),
            max_requests_per_minute=section.int(
                "max_requests_per_minute", d.max_requests_per_minute
            ),
        )


class PolicyLedger:
    """Counts requests and signed amounts per account, and refuses past the limits."""

    def __init__(
        self, path: Path, policy: HotPolicy, clock: Callable[[], float] = time.time
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # WAL: one fsync per commit instead of three (co-signing runs at line rate).
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._pruned_at = 0.0
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS requests (account INTEGER NOT NULL, at REAL NOT NULL);"
            "CREATE TABLE IF NOT EXISTS sends (account INTEGER NOT NULL, at REAL NOT NULL,"
            " amount INTEGER NOT NULL, txid TEXT NOT NULL);"
        )

    def admit_request(self, account: int) -> None:
        """Count one signing request; refuse past the per-minute limit."""
        now = self._clock()
        with self._lock:
            (recent,) = self._db.execute(
                "SELECT COUNT(*) FROM requests WHERE account = ? AND at > ?",
                (account, now - MINUTE),
            ).fetchone()
            if recent >= self.policy.max_requests_per_minute:
                raise RateLimited(
                    f"account {account}: more than {self.policy.max_requests_per_minute}"
                    " signing requests in the last minute"
                )
            self._db.execute("INSERT INTO requests (account, at) VALUES (?, ?)", (account, now))
            if now - self._pruned_at > MINUTE:  # old rows only cost space: prune now and then
                self._pruned_at = now
                self._db.execute("DELETE FROM requests WHERE at < ?", (now - DAY,))

    def check_send(
        self, account: int, amount: int, outputs: int, *, _spent: int | None = None
    ) -> None:
        """Refuse a send over the per-send, per-day or outputs limits (changes nothing)."""
        p = self.policy
        if outputs > p.max_outputs:
            raise PolicyRefused(f"account {account}: {outputs} outputs exceeds {p.max_outputs}")
        if amount > p.max_send_sat:
            raise PolicyRefused(
                f"account {account}: send of {amount} sat exceeds the per-send limit"
                f" of {p.max_send_sat} sat"
            )
        spent = self.spent_today(account) if _spent is None else _spent
        if spent + amount > p.max_daily_sat:
            raise PolicyRefused(
                f"account {account}: send of {amount} sat would exceed the daily limit"
                f" of {p.max_daily_sat} sat ({spent} sat already signed today)"
            )

    def spent_today(self, account: int) -> int:
        with self._lock:
            return self._spent_today(account)

    def _spent_today(self, account: int) -> int:
        """Caller holds `_lock`."""
        (total,) = self._db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM sends WHERE account = ? AND at > ?",
            (account, self._clock() - DAY),
        ).fetchone()
        return int(total)

    def reserve_send(self, account: int, amount: int, outputs: int, txid: str) -> int:
        """`check_send` and `record_send` in one step; returns the reservation's id.

        Concurrent co-signs of one account must not both pass the daily limit before either
        is recorded, so the amount is counted before the cold HSM is asked, and given back
        (`cancel_send`) only if the hot HSM did not sign after all.
        """
        with self._lock:
            self.check_send(account, amount, outputs, _spent=self._spent_today(account))
            cur = self._db.execute(
                "INSERT INTO sends (account, at, amount, txid) VALUES (?, ?, ?, ?)",
                (account, self._clock(), amount, txid),
            )
            return int(cur.lastrowid or 0)

    def cancel_send(self, reservation: int) -> None:
        """Give back a reservation whose send the hot HSM did not sign."""
        with self._lock:
            self._db.execute("DELETE FROM sends WHERE rowid = ?", (reservation,))

    def record_send(self, account: int, amount: int, txid: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO sends (account, at, amount, txid) VALUES (?, ?, ?, ?)",
                (account, self._clock(), amount, txid),
            )

    def close(self) -> None:
        self._db.close()
