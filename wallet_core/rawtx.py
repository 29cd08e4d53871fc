"""A strict parser of an unsigned transaction, for the HSMs that sign digests computed from it.

Both HSMs parse the raw bytes themselves, in one screen, and refuse anything unusual rather
than guessing: witness serialization, a scriptSig, trailing bytes, non-canonical lengths, absurd
counts, values or script lengths. Every refusal is a `TxParseError`; each HSM turns it into its
own `BadRequest` at its boundary. The result has the shape `wallet_core.sighash` expects.
"""

from __future__ import annotations

from dataclasses import dataclass

from .chaincloud import MAX_MONEY
from .errors import TxParseError
from .hashes import double_sha256

MAX_INPUTS = 500
MAX_OUTPUTS = 500
MAX_SCRIPT = 10_000


@dataclass(frozen=True)
class TxIn:
    txid: bytes  # display (RPC) byte order, as `wallet_core.sighash` expects (it reverses it)
    vout: int
    sequence: int


@dataclass(frozen=True)
class TxOut:
    value: int
    script_pubkey: bytes


@dataclass(frozen=True)
class UnsignedTx:
    """A non-witness transaction, shaped like embit's for `wallet_core.sighash`."""

    version: int
    vin: tuple[TxIn, ...]
    vout: tuple[TxOut, ...]
    locktime: int
    raw: bytes  # exactly the bytes parsed (the txid's preimage)

    @property
    def txid(self) -> str:
        return double_sha256(self.raw)[::-1].hex()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise TxParseError("tx: truncated transaction")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def varint(self) -> int:
        first = self.uint(1)
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        value = self.uint(size)
        if value < {2: 0xFD, 4: 0x10000, 8: 0x100000000}[size]:
            raise TxParseError("tx: non-canonical length encoding")
        return value


def parse_unsigned_tx(raw: bytes) -> UnsignedTx:
    """Parse a non-witness-serialized transaction with empty scriptSigs; `TxParseError` if not."""
    if not isinstance(raw, bytes):
        raise TxParseError("tx must be bytes")
    r = _Reader(raw)
    version = r.uint(4)
    n_in = r.varint()
    if n_in == 0:
        raise TxParseError("tx: no inputs (or witness serialization, which is refused)")
    if n_in > MAX_INPUTS:
        raise TxParseError(f"tx: {n_in} inputs is more than {MAX_INPUTS}")
    vin: list[TxIn] = []
    for n in range(n_in):
        txid = r.take(32)[::-1]
        prev_index = r.uint(4)
        if r.varint() != 0:
            raise TxParseError(f"tx: input {n} has a scriptSig")
        vin.append(TxIn(txid, prev_index, r.uint(4)))
    n_out = r.varint()
    if not 0 < n_out <= MAX_OUTPUTS:
        raise TxParseError(f"tx: {n_out} outputs (1 to {MAX_OUTPUTS} allowed)")
    vout: list[TxOut] = []
    for n in range(n_out):
        value = r.uint(8)
        if value > MAX_MONEY:
            raise TxParseError(f"tx: output {n} value out of range")
        length = r.varint()
        if length > MAX_SCRIPT:
            raise TxParseError(f"tx: output {n} script too long")
        vout.append(TxOut(value, r.take(length)))
    locktime = r.uint(4)
    if r.pos != len(raw):
        raise TxParseError(f"tx: {len(raw) - r.pos} trailing bytes")
    return UnsignedTx(version, tuple(vin), tuple(vout), locktime, raw)
