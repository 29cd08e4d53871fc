"""Sealing secrets at rest (the cold HSM's BIP32 seeds) under an AES key that stays in the token.

AES-256-GCM runs inside the token: measured with SoftHSM 2.6.1 + python-pkcs11 0.10.1,
`CKM_AES_GCM` encrypts and decrypts, and a failed tag check (tampered blob, wrong AAD, wrong
key) comes back as `GeneralError`, which is translated to `DecryptionFailed` here. So no
CBC+HMAC fallback is needed. The seed exists in clear only in this process's memory.

Blob: version (1 byte) || nonce (12 bytes, from the token's RNG) || ciphertext || tag (16).
The GCM AAD binds the version, the key label and the caller's AAD (e.g. the account id).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, cast

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from cc_common.token.ec_keys import check_label
from cc_common.token.errors import (
    DecryptionFailed,
    InvalidArgument,
    KeyExists,
    KeyNotFound,
    MechanismUnsupported,
)
from cc_common.token.session import TokenSession
from cc_common.token.types import Provisioned

log = logging.getLogger(__name__)

BLOB_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
AES_KEY_BITS = 256
_HEADER = BLOB_VERSION.to_bytes(1, "big")
_DECRYPT_FAILURES = {
    p11.GeneralError: DecryptionFailed,
    p11.EncryptedDataInvalid: DecryptionFailed,
    p11.EncryptedDataLenRange: DecryptionFailed,
    p11.DataInvalid: DecryptionFailed,
    p11.DataLenRange: DecryptionFailed,
}


def _full_aad(label: str, aad: bytes) -> bytes:
    return b"cc-seal\x00" + _HEADER + label.encode("ascii") + b"\x00" + bytes(aad)


class _AesKey(Protocol):
    """An AES key on the token (python-pkcs11 types `get_key` as a plain `Key`)."""

    def encrypt(self, data: bytes, **kwargs: Any) -> bytes: ...

    def decrypt(self, data: bytes, **kwargs: Any) -> bytes: ...


class AesKeys:
    """AES-256 wrapping keys on one token, and authenticated encryption under them."""

    def __init__(self, token: TokenSession) -> None:
        self._token = token
        self._cache: dict[str, _AesKey] = {}

    def ensure_wrapping_key(self, label: str) -> Provisioned:
        """Create the AES-256 key `label` if missing (sensitive, non-extractable, in-token)."""
        check_label(label)
        if Mechanism.AES_GCM not in self._token.mechanisms():
            raise MechanismUnsupported("the PKCS#11 module does not offer CKM_AES_GCM")
        with self._token.operation(f"create wrapping key {label!r}") as s:
            existing = list(s.get_objects({Attribute.LABEL: label}))
            if existing:
                if any(o.object_class != ObjectClass.SECRET_KEY for o in existing):
                    raise KeyExists(f"label {label!r} is taken by a key that is not AES")
                return Provisioned.ALREADY_PRESENT
            key = s.generate_key(
                KeyType.AES,
                AES_KEY_BITS,
                label=label,
                id=label.encode("ascii"),
                store=True,
                template={
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: True,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                    Attribute.SIGN: False,
                    Attribute.VERIFY: False,
                    Attribute.DERIVE: False,
                    Attribute.MODIFIABLE: False,
                },
            )
        self._cache[label] = cast(_AesKey, key)
        log.info("created wrapping key %r", label)
        return Provisioned.CREATED

    def _key(self, label: str) -> _AesKey:
        cached = self._cache.get(label)
        if cached is not None:
            return cached
        check_label(label)
        with self._token.operation(f"find wrapping key {label!r}") as s:
            try:
                key = cast(
                    _AesKey,
                    s.get_key(
                        object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=label
                    ),
                )
            except p11.NoSuchKey:
                raise KeyNotFound(f"no wrapping key labelled {label!r} on this token") from None
        self._cache[label] = key
        return key

    def encrypt(self, label: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Seal `plaintext` under the token key `label`; `aad` must be given again to open."""
        if not plaintext:
            raise InvalidArgument("nothing to encrypt")
        key = self._key(label)
        nonce = self._token.random_bytes(NONCE_SIZE)
        params = GCMParams(nonce, _full_aad(label, aad), TAG_SIZE * 8)
        with self._token.operation(f"encrypt with {label!r}"):
            sealed = key.encrypt(
                bytes(plaintext), mechanism=Mechanism.AES_GCM, mechanism_param=params
            )
        return _HEADER + nonce + bytes(sealed)

    def decrypt(self, label: str, blob: bytes, aad: bytes = b"") -> bytes:
        """Open a blob from `encrypt`; raises `DecryptionFailed` if anything was changed."""
        if len(blob) < 1 + NONCE_SIZE + TAG_SIZE + 1 or blob[:1] != _HEADER:
            raise DecryptionFailed("sealed blob is malformed or of an unknown version")
        key = self._key(label)
        nonce, sealed = bytes(blob[1 : 1 + NONCE_SIZE]), bytes(blob[1 + NONCE_SIZE :])
        params = GCMParams(nonce, _full_aad(label, aad), TAG_SIZE * 8)
        with self._token.operation(f"decrypt with {label!r}", _DECRYPT_FAILURES):
            return bytes(key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params))
