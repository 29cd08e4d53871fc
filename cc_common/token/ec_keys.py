"""secp256k1 signing keys that live in the token, in the words of the domain.

A key is generated inside the token (sensitive, non-extractable, unmodifiable) under a label per
account, e.g. `hot/<account_id>`. `CKM_ECDSA` returns raw r||s, about half of them high-S, so
every signature is normalised to low-S, DER-encoded and verified with libsecp256k1 (coincurve)
against the key's public key before it is returned: a signature that leaves is a good one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol, cast

import coincurve
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from cc_common.token.errors import InvalidArgument, KeyExists, KeyNotFound, SignatureCheckFailed
from cc_common.token.session import TokenSession

log = logging.getLogger(__name__)

# DER of OID 1.3.132.0.10 (secp256k1), the CKA_EC_PARAMS of every key here.
SECP256K1_EC_PARAMS = bytes.fromhex("06052b8104000a")
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = SECP256K1_N // 2
DIGEST_SIZE = 32
MAX_LABEL = 64
# Bitcoin's compact signature header: 27 + recid, + 4 for a compressed public key.
COMPACT_HEADER_COMPRESSED = 27 + 4


def check_label(label: str) -> bytes:
    """A key label as stored in CKA_LABEL/CKA_ID: printable ASCII, 1-64 characters."""
    if not (0 < len(label) <= MAX_LABEL and label.isascii() and label.isprintable()):
        raise InvalidArgument(f"key label must be 1-{MAX_LABEL} printable ASCII characters")
    return label.encode("ascii")


def check_digest(digest: bytes) -> None:
    if not isinstance(digest, bytes | bytearray) or len(digest) != DIGEST_SIZE:
        raise InvalidArgument(f"a digest to sign must be {DIGEST_SIZE} bytes")


def low_s(r: int, s: int) -> tuple[int, int]:
    """The same signature with s in the lower half of the group order (BIP62/BIP146)."""
    return (r, SECP256K1_N - s) if s > HALF_N else (r, s)


def raw_to_low_s(raw: bytes) -> tuple[int, int]:
    """`CKM_ECDSA`'s r||s (64 bytes) as integers, normalised to low-S."""
    if len(raw) != 2 * DIGEST_SIZE:
        raise SignatureCheckFailed(f"token returned a {len(raw)}-byte ECDSA signature, not 64")
    r = int.from_bytes(raw[:DIGEST_SIZE], "big")
    s = int.from_bytes(raw[DIGEST_SIZE:], "big")
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise SignatureCheckFailed("token returned an ECDSA signature out of range")
    return low_s(r, s)


def compressed_from_ec_point(ec_point: bytes) -> bytes:
    """CKA_EC_POINT (a DER OCTET STRING around an uncompressed point) -> 33-byte SEC1."""
    point = ec_point
    if len(point) == 67 and point[0] == 0x04 and point[1] == 0x41:
        point = point[2:]
    try:
        return coincurve.PublicKey(point).format(compressed=True)
    except ValueError:
        raise SignatureCheckFailed("token returned an invalid secp256k1 public key") from None


class _EcPrivateKey(Protocol):
    """A private EC key on the token (python-pkcs11 types `get_key` as a plain `Key`)."""

    def sign(self, data: bytes, **kwargs: Any) -> bytes: ...


@dataclass(frozen=True)
class _Key:
    private: _EcPrivateKey
    public: bytes  # 33-byte compressed


class EcKeys:
    """Account signing keys on one token. Handles are cached: a lookup by label costs ms."""

    def __init__(self, token: TokenSession) -> None:
        self._token = token
        self._cache: dict[str, _Key] = {}
        self._cache_lock = threading.Lock()

    def generate_signing_key(self, label: str) -> bytes:
        """Create the secp256k1 key `label` in the token; returns its compressed public key."""
        ident = check_label(label)
        with self._token.operation(f"generate key {label!r}") as s:
            if any(True for _ in s.get_objects({Attribute.LABEL: label})):
                raise KeyExists(f"a key labelled {label!r} already exists on the token")
            params = s.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: SECP256K1_EC_PARAMS}, local=True
            )
            pub, priv = params.generate_keypair(
                store=True,
                label=label,
                id=ident,
                public_template={
                    Attribute.VERIFY: True,
                    Attribute.ENCRYPT: False,
                    Attribute.WRAP: False,
                    Attribute.DERIVE: False,
                    Attribute.MODIFIABLE: False,
                },
                private_template={
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                    Attribute.DECRYPT: False,
                    Attribute.UNWRAP: False,
                    Attribute.DERIVE: False,
                    Attribute.MODIFIABLE: False,
                },
            )
            public = compressed_from_ec_point(pub[Attribute.EC_POINT])
        with self._cache_lock:
            self._cache[label] = _Key(cast(_EcPrivateKey, priv), public)
        log.info("generated signing key %r", label)
        return public

    def import_signing_key(self, label: str, secret: bytes) -> bytes:
        """Put a secp256k1 private key into the token (sensitive, non-extractable).

        For a key that must survive the token (the cold identity key is restored from an
        encrypted backup); every other key is generated inside the token.
        """
        ident = check_label(label)
        try:
            public = coincurve.PrivateKey(bytes(secret)).public_key
        except ValueError:
            raise InvalidArgument("an imported key must be a 32-byte secp256k1 scalar") from None
        point = public.format(compressed=False)
        with self._token.operation(f"import key {label!r}") as s:
            if any(True for _ in s.get_objects({Attribute.LABEL: label})):
                raise KeyExists(f"a key labelled {label!r} already exists on the token")
            s.create_object(
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KeyType.EC,
                    Attribute.TOKEN: True,
                    Attribute.LABEL: label,
                    Attribute.ID: ident,
                    Attribute.EC_PARAMS: SECP256K1_EC_PARAMS,
                    Attribute.EC_POINT: bytes([0x04, len(point)]) + point,
                    Attribute.VERIFY: True,
                    Attribute.MODIFIABLE: False,
                }
            )
            s.create_object(
                {
                    Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                    Attribute.KEY_TYPE: KeyType.EC,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.LABEL: label,
                    Attribute.ID: ident,
                    Attribute.EC_PARAMS: SECP256K1_EC_PARAMS,
                    Attribute.VALUE: bytes(secret),
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                    Attribute.DECRYPT: False,
                    Attribute.DERIVE: False,
                    Attribute.MODIFIABLE: False,
                }
            )
        log.info("imported signing key %r", label)
        return self.public_key(label)

    def _key(self, label: str) -> _Key:
        with self._cache_lock:
            cached = self._cache.get(label)
        if cached is not None:
            return cached
        check_label(label)
        with self._token.operation(f"find key {label!r}") as s:
            try:
                priv = s.get_key(
                    object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC, label=label
                )
                pub = s.get_key(
                    object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.EC, label=label
                )
            except p11.NoSuchKey:
                raise KeyNotFound(f"no signing key labelled {label!r} on this token") from None
            if pub[Attribute.EC_PARAMS] != SECP256K1_EC_PARAMS:
                raise KeyNotFound(f"key {label!r} is not a secp256k1 key")
            key = _Key(cast(_EcPrivateKey, priv), compressed_from_ec_point(pub[Attribute.EC_POINT]))
        with self._cache_lock:
            self._cache[label] = key
        return key

    def public_key(self, label: str) -> bytes:
        """The 33-byte compressed public key of `label`."""
        return self._key(label).public

    def has_key(self, label: str) -> bool:
        try:
            self._key(label)
        except KeyNotFound:
            return False
        return True

    def _sign_raw(self, label: str, digest: bytes) -> tuple[_Key, int, int]:
        check_digest(digest)
        key = self._key(label)
        with self._token.operation(f"sign with {label!r}"):
            raw = key.private.sign(bytes(digest), mechanism=Mechanism.ECDSA)
        r, s = raw_to_low_s(raw)
        return key, r, s

    def sign_digest(self, label: str, digest: bytes) -> bytes:
        """ECDSA over a 32-byte digest (e.g. a BIP143 sighash): low-S, DER, verified."""
        key, r, s = self._sign_raw(label, digest)
        der = encode_dss_signature(r, s)
        if not _verifies(key.public, der, bytes(digest)):
            log.error("signature by %r failed verification; withheld", label)
            raise SignatureCheckFailed(f"signature by {label!r} did not verify; withheld")
        return der

    def sign_recoverable(self, label: str, digest: bytes) -> bytes:
        """A 65-byte Bitcoin compact signature: header (31 + recid), r, s; low-S, verified.

        This is the `signmessage` format for a compressed key; the token gives no recovery
        id, so recids 0-3 are tried until the recovered key is ours.
        """
        key, r, s = self._sign_raw(label, digest)
        rs = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        for recid in range(4):
            try:
                recovered = coincurve.PublicKey.from_signature_and_message(
                    rs + bytes([recid]), bytes(digest), hasher=None
                )
            except ValueError:
                continue
            if recovered.format(compressed=True) == key.public:
                return bytes([COMPACT_HEADER_COMPRESSED + recid]) + rs
        log.error("no recovery id recovers the key of %r; signature withheld", label)
        raise SignatureCheckFailed(f"signature by {label!r} recovers to no key of ours; withheld")

    def forget_handles(self) -> None:
        """Drop cached handles (after the session was reopened)."""
        with self._cache_lock:
            self._cache.clear()


def _verifies(public: bytes, der: bytes, digest: bytes) -> bool:
    try:
        return coincurve.PublicKey(public).verify(der, digest, hasher=None)
    except ValueError:
        return False
