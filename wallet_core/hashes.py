"""Hash primitives: SHA-256, double SHA-256, HASH160, tagged hashes.

`hashlib.new("ripemd160")` is missing under some OpenSSL 3 builds; we detect it once at import
and fall back to embit's pure-Python RIPEMD-160 (about 20 times slower, still correct).
`RIPEMD160_BACKEND` says which one is in use (the benchmark prints it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

_sha256 = hashlib.sha256


def _detect_ripemd160() -> tuple[Callable[[bytes], bytes], str]:
    try:
        proto = hashlib.new("ripemd160")
    except (ValueError, TypeError):
        from embit.util.py_ripemd160 import ripemd160 as py_ripemd160  # noqa: PLC0415 (fallback)

        return py_ripemd160, "pure-python (embit)"

    def ripemd(data: bytes, _p: hashlib._Hash = proto) -> bytes:
        h = _p.copy()
        h.update(data)
        return h.digest()

    return ripemd, "hashlib (OpenSSL)"


ripemd160, RIPEMD160_BACKEND = _detect_ripemd160()


def sha256(data: bytes) -> bytes:
    return _sha256(data).digest()


def double_sha256(data: bytes) -> bytes:
    """SHA256(SHA256(data)): txids, sighashes, base58check, signed messages."""
    return _sha256(_sha256(data).digest()).digest()


def hash160(data: bytes) -> bytes:
    """RIPEMD160(SHA256(data)): key and script hashes for P2PKH/P2WPKH/P2SH."""
    return ripemd160(_sha256(data).digest())


def tagged_hash(tag: str, data: bytes) -> bytes:
    """BIP340 tagged hash, used by BIP341 output-key tweaks."""
    t = _sha256(tag.encode()).digest()
    return _sha256(t + t + data).digest()
