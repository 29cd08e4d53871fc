"""`scantxoutset`, as Bitcoin Core answers it: the UTXO set searched for descriptors' scripts.

Used by recovery tools that have no wallet on the node (`cc-recover`). Descriptors are parsed
with embit; a ranged descriptor is derived over its `range` (default 0-999, as Core). Only
`start` does work: the scan is synchronous here, so `status` and `abort` find nothing running.
"""

from __future__ import annotations

from typing import Any

from embit.descriptor import Descriptor
from embit.script import address_to_scriptpubkey

from firmware_sim.node.blocks import hash_hex
from firmware_sim.node.errors import RPCCode, RPCError
from firmware_sim.node.formatting import Amount
from firmware_sim.node.node import Node
from firmware_sim.node.rpc_methods import p_int, p_str, rpc

DEFAULT_RANGE = (0, 999)
MAX_RANGE_SIZE = 1_000_000  # Core: "Range is too large"


def _range(value: Any) -> tuple[int, int]:
    if value is None:
        return DEFAULT_RANGE
    if isinstance(value, list) and len(value) == 2:
        begin, end = p_int(value[0]), p_int(value[1])
    else:
        begin, end = 0, p_int(value)
    if begin < 0 or end < begin:
        raise RPCError(RPCCode.INVALID_PARAMETER, "Range should be greater or equal than 0")
    if end - begin >= MAX_RANGE_SIZE:
        raise RPCError(RPCCode.INVALID_PARAMETER, "Range is too large")
    return begin, end


def _scripts(obj: Any) -> dict[bytes, str]:
    """script -> the descriptor text (derived at its index when ranged) for one scan object."""
    if isinstance(obj, dict):
        text, rng = p_str(obj.get("desc")), obj.get("range")
    else:
        text, rng = p_str(obj), None
    plain = _addr_or_raw(text)
    if plain is not None:
        return {plain: text}
    try:
        desc = Descriptor.from_string(text)
    except Exception:  # noqa: BLE001 (embit raises several unrelated types)
        raise RPCError(RPCCode.INVALID_ADDRESS_OR_KEY, f"Invalid descriptor '{text}'") from None
    if not desc.is_wildcard:
        return {desc.script_pubkey().data: str(desc)}
    begin, end = _range(rng)
    out = {}
    for i in range(begin, end + 1):
        d = desc.derive(i)
        out[d.script_pubkey().data] = str(d)
    return out


def _addr_or_raw(text: str) -> bytes | None:
    """`addr(ADDRESS)` and `raw(HEX)`, which embit's descriptors do not parse."""
    body = text.split("#", 1)[0]
    if not body.endswith(")") or not body.startswith(("addr(", "raw(")):
        return None
    inner = body[body.index("(") + 1 : -1]
    try:
        if body.startswith("raw("):
            return bytes.fromhex(inner)
        return address_to_scriptpubkey(inner).data
    except Exception:  # noqa: BLE001 (embit raises several unrelated types)
        raise RPCError(RPCCode.INVALID_ADDRESS_OR_KEY, f"Invalid descriptor '{text}'") from None


@rpc("scantxoutset", "action", "scanobjects", required=1)
def scantxoutset(node: Node, action: Any, scanobjects: Any = None) -> Any:
    what = p_str(action)
    if what in ("status", "abort"):
        return None if what == "status" else False
    if what != "start":
        raise RPCError(RPCCode.INVALID_PARAMETER, "Invalid action '" + what + "'")
    if not isinstance(scanobjects, list):
        raise RPCError(
            RPCCode.INVALID_PARAMETER, "scanobjects argument is required for the start action"
        )
    wanted: dict[bytes, str] = {}
    for obj in scanobjects:
        wanted.update(_scripts(obj))
    with node.lock:
        tip = node.chain.tip
        height = node.chain.height
        coins = list(node.chain.utxos.items())
    unspents, total = [], 0
    for (txid, n), coin in coins:
        desc = wanted.get(coin.script)
        if desc is None:
            continue
        total += coin.value
        unspents.append(
            {
                "txid": hash_hex(txid),
                "vout": n,
                "scriptPubKey": coin.script.hex(),
                "desc": desc,
                "amount": Amount(coin.value),
                "coinbase": coin.coinbase,
                "height": coin.height,
            }
        )
    unspents.sort(key=lambda u: (u["height"], u["txid"], u["vout"]))
    return {
        "success": True,
        "txouts": len(coins),
        "height": height,
        "bestblock": hash_hex(tip.hash),
        "unspents": unspents,
        "total_amount": Amount(total),
    }
