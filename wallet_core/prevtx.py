"""A previous transaction (with or without witness), read only for what a signer must verify.

A segwit v0 signature commits to its own input's amount only, so a signer told amounts by
someone else can be made to sign away a fee it never saw. The HSMs therefore take an input's
amount and script from the transaction that created it, hash-checked against the txid the
spend names. The strict network-transaction reader of `wallet_core.rawtx` does the parsing
and computes the txid over the non-witness serialization; a funding transaction is someone
else's (an exchange's batch payout), so its counts are bounded by its size only. Every refusal
is a `TxParseError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TxParseError
from .rawtx import TxOut, parse_signed_tx

MAX_PREV_TX = 400_000  # a standard transaction is at most 400 000 weight units
# Counts are bounded by the size above (the reader checks each against the bytes left);
# these only refuse absurd headers early.
MAX_INPUTS = 10_000
MAX_OUTPUTS = 12_000


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
    tx = parse_signed_tx(raw, max_inputs=MAX_INPUTS, max_outputs=MAX_OUTPUTS)
    return PrevTx(tx.txid, tx.vout)
