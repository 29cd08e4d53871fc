"""A transaction of a raw block in the shape of Core's decoded answer, as the watcher reads it.

The watcher already holds every block raw (`getblock` verbosity 0); asking the node to decode a
matched transaction again (`getrawtransaction` verbosity 2 with the block hash) costs the node
a read of the whole block per transaction. Only the spent outputs' scripts and values (the
`prevout`s, from the node's undo data) are not in the raw bytes: a transaction whose spent
outputs are all ours (our UTXOs) or a coinbase needs nothing from the node, and this builds
what the watcher reads of it (txid; inputs' outpoints; outputs' `n`, `value` in BTC,
`scriptPubKey.hex` and `address`) from the parsed bytes.
"""

from __future__ import annotations

from contextlib import suppress
from decimal import Decimal
from typing import Any

from custody.chain.rawblock import RawTx
from wallet_core.addresses import script_to_address
from wallet_core.errors import UnsupportedScriptError
from wallet_core.networks import Network


def script_json(script: bytes, network: Network) -> dict[str, Any]:
    """`scriptPubKey` as Core shows it: the hex, and the address when the script has one."""
    out: dict[str, Any] = {"hex": script.hex()}
    # non-standard, bare multisig, OP_RETURN, P2PK: no address, as in Core's answer
    with suppress(UnsupportedScriptError):
        out["address"] = script_to_address(script, network)
    return out


def tx_json(tx: RawTx, network: Network) -> dict[str, Any]:
    """The fields of `getrawtransaction` verbosity 1 the watcher reads (no prevouts)."""
    vin: list[dict[str, Any]]
    if tx.coinbase:
        vin = [{"coinbase": ""}]
    else:
        vin = [{"txid": txid, "vout": n} for txid, n in tx.inputs]
    vout = [
        {"n": n, "value": Decimal(value).scaleb(-8), "scriptPubKey": script_json(script, network)}
        for n, (value, script) in enumerate(tx.outputs)
    ]
    return {"txid": tx.txid, "vin": vin, "vout": vout}
