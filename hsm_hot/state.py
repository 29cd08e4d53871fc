"""The hot HSM's own state: the pairing and each account's public material.

Nothing secret is stored in clear here: the link key is kept only as a blob sealed under the
AES key in the hot token. Per account we keep what is needed to re-derive the hot wallet (the
label and public key of the hot key, the cold cosigner and recovery xpubs with their origin
fingerprints), so `sign_send` can check that a PSBT spends this account's wallet without asking
anyone. Completed co-signs are kept too, so a retry of the same send gets the same answer
instead of a second round trip (and a second cold refusal for a reused `user_tx_no`).

SQLite in `state_dir`, one connection guarded by a lock (the RPC server is threaded).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cc_common import sqlite_tx
from cc_common.group_commit import GroupCommit
from wallet_core.bip32 import parse_xpub
from wallet_core.networks import Network
from wallet_core.wallets import (
    AccountKey,
    CachedHotWallet,
    FixedKey,
    HotWallet,
    bip48_account_path,
)

STATE_FILE = "hot-state.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS pairing (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sealed_link_key BLOB NOT NULL,
    cold_identity BLOB NOT NULL,
    paired_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    account INTEGER PRIMARY KEY,
    network TEXT NOT NULL,
    hot_label TEXT NOT NULL,
    hot_pubkey BLOB NOT NULL,
    receiving_xpub TEXT NOT NULL,
    cosigner_xpub TEXT NOT NULL,
    cosigner_fingerprint TEXT NOT NULL,
    recovery_xpub TEXT NOT NULL,
    recovery_fingerprint TEXT NOT NULL,
    vdevice_identity TEXT NOT NULL,
    settlement_descriptor TEXT NOT NULL,
    proof TEXT NOT NULL,
    created_at REAL NOT NULL,
    receiving_fingerprint TEXT NOT NULL DEFAULT '',
    vdevice_phone TEXT NOT NULL DEFAULT '',
    owner_phone TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS cosigned (
    account INTEGER NOT NULL,
    user_tx_no TEXT NOT NULL,
    txid TEXT NOT NULL,
    psbt TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (account, user_tx_no)
);
"""


@dataclass(frozen=True)
class Pairing:
    sealed_link_key: bytes
    cold_identity: bytes  # 33-byte compressed public key, pinned at pairing


@dataclass(frozen=True)
class HotAccount:
    """Public material of one provisioned account (what `provision_account` answered)."""

    account: int
    network: str
    hot_label: str
    hot_pubkey: bytes
    receiving_xpub: str
    cosigner_xpub: str
    cosigner_fingerprint: str  # 8 hex digits
    recovery_xpub: str
    recovery_fingerprint: str
    vdevice_identity: str
    settlement_descriptor: str
    proof: str
    receiving_fingerprint: str = ""  # 8 hex digits (older states: empty)
    vdevice_phone: str = ""
    owner_phone: str = ""

    def wallet(self) -> HotWallet:
        """The account's 2-of-3 hot wallet: fixed hot key, cold and recovery at BIP48 paths."""
        net = Network.from_name(self.network)
        path = bip48_account_path(net, 0)
        return CachedHotWallet(
            (
                FixedKey(self.hot_pubkey),
                AccountKey(
                    parse_xpub(self.cosigner_xpub), bytes.fromhex(self.cosigner_fingerprint), path
                ),
                AccountKey(
                    parse_xpub(self.recovery_xpub),
                    bytes.fromhex(self.recovery_fingerprint),
                    path,
                ),
            ),
            net,
        )


_ACCOUNT_COLUMNS = (
    "account, network, hot_label, hot_pubkey, receiving_xpub, cosigner_xpub,"
    " cosigner_fingerprint, recovery_xpub, recovery_fingerprint, vdevice_identity,"
    " settlement_descriptor, proof, receiving_fingerprint, vdevice_phone, owner_phone"
)
# columns added after the first release: (name, declaration), added to older states at open
_ADDED_ACCOUNT_COLUMNS = (
    ("receiving_fingerprint", "TEXT NOT NULL DEFAULT ''"),
    ("vdevice_phone", "TEXT NOT NULL DEFAULT ''"),
    ("owner_phone", "TEXT NOT NULL DEFAULT ''"),
)


class HotState:
    """SQLite-backed state of the hot HSM."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = state_dir / STATE_FILE
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(accounts)")}
        for column, decl in _ADDED_ACCOUNT_COLUMNS:
            if column not in have:
                self._db.execute(f"ALTER TABLE accounts ADD COLUMN {column} {decl}")
        self._wallets: dict[int, HotWallet] = {}
        # accounts as read (a row changes only through `add_account`, which forgets it here):
        # every co-sign looks its account up, and this is the one read it need not repeat
        self._accounts: dict[int, HotAccount] = {}
        # every write joins the open transaction; concurrent sends share its commit
        self._group = GroupCommit(self._lock, self._commit)

    def close(self) -> None:
        with self._lock:
            self._commit()
            self._db.close()

    def _begin(self) -> None:
        """Open the transaction the next writes join. Caller holds `_lock`."""
        sqlite_tx.join(self._db)

    def _commit(self) -> None:
        """Commit the open transaction (if any); on failure nothing of it is kept."""
        sqlite_tx.commit(self._db)

    # -- pairing -------------------------------------------------------------------------------
    def pairing(self) -> Pairing | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sealed_link_key, cold_identity FROM pairing WHERE id = 1"
            ).fetchone()
        return Pairing(bytes(row[0]), bytes(row[1])) if row else None

    def set_pairing(self, sealed_link_key: bytes, cold_identity: bytes) -> None:
        with self._lock:
            self._begin()
            self._db.execute(
                "INSERT OR REPLACE INTO pairing (id, sealed_link_key, cold_identity, paired_at)"
                " VALUES (1, ?, ?, ?)",
                (sealed_link_key, cold_identity, time.time()),
            )
            change = self._group.changed()
        self._group.durable(change)

    # -- accounts ------------------------------------------------------------------------------
    def add_account(self, acct: HotAccount) -> None:
        with self._lock:
            self._begin()
            self._db.execute(
                f"INSERT OR REPLACE INTO accounts ({_ACCOUNT_COLUMNS}, created_at)"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    acct.account,
                    acct.network,
                    acct.hot_label,
                    acct.hot_pubkey,
                    acct.receiving_xpub,
                    acct.cosigner_xpub,
                    acct.cosigner_fingerprint,
                    acct.recovery_xpub,
                    acct.recovery_fingerprint,
                    acct.vdevice_identity,
                    acct.settlement_descriptor,
                    acct.proof,
                    acct.receiving_fingerprint,
                    acct.vdevice_phone,
                    acct.owner_phone,
                    time.time(),
                ),
            )
            self._wallets.pop(acct.account, None)
            self._accounts.pop(acct.account, None)
            change = self._group.changed()
        self._group.durable(change)

    def account(self, account: int) -> HotAccount | None:
        # A remembered account is answered without the lock, which a commit holds through
        # its fsync (a dict read is atomic; `add_account` forgets the entry under the lock).
        known = self._accounts.get(account)
        if known is not None:
            return known
        with self._lock:
            row = self._db.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account = ?",  # noqa: S608
                (account,),
            ).fetchone()
            if row is None:
                return None  # not remembered: a later `add_account` is seen at once
            values = list(row)
            values[3] = bytes(values[3])
            known = self._accounts[account] = HotAccount(*values)
            return known

    def wallet(self, acct: HotAccount) -> HotWallet:
        """The account's hot wallet, built once (chain keys are cached inside it)."""
        wallet = self._wallets.get(acct.account)  # as in `account`: no wait behind a commit
        if wallet is None:
            wallet = acct.wallet()
            with self._lock:
                self._wallets[acct.account] = wallet
        return wallet

    def account_count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM accounts").fetchone()
        return int(n)

    # -- completed co-signs (idempotent retries) -----------------------------------------------
    def cosigned(self, account: int, user_tx_no: str) -> tuple[str, str] | None:
        """(txid, signed PSBT) of a send already co-signed under `user_tx_no`, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT txid, psbt FROM cosigned WHERE account = ? AND user_tx_no = ?",
                (account, user_tx_no),
            ).fetchone()
        return (row[0], row[1]) if row else None

    def add_cosigned(self, account: int, user_tx_no: str, txid: str, psbt: str) -> None:
        with self._lock:
            self._begin()
            self._db.execute(
                "INSERT INTO cosigned (account, user_tx_no, txid, psbt, at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (account, user_tx_no) DO UPDATE SET"
                " txid = excluded.txid, psbt = excluded.psbt, at = excluded.at",
                (account, user_tx_no, txid, psbt, time.time()),
            )
            change = self._group.changed()
        self._group.durable(change)
