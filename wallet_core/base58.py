"""Base58 and Base58Check (legacy addresses, extended keys, WIF)."""

from __future__ import annotations

from .errors import AddressChecksumError, AddressError
from .hashes import double_sha256

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        try:
            n = n * 58 + _INDEX[c]
        except KeyError:
            raise AddressError(f"invalid base58 character {c!r}") from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


def b58check_encode(payload: bytes) -> str:
    return b58encode(payload + double_sha256(payload)[:4])


def b58check_decode(text: str) -> bytes:
    """Decode and verify the 4-byte checksum; raise `AddressChecksumError` on mismatch."""
    raw = b58decode(text)
    if len(raw) < 5:
        raise AddressError("base58 string too short")
    payload, check = raw[:-4], raw[-4:]
    if double_sha256(payload)[:4] != check:
        raise AddressChecksumError("bad base58check checksum")
    return payload
