"""libsecp256k1 through coincurve's cffi bindings: the one place that touches the curve.

coincurve's Python objects cost several microseconds per call, so hot paths call the C
library directly on one shared context (libsecp256k1 contexts are safe to share between
threads for everything except randomisation, which we never do after creation).

Fast batch derivation (`BatchPointMultiplier`): a non-hardened child is K + IL*G. Instead of
`secp256k1_ec_pubkey_tweak_add` (a variable-base multiplication: ~19 us here) we
precompute, once per process, 32 windows x 256 multiples of G offset by points R_j that sum
to zero, so IL*G + K is a sum of 33 precomputed points. Through the public API that sum is one
`secp256k1_ec_pubkey_combine` per key (~10.5 us), which pays a field inversion per key to
return an affine point; the C extension `wallet_core._batch_ec` (native/_batch_ec.c, on
libsecp256k1's own field code) adds the same points for a whole batch at once, window by
window in affine coordinates, so all keys of a batch share one inversion per window (~4.4 us
a key). The public-API path stays as the reference (`add_many_packed_reference`) and the
fallback when the extension is not built; tests check both against each other, the plain
tweak-add path and other libraries.
Wider windows (10 to 12 bits: 27 to 23 points, 1.7 to 5.8 MB) measured no faster through the
public API, because the table no longer stays in the CPU cache."""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
from collections.abc import Sequence
from itertools import cycle
from operator import getitem

from coincurve._libsecp256k1 import ffi, lib

from .errors import InvalidKeyError

try:
    from . import _batch_ec
except ImportError:  # not built (pip install -e . builds it): the public-API path, slower
    _batch_ec = None  # type: ignore[assignment]
    logging.getLogger(__name__).warning(
        "wallet_core._batch_ec is not built: batch derivation uses the slower public API"
    )

BATCH_BACKEND = "public API" if _batch_ec is None else "native (wallet_core._batch_ec)"

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_COMPRESSED = lib.SECP256K1_EC_COMPRESSED
_UNCOMPRESSED = lib.SECP256K1_EC_UNCOMPRESSED
_PTR_SIZE = ffi.sizeof("secp256k1_pubkey *")
_POINT_SIZE = ffi.sizeof("secp256k1_pubkey")

CTX = lib.secp256k1_context_create(lib.SECP256K1_CONTEXT_NONE)
if CTX == ffi.NULL:  # pragma: no cover - only on a broken libsecp256k1 build
    raise ImportError("secp256k1_context_create failed")


def _parse(pub: bytes) -> object:
    obj = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_parse(CTX, obj, pub, len(pub)):
        raise InvalidKeyError("invalid public key")
    return obj


def _serialize(obj: object, compressed: bool = True) -> bytes:
    size = 33 if compressed else 65
    out = ffi.new(f"unsigned char[{size}]")
    outlen = ffi.new("size_t *", size)
    lib.secp256k1_ec_pubkey_serialize(
        CTX, out, outlen, obj, _COMPRESSED if compressed else _UNCOMPRESSED
    )
    return bytes(ffi.buffer(out, outlen[0]))


def is_valid_pubkey(pub: bytes) -> bool:
    """True for a 33-byte compressed or 65-byte uncompressed point on the curve."""
    if len(pub) not in (33, 65):
        return False
    obj = ffi.new("secp256k1_pubkey *")
    return bool(lib.secp256k1_ec_pubkey_parse(CTX, obj, pub, len(pub)))


def check_privkey(priv: bytes) -> int:
    """Return the private key as an int after checking 0 < k < n."""
    if len(priv) != 32:
        raise InvalidKeyError("private key must be 32 bytes")
    k = int.from_bytes(priv, "big")
    if not 0 < k < N:
        raise InvalidKeyError("private key out of range")
    return k


def pubkey_from_privkey(priv: bytes, compressed: bool = True) -> bytes:
    check_privkey(priv)
    obj = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_create(CTX, obj, priv):
        raise InvalidKeyError("invalid private key")
    return _serialize(obj, compressed)


def sign_der(priv: bytes, digest: bytes) -> bytes:
    """Deterministic (RFC6979) low-S DER ECDSA signature of a 32-byte digest.

    The same signature as coincurve's `PrivateKey(priv).sign(digest, hasher=None)`, without
    the public key `PrivateKey` derives on construction (a curve multiplication per signature
    that signing does not use)."""
    check_privkey(priv)
    if len(digest) != 32:
        raise InvalidKeyError("digest must be 32 bytes")
    sig = ffi.new("secp256k1_ecdsa_signature *")
    if not lib.secp256k1_ecdsa_sign(CTX, sig, digest, priv, ffi.NULL, ffi.NULL):
        raise InvalidKeyError("signing failed")  # pragma: no cover - checked key and digest
    out = ffi.new("unsigned char[72]")
    size = ffi.new("size_t *", 72)
    lib.secp256k1_ecdsa_signature_serialize_der(CTX, out, size, sig)
    return bytes(ffi.buffer(out, size[0]))


def compress_pubkey(pub: bytes) -> bytes:
    """Normalise any valid encoding to 33-byte compressed form."""
    return _serialize(_parse(pub), True)


def pubkey_tweak_add(pub: bytes, tweak: bytes) -> bytes:
    """pub + tweak*G, compressed. Raises `InvalidKeyError` if the result is infinity."""
    obj = _parse(pub)
    if not lib.secp256k1_ec_pubkey_tweak_add(CTX, obj, tweak):
        raise InvalidKeyError("tweak out of range or result at infinity")
    return _serialize(obj, True)


def privkey_tweak_add(priv: bytes, tweak: bytes) -> bytes:
    """(priv + tweak) mod n; raises `InvalidKeyError` when the result is zero or tweak >= n."""
    k = check_privkey(priv)
    t = int.from_bytes(tweak, "big")
    if t >= N:
        raise InvalidKeyError("tweak out of range")
    r = (k + t) % N
    if r == 0:
        raise InvalidKeyError("tweaked private key is zero")
    return r.to_bytes(32, "big")


class BatchPointMultiplier:
    """Computes K + t*G for many tweaks t as a sum of 33 table points (module doc).

    Window j (big-endian byte j of t) holds W[j][b] = (b * 256^(31-j) + r_j) * G with
    sum(r_j) = 0 mod n, so every table entry is a finite point (even for b = 0) and the
    33-point sum is exactly K + t*G. Built once per process through the public API (~25 ms,
    0.5 MB), then handed to the C extension as 64-byte x||y points (~12 ms, another 0.5 MB).
    """

    _instance: BatchPointMultiplier | None = None
    _lock = threading.Lock()

    @classmethod
    def shared(cls) -> BatchPointMultiplier:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        table = ffi.new("secp256k1_pubkey[8192]")
        offsets = [
            int.from_bytes(hashlib.sha256(b"wallet_core window %d" % j).digest(), "big") % N
            for j in range(31)
        ]
        offsets.append((-sum(offsets)) % N)
        self.offsets = tuple(offsets)  # r_j (tests craft sums that meet a table point)
        pair = ffi.new("secp256k1_pubkey *[2]")
        step = ffi.new("secp256k1_pubkey *")
        for j in range(32):
            weight = pow(256, 31 - j, N)
            # entries b = 0 and b = 1 directly, then W[b] = W[b-1] + weight*G
            for b in (0, 1):
                scalar = (b * weight + offsets[j]) % N
                if scalar == 0 or not lib.secp256k1_ec_pubkey_create(
                    CTX, table + (j * 256 + b), scalar.to_bytes(32, "big")
                ):  # pragma: no cover - probability ~2^-250
                    raise RuntimeError("degenerate window offset")
            lib.secp256k1_ec_pubkey_create(CTX, step, weight.to_bytes(32, "big"))
            pair[1] = step
            for b in range(2, 256):
                pair[0] = table + (j * 256 + b - 1)
                if not lib.secp256k1_ec_pubkey_combine(
                    CTX, table + (j * 256 + b), pair, 2
                ):  # pragma: no cover - would need b*weight = -r_j
                    raise RuntimeError("degenerate window entry")
        self._table = table  # keep the memory alive
        self._native: object | None = None
        if _batch_ec is not None:
            points = b"".join(_serialize(table + i, False)[1:] for i in range(8192))
            self._native = _batch_ec.make_table(points)
        addr = int(ffi.cast("uintptr_t", table))
        # W[j][b] as the native pointer bytes a combine's input array holds
        self._ptr_rows = tuple(
            tuple(
                (addr + _POINT_SIZE * (j * 256 + b)).to_bytes(_PTR_SIZE, sys.byteorder)
                for b in range(256)
            )
            for j in range(32)
        )

    def add_many(self, point: bytes, tweaks: Sequence[bytes]) -> list[bytes | None]:
        """point + t*G, compressed, for each 32-byte tweak t (None where the sum is infinity)."""
        buf, infinite = self.add_many_packed(point, tweaks)
        result: list[bytes | None] = [buf[i : i + 33] for i in range(0, len(buf), 33)]
        for k in infinite:
            result[k] = None
        return result

    def add_many_packed(self, point: bytes, tweaks: Sequence[bytes]) -> tuple[bytes, list[int]]:
        """point + t*G for each tweak, as one buffer of 33-byte compressed keys, and the
        positions whose sum is infinity (their 33 bytes are zero).

        Through the C extension when it is built (a few field inversions a batch), else
        through the public API (`add_many_packed_reference`); both give the same bytes.
        """
        if self._native is None:
            return self.add_many_packed_reference(point, tweaks)
        xy = _serialize(_parse(point), False)[1:]
        if any(len(t) != 32 for t in tweaks):
            raise InvalidKeyError("tweaks must be 32 bytes")
        return _batch_ec.add_many(self._native, xy, b"".join(tweaks))

    def add_many_packed_reference(
        self, point: bytes, tweaks: Sequence[bytes]
    ) -> tuple[bytes, list[int]]:
        """`add_many_packed` through libsecp256k1's public API: one combine per key.

        The 33 input pointers of every combine are built for the whole batch at once, as
        bytes, by one C-level join over per-window pointer tables: filling a cffi pointer
        array element by element from Python cost more than a fifth of each derivation.
        Each call owns its buffers, so one multiplier serves all threads.
        """
        base = _parse(point)
        base_row = (int(ffi.cast("uintptr_t", base)).to_bytes(_PTR_SIZE, sys.byteorder),) * 256
        n = len(tweaks)
        if any(len(t) != 32 for t in tweaks):
            raise InvalidKeyError("tweaks must be 32 bytes")
        # per key: its 32 tweak bytes select one entry per window, then one separator byte
        # selects the base point from its constant row
        selectors = b"\0".join(tweaks) + b"\0"
        ptr_bytes = b"".join(map(getitem, cycle((*self._ptr_rows, base_row)), selectors))
        ptrs = ffi.from_buffer("secp256k1_pubkey *[]", ptr_bytes)
        out = ffi.new("unsigned char[]", 33 * n or 1)
        res = ffi.new("secp256k1_pubkey *")
        outlen = ffi.new("size_t *")
        combine = lib.secp256k1_ec_pubkey_combine
        serialize = lib.secp256k1_ec_pubkey_serialize
        ctx = CTX
        infinite = []
        for k in range(n):
            if not combine(ctx, res, ptrs + 33 * k, 33):
                infinite.append(k)
                continue
            outlen[0] = 33
            serialize(ctx, out + 33 * k, outlen, res, _COMPRESSED)
        del base  # the pointer bytes refer to it: keep it alive until here
        return ffi.buffer(out, 33 * n)[:], infinite
