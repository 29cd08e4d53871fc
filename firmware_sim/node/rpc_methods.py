"""The RPC methods: Bitcoin Core's names, parameters, result shapes and error messages.

Each handler takes the node and positional parameters (named parameters are mapped to
positions by the dispatcher) and returns a JSON-ready value, raising `RPCError` as Core would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from bitcointx.core import CTransaction
from bitcointx.wallet import CCoinAddress

from firmware_sim.node.blocks import (
    Block,
    difficulty,
    hash_from_hex,
    hash_hex,
    txid_of,
    wtxid_of,
)
from firmware_sim.node.chainstate import BlockIndex
from firmware_sim.node.errors import RPCCode, RPCError
from firmware_sim.node.formatting import Amount, script_pubkey_json, tx_json
from firmware_sim.node.mempool import MIN_RELAY_FEERATE, MempoolEntry, fee_for
from firmware_sim.node.node import Node
from firmware_sim.node.validation import TxResult, TxValidationError

log = logging.getLogger(__name__)

VERSION = 250000
SUBVERSION = "/Satoshi:25.0.0(chaincloud-regtest-sim)/"
DEFAULT_MAX_FEERATE = Decimal("0.10")
NO_SUCH_TX = (
    "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."
)
NO_SUCH_MEMPOOL_TX = (
    "No such mempool transaction. Use -txindex or provide a block hash to enable blockchain "
    "transaction queries. Use gettransaction for wallet transactions."
)


@dataclass(frozen=True)
class Method:
    name: str
    params: tuple[str, ...]
    required: int
    handler: Callable[..., Any]


METHODS: dict[str, Method] = {}


def rpc(name: str, *params: str, required: int = 0) -> Callable[[Callable[..., Any]], Any]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        METHODS[name] = Method(name, params, required, fn)
        return fn

    return register


# ---------------------------------------------------------------- parameter parsing


_JSON_TYPE = {
    bool: "bool",
    int: "number",
    Decimal: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPE.get(type(value), "unknown")


def _type_error(value: Any, expected: str) -> RPCError:
    return RPCError(
        RPCCode.TYPE_ERROR,
        f"JSON value of type {_type_name(value)} is not of expected type {expected}",
    )


def p_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise _type_error(value, "number")
    if isinstance(value, Decimal) and value != value.to_integral_value():
        raise RPCError(RPCCode.TYPE_ERROR, "JSON integer out of range")
    return int(value)


def p_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _type_error(value, "bool")
    return value


def p_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error(value, "string")
    return value


def p_hash(value: Any, name: str) -> bytes:
    """Core's `ParseHashV`."""
    text = p_str(value)
    if len(text) != 64:
        raise RPCError(
            RPCCode.INVALID_PARAMETER,
            f"{name} must be of length 64 (not {len(text)}, for '{text}')",
        )
    try:
        return hash_from_hex(text)
    except ValueError:
        raise RPCError(
            RPCCode.INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{text}')"
        ) from None


def p_amount(value: Any) -> int:
    """Core's `AmountFromValue`: a number or numeric string in BTC, at most 8 decimals."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise _type_error(value, "number")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise RPCError(RPCCode.TYPE_ERROR, "Invalid amount") from None
    sats = amount * 100_000_000
    if sats != sats.to_integral_value():
        raise RPCError(RPCCode.TYPE_ERROR, "Invalid amount")
    if sats < 0 or sats > 21_000_000 * 100_000_000:
        raise RPCError(RPCCode.TYPE_ERROR, "Amount out of range")
    return int(sats)


def p_verbosity(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    return p_int(value)


def decode_tx(hexstring: Any, message: str = "TX decode failed") -> CTransaction:
    text = p_str(hexstring)
    try:
        tx = CTransaction.deserialize(bytes.fromhex(text))
    except Exception:  # noqa: BLE001 - any parse failure is Core's "TX decode failed"
        raise RPCError(RPCCode.DESERIALIZATION_ERROR, message) from None
    return tx


def script_for_address(address: Any) -> bytes:
    text = p_str(address)
    try:
        return bytes(CCoinAddress(text).to_scriptPubKey())
    except Exception:  # noqa: BLE001 - wrong network, bad checksum, garbage
        raise RPCError(RPCCode.INVALID_ADDRESS_OR_KEY, "Error: Invalid address") from None


def _block_index(node: Node, value: Any) -> BlockIndex:
    idx = node.chain.index.get(p_hash(value, "blockhash"))
    if idx is None:
        raise RPCError(RPCCode.INVALID_ADDRESS_OR_KEY, "Block not found")
    return idx


# ---------------------------------------------------------------- chain


def _confirmations(node: Node, idx: BlockIndex) -> int:
    return node.chain.height - idx.height + 1 if node.chain.contains(idx) else -1


def header_json(node: Node, idx: BlockIndex) -> dict[str, Any]:
    h = idx.header
    out: dict[str, Any] = {
        "hash": hash_hex(idx.hash),
        "confirmations": _confirmations(node, idx),
        "height": idx.height,
        "version": h.version,
        "versionHex": f"{h.version & 0xFFFFFFFF:08x}",
        "merkleroot": hash_hex(h.merkle),
        "time": h.time,
        "mediantime": node.chain.median_time_past(idx),
        "nonce": h.nonce,
        "bits": f"{h.bits:08x}",
        "difficulty": difficulty(h.bits),
        "chainwork": f"{idx.chainwork:064x}",
        "nTx": idx.ntx,
    }
    if idx.prev is not None:
        out["previousblockhash"] = hash_hex(idx.prev.hash)
    if node.chain.contains(idx) and idx.height < node.chain.height:
        out["nextblockhash"] = hash_hex(node.chain.active[idx.height + 1].hash)
    return out


@rpc("getblockchaininfo")
def getblockchaininfo(node: Node) -> dict[str, Any]:
    with node.lock:
        tip = node.chain.tip
        return {
            "chain": "regtest",
            "blocks": tip.height,
            "headers": max(i.height for i in node.chain.index.values()),
            "bestblockhash": hash_hex(tip.hash),
            "difficulty": difficulty(tip.header.bits),
            "time": tip.header.time,
            "mediantime": node.chain.median_time_past(tip),
            "verificationprogress": 1,
            "initialblockdownload": False,
            "chainwork": f"{tip.chainwork:064x}",
            "size_on_disk": node.storage.size_on_disk(),
            "pruned": False,
            "warnings": "",
        }


@rpc("getnetworkinfo")
def getnetworkinfo(node: Node) -> dict[str, Any]:
    return {
        "version": VERSION,
        "subversion": SUBVERSION,
        "protocolversion": 70016,
        "localservices": "0000000000000409",
        "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED"],
        "localrelay": True,
        "timeoffset": 0,
        "networkactive": True,
        "connections": 0,
        "connections_in": 0,
        "connections_out": 0,
        "networks": [],
        "relayfee": Amount(MIN_RELAY_FEERATE),
        "incrementalfee": Amount(MIN_RELAY_FEERATE),
        "localaddresses": [],
        "warnings": "",
    }


@rpc("getblockcount")
def getblockcount(node: Node) -> int:
    with node.lock:
        return node.chain.height


@rpc("getbestblockhash")
def getbestblockhash(node: Node) -> str:
    with node.lock:
        return hash_hex(node.chain.tip.hash)


@rpc("getblockhash", "height", required=1)
def getblockhash(node: Node, height: Any) -> str:
    h = p_int(height)
    with node.lock:
        if h < 0 or h > node.chain.height:
            raise RPCError(RPCCode.INVALID_PARAMETER, "Block height out of range")
        return hash_hex(node.chain.active[h].hash)


@rpc("getblockheader", "blockhash", "verbose", required=1)
def getblockheader(node: Node, blockhash: Any, verbose: Any = True) -> Any:
    verbose = True if verbose is None else p_bool(verbose)
    with node.lock:
        idx = _block_index(node, blockhash)
        if not verbose:
            return idx.header.serialize().hex()
        return header_json(node, idx)


@rpc("getblock", "blockhash", "verbosity", required=1)
def getblock(node: Node, blockhash: Any, verbosity: Any = 1) -> Any:
    level = p_verbosity(verbosity, 1)
    with node.lock:
        idx = _block_index(node, blockhash)
        if level <= 0:  # the stored bytes, as Core reads them from disk
            return node.storage.block_raw(idx.hash).hex()
        block = node.chain.block(idx.hash)
        out = header_json(node, idx)
        size, stripped, weight = block.sizes()
        out.update({"strippedsize": stripped, "size": size, "weight": weight})
        if level == 1:
            out["tx"] = [hash_hex(txid_of(tx)) for tx in block.txs]
        else:
            out["tx"] = _block_txs_json(node, idx, block, level)
        return out


def _block_txs_json(node: Node, idx: BlockIndex, block: Block, level: int) -> list[Any]:
    """Verbosity 2 (with fee) and 3 (with prevout), from the block's undo data when known."""
    undo = node.chain.undo_for(idx.hash)
    spent = iter(undo) if undo is not None else None
    txs = []
    for position, tx in enumerate(block.txs):
        coins = None
        if spent is not None and position > 0:
            coins = [coin for _, coin in (next(spent) for _ in tx.vin)]
        item = tx_json(tx, prevouts=coins)
        if level < 3:
            for vin in item["vin"]:
                vin.pop("prevout", None)
        txs.append(item)
    return txs


@rpc("getchaintips")
def getchaintips(node: Node) -> list[dict[str, Any]]:
    with node.lock:
        out = []
        for idx in sorted(node.chain.tips(), key=lambda i: -i.height):
            fork = idx
            while not node.chain.contains(fork):
                assert fork.prev is not None
                fork = fork.prev
            if node.chain.contains(idx):
                status = "active"
            elif node.chain.is_invalid(idx):
                status = "invalid"
            else:
                status = "valid-fork"
            out.append(
                {
                    "height": idx.height,
                    "hash": hash_hex(idx.hash),
                    "branchlen": idx.height - fork.height,
                    "status": status,
                }
            )
        return out


# ---------------------------------------------------------------- transactions


@rpc("getrawtransaction", "txid", "verbose", "blockhash", required=1)
def getrawtransaction(node: Node, txid: Any, verbose: Any = False, blockhash: Any = None) -> Any:
    tid = p_hash(txid, "parameter 1")
    level = p_verbosity(verbose, 0)
    with node.lock:
        if blockhash is not None:
            idx = _block_index(node, blockhash)
            block = node.chain.block(idx.hash)
            if node.chain.tx_index.get(tid) == idx.hash:  # found without hashing the block
                tx = block.txs[node.chain.tx_position[tid]]
                return _tx_result(node, tx, idx, level, in_active=True)
            for tx in block.txs:
                if txid_of(tx) == tid:
                    return _tx_result(node, tx, idx, level, in_active=True)
            raise RPCError(
                RPCCode.INVALID_ADDRESS_OR_KEY,
                "No such transaction found in the provided block. "
                "Use gettransaction for wallet transactions.",
            )
        entry = node.mempool.entries.get(tid)
        if entry is not None:
            return _tx_result(node, entry.tx, None, level, in_active=False)
        if not node.settings.txindex:
            raise RPCError(RPCCode.INVALID_ADDRESS_OR_KEY, NO_SUCH_MEMPOOL_TX)
        block_hash = node.chain.tx_index.get(tid)
        if block_hash is None:
            raise RPCError(RPCCode.INVALID_ADDRESS_OR_KEY, NO_SUCH_TX)
        idx = node.chain.index[block_hash]
        for tx in node.chain.block(block_hash).txs:
            if txid_of(tx) == tid:
                return _tx_result(node, tx, idx, level, in_active=False)
        raise RPCError(RPCCode.INVALID_ADDRESS_OR_KEY, NO_SUCH_TX)  # pragma: no cover


def _tx_result(
    node: Node, tx: CTransaction, idx: BlockIndex | None, level: int, *, in_active: bool
) -> Any:
    if level <= 0:
        return tx.serialize().hex()
    prevouts = None
    if level >= 2 and idx is not None and not tx.is_coinbase():
        undo = node.chain.undo_for(idx.hash)
        if undo is not None:
            wanted = {(bytes(i.prevout.hash), i.prevout.n) for i in tx.vin}
            by_op = {op: coin for op, coin in undo if op in wanted}
            prevouts = [by_op.get((bytes(i.prevout.hash), i.prevout.n)) for i in tx.vin]
            if any(p is None for p in prevouts):
                prevouts = None
    out = tx_json(tx, prevouts=prevouts)
    if idx is not None:
        if in_active:
            out["in_active_chain"] = node.chain.contains(idx)
        out["blockhash"] = hash_hex(idx.hash)
        confirmations = _confirmations(node, idx)
        out["confirmations"] = max(confirmations, 0)
        if node.chain.contains(idx):
            out["time"] = idx.header.time
            out["blocktime"] = idx.header.time
    return out


@rpc("decoderawtransaction", "hexstring", "iswitness", required=1)
def decoderawtransaction(node: Node, hexstring: Any, iswitness: Any = None) -> Any:
    tx = decode_tx(hexstring)
    return tx_json(tx, include_hex=False)


def _reject(exc: TxValidationError) -> RPCError:
    """Map a rejected transaction to Core's error code (`BroadcastTransaction`)."""
    if exc.result is TxResult.MISSING_INPUTS:
        return RPCError(RPCCode.VERIFY_ERROR, exc.message)
    return RPCError(RPCCode.VERIFY_REJECTED, exc.message)


def _max_fee_rate(value: Any) -> int:
    """`maxfeerate` in BTC/kvB -> sat/kvB (0 = no limit)."""
    if value is None:
        return int(DEFAULT_MAX_FEERATE * 100_000_000)
    return p_amount(value)


@rpc("sendrawtransaction", "hexstring", "maxfeerate", "maxburnamount", required=1)
def sendrawtransaction(
    node: Node, hexstring: Any, maxfeerate: Any = None, maxburnamount: Any = None
) -> str:
    tx = decode_tx(hexstring, "TX decode failed. Make sure the tx has at least one input.")
    max_rate = _max_fee_rate(maxfeerate)
    max_burn = 0 if maxburnamount is None else p_amount(maxburnamount)
    for out in tx.vout:
        if bytes(out.scriptPubKey)[:1] == b"\x6a" and out.nValue > max_burn:
            raise RPCError(
                RPCCode.VERIFY_ERROR,
                "Unspendable output exceeds maximum configured by user (maxburnamount)",
            )
    txid = txid_of(tx)
    with node.lock:
        if any((txid, n) in node.chain.utxos for n in range(len(tx.vout))):
            raise RPCError(
                RPCCode.VERIFY_ALREADY_IN_CHAIN, "Transaction outputs already in utxo set"
            )
        if txid in node.mempool:
            return hash_hex(txid)
        try:
            entry = node.accept(tx, test_only=True)
        except TxValidationError as exc:
            raise _reject(exc) from None
        if max_rate and entry.fee > fee_for(max_rate, entry.vsize):
            raise RPCError(
                RPCCode.VERIFY_ERROR,
                "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)",
            )
        try:
            node.accept(tx)
        except TxValidationError as exc:  # pragma: no cover - same checks as above
            raise _reject(exc) from None
        return hash_hex(txid)


@rpc("testmempoolaccept", "rawtxs", "maxfeerate", required=1)
def testmempoolaccept(node: Node, rawtxs: Any, maxfeerate: Any = None) -> list[dict[str, Any]]:
    if not isinstance(rawtxs, list):
        raise _type_error(rawtxs, "array")
    if not 1 <= len(rawtxs) <= 25:
        raise RPCError(
            RPCCode.INVALID_PARAMETER, "Array must contain between 1 and 25 transactions."
        )
    txs = []
    for raw in rawtxs:
        txs.append(
            decode_tx(raw, f"TX decode failed: {raw} Make sure the tx has at least one input.")
        )
    max_rate = _max_fee_rate(maxfeerate)
    results = node.test_package(txs)
    out = []
    for i, tx in enumerate(txs):
        item: dict[str, Any] = {"txid": hash_hex(txid_of(tx)), "wtxid": hash_hex(wtxid_of(tx))}
        if i < len(results):
            res = results[i]
            if isinstance(res, TxValidationError):
                item["allowed"] = False
                item["reject-reason"] = (
                    "missing-inputs" if res.result is TxResult.MISSING_INPUTS else res.reason
                )
            elif max_rate and res.fee > fee_for(max_rate, res.vsize):
                item["allowed"] = False
                item["reject-reason"] = "max-fee-exceeded"
            else:
                item["allowed"] = True
                item["vsize"] = res.vsize
                item["fees"] = {
                    "base": Amount(res.fee),
                    "effective-feerate": Amount(res.fee * 1000 // res.vsize),
                    "effective-includes": [hash_hex(res.wtxid)],
                }
        out.append(item)
    return out


def mempool_entry_json(node: Node, entry: MempoolEntry) -> dict[str, Any]:
    pool = node.mempool
    ancestors = pool.ancestors(entry.txid)
    descendants = pool.descendants(entry.txid)
    anc = [pool.entries[t] for t in ancestors]
    desc = [pool.entries[t] for t in descendants]
    replaceable = entry.signals_rbf or any(a.signals_rbf for a in anc)
    return {
        "vsize": entry.vsize,
        "weight": entry.weight,
        "time": entry.time,
        "height": entry.height,
        "descendantcount": len(desc) + 1,
        "descendantsize": entry.vsize + sum(d.vsize for d in desc),
        "ancestorcount": len(anc) + 1,
        "ancestorsize": entry.vsize + sum(a.vsize for a in anc),
        "wtxid": hash_hex(entry.wtxid),
        "fees": {
            "base": Amount(entry.fee),
            "modified": Amount(entry.fee),
            "ancestor": Amount(entry.fee + sum(a.fee for a in anc)),
            "descendant": Amount(entry.fee + sum(d.fee for d in desc)),
        },
        "depends": sorted(hash_hex(p) for p in entry.parents),
        "spentby": sorted(hash_hex(c) for c in pool.children(entry.txid)),
        "bip125-replaceable": replaceable,
        "unbroadcast": False,
    }


@rpc("getrawmempool", "verbose", "mempool_sequence")
def getrawmempool(node: Node, verbose: Any = False, mempool_sequence: Any = False) -> Any:
    verbose = False if verbose is None else p_bool(verbose)
    with node.lock:
        if verbose:
            return {
                hash_hex(txid): mempool_entry_json(node, e)
                for txid, e in node.mempool.entries.items()
            }
        return [hash_hex(txid) for txid in node.mempool.entries]


@rpc("getmempoolentry", "txid", required=1)
def getmempoolentry(node: Node, txid: Any) -> dict[str, Any]:
    tid = p_hash(txid, "parameter 1")
    with node.lock:
        entry = node.mempool.entries.get(tid)
        if entry is None:
            raise RPCError(RPCCode.INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
        return mempool_entry_json(node, entry)


@rpc("getmempoolinfo")
def getmempoolinfo(node: Node) -> dict[str, Any]:
    with node.lock:
        entries = list(node.mempool.entries.values())
        return {
            "loaded": True,
            "size": len(entries),
            "bytes": sum(e.vsize for e in entries),
            "usage": sum(len(e.raw) for e in entries),
            "total_fee": Amount(sum(e.fee for e in entries)),
            "maxmempool": 300_000_000,
            "mempoolminfee": Amount(MIN_RELAY_FEERATE),
            "minrelaytxfee": Amount(MIN_RELAY_FEERATE),
            "incrementalrelayfee": Amount(MIN_RELAY_FEERATE),
            "unbroadcastcount": 0,
            "fullrbf": False,
        }


@rpc("gettxout", "txid", "n", "include_mempool", required=2)
def gettxout(node: Node, txid: Any, n: Any, include_mempool: Any = True) -> Any:
    tid = p_hash(txid, "txid")
    index = p_int(n)
    include = True if include_mempool is None else p_bool(include_mempool)
    op = (tid, index)
    with node.lock:
        if include:
            if op in node.mempool.spenders:
                return None
            coin = node.mempool.coin(op) or node.chain.utxos.get(op)
        else:
            coin = node.chain.utxos.get(op)
        if coin is None:
            return None
        in_pool = include and op[0] in node.mempool.entries
        return {
            "bestblock": hash_hex(node.chain.tip.hash),
            "confirmations": 0 if in_pool else node.chain.height - coin.height + 1,
            "value": Amount(coin.value),
            "scriptPubKey": script_pubkey_json(coin.script),
            "coinbase": coin.coinbase,
        }


@rpc("estimatesmartfee", "conf_target", "estimate_mode", required=1)
def estimatesmartfee(node: Node, conf_target: Any, estimate_mode: Any = None) -> dict[str, Any]:
    target = p_int(conf_target)
    if not 1 <= target <= 1008:
        raise RPCError(RPCCode.INVALID_PARAMETER, "Invalid conf_target, must be between 1 and 1008")
    if estimate_mode is not None:
        mode = p_str(estimate_mode).lower()
        if mode not in ("unset", "economical", "conservative"):
            raise RPCError(
                RPCCode.INVALID_PARAMETER,
                'Invalid estimate_mode parameter, must be one of: "unset", "economical", '
                '"conservative"',
            )
    rate = node.settings.estimate_feerate_sat_kvb
    if rate <= 0:
        return {"errors": ["Insufficient data or no feerate found"], "blocks": 0}
    return {"feerate": Amount(max(rate, MIN_RELAY_FEERATE)), "blocks": max(target, 2)}


@rpc("validateaddress", "address", required=1)
def validateaddress(node: Node, address: Any) -> dict[str, Any]:
    text = p_str(address)
    try:
        script = bytes(CCoinAddress(text).to_scriptPubKey())
    except Exception:  # noqa: BLE001
        return {"isvalid": False, "error_locations": [], "error": "Invalid address format"}
    out: dict[str, Any] = {
        "isvalid": True,
        "address": text,
        "scriptPubKey": script.hex(),
        "isscript": script_pubkey_json(script)["type"] in ("scripthash", "witness_v0_scripthash"),
        "iswitness": script[0] == 0 or 0x51 <= script[0] <= 0x60,
    }
    if out["iswitness"]:
        out["witness_version"] = 0 if script[0] == 0 else script[0] - 0x50
        out["witness_program"] = script[2:].hex()
    return out


# ---------------------------------------------------------------- mining and reorgs


@rpc("generatetoaddress", "nblocks", "address", "maxtries", required=2)
def generatetoaddress(node: Node, nblocks: Any, address: Any, maxtries: Any = None) -> list[str]:
    count = p_int(nblocks)
    script = script_for_address(address)
    if count < 0:
        raise RPCError(RPCCode.INVALID_PARAMETER, "Invalid nblocks")
    return [hash_hex(idx.hash) for idx in node.generate(count, script)]


def _output_script(output: Any) -> bytes:
    text = p_str(output)
    if text.startswith("addr(") or text.startswith("raw("):
        inner = text.split("#", 1)[0]
        body = inner[inner.index("(") + 1 : -1]
        if inner.startswith("raw("):
            try:
                return bytes.fromhex(body)
            except ValueError:
                pass
        else:
            text = body
    try:
        return bytes(CCoinAddress(text).to_scriptPubKey())
    except Exception:  # noqa: BLE001
        raise RPCError(
            RPCCode.INVALID_ADDRESS_OR_KEY, "Error: Invalid address or descriptor"
        ) from None


@rpc("generateblock", "output", "transactions", "submit", required=2)
def generateblock(node: Node, output: Any, transactions: Any, submit: Any = True) -> Any:
    script = _output_script(output)
    if not isinstance(transactions, list):
        raise _type_error(transactions, "array")
    if submit is not None and not p_bool(submit):
        raise RPCError(RPCCode.INVALID_PARAMETER, "submit=false is not supported by this node")
    txs = []
    with node.lock:
        for item in transactions:
            text = p_str(item)
            if len(text) == 64:
                try:
                    tid = hash_from_hex(text)
                except ValueError:
                    tid = b""
                entry = node.mempool.entries.get(tid)
                if entry is None:
                    raise RPCError(
                        RPCCode.INVALID_ADDRESS_OR_KEY, f"Transaction {text} not in mempool."
                    )
                txs.append(entry.tx)
            else:
                txs.append(
                    decode_tx(
                        text,
                        f"Transaction decode failed for {text}. "
                        "Make sure the tx has at least one input.",
                    )
                )
        try:
            idx = node.generate_block(script, txs)
        except TxValidationError as exc:
            raise RPCError(
                RPCCode.VERIFY_ERROR, f"TestBlockValidity failed: {exc.message}"
            ) from None
        return {"hash": hash_hex(idx.hash)}


@rpc("submitblock", "hexdata", "dummy", required=1)
def submitblock(node: Node, hexdata: Any, dummy: Any = None) -> str | None:
    """Core's `submitblock`: null when accepted, else the reason. Only blocks extending the
    tip are taken here (a side branch answers "inconclusive", as Core does for a block it
    keeps without making it the tip)."""
    try:
        block = Block.deserialize(bytes.fromhex(p_str(hexdata)))
    except Exception:  # noqa: BLE001 - any parse failure is Core's "Block decode failed"
        raise RPCError(RPCCode.DESERIALIZATION_ERROR, "Block decode failed") from None
    with node.lock:
        if block.hash() in node.chain.index:
            return "duplicate"
        if block.header.prev != node.chain.tip.hash:
            return "inconclusive"
        try:
            node.submit(block)
        except TxValidationError as exc:
            return exc.reason
    return None


@rpc("invalidateblock", "blockhash", required=1)
def invalidateblock(node: Node, blockhash: Any) -> None:
    with node.lock:
        idx = _block_index(node, blockhash)
        if idx.height == 0:
            raise RPCError(RPCCode.INVALID_PARAMETER, "Cannot invalidate the genesis block")
        node.invalidate(idx)


@rpc("reconsiderblock", "blockhash", required=1)
def reconsiderblock(node: Node, blockhash: Any) -> None:
    with node.lock:
        node.reconsider(_block_index(node, blockhash))


# ---------------------------------------------------------------- control


@rpc("uptime")
def uptime(node: Node) -> int:
    return int(node.clock() - node.started)


@rpc("stop")
def stop(node: Node) -> str:
    node.stop_requested.set()
    return "Bitcoin Core stopping"


@rpc("help", "command")
def help_(node: Node, command: Any = None) -> str:
    if command is not None:
        name = p_str(command)
        method = METHODS.get(name)
        if method is None:
            return f"help: unknown command: {name}"
        return f"{name} " + " ".join(
            p if i < method.required else f"( {p} )" for i, p in enumerate(method.params)
        )
    return "\n".join(sorted(METHODS))
