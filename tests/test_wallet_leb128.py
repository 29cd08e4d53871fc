"""The one LEB128 varint reader and writer (`wallet_core.leb128`) that the link's codec, its
short message header and answer groups, and the packed co-sign transaction share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wallet_core import leb128


@given(st.integers(0, 2**70 - 1))
def test_round_trip_is_minimal(n: int) -> None:
    out = bytearray(b"\xaa")
    leb128.write(n, out)
    assert leb128.read(bytes(out) + b"\xbb", 1, max_bytes=10) == (n, len(out))
    assert len(out) - 1 == max(1, -(-n.bit_length() // 7))


@pytest.mark.parametrize(
    ("data", "end", "max_bytes", "reason"),
    [
        (b"", None, 9, leb128.TRUNCATED),
        (b"\x80\x80", None, 9, leb128.TRUNCATED),
        (b"\x80\x01", 1, 9, leb128.TRUNCATED),
        (b"\xff\xff\x01", None, 2, leb128.TOO_LONG),
        (b"\x80\x00", None, 9, leb128.NOT_MINIMAL),
    ],
)
def test_malformed_varints_are_refused_with_their_reason(
    data: bytes, end: int | None, max_bytes: int, reason: str
) -> None:
    with pytest.raises(leb128.VarintError) as refused:
        leb128.read(data, 0, end=end, max_bytes=max_bytes)
    assert refused.value.reason == reason


def test_padding_is_accepted_only_where_the_field_allows_it() -> None:
    assert leb128.read(b"\x80\x00", 0, max_bytes=9, minimal=False) == (0, 2)
    assert leb128.read(b"\x00", 0, max_bytes=1) == (0, 1)
