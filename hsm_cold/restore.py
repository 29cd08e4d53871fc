"""Making the backup at `hsm-cold init`, and `hsm-cold restore` onto a fresh token.

Restore checks everything before it writes anything: every file parses and carries a good
identity signature, exactly one identity file, one file per account, all of one HSM and one
backup key; the shares rebuild that backup key; every file decrypts; every account's seeds
give the xpubs its header names. Only then is the token initialised and written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cc_common.config import Section
from cc_common.errors import ConfigError
from cc_common.pairing import write_pairing_file
from cc_common.token import HsmToken
from hsm_cold import accounts
from hsm_cold.accounts import AccountFacts, SeedPurpose
from hsm_cold.backup import (
    IDENTITY_FILE,
    KEY_SIZE,
    BackupFile,
    BackupKey,
    BackupKind,
    ShareScheme,
    account_file_name,
    account_header,
    backup_dir,
    combine_shares,
    create_identity,
    load_backup_key,
    mark_shares_shown,
    read_backup_file,
    shares_shown,
    store_backup_key,
    write_account_backup,
    write_private,
)
from hsm_cold.console import Console, show_shares, write_drill_shares
from hsm_cold.errors import (
    BackupFileAltered,
    BackupFileInvalid,
    ForeignBackupKey,
    RestoreTargetInUse,
)
from hsm_cold.keystore import IDENTITY_KEY, SEAL_KEY, ColdKeystore
from hsm_cold.store import AccountRecord, ColdStore
from wallet_core.networks import Network

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupSettings:
    """`[hsm_cold] backup_threshold`, `backup_shares`, `backup_drill_dir` (drills only)."""

    scheme: ShareScheme
    drill_dir: Path | None

    @classmethod
    def of(cls, section: Section) -> BackupSettings:
        try:
            scheme = ShareScheme(
                section.int("backup_threshold", 2), section.int("backup_shares", 3)
            )
        except ValueError as exc:
            raise ConfigError(f"config: [hsm_cold] {exc}") from None
        drill = section.str("backup_drill_dir", "")
        return cls(scheme, section.path("backup_drill_dir") if drill else None)


# -- at init ----------------------------------------------------------------------------------


def prepare_backup(
    keystore: ColdKeystore,
    store: ColdStore,
    export_dir: Path,
    network: Network,
    settings: BackupSettings,
    console: Console,
) -> dict[str, str]:
    """Backup key, identity key (backed up), and the shares shown once; idempotent.

    The key is stored before its shares are shown: an init cut short shows a fresh split of
    the same key on the next run (the officers destroy any earlier, unfinished set).
    """
    if not shares_shown(store) and settings.drill_dir is None and not console.is_terminal:
        raise ConfigError(
            "hsm-cold init shows the backup shares on the cold console: run it on a terminal"
            " (for tests and drills only, set [hsm_cold] backup_drill_dir)"
        )
    keystore.token.seals.ensure_wrapping_key(SEAL_KEY)
    key = load_backup_key(keystore, store)
    if key is None:
        key = BackupKey(keystore.random(KEY_SIZE))
        store_backup_key(keystore, store, key)
    out = {"backup_key_id": key.key_id}
    identity_path = backup_dir(export_dir) / IDENTITY_FILE
    if not keystore.token.keys.has_key(IDENTITY_KEY):
        write_private(identity_path, create_identity(keystore, key, network).to_text())
    if identity_path.is_file():
        out["identity_backup"] = str(identity_path)
    else:
        out["identity_backup"] = "none: this identity key predates backups"
    written = _backup_missing_accounts(keystore, store, export_dir)
    if written:
        out["account_backups_written"] = ", ".join(str(a) for a in written)
    if shares_shown(store):
        out["shares"] = "already shown"
        return out
    shares = key.split(settings.scheme)
    if settings.drill_dir is not None:
        paths = write_drill_shares(settings.drill_dir, shares, settings.scheme)
        log.warning("DRILL MODE: %d backup shares written to %s", len(paths), settings.drill_dir)
        out["shares"] = f"DRILL MODE: {settings.scheme} written to {settings.drill_dir}"
    else:
        show_shares(console, shares, settings.scheme)
        out["shares"] = f"{settings.scheme} shown at the console"
    del shares
    mark_shares_shown(store, settings.scheme)
    return out


def _backup_missing_accounts(
    keystore: ColdKeystore, store: ColdStore, export_dir: Path
) -> list[int]:
    """Accounts provisioned before this cold HSM had a backup key get their file now."""
    written = []
    for account, _, _ in store.list_accounts():
        rec = store.get_account(account)
        if rec is not None and not (backup_dir(export_dir) / account_file_name(account)).exists():
            write_account_backup(keystore, store, export_dir, rec)
            written.append(account)
    return written


# -- restore ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupSet:
    identity: BackupFile
    accounts: dict[int, BackupFile]
    names: dict[int, str]

    @property
    def key_id(self) -> str:
        return self.identity.key_id


def load_backup_set(paths: Sequence[Path]) -> BackupSet:
    """Parse and signature-check every file; one identity file, one file per account."""
    identity: BackupFile | None = None
    files: dict[int, BackupFile] = {}
    names: dict[int, str] = {}
    for path in paths:
        bf = read_backup_file(path)
        bf.check_signature(str(path))
        if bf.kind is BackupKind.IDENTITY:
            if identity is not None:
                raise BackupFileInvalid(f"{path}: a second identity backup file")
            identity = bf
        else:
            account = bf.account
            if account is None or account in files:
                raise BackupFileInvalid(f"{path}: no account number, or account given twice")
            files[account] = bf
            names[account] = str(path)
    if identity is None:
        raise BackupFileInvalid(f"no identity backup file ({IDENTITY_FILE}) among the files")
    for account, bf in files.items():
        if (bf.identity_pubkey, bf.key_id) != (identity.identity_pubkey, identity.key_id):
            raise BackupFileInvalid(
                f"{names[account]}: written by another cold HSM or under another backup key"
                " than the identity file"
            )
    return BackupSet(identity, files, names)


def backup_files_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.ccbak") if p.is_file())


@dataclass(frozen=True)
class RestoredAccount:
    facts: AccountFacts
    record: AccountRecord
    receiving_seed: bytes
    cosigner_seed: bytes


def open_backup_set(
    key: BackupKey, bset: BackupSet, network: Network
) -> tuple[bytes, list[RestoredAccount]]:
    """Decrypt all (refusing another key, an altered file, a wrong network); nothing written."""
    ident = bset.identity.open(key, IDENTITY_FILE)
    try:
        secret = bytes.fromhex(ident["identity_secret"])
    except (KeyError, TypeError, ValueError):
        raise BackupFileAltered("the identity backup holds no identity key") from None
    restored: list[RestoredAccount] = []
    for account, bf in sorted(bset.accounts.items()):
        name = bset.names[account]
        if bf.header.get("network") != network.value:
            raise BackupFileInvalid(f"{name}: an account of {bf.header.get('network')}")
        restored.append(_restored_account(bf, bf.open(key, name), name))
    return secret, restored


def _restored_account(bf: BackupFile, payload: dict[str, Any], name: str) -> RestoredAccount:
    h = bf.header
    try:
        rec = AccountRecord(
            account=int(h["account"]),
            network=str(h["network"]),
            receiving_seed=b"",
            cosigner_seed=b"",
            hot_pubkey=bytes.fromhex(h["hot_pubkey"]),
            recovery_xpub=str(h["recovery_xpub"]),
            recovery_fingerprint=bytes.fromhex(h["recovery_fingerprint"]),
            vdevice_identity=bytes.fromhex(payload["vdevice_identity"]),
            settlement_descriptor=str(payload["settlement_descriptor"]),
            vdevice_phone=str(payload["vdevice_phone"]),
            owner_phone=str(payload["owner_phone"]),
        )
        receiving = bytes.fromhex(payload["receiving_seed"])
        cosigner = bytes.fromhex(payload["cosigner_seed"])
    except (KeyError, TypeError, ValueError):
        raise BackupFileAltered(f"{name}: the account backup is incomplete") from None
    again = account_header(rec, receiving, cosigner)
    for k in ("receiving_xpub", "cosigner_xpub", "recovery_xpub", "hot_receive_descriptor"):
        if again[k] != h.get(k):
            raise BackupFileAltered(f"{name}: the seeds do not give the header's {k}")
    return RestoredAccount(AccountFacts.of(rec), rec, receiving, cosigner)


def check_target_state(store_path: Path) -> None:
    """An existing cold state is never written over: it may be the only copy of something."""
    if store_path.exists():
        raise RestoreTargetInUse(
            f"a cold state exists at {store_path}: a restore writes only into an empty state"
            " directory (move the old one aside first)"
        )


def apply_restore(
    section: Section,
    store_path: Path,
    pairing_file: Path,
    export_dir: Path,
    key: BackupKey,
    bset: BackupSet,
    identity_secret: bytes,
    restored: list[RestoredAccount],
) -> dict[str, object]:
    """Write the checked backup into a fresh token and an empty state; a new pairing file."""
    HsmToken.init(section)
    with HsmToken.open(section) as token:
        if token.keys.has_key(IDENTITY_KEY):
            raise RestoreTargetInUse("the token already holds a cold identity key: not fresh")
        store = ColdStore(store_path)
        try:
            keystore = ColdKeystore(token, store)
            token.keys.import_signing_key(IDENTITY_KEY, identity_secret)
            identity = keystore.ensure_keys()
            store_backup_key(keystore, store, key)
            store.put_secret("backup_shares_shown", b"restored")
            for r in restored:
                rec = r.record
                sealed = replace(
                    rec,
                    receiving_seed=accounts.seal_seed(
                        keystore, r.receiving_seed, r.facts, SeedPurpose.RECEIVING
                    ),
                    cosigner_seed=accounts.seal_seed(
                        keystore, r.cosigner_seed, r.facts, SeedPurpose.COSIGNER
                    ),
                )
                store.add_account(sealed)
            write_pairing_file(pairing_file, keystore.new_pairing())
        finally:
            store.close()
    bdir = backup_dir(export_dir)
    bdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for bf in [bset.identity, *bset.accounts.values()]:
        name = IDENTITY_FILE if bf.kind is BackupKind.IDENTITY else f"account-{bf.account}.ccbak"
        if not (bdir / name).exists():
            write_private(bdir / name, bf.to_text())
    log.info("restored %d account(s); new pairing file %s", len(restored), pairing_file)
    return {
        "identity_pubkey": identity.hex(),
        "backup_key_id": key.key_id,
        "accounts": [r.record.account for r in restored],
        "pairing_file": str(pairing_file),
        "next": "pair the hot HSM: copy the pairing file, then `hsm-hot init --re-pair`",
    }


def restore(
    section: Section,
    store_path: Path,
    pairing_file: Path,
    export_dir: Path,
    network: Network,
    bset: BackupSet,
    shares: Sequence[str],
) -> dict[str, object]:
    """Shares and checked files -> a restored cold HSM; any refusal leaves nothing written."""
    check_target_state(store_path)
    key = combine_shares(list(shares))
    if key.key_id != bset.key_id:
        raise ForeignBackupKey(
            f"the shares rebuild backup key {key.key_id}; the files were written under"
            f" {bset.key_id}"
        )
    identity_secret, restored = open_backup_set(key, bset, network)
    return apply_restore(
        section, store_path, pairing_file, export_dir, key, bset, identity_secret, restored
    )
