"""JSON shapes of Bitcoin Core's RPC results: transactions, scripts, blocks, amounts.

Amounts are `Amount` (satoshis) and are written as JSON numbers with eight decimals, exactly
as Core writes them (`50.00000000`), by this module's own encoder.
"""

from __future__ import annotations

import json
import math
from typing import Any

import bitcointx
from bitcointx.core import CTransaction
from bitcointx.core.script import OPCODE_NAMES, CScript, CScriptOp
from bitcointx.wallet import CCoinAddress

from firmware_sim.node.blocks import hash_hex, tx_weight, txid_of, wtxid_of
from firmware_sim.node.validation import solver

_SIGHASH_NAMES = {
    1: "ALL",
    2: "NONE",
    3: "SINGLE",
    0x81: "ALL|ANYONECANPAY",
    0x82: "NONE|ANYONECANPAY",
    0x83: "SINGLE|ANYONECANPAY",
}


class Amount(int):
    """Satoshis, written to JSON as BTC with eight decimals."""

    def to_json(self) -> str:
        sign = "-" if self < 0 else ""
        q, r = divmod(abs(int(self)), 100_000_000)
        return f"{sign}{q}.{r:08d}"


def dumps(value: Any) -> str:
    """Serialize like Core's UniValue: amounts with eight decimals, compact separators."""
    if isinstance(value, Amount):
        return value.to_json()
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, float):
        return "null" if math.isnan(value) else format(value, ".16g")
    return json.dumps(value)


def use_regtest() -> None:
    """python-bitcointx keeps chain params per thread: call in every thread that formats."""
    bitcointx.select_chain_params("bitcoin/regtest")


# ---------------------------------------------------------------- descriptors (BIP380)

_INPUT_CHARSET = (
    "0123456789()[],'/*abcdefgh@:$%{}"
    "IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~"
    'ijklmnopqrstuvwxyzABCDEFGH`#"\\ '
)
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def _polymod(symbols: list[int]) -> int:
    chk = 1
    for value in symbols:
        top = chk >> 35
        chk = ((chk & 0x7FFFFFFFF) << 5) ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GENERATOR[i]
    return chk


def descriptor_checksum(desc: str) -> str:
    symbols: list[int] = []
    groups: list[int] = []
    for ch in desc:
        v = _INPUT_CHARSET.index(ch)
        symbols.append(v & 31)
        groups.append(v >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    checksum = _polymod(symbols + [0] * 8) ^ 1
    return "".join(_CHECKSUM_CHARSET[(checksum >> (5 * (7 - i))) & 31] for i in range(8))


def with_checksum(desc: str) -> str:
    return f"{desc}#{descriptor_checksum(desc)}"


# ---------------------------------------------------------------- scripts


def address_of(script: bytes) -> str | None:
    kind, _ = solver(script)
    if kind not in (
        "pubkeyhash",
        "scripthash",
        "witness_v0_keyhash",
        "witness_v0_scripthash",
        "witness_v1_taproot",
        "witness_unknown",
    ):
        return None
    try:
        return str(CCoinAddress.from_scriptPubKey(CScript(script)))
    except Exception:  # noqa: BLE001 - no address form for this script
        return None


def infer_descriptor(script: bytes) -> str:
    """Core's `InferDescriptor` without key information."""
    kind, sol = solver(script)
    if kind == "pubkey":
        desc = f"pk({sol[0].hex()})"
    elif kind == "multisig":
        desc = f"multi({sol[0][0]},{','.join(k.hex() for k in sol[1:-1])})"
    elif kind == "witness_v1_taproot":
        desc = f"rawtr({sol[0].hex()})"
    elif (address := address_of(script)) is not None:
        desc = f"addr({address})"
    else:
        desc = f"raw({script.hex()})"
    return with_checksum(desc)


def _script_num(data: bytes) -> int:
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def script_asm(script: bytes, *, sighash_decode: bool = False) -> str:
    """Core's `ScriptToAsmStr`."""
    parts: list[str] = []
    try:
        for op, data, _ in CScript(script).raw_iter():
            if data is not None and int(op) <= 0x4E:
                if len(data) <= 4:
                    parts.append(str(_script_num(data)))
                elif sighash_decode and _looks_like_signature(data):
                    parts.append(data[:-1].hex() + f"[{_SIGHASH_NAMES[data[-1]]}]")
                else:
                    parts.append(data.hex())
            else:
                parts.append(_op_name(op))
    except Exception:  # noqa: BLE001 - Core prints "[error]" for a truncated push
        parts.append("[error]")
    return " ".join(parts)


def _looks_like_signature(data: bytes) -> bool:
    return 9 <= len(data) <= 73 and data[0] == 0x30 and data[-1] in _SIGHASH_NAMES


def _op_name(op: CScriptOp) -> str:
    value = int(op)
    if value == 0:
        return "0"
    if value == 0x4F:
        return "-1"
    if 0x51 <= value <= 0x60:
        return str(value - 0x50)
    return OPCODE_NAMES.get(op, "OP_UNKNOWN")


def script_pubkey_json(script: bytes) -> dict[str, Any]:
    """Core's `ScriptToUniv` with address and descriptor."""
    out: dict[str, Any] = {
        "asm": script_asm(script),
        "desc": infer_descriptor(script),
        "hex": script.hex(),
    }
    address = address_of(script)
    if address is not None:
        out["address"] = address
    out["type"] = solver(script)[0]
    return out


# ---------------------------------------------------------------- transactions and blocks


def tx_json(
    tx: CTransaction,
    *,
    include_hex: bool = True,
    prevouts: list[Any] | None = None,
) -> dict[str, Any]:
    """Core's `TxToUniv` (verbosity 1; with `prevouts`, verbosity 2 and fee)."""
    weight = tx_weight(tx)
    result: dict[str, Any] = {
        "txid": hash_hex(txid_of(tx)),
        "hash": hash_hex(wtxid_of(tx)),
        "version": tx.nVersion,
        "size": len(tx.serialize()),
        "vsize": (weight + 3) // 4,
        "weight": weight,
        "locktime": tx.nLockTime,
    }
    vin = []
    for i, txin in enumerate(tx.vin):
        item: dict[str, Any]
        if tx.is_coinbase():
            item = {"coinbase": bytes(txin.scriptSig).hex()}
        else:
            item = {
                "txid": hash_hex(bytes(txin.prevout.hash)),
                "vout": txin.prevout.n,
                "scriptSig": {
                    "asm": script_asm(bytes(txin.scriptSig), sighash_decode=True),
                    "hex": bytes(txin.scriptSig).hex(),
                },
            }
        if not tx.wit.is_null() and i < len(tx.wit.vtxinwit):
            stack = list(tx.wit.vtxinwit[i].scriptWitness.stack)
            if stack:
                item["txinwitness"] = [bytes(s).hex() for s in stack]
        if prevouts is not None and not tx.is_coinbase():
            coin = prevouts[i]
            item["prevout"] = {
                "generated": coin.coinbase,
                "height": coin.height,
                "value": Amount(coin.value),
                "scriptPubKey": script_pubkey_json(coin.script),
            }
        item["sequence"] = txin.nSequence
        vin.append(item)
    result["vin"] = vin
    result["vout"] = [
        {
            "value": Amount(out.nValue),
            "n": n,
            "scriptPubKey": script_pubkey_json(bytes(out.scriptPubKey)),
        }
        for n, out in enumerate(tx.vout)
    ]
    if prevouts is not None and not tx.is_coinbase():
        result["fee"] = Amount(sum(c.value for c in prevouts) - sum(o.nValue for o in tx.vout))
    if include_hex:
        result["hex"] = tx.serialize().hex()
    return result
