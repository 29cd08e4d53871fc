"""The one parser of raw transactions: strict for unsigned ones, bounded for signed ones.

Both HSMs parse the raw bytes themselves, in one screen, and refuse anything unusual rather
than guessing: witness serialization, a scriptSig, trailing bytes, non-canonical lengths, absurd
counts, values or script lengths. Every refusal is a `TxParseError`; each HSM turns it into its
own `BadRequest` at its boundary. The result has the shape `wallet_core.sighash` expects.

`parse_signed_tx` reads a finished transaction (custody checks what the HSMs signed before it
broadcasts it): scriptSigs and witnesses are allowed, every length is still bounded by the bytes
that remain, so a truncated or hostile input is a `TxParseError`, never an `IndexError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .chaincloud import MAX_MONEY
from .errors import TxParseError
from .hashes import double_sha256
from .sighash import varint

MAX_INPUTS = 500
MAX_OUTPUTS = 500
MAX_SCRIPT = 10_000
MAX_WITNESS_ITEMS = 500
MIN_INPUT_SIZE = 41  # outpoint 36 + script length 1 + sequence 4
MIN_OUTPUT_SIZE = 9  # value 8 + script length 1


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


@dataclass(frozen=True)
class SignedTx:
    """A finished transaction: its txid, inputs (with scriptSigs) and witnesses."""

    version: int
    vin: tuple[TxIn, ...]
    script_sigs: tuple[bytes, ...]
    vout: tuple[TxOut, ...]
    witnesses: tuple[tuple[bytes, ...], ...]  # one stack per input; empty without witness data
    locktime: int
    txid: str  # of the non-witness serialization

    @property
    def outpoints(self) -> list[tuple[str, int]]:
        """`(txid, vout)` of each input, txid in display (RPC) order."""
        return [(i.txid.hex(), i.vout) for i in self.vin]

    @property
    def outputs(self) -> list[tuple[bytes, int]]:
        """`(script_pubkey, value)` of each output."""
        return [(o.script_pubkey, o.value) for o in self.vout]


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

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def count(self, what: str, min_size: int, most: int) -> int:
        """A count of items each at least `min_size` bytes long: bounded before any loop."""
        n = self.varint()
        if n > most:
            raise TxParseError(f"tx: {n} {what} is more than {most}")
        if n * min_size > self.left:
            raise TxParseError(f"tx: truncated transaction ({n} {what} announced)")
        return n

    def script(self, what: str) -> bytes:
        length = self.varint()
        if length > MAX_SCRIPT:
            raise TxParseError(f"tx: {what} too long")
        return self.take(length)


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


def parse_signed_tx(
    raw: bytes, *, max_inputs: int = MAX_INPUTS, max_outputs: int = MAX_OUTPUTS
) -> SignedTx:
    """Parse a network-serialized transaction, with or without witness data (BIP144).

    The counts' ceilings are ours by default; a funding transaction of someone else's (an
    exchange's batch payout) is read with higher ones (`wallet_core.prevtx`)."""
    if not isinstance(raw, bytes):
        raise TxParseError("tx must be bytes")
    r = _Reader(raw)
    version = r.uint(4)
    segwit = r.left >= 2 and raw[r.pos] == 0 and raw[r.pos + 1] != 0
    if segwit and r.take(2)[1] != 1:
        raise TxParseError("tx: unknown witness flag")
    body_start = r.pos
    n_in = r.count("inputs", MIN_INPUT_SIZE, max_inputs)
    if n_in == 0:
        raise TxParseError("tx: no inputs")
    vin: list[TxIn] = []
    script_sigs: list[bytes] = []
    for n in range(n_in):
        txid = r.take(32)[::-1]
        prev_index = r.uint(4)
        script_sigs.append(r.script(f"input {n} scriptSig"))
        vin.append(TxIn(txid, prev_index, r.uint(4)))
    n_out = r.count("outputs", MIN_OUTPUT_SIZE, max_outputs)
    if n_out == 0:
        raise TxParseError("tx: no outputs")
    vout: list[TxOut] = []
    for n in range(n_out):
        value = r.uint(8)
        if value > MAX_MONEY:
            raise TxParseError(f"tx: output {n} value out of range")
        vout.append(TxOut(value, r.script(f"output {n} script")))
    body_end = r.pos
    witnesses: list[tuple[bytes, ...]] = []
    if segwit:
        for n in range(n_in):
            items = r.count(f"witness items of input {n}", 1, MAX_WITNESS_ITEMS)
            witnesses.append(tuple(r.script(f"input {n} witness item") for _ in range(items)))
        if not any(witnesses):
            raise TxParseError("tx: witness serialization without any witness")
    else:
        witnesses = [()] * n_in
    locktime = r.uint(4)
    if r.pos != len(raw):
        raise TxParseError(f"tx: {len(raw) - r.pos} trailing bytes")
    legacy = raw[:4] + raw[body_start:body_end] + raw[r.pos - 4 :]
    tx_id = double_sha256(legacy)[::-1].hex()
    return SignedTx(
        version, tuple(vin), tuple(script_sigs), tuple(vout), tuple(witnesses), locktime, tx_id
    )


def serialize_unsigned(
    version: int, vin: Sequence[TxIn], vout: Sequence[TxOut], locktime: int
) -> bytes:
    """The non-witness serialization `parse_unsigned_tx` reads (empty scriptSigs)."""
    out = bytearray(version.to_bytes(4, "little"))
    out += varint(len(vin))
    for i in vin:
        out += (
            i.txid[::-1] + i.vout.to_bytes(4, "little") + b"\x00" + i.sequence.to_bytes(4, "little")
        )
    out += varint(len(vout))
    for o in vout:
        out += o.value.to_bytes(8, "little") + varint(len(o.script_pubkey)) + o.script_pubkey
    out += locktime.to_bytes(4, "little")
    return bytes(out)
