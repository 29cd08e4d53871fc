"""Message authentication for the link: per-direction keys, MACs and the replay window.

Both HSMs hold the same 32-byte link key from pairing. HKDF derives one MAC key per direction,
so a message can never be reflected back at its sender as if the peer had sent it, and the
link key itself is never used directly. MACs are HMAC-SHA256 truncated to 16 bytes (128 bits:
forging one is out of reach; the line carries ~10^2 messages per second).
"""

from __future__ import annotations

import hmac
from enum import IntEnum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAC_LEN = 16
MIN_LINK_KEY_LEN = 32
HKDF_SALT = b"chaincloud-link/v1"


class Direction(IntEnum):
    """Who sent a message: the hot HSM (client) or the cold HSM (server)."""

    HOT_TO_COLD = 0x01
    COLD_TO_HOT = 0x02

    @property
    def reverse(self) -> Direction:
        return Direction.COLD_TO_HOT if self is Direction.HOT_TO_COLD else Direction.HOT_TO_COLD


class Refusal(IntEnum):
    """Why a receiver refused a message (stable: refusal codes go on the wire)."""

    BAD_MAC = 1
    WRONG_DIRECTION = 2
    REPLAYED = 3
    STALE = 4
    MALFORMED = 5
    RID_CONFLICT = 6

    @property
    def text(self) -> str:
        return _REFUSAL_TEXT[self]


_REFUSAL_TEXT = {
    Refusal.BAD_MAC: "bad MAC",
    Refusal.WRONG_DIRECTION: "wrong direction",
    Refusal.REPLAYED: "replayed counter",
    Refusal.STALE: "stale counter",
    Refusal.MALFORMED: "malformed message",
    Refusal.RID_CONFLICT: "request id reused for another request",
}


class MacKey:
    """An HKDF-derived MAC key for one direction. Its repr never shows the key."""

    __slots__ = ("_key", "direction")

    def __init__(self, link_key: bytes, direction: Direction) -> None:
        if len(link_key) < MIN_LINK_KEY_LEN:
            raise ValueError(f"link key must be at least {MIN_LINK_KEY_LEN} bytes")
        self.direction = direction
        self._key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=HKDF_SALT,
            info=b"mac:" + direction.name.lower().encode(),
        ).derive(bytes(link_key))

    def __repr__(self) -> str:
        return f"MacKey({self.direction.name})"

    def tag(self, data: bytes) -> bytes:
        # the one-shot HMAC (OpenSSL's, in C): no Python HMAC object built per message
        return hmac.digest(self._key, data, "sha256")[:MAC_LEN]

    def verify(self, data: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(self.tag(data), tag)


class ReplayWindow:
    """Accepts each counter at most once, and none at or below the persisted floor.

    Counters are strictly increasing at the sender, but pipelined frames retransmitted by the
    framer can arrive out of order, so (as in IPsec/DTLS) a counter up to `size` below the
    highest seen is accepted once if it was not seen before. After a restart only the highest
    counter survives (the floor): everything at or below it is stale.
    """

    def __init__(self, floor: int, size: int) -> None:
        self.floor = floor
        self.highest = floor
        self.size = size
        self._seen = 0  # bit i set: counter (highest - i) was accepted

    def check(self, counter: int) -> Refusal | None:
        if counter <= self.floor or counter <= self.highest - self.size:
            return Refusal.STALE
        if counter <= self.highest and (self._seen >> (self.highest - counter)) & 1:
            return Refusal.REPLAYED
        return None

    def accept(self, counter: int) -> None:
        """Record `counter`; only after `check` returned None."""
        if counter > self.highest:
            shift = counter - self.highest
            if shift >= self.size:
                self._seen = 1
            else:
                self._seen = ((self._seen << shift) | 1) & ((1 << self.size) - 1)
            self.highest = counter
        else:
            self._seen |= 1 << (self.highest - counter)
