"""The cold HSM's backup key and its backup files (docs/recovery.md).

The backup key is 32 random bytes from the token, split M-of-N as SLIP-39 mnemonics for the
officers and kept sealed in the cold state (so later provisionings can be backed up too). A
backup file is one JSON document: a public header (which HSM, which account, which backup key,
the public keys), the secrets encrypted with AES-256-GCM under a key derived from the backup
key with the header as associated data, and a signature by the cold identity key over all of
it. Without the shares a file can still be checked (`hsm-cold backup verify`): the signature
says which HSM wrote it and that nothing was changed since.

The identity key is the one key that must come back byte for byte (custody, the hot HSM and
the V-devices pin it, and batch proofs are signed with it), so at init it is made from token
randomness, written to the identity backup file and imported into the token as a sensitive,
non-extractable key; every later use is inside the token, as for a generated key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import coincurve
import shamir_mnemonic
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cc_common import config_write
from hsm_cold import accounts
from hsm_cold.accounts import AccountFacts, SeedPurpose
from hsm_cold.errors import (
    BackupFileAltered,
    BackupFileInvalid,
    BackupMissing,
    ForeignBackupKey,
    TooFewShares,
    WrongShare,
)
from hsm_cold.keystore import IDENTITY_KEY, ColdKeystore
from hsm_cold.store import AccountRecord, ColdStore
from wallet_core.keys import master_key
from wallet_core.networks import Network
from wallet_core.wallets import RECEIVE

FORMAT = "cc-cold-backup/1"
BACKUP_SECRET = "backup_key"  # noqa: S105 (a record name, not a secret)
SHARES_SHOWN = "backup_shares_shown"
KEY_SIZE = 32
NONCE_SIZE = 12
MAX_SHARES = 16
BACKUP_SUBDIR = "backup"
IDENTITY_FILE = "hsm-identity.ccbak"
MAX_FILE_SIZE = 64 * 1024


class BackupKind(StrEnum):
    IDENTITY = "identity"
    ACCOUNT = "account"


def account_file_name(account: int) -> str:
    return f"account-{account}.ccbak"


def backup_dir(export_dir: Path) -> Path:
    return export_dir / BACKUP_SUBDIR


@dataclass(frozen=True)
class ShareScheme:
    """M-of-N: any `threshold` of the `shares` officers' mnemonics rebuild the backup key."""

    threshold: int = 2
    shares: int = 3

    def __post_init__(self) -> None:
        if not 2 <= self.threshold <= self.shares <= MAX_SHARES:
            raise ValueError(
                f"backup shares {self.threshold}-of-{self.shares}: need 2 <= M <= N <= {MAX_SHARES}"
            )

    def __str__(self) -> str:
        return f"{self.threshold}-of-{self.shares}"


class BackupKey:
    """The backup key in memory, for one init, provisioning or restore."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_SIZE:
            raise ValueError("a backup key is 32 bytes")
        self._secret = bytes(secret)

    @property
    def key_id(self) -> str:
        """A public name of the key (8 bytes of an HMAC): which files a set of shares opens."""
        return hmac.new(self._secret, b"cc-backup-key-id", hashlib.sha256).digest()[:8].hex()

    def _file_key(self) -> bytes:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=FORMAT.encode())
        return hkdf.derive(self._secret)

    def seal(self, header_aad: bytes, plaintext: bytes, nonce: bytes) -> bytes:
        return AESGCM(self._file_key()).encrypt(nonce, plaintext, header_aad)

    def open(self, header_aad: bytes, ciphertext: bytes, nonce: bytes) -> bytes | None:
        try:
            return AESGCM(self._file_key()).decrypt(nonce, ciphertext, header_aad)
        except InvalidTag:
            return None

    def split(self, scheme: ShareScheme) -> list[str]:
        """Fresh SLIP-39 mnemonics (one group, M-of-N); a new call gives a new, unrelated set."""
        groups = shamir_mnemonic.generate_mnemonics(
            1, [(scheme.threshold, scheme.shares)], self._secret
        )
        return list(groups[0])

    @property
    def secret(self) -> bytes:
        return self._secret


# -- shares -----------------------------------------------------------------------------------


def normalize_share(text: str) -> str:
    return " ".join(text.lower().split())


def check_share(text: str, n: int) -> shamir_mnemonic.Share:
    """One typed share, or `WrongShare` naming which one and why (checksum, unknown word)."""
    try:
        return shamir_mnemonic.Share.from_mnemonic(normalize_share(text))
    except (shamir_mnemonic.MnemonicError, ValueError, KeyError) as exc:
        raise WrongShare(f"share {n} is not a valid SLIP-39 share: {_first_line(exc)}") from None


def shares_needed(first: shamir_mnemonic.Share) -> int:
    return int(first.member_threshold)


def combine_shares(texts: list[str]) -> BackupKey:
    """M shares -> the backup key; too few, mixed or corrupted shares are refused."""
    if not texts:
        raise TooFewShares("no share given")
    shares = [check_share(t, n) for n, t in enumerate(texts, 1)]
    need = shares_needed(shares[0])
    distinct = {s.index for s in shares}
    if len({s.identifier for s in shares}) == 1 and len(distinct) < need:
        raise TooFewShares(f"{len(distinct)} share(s) given, this backup key needs {need}")
    try:
        secret = shamir_mnemonic.combine_mnemonics([normalize_share(t) for t in texts])
    except (shamir_mnemonic.MnemonicError, ValueError) as exc:
        raise WrongShare(f"the shares do not combine: {_first_line(exc)}") from None
    if len(secret) != KEY_SIZE:
        raise ForeignBackupKey("the shares hold a secret that is not a cold HSM backup key")
    return BackupKey(secret)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# -- the key in the cold state ---------------------------------------------------------------


def store_backup_key(keystore: ColdKeystore, store: ColdStore, key: BackupKey) -> None:
    store.put_secret(BACKUP_SECRET, keystore.seal(key.secret, BACKUP_SECRET))


def load_backup_key(keystore: ColdKeystore, store: ColdStore) -> BackupKey | None:
    blob = store.get_secret(BACKUP_SECRET)
    return None if blob is None else BackupKey(keystore.unseal(blob, BACKUP_SECRET))


def shares_shown(store: ColdStore) -> bool:
    return store.get_secret(SHARES_SHOWN) is not None


def mark_shares_shown(store: ColdStore, scheme: ShareScheme) -> None:
    store.put_secret(SHARES_SHOWN, str(scheme).encode())


# -- backup files -----------------------------------------------------------------------------


def canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class BackupFile:
    header: dict[str, Any]
    nonce: bytes
    ciphertext: bytes
    signature: bytes  # 65-byte compact signature by the cold identity key

    @property
    def kind(self) -> BackupKind:
        return BackupKind(self.header["kind"])

    @property
    def identity_pubkey(self) -> bytes:
        return bytes.fromhex(self.header["identity_pubkey"])

    @property
    def key_id(self) -> str:
        return str(self.header["backup_key_id"])

    @property
    def account(self) -> int | None:
        value = self.header.get("account")
        return value if isinstance(value, int) else None

    def digest(self) -> bytes:
        """What the identity key signs: format, header, nonce and ciphertext."""
        h = hashlib.sha256(FORMAT.encode() + b"\x00" + canonical(self.header))
        h.update(self.nonce + self.ciphertext)
        return h.digest()

    def to_text(self) -> str:
        doc = {
            "format": FORMAT,
            "header": self.header,
            "nonce": self.nonce.hex(),
            "ciphertext": base64.b64encode(self.ciphertext).decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_text(cls, text: str, name: str) -> BackupFile:
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            header = doc["header"]
            if not isinstance(header, dict):
                raise ValueError("header is not a map")
            BackupKind(header["kind"])
            bytes.fromhex(header["identity_pubkey"])
            str(header["backup_key_id"])
            bf = cls(
                header,
                bytes.fromhex(doc["nonce"]),
                base64.b64decode(doc["ciphertext"], validate=True),
                base64.b64decode(doc["signature"], validate=True),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise BackupFileInvalid(f"{name}: not a cold HSM backup file ({exc})") from None
        if len(bf.nonce) != NONCE_SIZE or len(bf.signature) != 65:
            raise BackupFileInvalid(f"{name}: malformed nonce or signature")
        return bf

    def check_signature(self, name: str) -> None:
        """The identity key named in the header signed exactly this file: else it was altered."""
        sig = self.signature
        recid = sig[0] - 31
        try:
            if not 0 <= recid <= 3:
                raise ValueError
            key = coincurve.PublicKey.from_signature_and_message(
                sig[1:] + bytes([recid]), self.digest(), hasher=None
            )
            ok = key.format(compressed=True) == self.identity_pubkey
        except ValueError:
            ok = False
        if not ok:
            raise BackupFileAltered(
                f"{name}: the signature does not match the file; it was altered or damaged"
            )

    def open(self, key: BackupKey, name: str) -> dict[str, Any]:
        """The decrypted secrets; another backup key or an altered file is refused."""
        if key.key_id != self.key_id:
            raise ForeignBackupKey(
                f"{name}: written under backup key {self.key_id}, the shares give {key.key_id}"
            )
        plain = key.open(canonical(self.header), self.ciphertext, self.nonce)
        if plain is None:
            raise BackupFileAltered(f"{name}: the encrypted part does not open; it was altered")
        payload = json.loads(plain)
        if not isinstance(payload, dict):
            raise BackupFileAltered(f"{name}: the encrypted part is not a map")
        return payload


def read_backup_file(path: Path) -> BackupFile:
    try:
        if path.stat().st_size > MAX_FILE_SIZE:
            raise BackupFileInvalid(f"{path}: too large for a backup file")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupFileInvalid(f"{path}: cannot be read ({exc})") from None
    return BackupFile.from_text(text, str(path))


def make_file(
    keystore: ColdKeystore, key: BackupKey, header: dict[str, Any], payload: Mapping[str, Any]
) -> BackupFile:
    header = {**header, "backup_key_id": key.key_id, "identity_pubkey": _identity(keystore)}
    nonce = keystore.random(NONCE_SIZE)
    ciphertext = key.seal(canonical(header), canonical(payload), nonce)
    unsigned = BackupFile(header, nonce, ciphertext, b"")
    signature = keystore.sign_message_digest(unsigned.digest())
    return BackupFile(header, nonce, ciphertext, signature)


def _identity(keystore: ColdKeystore) -> str:
    return keystore.identity_pubkey.hex()


def write_private(path: Path, text: str) -> None:
    """Atomic, fsynced, mode 0600 (the directory 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    config_write.write_private(path, text)


# -- the identity key -------------------------------------------------------------------------


def create_identity(keystore: ColdKeystore, key: BackupKey, network: Network) -> BackupFile:
    """A new identity key: token randomness, backed up, then imported into the token."""
    secret = keystore.random(KEY_SIZE)
    keystore.token.keys.import_signing_key(IDENTITY_KEY, secret)
    header = {"kind": BackupKind.IDENTITY.value, "network": network.value, "created": _now()}
    bf = make_file(keystore, key, header, {"identity_secret": secret.hex()})
    del secret
    return bf


def _now() -> int:
    return int(time.time())


# -- accounts ---------------------------------------------------------------------------------


def account_header(
    rec: AccountRecord, receiving_seed: bytes, cosigner_seed: bytes
) -> dict[str, Any]:
    """The public facts of an account as a restore must reproduce them."""
    facts = AccountFacts.of(rec)
    net = facts.network
    recv_root = master_key(receiving_seed, net)
    receiving = accounts.receiving_wallet(recv_root, net)
    cosigner = accounts.cosigner_key(master_key(cosigner_seed, net), net)
    hot = accounts.hot_wallet(facts, cosigner)
    return {
        "kind": BackupKind.ACCOUNT.value,
        "account": rec.account,
        "network": net.value,
        "receiving_xpub": receiving.account.xpub.serialize(),
        "receiving_fingerprint": receiving.account.fingerprint.hex(),
        "cosigner_xpub": cosigner.xpub.serialize(),
        "cosigner_fingerprint": cosigner.fingerprint.hex(),
        "recovery_xpub": rec.recovery_xpub,
        "recovery_fingerprint": rec.recovery_fingerprint.hex(),
        "hot_pubkey": rec.hot_pubkey.hex(),
        "cold_receive_descriptor": str(receiving.descriptor(RECEIVE)),
        "hot_receive_descriptor": str(hot.descriptor(RECEIVE)),
        "created": _now(),
    }


def account_payload(
    rec: AccountRecord, receiving_seed: bytes, cosigner_seed: bytes
) -> dict[str, Any]:
    return {
        "receiving_seed": receiving_seed.hex(),
        "cosigner_seed": cosigner_seed.hex(),
        "vdevice_identity": rec.vdevice_identity.hex(),
        "settlement_descriptor": rec.settlement_descriptor,
        "vdevice_phone": rec.vdevice_phone,
        "owner_phone": rec.owner_phone,
    }


def write_account_backup(
    keystore: ColdKeystore, store: ColdStore, export_dir: Path, rec: AccountRecord
) -> Path:
    """The account's backup file, written before the account exists (as the recovery key).

    Refused without a backup key: an account whose seeds exist only in this token is one
    broken token away from losing every coin it received.
    """
    key = load_backup_key(keystore, store)
    if key is None:
        raise BackupMissing(
            "this cold HSM has no backup key: run `hsm-cold init` (it makes one) first"
        )
    facts = AccountFacts.of(rec)
    receiving = keystore.unseal(rec.receiving_seed, facts.aad(SeedPurpose.RECEIVING))
    cosigner = keystore.unseal(rec.cosigner_seed, facts.aad(SeedPurpose.COSIGNER))
    bf = make_file(
        keystore,
        key,
        account_header(rec, receiving, cosigner),
        account_payload(rec, receiving, cosigner),
    )
    del receiving, cosigner
    path = backup_dir(export_dir) / account_file_name(rec.account)
    write_private(path, bf.to_text())
    return path


def describe(bf: BackupFile) -> dict[str, Any]:
    """What `backup verify` prints: which HSM, which account, which key; nothing secret."""
    h = bf.header
    out: dict[str, Any] = {
        "kind": bf.kind.value,
        "hsm_identity": bf.identity_pubkey.hex(),
        "backup_key_id": bf.key_id,
        "network": h.get("network"),
        "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(h.get("created", 0)))),
    }
    if bf.kind is BackupKind.ACCOUNT:
        for k in ("account", "receiving_xpub", "cosigner_xpub", "recovery_xpub", "hot_pubkey"):
            out[k] = h.get(k)
    return out
