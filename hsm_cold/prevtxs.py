"""Funding transactions too large for one link frame, taught to the cold HSM in parts.

A co-sign or sweep request carries the funding transactions of outpoints the cold HSM has not
verified yet; one frame holds 16 KiB, and a deposit can come from a much larger transaction
(an exchange's batch payout). The hot side then sends such a transaction first, in order, in
parts (`learn_prev_tx`); the cold HSM reassembles it, computes its txid itself, and records its
outputs as verified facts, exactly as for one sent inline. Teaching changes nothing else: a
transaction that does not hash to the txid announced is refused and forgotten.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from cc_common.fields import hex_txid
from hsm_cold.cosign import field
from hsm_cold.errors import BadPrevTx, BadRequest
from wallet_core.errors import TxParseError
from wallet_core.prevtx import MAX_PREV_TX, PrevTx, parse_prev_tx

MAX_PENDING = 8  # transactions being assembled at once (the oldest is dropped)

Learn = Callable[[str, PrevTx], None]


class PrevTxAssembler:
    """Reassembles `learn_prev_tx` parts; hands each complete, hash-checked tx to `learn`."""

    def __init__(self, learn: Learn) -> None:
        self._learn = learn
        self._parts: OrderedDict[str, bytearray] = OrderedDict()

    def part(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        txid = hex_txid(field(payload, "txid", str))
        if txid is None:
            raise BadRequest("txid must be 64 hex characters")
        total = field(payload, "total", int)
        offset = field(payload, "offset", int)
        data = field(payload, "data", bytes)
        if not 0 < total <= MAX_PREV_TX:
            raise BadRequest(f"total must be 1 to {MAX_PREV_TX} bytes")
        if offset == 0:
            self._parts.pop(txid, None)
        have = self._parts.get(txid, bytearray())
        if offset != len(have) or not data or offset + len(data) > total:
            raise BadRequest(
                f"part at {offset} (+{len(data)}) of {txid} does not follow the {len(have)} bytes"
                f" held (of {total})"
            )
        have += data
        self._parts[txid] = have
        self._parts.move_to_end(txid)
        while len(self._parts) > MAX_PENDING:
            self._parts.popitem(last=False)
        if len(have) < total:
            return {"have": len(have)}
        del self._parts[txid]
        try:
            prev = parse_prev_tx(bytes(have))
        except TxParseError as exc:
            raise BadPrevTx(f"{txid}: {exc.message}") from None
        if prev.txid != txid:
            raise BadPrevTx(f"the parts hash to {prev.txid}, not {txid}")
        self._learn(txid, prev)
        return {"have": len(have), "outputs": len(prev.vout)}
