"""A compact, deterministic binary encoding of command arguments (msgpack-like, ours).

Why not JSON: the line rate is the throughput ceiling, and a co-sign request is mostly raw
bytes (the unsigned transaction, signatures) that JSON would inflate by hex or base64. Why not
a PyPI codec: this one is ~100 lines, has no float (amounts are integer satoshi), and is
deterministic (map keys sorted), so the same request always encodes to the same bytes.

Values: None, bool, int (any size), bytes, str, list/tuple (decoded as list) and dict with str
keys. One type byte, small values inline:

    0x00-0x3f uint 0..63     0x40-0x7f str, len 0..63     0x80-0xbf bytes, len 0..63
    0xc0 None  0xc1 False  0xc2 True  0xc3 uint (varint)  0xc4 negative int (varint of -1-n)
    0xc5 str (varint len)  0xc6 bytes (varint len)  0xc7 list (varint n)  0xc8 map (varint n)
    0xd0-0xdf list, n 0..15  0xe0-0xef map, n 0..15
"""

from __future__ import annotations

from typing import Any

from cc_common.link.errors import LinkEncodingError
from wallet_core import leb128

MAX_DEPTH = 32
MAX_VARINT_BYTES = 92  # 644 bits: far past any count or amount the link carries

NONE, FALSE, TRUE, UINT, NEGINT, STR, BYTES, LIST, MAP = range(0xC0, 0xC9)
SMALL_LIST, SMALL_MAP = 0xD0, 0xE0


def encode(value: Any) -> bytes:
    """Encode `value`; raises `LinkEncodingError` for an unsupported type."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode(value: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise LinkEncodingError("link codec: value nested too deeply")
    if value is None:
        out.append(NONE)
    elif value is True:
        out.append(TRUE)
    elif value is False:
        out.append(FALSE)
    elif isinstance(value, int):
        if 0 <= value < 0x40:
            out.append(value)
        elif value >= 0:
            out.append(UINT)
            leb128.write(value, out)
        else:
            out.append(NEGINT)
            leb128.write(-1 - value, out)
    elif isinstance(value, str):
        _encode_blob(value.encode("utf-8"), 0x40, STR, out)
    elif isinstance(value, bytes | bytearray | memoryview):
        _encode_blob(bytes(value), 0x80, BYTES, out)
    elif isinstance(value, list | tuple):
        _header(len(value), SMALL_LIST, LIST, out)
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise LinkEncodingError(f"link codec: map key {key!r} is not a str")
            items.append((key.encode("utf-8"), item))
        items.sort(key=lambda kv: kv[0])
        _header(len(items), SMALL_MAP, MAP, out)
        for key_bytes, item in items:
            _encode_blob(key_bytes, 0x40, STR, out)
            _encode(item, out, depth + 1)
    else:
        raise LinkEncodingError(f"link codec: cannot encode a {type(value).__name__}")


def _encode_blob(data: bytes, small: int, tag: int, out: bytearray) -> None:
    if len(data) < 0x40:
        out.append(small + len(data))
    else:
        out.append(tag)
        leb128.write(len(data), out)
    out += data


def _header(n: int, small: int, tag: int, out: bytearray) -> None:
    if n < 16:
        out.append(small + n)
    else:
        out.append(tag)
        leb128.write(n, out)


def decode(data: bytes) -> Any:
    """Decode exactly one value spanning all of `data`; raises `LinkEncodingError`."""
    try:
        value, end = _decode(data, 0, 0)
    except (IndexError, UnicodeDecodeError, RecursionError) as exc:
        raise LinkEncodingError(f"link codec: malformed input ({exc})") from exc
    if end != len(data):
        raise LinkEncodingError(f"link codec: {len(data) - end} trailing bytes")
    return value


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    try:
        return leb128.read(data, pos, max_bytes=MAX_VARINT_BYTES, minimal=False)
    except leb128.VarintError as exc:
        raise LinkEncodingError(f"link codec: varint {exc.reason}") from None


def _take(data: bytes, pos: int, n: int) -> tuple[bytes, int]:
    if pos + n > len(data):
        raise LinkEncodingError("link codec: truncated input")
    return data[pos : pos + n], pos + n


def _count(data: bytes, pos: int, tag: int, big: int, small: int, what: str) -> tuple[int, int]:
    """The item count of a list or map: in the tag (small form) or a varint after it; never
    more than the input has bytes left (each item takes at least one)."""
    if tag == big:
        n, pos = _read_varint(data, pos)
    else:
        n = tag - small
    if n > len(data) - pos:
        raise LinkEncodingError(f"link codec: {what} longer than its input")
    return n, pos


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise LinkEncodingError("link codec: value nested too deeply")
    tag = data[pos]
    pos += 1
    if tag < 0x40:
        return tag, pos
    if tag < 0x80:
        raw, pos = _take(data, pos, tag - 0x40)
        return raw.decode("utf-8"), pos
    if tag < 0xC0:
        return _take(data, pos, tag - 0x80)
    if tag == NONE:
        return None, pos
    if tag in (FALSE, TRUE):
        return tag == TRUE, pos
    if tag in (UINT, NEGINT):
        n, pos = _read_varint(data, pos)
        return (n if tag == UINT else -1 - n), pos
    if tag in (STR, BYTES):
        n, pos = _read_varint(data, pos)
        raw, pos = _take(data, pos, n)
        return (raw.decode("utf-8") if tag == STR else raw), pos
    if tag == LIST or SMALL_LIST <= tag < SMALL_LIST + 16:
        n, pos = _count(data, pos, tag, LIST, SMALL_LIST, "list")
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if tag == MAP or SMALL_MAP <= tag < SMALL_MAP + 16:
        n, pos = _count(data, pos, tag, MAP, SMALL_MAP, "map")
        result: dict[str, Any] = {}
        for _ in range(n):
            key, pos = _decode(data, pos, depth + 1)
            if not isinstance(key, str) or key in result:
                raise LinkEncodingError("link codec: map key not a str, or repeated")
            result[key], pos = _decode(data, pos, depth + 1)
        return result, pos
    raise LinkEncodingError(f"link codec: unknown type byte 0x{tag:02x}")
