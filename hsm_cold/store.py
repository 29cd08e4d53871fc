"""The cold HSM's persistent state: accounts, used request numbers, channels, alerts, SMS.

The only module of the cold HSM that speaks SQL. Secrets are stored only as blobs already
encrypted under the token's AES key (see `cc_common.token`); this module never sees a
plaintext seed. SQLite in the cold state directory, one connection guarded by a lock
(the cold HSM is a single process: its link server and its SMS thread call in; each method
is one atomic unit, and one-time ids (`h_id`, nonces) are claimed by INSERT OR IGNORE).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cc_common.sqlite_tx import immediate
from cc_common.window import WindowSums, floor_below

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
    created_at REAL NOT NULL,
    vdevice_phone TEXT NOT NULL DEFAULT '',
    owner_phone TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS used_requests (
    account INTEGER NOT NULL,
    user_tx_no TEXT NOT NULL,
    txid TEXT NOT NULL,
    signed_at REAL NOT NULL,
    PRIMARY KEY (account, user_tx_no)
);
CREATE INDEX IF NOT EXISTS ix_used_requests_signed_at ON used_requests (account, signed_at);
CREATE TABLE IF NOT EXISTS channels (
    account INTEGER NOT NULL,
    c_id TEXT NOT NULL,
    channel_pubkey BLOB NOT NULL,
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'live',
    cold_key_label TEXT NOT NULL DEFAULT '',
    cold_pubkey BLOB NOT NULL DEFAULT x'',
    h_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (account, c_id)
);
CREATE TABLE IF NOT EXISTS used_h_ids (
    account INTEGER NOT NULL,
    h_id TEXT NOT NULL,
    v_channel_pubkey BLOB NOT NULL,
    sig TEXT NOT NULL,
    used_at REAL NOT NULL,
    PRIMARY KEY (account, h_id)
);
CREATE TABLE IF NOT EXISTS channel_nonces (
    account INTEGER NOT NULL,
    c_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    sig TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (account, c_id, nonce)
);
CREATE TABLE IF NOT EXISTS sms_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    number TEXT NOT NULL,
    text TEXT NOT NULL,
    purpose TEXT NOT NULL,
    prefer INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    not_after REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    done_at REAL,
    outcome TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS sms_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    account INTEGER,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    handed_over INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS known_outputs (
    txid TEXT NOT NULL,
    vout INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    script BLOB NOT NULL,
    PRIMARY KEY (txid, vout)
);
CREATE TABLE IF NOT EXISTS change_high (
    account INTEGER PRIMARY KEY,
    idx INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sweeps (
    txid TEXT PRIMARY KEY,
    account INTEGER NOT NULL,
    digest BLOB NOT NULL,
    answer TEXT NOT NULL,
    fee INTEGER NOT NULL,
    signed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS swept_outpoints (
    txid TEXT NOT NULL,
    vout INTEGER NOT NULL,
    account INTEGER NOT NULL,
    sweep_txid TEXT NOT NULL,
    PRIMARY KEY (txid, vout)
);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    blob BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS refused_requests (
    account INTEGER NOT NULL,
    user_tx_no TEXT NOT NULL,
    code INTEGER NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0,
    at REAL NOT NULL,
    PRIMARY KEY (account, user_tx_no)
);
-- what was co-signed under each number, for fee bumps (hsm_cold/replacement.py)
CREATE TABLE IF NOT EXISTS signed_sends (
    account INTEGER NOT NULL,
    user_tx_no TEXT NOT NULL,
    txid TEXT NOT NULL,
    outpoints TEXT NOT NULL,
    fee INTEGER NOT NULL,
    signed_at REAL NOT NULL,
    PRIMARY KEY (account, user_tx_no, txid)
);
"""


_ADDED_COLUMNS = (
    ("accounts", "vdevice_phone", "TEXT NOT NULL DEFAULT ''"),
    ("accounts", "owner_phone", "TEXT NOT NULL DEFAULT ''"),
    ("channels", "state", "TEXT NOT NULL DEFAULT 'live'"),
    ("channels", "cold_key_label", "TEXT NOT NULL DEFAULT ''"),
    ("channels", "cold_pubkey", "BLOB NOT NULL DEFAULT x''"),
    ("channels", "h_id", "TEXT NOT NULL DEFAULT ''"),
    ("used_requests", "digest", "BLOB NOT NULL DEFAULT x''"),
    ("used_requests", "signatures", "BLOB NOT NULL DEFAULT x''"),
    ("used_requests", "fee", "INTEGER NOT NULL DEFAULT 0"),
)

_ACCOUNT_COLUMNS = (
    "account, network, receiving_seed, cosigner_seed, hot_pubkey, recovery_xpub,"
    " vdevice_identity, settlement_descriptor, settlement_index, frozen, frozen_reason,"
    " recovery_fingerprint, vdevice_phone, owner_phone"
)
_CHANNEL_COLUMNS = (
    "account, c_id, channel_pubkey, expires_at, state, cold_key_label, cold_pubkey, h_id,"
    " created_at"
)


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
    vdevice_phone: str = ""  # routing only: trust comes from the pinned identity keys
    owner_phone: str = ""


class ChannelState(StrEnum):
    """Life of a V-device channel on the cold side (stored as its value)."""

    PENDING = "pending"  # QC sent, waiting for the V-device's CHANNEL_OK
    LIVE = "live"  # the only state `cosign` and VERIFY accept (until `expires_at`)


CHANNEL_PENDING = ChannelState.PENDING
CHANNEL_LIVE = ChannelState.LIVE


@dataclass(frozen=True)
class ChannelRecord:
    """A V-device channel: its V key, and (opened by SMS) the cold key's token label."""

    account: int
    c_id: str
    channel_pubkey: bytes
    expires_at: float
    state: ChannelState = ChannelState.LIVE
    cold_key_label: str = ""
    cold_pubkey: bytes = b""
    h_id: str = ""
    created_at: float = 0.0


@dataclass(frozen=True)
class OutgoingSms:
    """A queued SMS: a reply (with the SIM it should prefer) or an alert."""

    id: int
    number: str
    text: str
    purpose: str
    prefer: int
    not_after: float | None
    attempts: int


class _Conflict(Exception):
    """Raised inside a transaction to roll it back when a check-and-set finds a conflict."""


@dataclass(frozen=True)
class SignedRequest:
    """What the cold HSM co-signed under one `user_tx_no` (the binding of check 4)."""

    txid: str
    digest: bytes  # of the exact transaction, input amounts and paths, change
    signatures: tuple[bytes, ...]
    fee: int


@dataclass(frozen=True)
class Signing:
    """One completed co-signing, recorded atomically with what it teaches the cold HSM."""

    account: int
    user_tx_no: str
    txid: str
    digest: bytes
    signatures: tuple[bytes, ...]
    fee: int
    outputs: tuple[tuple[int, bytes], ...]  # (amount, script) of the signed tx, by vout
    change_index: int | None
    spent: tuple[tuple[str, int], ...] = ()  # the outpoints it spends (no longer needed)


@dataclass(frozen=True)
class AlertRecord:
    id: int
    at: float
    account: int | None
    kind: str
    message: str


SPARE = 86_400.0  # seconds of rows older than a question that the sums keep (a clock set back)


class ColdStore:
    """SQLite-backed state of the cold HSM.

    The day's fees (`fees_since`, asked at every co-sign) come from `cc_common.window` sums
    kept beside the tables, not from a SUM over the day's rows. A transaction (or a nested
    savepoint) that raises may have undone rows the sums already count, so each one that does
    bumps `failures`, and sums loaded before it are loaded again from SQL before their next
    answer; `PolicyStore` keeps its own sums the same way.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._migrate()
        self.failures = 0  # transactions and savepoints that raised (their changes undone)
        self._fees = WindowSums(1)  # fee, keys: 2 * rowid in used_requests, 2 * rowid + 1 in sweeps
        self._fees_failures = -1  # `failures` when `_fees` was loaded: -1, never

    def _migrate(self) -> None:
        """Add the columns a state made by an older version lacks (SQLite: ADD COLUMN)."""
        with self._lock:
            for table, column, decl in _ADDED_COLUMNS:
                have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of change (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        with self._lock:
            try:
                with immediate(self._db) as db:
                    yield db
            except BaseException:
                self.failures += 1
                raise

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads, under the store's lock: no savepoint opened and released
        around them (a read has nothing to undo). Inside a transaction the reads see its
        changes; a change needs `transaction()`."""
        with self._lock:
            yield self._db

    def rows_changed(self) -> None:
        """Rows the window sums count were changed in place: load them again before answering."""
        with self._lock:
            self.failures += 1

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
                " created_at, vdevice_phone, owner_phone)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    rec.vdevice_phone,
                    rec.owner_phone,
                ),
            )

    def get_account(self, account: int) -> AccountRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account = ?",  # noqa: S608
                (account,),
            ).fetchone()
        return None if row is None else _account_record(row)

    def accounts_by_vdevice_phone(self, phone: str) -> list[AccountRecord]:
        """The accounts whose V-device has this number (the SMS sender), oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts"  # noqa: S608
                " WHERE vdevice_phone = ? AND vdevice_phone != '' ORDER BY account",
                (phone,),
            ).fetchall()
        return [_account_record(r) for r in rows]

    def list_accounts(self) -> list[tuple[int, bool, str]]:
        """(account, frozen, reason) for every account, for the cold console."""
        with self._lock:
            rows = self._db.execute(
                "SELECT account, frozen, frozen_reason FROM accounts ORDER BY account"
            ).fetchall()
        return [(r[0], bool(r[1]), r[2]) for r in rows]

    def set_frozen(self, account: int, frozen: bool, reason: str = "") -> bool:
        """Freeze (the reason is appended to earlier ones, never replaces them) or unfreeze.

        The kept text is bounded (`MAX_FROZEN_REASON`): past it, the first reason and the
        latest stay, with how many came between (each one is in the alert log as well).
        """
        with self.transaction() as db:
            if frozen:
                row = db.execute(
                    "SELECT frozen_reason FROM accounts WHERE account = ?", (account,)
                ).fetchone()
                kept = _append_reason(row[0] if row else "", reason)
                cur = db.execute(
                    "UPDATE accounts SET frozen = 1, frozen_reason = ? WHERE account = ?",
                    (kept, account),
                )
            else:
                cur = db.execute(
                    "UPDATE accounts SET frozen = 0, frozen_reason = '' WHERE account = ?",
                    (account,),
                )
        return cur.rowcount == 1

    # -- verified outputs (amounts the cold HSM checked itself) -----------------------------------
    def known_output(self, txid: str, vout: int) -> tuple[int, bytes] | None:
        """(amount, scriptPubKey) of an outpoint verified earlier, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT amount, script FROM known_outputs WHERE txid = ? AND vout = ?",
                (txid, vout),
            ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def known_outputs_like(self, prefix: str, vout: int) -> list[tuple[str, int, bytes]]:
        """(txid, amount, scriptPubKey) of at most two verified outputs `vout` whose txid (hex)
        starts with `prefix` (hex): a short co-sign request names an outpoint so."""
        if not prefix or len(prefix) >= 64 or prefix.strip("0123456789abcdef"):
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT txid, amount, script FROM known_outputs"
                " WHERE txid >= ? AND txid <= ? AND vout = ? LIMIT 2",
                (prefix, prefix + "f" * (64 - len(prefix)), vout),
            ).fetchall()
        return [(str(t), int(a), bytes(s)) for t, a, s in rows]

    def add_known_outputs(self, txid: str, outputs: tuple[tuple[int, bytes], ...]) -> None:
        """Record every output of a transaction whose txid the caller computed itself."""
        with self.transaction() as db:
            _add_outputs(db, txid, outputs)

    # -- sweeps ---------------------------------------------------------------------------------
    def sweep_answer(self, account: int, digest: bytes) -> str | None:
        """The stored answer (JSON text) of an identical earlier sweep, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT answer FROM sweeps WHERE account = ? AND digest = ?", (account, digest)
            ).fetchone()
        return None if row is None else str(row[0])

    def swept(self, outpoints: list[tuple[str, int]]) -> list[tuple[str, int, str]]:
        """(txid, vout, sweep txid) of those outpoints some earlier sweep spent."""
        found = []
        with self._lock:
            for txid, vout in outpoints:
                row = self._db.execute(
                    "SELECT sweep_txid FROM swept_outpoints WHERE txid = ? AND vout = ?",
                    (txid, vout),
                ).fetchone()
                if row is not None:
                    found.append((txid, vout, str(row[0])))
        return found

    def record_sweep(
        self,
        account: int,
        index: int,
        txid: str,
        digest: bytes,
        answer: str,
        fee: int,
        outpoints: list[tuple[str, int]],
    ) -> bool:
        """Record a signed sweep and advance the settlement index past `index`, atomically.

        False (nothing recorded) if the index moved or an outpoint was swept meanwhile.
        """
        try:
            with self.transaction() as db:
                cur = db.execute(
                    "UPDATE accounts SET settlement_index = ? + 1"
                    " WHERE account = ? AND settlement_index = ?",
                    (index, account, index),
                )
                if cur.rowcount != 1:
                    raise _Conflict
                for prev_txid, vout in outpoints:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO swept_outpoints (txid, vout, account, sweep_txid)"
                        " VALUES (?, ?, ?, ?)",
                        (prev_txid, vout, account, txid),
                    )
                    if cur.rowcount != 1:
                        raise _Conflict
                db.executemany("DELETE FROM known_outputs WHERE txid = ? AND vout = ?", outpoints)
                at = time.time()
                cur = db.execute(
                    "INSERT INTO sweeps (txid, account, digest, answer, fee, signed_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (txid, account, digest, answer, fee, at),
                )
                self._fees.add(account, at, 2 * int(cur.lastrowid or 0) + 1, (fee,))
        except _Conflict:
            return False
        return True

    def fees_since(self, account: int, since: float) -> int:
        """Fees of every send and sweep the cold HSM signed for the account since `since`."""
        with self._lock:
            if self._fees_failures != self.failures:
                self._load_fees()
            held = self._fees.since(account, since)
            if held is None:
                return self._fees_since_sql(account, since)
            self._fees.forget_before(since - SPARE)
            return held[1][0]

    def _load_fees(self) -> None:
        (newest,) = self._db.execute(
            "SELECT MAX(at) FROM (SELECT MAX(signed_at) AS at FROM used_requests"
            " UNION ALL SELECT MAX(signed_at) FROM sweeps)"
        ).fetchone()
        floor = floor_below(newest)
        rows = self._db.execute(
            "SELECT account, signed_at, 2 * rowid, fee FROM used_requests WHERE signed_at > ?"
            " UNION ALL"
            " SELECT account, signed_at, 2 * rowid + 1, fee FROM sweeps WHERE signed_at > ?",
            (floor, floor),
        )
        self._fees.load(rows, floor)
        self._fees_failures = self.failures

    def _fees_since_sql(self, account: int, since: float) -> int:
        """`fees_since` by a SUM over the rows (for times older than the sums hold)."""
        with self._lock:
            row = self._db.execute(
                "SELECT (SELECT COALESCE(SUM(fee), 0) FROM used_requests"
                "        WHERE account = ? AND signed_at > ?)"
                " + (SELECT COALESCE(SUM(fee), 0) FROM sweeps WHERE account = ? AND signed_at > ?)",
                (account, since, account, since),
            ).fetchone()
        return int(row[0])

    def change_high(self, account: int) -> int:
        """The highest change index co-signed for the account (-1: none yet)."""
        with self._lock:
            row = self._db.execute(
                "SELECT idx FROM change_high WHERE account = ?", (account,)
            ).fetchone()
        return -1 if row is None else int(row[0])

    # -- used request numbers -----------------------------------------------------------------
    def signed_request(self, account: int, user_tx_no: str) -> SignedRequest | None:
        """What was co-signed under `user_tx_no`, or None if it was never used."""
        with self._lock:
            row = self._db.execute(
                "SELECT txid, digest, signatures, fee FROM used_requests"
                " WHERE account = ? AND user_tx_no = ?",
                (account, user_tx_no),
            ).fetchone()
        if row is None:
            return None
        blob = bytes(row[2])
        sigs = tuple(blob[i : i + 64] for i in range(0, len(blob), 64))
        return SignedRequest(str(row[0]), bytes(row[1]), sigs, int(row[3]))

    def record_signing(self, s: Signing) -> bool:
        """Bind `user_tx_no` to this signing, learn the signed tx's outputs and its change
        index, in one transaction; False (nothing recorded) if `user_tx_no` was used."""
        return self.record_signings([s])

    def record_signings(self, signings: Sequence[Signing]) -> bool:
        """Bind every `user_tx_no` of one transaction (a batch: several) to its signing, in one
        transaction; False (nothing recorded) if any of them was used. The fee is counted once,
        on the first number, so the daily fee ceiling sees the transaction's real fee."""
        try:
            with self.transaction() as db:
                at = time.time()
                for n, one in enumerate(signings):
                    fee = one.fee if n == 0 else 0
                    cur = db.execute(
                        "INSERT OR IGNORE INTO used_requests"
                        " (account, user_tx_no, txid, signed_at, digest, signatures, fee)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            one.account,
                            one.user_tx_no,
                            one.txid,
                            at,
                            one.digest,
                            b"".join(one.signatures),
                            fee,
                        ),
                    )
                    if cur.rowcount != 1:
                        raise _Conflict()
                    self._fees.add(one.account, at, 2 * int(cur.lastrowid or 0), (fee,))
                self._learn_signed(db, signings[0])
        except _Conflict:
            return False
        return True

    def user_tx_nos_of(self, account: int, txid: str) -> list[str]:
        """Every `user_tx_no` bound to `txid` (several for a batched transaction), sorted."""
        with self._lock:
            rows = self._db.execute(
                "SELECT user_tx_no FROM used_requests WHERE account = ? AND txid = ?"
                " ORDER BY user_tx_no",
                (account, txid),
            ).fetchall()
        return [str(r[0]) for r in rows]

    @staticmethod
    def _learn_signed(db: sqlite3.Connection, s: Signing) -> None:
        """Learn a signed transaction's outputs and change index; forget what it spends."""
        _add_outputs(db, s.txid, s.outputs)
        # Spent by what was just signed: forgotten, so the table stays near the UTXO set.
        # Should that send never be mined, a later spend brings the funding tx again.
        db.executemany("DELETE FROM known_outputs WHERE txid = ? AND vout = ?", s.spent)
        if s.change_index is not None:
            db.execute(
                "INSERT INTO change_high (account, idx) VALUES (?, ?)"
                " ON CONFLICT(account) DO UPDATE SET idx = max(idx, excluded.idx)",
                (s.account, s.change_index),
            )

    # -- refused and closed request numbers (the cold HSM's "refused" statements) --------------
    def note_refusal(self, account: int, user_tx_no: str, code: int) -> None:
        """Remember the latest refusal code of a `user_tx_no` not yet closed."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO refused_requests (account, user_tx_no, code, closed, at)"
                " VALUES (?, ?, ?, 0, ?) ON CONFLICT (account, user_tx_no)"
                " DO UPDATE SET code = excluded.code, at = excluded.at WHERE closed = 0",
                (account, user_tx_no, code, time.time()),
            )

    def close_request(self, account: int, user_tx_no: str, code: int) -> int:
        """Close `user_tx_no` for good (never signed from now on); its refusal code: the last
        one noted, else `code`."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO refused_requests (account, user_tx_no, code, closed, at)"
                " VALUES (?, ?, ?, 1, ?)",
                (account, user_tx_no, code, time.time()),
            )
            db.execute(
                "UPDATE refused_requests SET closed = 1 WHERE account = ? AND user_tx_no = ?",
                (account, user_tx_no),
            )
            row = db.execute(
                "SELECT code FROM refused_requests WHERE account = ? AND user_tx_no = ?",
                (account, user_tx_no),
            ).fetchone()
        return int(row[0])

    def request_closed(self, account: int, user_tx_no: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM refused_requests WHERE account = ? AND user_tx_no = ?"
                " AND closed = 1",
                (account, user_tx_no),
            ).fetchone()
        return row is not None

    # -- channels -------------------------------------------------------------------------------
    def put_channel(self, rec: ChannelRecord) -> None:
        with self.transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO channels ({_CHANNEL_COLUMNS})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.account,
                    rec.c_id,
                    rec.channel_pubkey,
                    rec.expires_at,
                    rec.state,
                    rec.cold_key_label,
                    rec.cold_pubkey,
                    rec.h_id,
                    rec.created_at or time.time(),
                ),
            )

    def get_channel(self, account: int, c_id: str) -> ChannelRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_CHANNEL_COLUMNS} FROM channels"  # noqa: S608
                " WHERE account = ? AND c_id = ?",
                (account, c_id),
            ).fetchone()
        return None if row is None else _channel_record(row)

    def c_id_taken(self, c_id: str) -> bool:
        """True if any account has a channel `c_id` (SMS channel ids are never reused)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM channels WHERE c_id = ?", (c_id,)).fetchone()
        return row is not None

    def set_channel_state(self, account: int, c_id: str, state: ChannelState) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE channels SET state = ? WHERE account = ? AND c_id = ?",
                (state, account, c_id),
            )

    def list_channels(self, account: int | None = None) -> list[ChannelRecord]:
        """Channels of one account (or all), newest first."""
        where, args = ("WHERE account = ?", (account,)) if account is not None else ("", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_CHANNEL_COLUMNS} FROM channels {where}"  # noqa: S608
                " ORDER BY account, created_at DESC",
                args,
            ).fetchall()
        return [_channel_record(r) for r in rows]

    def channel_key_used(self, account: int, channel_pubkey: bytes) -> bool:
        """True if this V channel key was ever offered by (or registered for) the account."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM used_h_ids WHERE account = ? AND v_channel_pubkey = ?"
                " UNION SELECT 1 FROM channels WHERE account = ? AND channel_pubkey = ?",
                (account, channel_pubkey, account, channel_pubkey),
            ).fetchone()
        return row is not None

    # -- one-time ids of the SMS channel (claimed atomically, kept) --------------------------------
    def claim_h_id(self, account: int, h_id: str, v_channel_pubkey: bytes, sig: str) -> bool:
        """Record `h_id` as used by the account; False if it already was."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO used_h_ids (account, h_id, v_channel_pubkey, sig, used_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (account, h_id, v_channel_pubkey, sig, time.time()),
            )
        return cur.rowcount == 1

    def h_id_sig(self, account: int, h_id: str) -> str | None:
        """The signature of the `QH` that used `h_id` (to tell a duplicate from a reuse)."""
        with self._lock:
            row = self._db.execute(
                "SELECT sig FROM used_h_ids WHERE account = ? AND h_id = ?", (account, h_id)
            ).fetchone()
        return None if row is None else str(row[0])

    def claim_nonce(self, account: int, c_id: str, nonce: str, sig: str, expires_at: float) -> bool:
        """Record a VERIFY nonce on a channel; False if it was seen. Expired channels' go."""
        with self.transaction() as db:
            db.execute("DELETE FROM channel_nonces WHERE expires_at < ?", (time.time(),))
            cur = db.execute(
                "INSERT OR IGNORE INTO channel_nonces (account, c_id, nonce, sig, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (account, c_id, nonce, sig, expires_at),
            )
        return cur.rowcount == 1

    # -- the SMS outbox ----------------------------------------------------------------------------
    def queue_sms(
        self,
        number: str,
        text: str,
        purpose: str,
        *,
        prefer: int = 0,
        not_after: float | None = None,
    ) -> int:
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO sms_outbox (number, text, purpose, prefer, created_at, not_after,"
                " next_try) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (number, text, purpose, prefer, now, not_after, now),
            )
        return int(cur.lastrowid or 0)

    def due_sms(self, now: float, limit: int = 20) -> list[OutgoingSms]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, number, text, purpose, prefer, not_after, attempts FROM sms_outbox"
                " WHERE done_at IS NULL AND next_try <= ? ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()
        return [OutgoingSms(*r) for r in rows]

    def next_sms_due(self) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT min(next_try) FROM sms_outbox WHERE done_at IS NULL"
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def sms_done(self, sms_id: int, outcome: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE sms_outbox SET done_at = ?, outcome = ? WHERE id = ?",
                (time.time(), outcome, sms_id),
            )

    def sms_retry(self, sms_id: int, next_try: float) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE sms_outbox SET attempts = attempts + 1, next_try = ? WHERE id = ?",
                (next_try, sms_id),
            )

    def pending_sms_count(self) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM sms_outbox WHERE done_at IS NULL"
            ).fetchone()
        return int(row[0])

    # -- SMS counters (for `hsm-cold status`, which reads them from another process) --------------
    def bump(self, name: str, n: int = 1) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sms_counters (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, n),
            )

    def counters(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT name, value FROM sms_counters ORDER BY name").fetchall()
        return {r[0]: int(r[1]) for r in rows}

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


MAX_FROZEN_REASON = 2000
_REASON_SEP = " | "
_FOLDED = re.compile(r"\+(\d+) more \(in the alert log\)")


def _append_reason(held: str, reason: str) -> str:
    if not held:
        return reason[:MAX_FROZEN_REASON]
    joined = held + _REASON_SEP + reason
    if len(joined) <= MAX_FROZEN_REASON:
        return joined
    reasons = held.split(_REASON_SEP)
    folded = _FOLDED.fullmatch(reasons[1])
    between = int(folded.group(1)) + len(reasons) - 2 if folded else len(reasons) - 1
    half = MAX_FROZEN_REASON // 2 - 40
    first, latest = reasons[0][:half], reason[:half]
    return _REASON_SEP.join((first, f"+{between} more (in the alert log)", latest))


def _add_outputs(db: sqlite3.Connection, txid: str, outputs: tuple[tuple[int, bytes], ...]) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO known_outputs (txid, vout, amount, script) VALUES (?, ?, ?, ?)",
        [(txid, vout, amount, script) for vout, (amount, script) in enumerate(outputs)],
    )


def _account_record(row: tuple[Any, ...]) -> AccountRecord:
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
        vdevice_phone=row[12],
        owner_phone=row[13],
    )


def _channel_record(row: tuple[Any, ...]) -> ChannelRecord:
    return ChannelRecord(
        account=row[0],
        c_id=row[1],
        channel_pubkey=bytes(row[2]),
        expires_at=float(row[3]),
        state=ChannelState(row[4]),
        cold_key_label=row[5],
        cold_pubkey=bytes(row[6]),
        h_id=row[7],
        created_at=float(row[8]),
    )
