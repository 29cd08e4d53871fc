"""Types of the C extension `_blockscan.c` (see `custody.chain.rawblock`)."""

from collections.abc import Iterable
from typing import Any

class MalformedBlock(ValueError): ...

def scan(
    raw: bytes,
    scripts: bytearray | None = None,
    txids: bytearray | None = None,
    spent: set[str] | None = None,
) -> tuple[
    str, str, int, list[tuple[str, list[tuple[str, int]], list[tuple[int, bytes]], bool]]
]: ...
def mark(bits: bytearray, keys: Iterable[Any]) -> None: ...
def mark_packed(bits: bytearray, packed: bytes) -> None: ...
