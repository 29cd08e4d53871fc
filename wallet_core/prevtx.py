"""A previous transaction (with or without witness), parsed only for what a signer must verify.

A segwit v0 signature commits to its own input's amount only, so a signer told amounts by
someone else can be made to sign away a fee it never saw. The HSMs therefore take an input's
amount and script from the transaction that created it, hash-checked against the txid the
spend names. This parser reads a full network transaction strictly (the same limits as
`wallet_core.rawtx`), recomputes the txid over the non-witness serialization and returns the
outputs. Every refusal is a `TxParseError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TxParseError
from .hashes import double_sha256
from .rawtx import MAX_INPUTS, MAX_OUTPUTS, MAX_SCRIPT, TxOut, _Reader

MAX_PREV_TX = 400_000  # a standard transaction is at most 400 000 weight units
MAX_WITNESS_ITEMS = 500


@dataclass(frozen=True)
class PrevTx:
    """The txid (display order hex) and outputs of a transaction whose outputs we spend."""

    txid: str
    vout: tuple[TxOut, ...]


def parse_prev_tx(raw: bytes) -> PrevTx:
    """Parse a network-serialized transaction; its txid is computed, never taken on trust."""
    if not isinstance(raw, bytes):
        raise TxParseError("previous tx must be bytes")
    if len(raw) > MAX_PREV_TX:
        raise TxParseError(f"previous tx: {len(raw)} bytes is more than {MAX_PREV_TX}")
    r = _Reader(raw)
    r.take(4)  # version
    segwit = raw[4:6] == b"\x00\x01"
    if segwit:
        r.take(2)
    body_start = r.pos
    n_in = r.varint()
    if not 0 < n_in <= MAX_INPUTS:
        raise TxParseError(f"previous tx: {n_in} inputs (1 to {MAX_INPUTS} allowed)")
    for n in range(n_in):
        r.take(36)
        length = r.varint()
        if length > MAX_SCRIPT:
            raise TxParseError(f"previous tx: input {n} scriptSig too long")
        r.take(length + 4)
    n_out = r.varint()
    if not 0 < n_out <= MAX_OUTPUTS:
        raise TxParseError(f"previous tx: {n_out} outputs (1 to {MAX_OUTPUTS} allowed)")
    vout: list[TxOut] = []
    for n in range(n_out):
        value = r.uint(8)
        length = r.varint()
        if length > MAX_SCRIPT:
            raise TxParseError(f"previous tx: output {n} script too long")
        vout.append(TxOut(value, r.take(length)))
    body_end = r.pos
    if segwit:
        for n in range(n_in):
            items = r.varint()
            if items > MAX_WITNESS_ITEMS:
                raise TxParseError(f"previous tx: input {n} has {items} witness items")
            for _ in range(items):
                r.take(r.varint())
    locktime = r.take(4)
    if r.pos != len(raw):
        raise TxParseError(f"previous tx: {len(raw) - r.pos} trailing bytes")
    stripped = raw[:4] + raw[body_start:body_end] + locktime
    return PrevTx(double_sha256(stripped)[::-1].hex(), tuple(vout))
