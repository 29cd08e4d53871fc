"""The watcher's decoding of a raw block's transaction (`custody.chain.txjson`) against the
simulated node's decoded answer (Core's `TxToUniv`, python-bitcointx): same txid, outpoints,
output values, scripts and addresses, for every standard script type and for scripts without
an address, segwit and legacy, coinbase included."""

from __future__ import annotations

import json
from decimal import Decimal

from bitcointx.core import COutPoint, CTransaction, CTxIn, CTxInWitness, CTxOut, CTxWitness
from bitcointx.core.script import CScript, CScriptWitness

from custody.chain.rawblock import parse_block, scan_block
from custody.chain.txjson import tx_json
from firmware_sim.node.blocks import assemble_block, genesis_block
from firmware_sim.node.formatting import dumps, use_regtest
from firmware_sim.node.formatting import tx_json as node_tx_json
from wallet_core.networks import Network

SCRIPTS = [
    bytes.fromhex("76a914") + b"\x11" * 20 + bytes.fromhex("88ac"),  # P2PKH
    bytes.fromhex("a914") + b"\x22" * 20 + b"\x87",  # P2SH
    b"\x00\x14" + b"\x33" * 20,  # P2WPKH
    b"\x00\x20" + b"\x44" * 32,  # P2WSH
    b"\x51\x20" + b"\x55" * 32,  # P2TR
    b"\x6a\x04" + b"data",  # OP_RETURN: no address
    b"\x21" + b"\x02" * 33 + b"\xac",  # P2PK: no address in Core's answer
    b"\x51",  # OP_TRUE: non-standard
]


def _tx(prev: bytes, witness: bool) -> CTransaction:
    wit = CTxWitness([CTxInWitness(CScriptWitness([b"\x51"]))]) if witness else None
    return CTransaction(
        [CTxIn(COutPoint(prev, 3), CScript() if witness else CScript(b"\x01\x02"), 0xFFFFFFFE)],
        [CTxOut(1000 * (i + 1), CScript(s)) for i, s in enumerate(SCRIPTS)],
        nVersion=2,
        witness=wit,
    )


def _watcher_view(node_tx: dict) -> dict:
    """What the watcher reads of a decoded transaction, through the node's JSON."""
    tx = json.loads(dumps(node_tx), parse_float=Decimal)
    return {
        "txid": tx["txid"],
        "vin": [
            {"txid": v["txid"], "vout": v["vout"]} if "txid" in v else {"coinbase": ""}
            for v in tx["vin"]
        ],
        "vout": [
            {
                "n": o["n"],
                "value": o["value"],
                "scriptPubKey": {
                    k: v for k, v in o["scriptPubKey"].items() if k in ("hex", "address")
                },
            }
            for o in tx["vout"]
        ],
    }


def test_decoded_from_the_raw_block_as_the_node_decodes() -> None:
    use_regtest()
    txs = [_tx(b"\x01" * 32, witness=True), _tx(b"\x02" * 32, witness=False)]
    block = assemble_block(genesis_block().hash(), 1, 1_700_000_000, b"\x51", txs, 0)
    for parsed in (parse_block(block.serialize()), scan_block(block.serialize())):
        assert len(parsed.txs) == len(block.txs) == 3
        for raw_tx, tx in zip(parsed.txs, block.txs, strict=True):
            ours = tx_json(raw_tx, Network.REGTEST)
            assert ours == _watcher_view(node_tx_json(tx))
    first = tx_json(parse_block(block.serialize()).txs[1], Network.REGTEST)
    assert "address" not in first["vout"][5]["scriptPubKey"]  # OP_RETURN
    assert first["vout"][2]["scriptPubKey"]["address"].startswith("bcrt1q")


def test_a_future_witness_version_has_its_address_as_in_core() -> None:
    """Core answers WitnessUnknown outputs with their bech32m address (python-bitcointx, and so
    the simulated node, gives none)."""
    tx = _tx(b"\x03" * 32, witness=True)
    tx = CTransaction(tx.vin, [CTxOut(1000, CScript(b"\x52\x10" + b"\x66" * 16))], 2, 0, tx.wit)
    block = assemble_block(genesis_block().hash(), 1, 1_700_000_000, b"\x51", [tx], 0)
    ours = tx_json(parse_block(block.serialize()).txs[1], Network.REGTEST)
    assert ours["vout"][0]["scriptPubKey"]["address"] == "bcrt1zvenxvenxvenxvenxvenxvenxvcmvc6dg"
