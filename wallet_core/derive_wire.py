"""The frames between a process and its derivation helper (`derive_helper`, `derive_worker`).

A request names chain-level public keys (chain code and key: public data only, never a
private key) and one index range; the answer is the child keys of every chain, 33 bytes
each, chain after chain. Fixed-size headers and packed keys: pickling 1000 keys each way
cost more than deriving a tenth of them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

READY = b"R"  # the worker's first byte, once its tables are built
OK = 0
FAILED = 1  # the worker could not derive (an invalid child key): the caller derives it itself
KEY_SIZE = 33
MAX_CHAINS = 8

_REQUEST = struct.Struct(">IIB")  # start, count, number of chains
_CHAIN_SIZE = 32 + KEY_SIZE  # chain code, compressed key
_ANSWER = struct.Struct(">BI")  # status, payload length


class WireError(Exception):
    """A frame that does not parse: the other side is not a derivation helper we started."""


def encode_request(chains: Sequence[tuple[bytes, bytes]], start: int, count: int) -> bytes:
    if not 1 <= len(chains) <= MAX_CHAINS:
        raise WireError(f"1 to {MAX_CHAINS} chains per request, not {len(chains)}")
    body = b"".join(code + key for code, key in chains)
    if len(body) != _CHAIN_SIZE * len(chains):
        raise WireError("a chain is a 32-byte chain code and a 33-byte key")
    return _REQUEST.pack(start, count, len(chains)) + body


def request_header_size() -> int:
    return _REQUEST.size


def decode_request_header(header: bytes) -> tuple[int, int, int]:
    """(start, count, body size) of a request whose header is `header`."""
    start, count, n = _REQUEST.unpack(header)
    if not 1 <= n <= MAX_CHAINS:
        raise WireError(f"bad chain count {n}")
    return start, count, n * _CHAIN_SIZE


def decode_chains(body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (body[i : i + 32], body[i + 32 : i + _CHAIN_SIZE]) for i in range(0, len(body), _CHAIN_SIZE)
    ]


def encode_answer(status: int, payload: bytes) -> bytes:
    return _ANSWER.pack(status, len(payload)) + payload


def answer_header_size() -> int:
    return _ANSWER.size


def decode_answer_header(header: bytes) -> tuple[int, int]:
    """(status, payload length)."""
    status, size = _ANSWER.unpack(header)
    if status not in (OK, FAILED):
        raise WireError(f"bad answer status {status}")
    return status, size
