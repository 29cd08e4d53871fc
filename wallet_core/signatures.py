"""ECDSA signatures as Bitcoin wants them: strict DER, low-S, verified before use.

An *external signer* is any callable `digest32 -> bytes` returning raw r||s (64 bytes, as
a PKCS#11 HSM's CKM_ECDSA does) or DER. `normalize_signature` turns either into low-S DER
and checks it against the expected public key, so a faulty or malicious signer cannot
slip a bad or high-S signature into a transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

from coincurve import PublicKey

from . import secp
from .errors import InvalidKeyError, SignatureError, SignerError

N = secp.N
HALF_N = N // 2

SIGHASH_ALL = 0x01


class Signer(Protocol):
    """Signs a 32-byte digest; returns raw r||s (64 bytes) or a DER signature."""

    def __call__(self, digest: bytes) -> bytes: ...


ExternalSigner = Callable[[bytes], bytes]


def is_low_s(s: int) -> bool:
    return 0 < s <= HALF_N


def normalize_low_s(r: int, s: int) -> tuple[int, int]:
    """(r, n - s) if s is high: the same signature in the form BIP146/Core policy requires."""
    if not (0 < r < N and 0 < s < N):
        raise SignatureError("signature r or s out of range")
    return (r, N - s) if s > HALF_N else (r, s)


def _der_int(v: int) -> bytes:
    b = v.to_bytes((v.bit_length() + 8) // 8, "big")  # keeps a leading 0 when the top bit is set
    return b"\x02" + bytes([len(b)]) + b


def der_encode(r: int, s: int) -> bytes:
    """Strict DER (BIP66) encoding of (r, s)."""
    if not (0 < r < N and 0 < s < N):
        raise SignatureError("signature r or s out of range")
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


def der_decode(sig: bytes) -> tuple[int, int]:
    """Parse strict (BIP66) DER, without sighash byte; raise `SignatureError` otherwise."""
    if len(sig) < 8 or len(sig) > 72 or sig[0] != 0x30 or sig[1] != len(sig) - 2:
        raise SignatureError("not a strict DER signature (header/length)")
    out = []
    pos = 2
    for _ in range(2):
        if pos + 2 > len(sig) or sig[pos] != 0x02:
            raise SignatureError("not a strict DER signature (integer marker)")
        ln = sig[pos + 1]
        val = sig[pos + 2 : pos + 2 + ln]
        if ln == 0 or len(val) != ln:
            raise SignatureError("not a strict DER signature (integer length)")
        if val[0] & 0x80:
            raise SignatureError("not a strict DER signature (negative integer)")
        if ln > 1 and val[0] == 0 and not val[1] & 0x80:
            raise SignatureError("not a strict DER signature (excess padding)")
        out.append(int.from_bytes(val, "big"))
        pos += 2 + ln
    if pos != len(sig):
        raise SignatureError("not a strict DER signature (trailing bytes)")
    r, s = out
    if not (0 < r < N and 0 < s < N):
        raise SignatureError("signature r or s out of range")
    return r, s


def raw_to_rs(raw: bytes) -> tuple[int, int]:
    if len(raw) != 64:
        raise SignatureError("raw signature must be 64 bytes (r||s)")
    return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")


def verify_digest(pubkey: bytes, digest: bytes, der: bytes, *, require_low_s: bool = True) -> bool:
    """True if `der` is a valid signature of `digest` by `pubkey` (low-S required by default).

    Remembered for the last `VERIFIED_CACHE` distinct arguments: a co-sign checks each
    signature where it enters (the cold HSM's answer, the token's output) and again where the
    PSBT takes it, and the answer is a pure function of the three byte strings.
    """
    if type(pubkey) is bytes and type(digest) is bytes and type(der) is bytes:
        return _verify_remembered(pubkey, digest, der, require_low_s)
    return _verify(pubkey, digest, der, require_low_s)


VERIFIED_CACHE = 1024


def _verify(pubkey: bytes, digest: bytes, der: bytes, require_low_s: bool) -> bool:
    try:
        r, s = der_decode(der)
    except SignatureError:
        return False
    if require_low_s and not is_low_s(s):
        return False
    r, s = normalize_low_s(r, s)  # libsecp256k1 only verifies low-S
    try:
        return PublicKey(pubkey).verify(der_encode(r, s), digest, hasher=None)
    except (ValueError, TypeError):
        return False


_verify_remembered = functools.lru_cache(maxsize=VERIFIED_CACHE)(_verify)


def sign_digest(priv: bytes, digest: bytes) -> bytes:
    """Deterministic (RFC6979) low-S DER signature of a 32-byte digest."""
    if len(digest) != 32:
        raise SignatureError("digest must be 32 bytes")
    return secp.sign_der(priv, digest)


def normalize_signature(sig: bytes, pubkey: bytes, digest: bytes) -> bytes:
    """Turn a signer's output (raw r||s or DER, any S) into verified low-S DER."""
    try:
        r, s = raw_to_rs(sig) if len(sig) == 64 else der_decode(sig)
    except SignatureError as exc:
        raise SignerError(f"signer returned a malformed signature: {exc.message}") from None
    der = der_encode(*normalize_low_s(r, s))
    if not verify_digest(pubkey, digest, der):
        raise SignerError("signer's signature does not verify against the expected public key")
    return der


def sign_with(signer: ExternalSigner, pubkey: bytes, digest: bytes) -> bytes:
    """Call an external signer and return a verified low-S DER signature."""
    return normalize_signature(signer(digest), pubkey, digest)


class SoftwareSigner:
    """An in-memory signer for tests and the offline recovery tool. Returns raw r||s.

    `high_s=True` makes it return the high-S twin, to exercise normalisation (a PKCS#11
    token does this about half of the time).
    """

    def __init__(self, priv: bytes, *, high_s: bool = False, raw: bool = True) -> None:
        secp.check_privkey(priv)
        self._priv = priv
        self.high_s = high_s
        self.raw = raw
        self.public_key = secp.pubkey_from_privkey(priv)

    def __repr__(self) -> str:
        return f"SoftwareSigner(pubkey={self.public_key.hex()})"

    def __call__(self, digest: bytes) -> bytes:
        r, s = der_decode(sign_digest(self._priv, digest))
        if self.high_s:
            s = N - s
        if self.raw:
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return _der_unchecked(r, s)


def _der_unchecked(r: int, s: int) -> bytes:
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


__all__ = [
    "ExternalSigner",
    "InvalidKeyError",
    "SIGHASH_ALL",
    "Signer",
    "SoftwareSigner",
    "der_decode",
    "der_encode",
    "is_low_s",
    "normalize_low_s",
    "normalize_signature",
    "raw_to_rs",
    "sign_digest",
    "sign_with",
    "verify_digest",
]
