"""What travels between the carrier and the phones: segments, and their reassembly.

A long text leaves the sender as several segments that share a reference number (the
concatenation user data header: ref, total, seq). Every receiver, modem or plain phone,
reassembles them before it shows one message; a duplicate of a part already held is ignored.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import datetime

from firmware_sim.errors import InvalidNumber

_NUMBER = re.compile(r"^\+?[0-9]{3,20}$")


def check_number(number: str) -> str:
    """`number` if it looks like a phone number (optional '+', 3-20 digits), else raise."""
    if not _NUMBER.match(number):
        raise InvalidNumber(f"not a phone number: {number!r}")
    return number


@dataclass(frozen=True)
class Segment:
    """One SMS on the air: a part of a (possibly concatenated) message."""

    message_id: str
    sender: str
    recipient: str
    text: str
    ref: int
    total: int
    seq: int
    sent_at: datetime


@dataclass(frozen=True)
class Message:
    """A whole message as a receiver shows it, after reassembly."""

    message_id: str
    sender: str
    recipient: str
    text: str
    sent_at: datetime
    segments: int


@dataclass
class _Partial:
    total: int
    parts: dict[int, Segment] = field(default_factory=dict)


class Reassembler:
    """Collects segments per (sender, ref) until a message is whole."""

    def __init__(self) -> None:
        self._partials: dict[tuple[str, int, int], _Partial] = {}
        self._lock = threading.Lock()

    def add(self, seg: Segment) -> Message | None:
        """Take one segment; return the message once its last missing part has arrived."""
        if seg.total <= 1:
            return Message(seg.message_id, seg.sender, seg.recipient, seg.text, seg.sent_at, 1)
        key = (seg.sender, seg.ref, seg.total)
        with self._lock:
            partial = self._partials.setdefault(key, _Partial(seg.total))
            partial.parts.setdefault(seg.seq, seg)
            if len(partial.parts) < partial.total:
                return None
            del self._partials[key]
        parts = [partial.parts[i] for i in range(1, partial.total + 1)]
        first = parts[0]
        text = "".join(p.text for p in parts)
        return Message(
            first.message_id, first.sender, first.recipient, text, first.sent_at, len(parts)
        )

    def pending(self) -> int:
        with self._lock:
            return len(self._partials)
