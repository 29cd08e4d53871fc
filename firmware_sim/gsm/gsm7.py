"""The GSM 03.38 default alphabet and how a text is cut into SMS segments.

An SMS carries 140 octets: 160 septets of GSM-7, or 70 UCS-2 code units. A concatenated
message spends 6 octets of user data header per segment, leaving 153 septets (67 UCS-2 units).
Characters of the extension table cost two septets (escape + char) and are never split.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXTENSION = "\f^{}\\[~]|€"

_BASIC_SET = frozenset(BASIC) - {"\x1b"}
_EXTENSION_SET = frozenset(EXTENSION)

SINGLE_GSM7 = 160
MULTI_GSM7 = 153
SINGLE_UCS2 = 70
MULTI_UCS2 = 67
MAX_SEGMENTS = 255


class Encoding(enum.Enum):
    """The data coding a carrier picks for a text."""

    GSM7 = "gsm7"
    UCS2 = "ucs2"


@dataclass(frozen=True)
class Segmented:
    """A text cut into the parts that travel as separate SMS."""

    encoding: Encoding
    parts: tuple[str, ...]


def is_gsm7(text: str) -> bool:
    """True if every character is in the default alphabet or its extension table."""
    return all(c in _BASIC_SET or c in _EXTENSION_SET for c in text)


def char_septets(c: str) -> int:
    return 2 if c in _EXTENSION_SET else 1


def ucs2_units(c: str) -> int:
    return 2 if ord(c) > 0xFFFF else 1


def to_gsm7(text: str) -> str:
    """`text` with every character GSM-7 cannot carry replaced by '?' (what a modem shows)."""
    return "".join(c if c in _BASIC_SET or c in _EXTENSION_SET else "?" for c in text)


def segment(text: str) -> Segmented:
    """Cut `text` into SMS parts: GSM-7 if it fits the alphabet, else UCS-2."""
    if is_gsm7(text):
        encoding, single, multi, cost = Encoding.GSM7, SINGLE_GSM7, MULTI_GSM7, char_septets
    else:
        encoding, single, multi, cost = Encoding.UCS2, SINGLE_UCS2, MULTI_UCS2, ucs2_units
    if sum(cost(c) for c in text) <= single:
        return Segmented(encoding, (text,))
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for c in text:
        n = cost(c)
        if used + n > multi:
            parts.append("".join(current))
            current, used = [], 0
        current.append(c)
        used += n
    if current:
        parts.append("".join(current))
    return Segmented(encoding, tuple(parts))


def segment_count(text: str) -> int:
    return len(segment(text).parts)
