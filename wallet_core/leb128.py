"""Unsigned LEB128 varints: 7 bits a byte, lowest first, the high bit saying "more follows".

The link's codec, its short message header and answer groups, and the packed co-sign
transaction all write lengths, counters and amounts this way. One writer and one reader, so
every decoder refuses the same malformed forms the same way: cut short, longer than its field
allows, or (where the field asks for it) not minimally encoded.
"""

from __future__ import annotations

TRUNCATED = "truncated"
TOO_LONG = "too long"
NOT_MINIMAL = "not minimally encoded"


class VarintError(ValueError):
    """A malformed varint; `reason` is one of TRUNCATED, TOO_LONG, NOT_MINIMAL."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def write(n: int, out: bytearray) -> None:
    """Append `n` (>= 0) to `out`, minimally encoded."""
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def read(
    data: bytes, pos: int, *, end: int | None = None, max_bytes: int, minimal: bool = True
) -> tuple[int, int]:
    """The varint at `data[pos:end]` and the position after it; `VarintError` if it is cut
    short by `end`, runs past `max_bytes`, or (with `minimal`) ends in a padding zero byte."""
    stop = len(data) if end is None else end
    n = shift = 0
    start = pos
    while True:
        if pos - start >= max_bytes:
            raise VarintError(TOO_LONG)
        if pos >= stop:
            raise VarintError(TRUNCATED)
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            if minimal and byte == 0 and pos - start > 1:
                raise VarintError(NOT_MINIMAL)
            return n, pos
        shift += 7
