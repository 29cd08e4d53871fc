"""The phone's storage: one SQLite file in `[vdevice] state_dir`, mode 0600.

It is the phone's keystore too: the identity private key and every channel private key live
here and nowhere else (never in a log, never in the status file). Every step of the loop that
must survive a crash is one transaction here; the send's state is written *before* the
request leaves the phone (see `sends.py`).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cc_common.sqlite_tx import immediate
from vdevice.errors import NotInitialised, NotProvisioned, ProvisioningError
from wallet_core import secp

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS opens (
    h_id TEXT PRIMARY KEY, round INTEGER NOT NULL, v_priv TEXT NOT NULL, v_pub TEXT NOT NULL,
    number TEXT NOT NULL, sent_at REAL NOT NULL, state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS channels (
    c_id TEXT PRIMARY KEY, h_id TEXT NOT NULL, v_priv TEXT NOT NULL, v_pub TEXT NOT NULL,
    cold_pub TEXT NOT NULL, cold_number TEXT NOT NULL, opened_at REAL NOT NULL,
    expiry INTEGER NOT NULL, confirmed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS batch_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, address_type INTEGER NOT NULL,
    batch_no INTEGER NOT NULL, content_sha TEXT NOT NULL, addresses TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
    sent_at REAL NOT NULL DEFAULT 0, retry_at REAL NOT NULL DEFAULT 0,
    site_reported INTEGER NOT NULL DEFAULT 0, custody_reported INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, finished_at REAL
);
CREATE TABLE IF NOT EXISTS nonces (
    nonce TEXT PRIMARY KEY, check_id INTEGER NOT NULL, c_id TEXT NOT NULL,
    number TEXT NOT NULL, created_at REAL NOT NULL, outstanding INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sends (
    vtest_id TEXT PRIMARY KEY, user_tx_no TEXT NOT NULL UNIQUE, outs TEXT NOT NULL,
    dynamic INTEGER NOT NULL, total_sat INTEGER NOT NULL, c_id TEXT NOT NULL,
    vc_code TEXT NOT NULL, state TEXT NOT NULL, outcome TEXT NOT NULL DEFAULT '',
    tx_hash TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, posted_at REAL, finished_at REAL, reported_at REAL,
    next_try_at REAL NOT NULL DEFAULT 0, tries INTEGER NOT NULL DEFAULT 0,
    posts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, text TEXT NOT NULL,
    delivered INTEGER NOT NULL
);
"""


class OpenState(enum.StrEnum):
    """One `QH` we sent: waiting for its `QC`, answered, or given up."""

    OUTSTANDING = "outstanding"
    ANSWERED = "answered"
    ABANDONED = "abandoned"


class CheckState(enum.StrEnum):
    """A batch verification: waiting for the proof, a verdict, or waiting to try again."""

    PENDING = "pending"
    STALLED = "stalled"  # no proof after every attempt: try again after `stall_retry`
    VERIFIED = "verified"
    FAILED = "failed"


class SendState(enum.StrEnum):
    """The life of one vtest on the phone (see `sends.py` for the crash argument)."""

    SIGNED = "signed"  # vc_code made and stored; custody may or may not have it
    POSTED = "posted"  # custody accepted the request (or said code 3: it already had it)
    FINISHED = "finished"  # the outcome is known (ok + tx_hash, or failed + reason)
    REPORTED = "reported"  # the site acknowledged the outcome


class Outcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"


class LoopState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Provisioning:
    """What `custody account create` told us (its `vdevice_bundle`), plus the owner's number."""

    account_id: int
    cold_identity: bytes
    cold_numbers: tuple[str, ...]
    hot_token: str
    custody_url: str
    owner_number: str

    @classmethod
    def from_bundle(cls, data: Any, owner_number: str) -> Provisioning:
        """Accept the bundle alone or the whole output of `custody account create`."""
        if isinstance(data, dict) and isinstance(data.get("vdevice_bundle"), dict):
            data = data["vdevice_bundle"]
        if not isinstance(data, dict):
            raise ProvisioningError("the bundle must be a JSON object")
        try:
            account_id = data["account_id"]
            identity_hex = data["cold_identity"]
            numbers = data["cold_numbers"]
            token = data["hot_token"]
            url = data["custody_url"]
        except KeyError as exc:
            raise ProvisioningError(f"the bundle has no {exc.args[0]!r}") from None
        if isinstance(account_id, bool) or not isinstance(account_id, int) or account_id < 1:
            raise ProvisioningError("account_id must be a positive integer")
        try:
            identity = bytes.fromhex(identity_hex)
        except (TypeError, ValueError):
            raise ProvisioningError("cold_identity must be hex") from None
        if len(identity) != 33 or not secp.is_valid_pubkey(identity):
            raise ProvisioningError("cold_identity must be a 33-byte compressed public key")
        if (
            not isinstance(numbers, list)
            or not numbers
            or not all(isinstance(n, str) and n.startswith("+") for n in numbers)
        ):
            raise ProvisioningError("cold_numbers must be a non-empty list of E.164 numbers")
        if not isinstance(token, str) or len(token) < 16:
            raise ProvisioningError("hot_token is missing or too short")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ProvisioningError("custody_url must be an http(s) URL")
        owner = data.get("owner_number") or owner_number
        if not isinstance(owner, str) or not owner.startswith("+"):
            raise ProvisioningError("the owner's number is missing (config [vdevice] owner_number)")
        return cls(account_id, identity, tuple(numbers), token, url.rstrip("/"), owner)

    def to_json(self) -> str:
        return json.dumps(
            {
                "account_id": self.account_id,
                "cold_identity": self.cold_identity.hex(),
                "cold_numbers": list(self.cold_numbers),
                "hot_token": self.hot_token,
                "custody_url": self.custody_url,
                "owner_number": self.owner_number,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Provisioning:
        return cls.from_bundle(json.loads(text), "")


@dataclass(frozen=True)
class Channel:
    """A live channel: our key, the cold HSM's key, its id and expiry (unix seconds)."""

    c_id: str
    h_id: str
    v_priv: bytes
    v_pub: bytes
    cold_pub: bytes
    cold_number: str
    opened_at: float
    expiry: int
    confirmed: bool

    def renew_at(self, renew_before: float) -> float:
        """Renew `renew_before` seconds ahead, or at half-life for short test channels."""
        lifetime = max(self.expiry - self.opened_at, 0.0)
        return self.expiry - min(renew_before, lifetime / 2)


def _channel(row: sqlite3.Row) -> Channel:
    return Channel(
        row["c_id"],
        row["h_id"],
        bytes.fromhex(row["v_priv"]),
        bytes.fromhex(row["v_pub"]),
        bytes.fromhex(row["cold_pub"]),
        row["cold_number"],
        row["opened_at"],
        row["expiry"],
        bool(row["confirmed"]),
    )


def new_key() -> tuple[bytes, bytes]:
    """A fresh secp256k1 key pair (private, compressed public) from `secrets`."""
    while True:
        priv = secrets.token_bytes(32)
        try:
            secp.check_privkey(priv)
        except Exception:  # noqa: BLE001, S112 (out of range: draw again, ~never)
            continue
        return priv, secp.pubkey_from_privkey(priv)


def _create_private_file(path: Path) -> None:
    """Create `path` with mode 0600 before SQLite opens it (SQLite copies the mode to the WAL)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    path.chmod(0o600)


class State:
    """The V-device's SQLite state. One instance per process; not shared across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _create_private_file(path)
        self.db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        if self.get_meta("schema_version") is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One durable transaction (BEGIN IMMEDIATE, so a reader never blocks it midway)."""
        with immediate(self.db) as db:
            yield db

    # ----- meta ------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # ----- identity and provisioning ---------------------------------------------------------

    def init_identity(self) -> tuple[bytes, bool]:
        """The identity public key, generating the key pair on first use; (pub, created)."""
        with self.tx():
            existing = self.get_meta("identity_pub")
            if existing is not None:
                return bytes.fromhex(existing), False
            priv, pub = new_key()
            self.set_meta("identity_priv", priv.hex())
            self.set_meta("identity_pub", pub.hex())
            return pub, True

    def identity_pub(self) -> bytes:
        value = self.get_meta("identity_pub")
        if value is None:
            raise NotInitialised("no identity key: run `vdevice init` first")
        return bytes.fromhex(value)

    def identity_priv(self) -> bytes:
        value = self.get_meta("identity_priv")
        if value is None:
            raise NotInitialised("no identity key: run `vdevice init` first")
        return bytes.fromhex(value)

    def provisioning(self) -> Provisioning:
        value = self.get_meta("provisioning")
        if value is None:
            raise NotProvisioned(
                "not provisioned: run `vdevice provision --bundle FILE` with the bundle "
                "printed by `custody account create`"
            )
        return Provisioning.from_json(value)

    def is_provisioned(self) -> bool:
        return self.get_meta("provisioning") is not None

    def provision(self, prov: Provisioning, *, force: bool = False) -> bool:
        """Store the provisioning; a different one needs `force` and drops every channel."""
        with self.tx():
            old = self.get_meta("provisioning")
            if old is not None and Provisioning.from_json(old) == prov:
                return False
            if old is not None and not force:
                raise ProvisioningError(
                    "already provisioned with a different bundle; use --force to replace it "
                    "(the channels of the old account are dropped)"
                )
            if old is not None:
                self.db.execute("DELETE FROM channels")
                self.db.execute("UPDATE opens SET state = ?", (OpenState.ABANDONED,))
            self.set_meta("provisioning", prov.to_json())
            return True

    # ----- loop state ------------------------------------------------------------------------

    def loop_state(self) -> tuple[LoopState, str]:
        state = LoopState(self.get_meta("loop_state") or LoopState.RUNNING)
        return state, self.get_meta("loop_reason") or ""

    def set_loop_state(self, state: LoopState, reason: str = "") -> None:
        with self.tx():
            self.set_meta("loop_state", state.value)
            self.set_meta("loop_reason", reason)

    # ----- channels --------------------------------------------------------------------------

    def current_channel(self, now: float) -> Channel | None:
        """The newest channel that has not expired."""
        row = self.db.execute(
            "SELECT * FROM channels WHERE expiry > ? ORDER BY opened_at DESC LIMIT 1", (now,)
        ).fetchone()
        return None if row is None else _channel(row)

    def latest_channel(self) -> Channel | None:
        row = self.db.execute("SELECT * FROM channels ORDER BY opened_at DESC LIMIT 1").fetchone()
        return None if row is None else _channel(row)

    def channel(self, c_id: str) -> Channel | None:
        row = self.db.execute("SELECT * FROM channels WHERE c_id = ?", (c_id,)).fetchone()
        return None if row is None else _channel(row)

    def outstanding_opens(self) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM opens WHERE state = ? ORDER BY sent_at", (OpenState.OUTSTANDING,)
        ).fetchall()

    def add_open(
        self, h_id: str, round_no: int, v_priv: bytes, v_pub: bytes, number: str, now: float
    ) -> None:
        with self.tx():
            self.db.execute(
                "INSERT INTO opens(h_id, round, v_priv, v_pub, number, sent_at, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (h_id, round_no, v_priv.hex(), v_pub.hex(), number, now, OpenState.OUTSTANDING),
            )

    def h_id_used(self, h_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM opens WHERE h_id = ?", (h_id,)).fetchone() is not None

    def abandon_opens(self) -> None:
        with self.tx():
            self.db.execute(
                "UPDATE opens SET state = ? WHERE state = ?",
                (OpenState.ABANDONED, OpenState.OUTSTANDING),
            )

    def install_channel(
        self,
        open_row: sqlite3.Row,
        c_id: str,
        cold_pub: bytes,
        number: str,
        expiry: int,
        now: float,
    ) -> Channel:
        """The answered open becomes the live channel; the rest of its round is closed."""
        with self.tx():
            self.db.execute(
                "INSERT INTO channels(c_id, h_id, v_priv, v_pub, cold_pub, cold_number, "
                "opened_at, expiry) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    c_id,
                    open_row["h_id"],
                    open_row["v_priv"],
                    open_row["v_pub"],
                    cold_pub.hex(),
                    number,
                    now,
                    expiry,
                ),
            )
            self.db.execute(
                "UPDATE opens SET state = ? WHERE h_id = ?", (OpenState.ANSWERED, open_row["h_id"])
            )
            self.db.execute(
                "UPDATE opens SET state = ? WHERE state = ?",
                (OpenState.ABANDONED, OpenState.OUTSTANDING),
            )
        channel = self.channel(c_id)
        assert channel is not None
        return channel

    def c_id_seen(self, c_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM channels WHERE c_id = ?", (c_id,)).fetchone()
        return row is not None

    # ----- alerts ----------------------------------------------------------------------------

    def add_alert(self, text: str, delivered: bool, now: float) -> None:
        with self.tx():
            self.db.execute(
                "INSERT INTO alerts(at, text, delivered) VALUES (?, ?, ?)",
                (now, text, int(delivered)),
            )

    def recent_alerts(self, limit: int = 5) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM alerts ORDER BY id DESC LIMIT ?", (limit,)).fetchall()


def now() -> float:
    return time.time()
