"""The node's RPC surface looks like Bitcoin Core's: HTTP status codes, auth (password and
cookie), JSON-RPC 1.0 replies and batches, result shapes, and persistence across a restart.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import requests

from custody.chain import BitcoinRPC
from firmware_sim.node.blocks import assemble_block, grind, hash_from_hex, hash_hex
from firmware_sim.node.rpc_methods import NO_SUCH_MEMPOOL_TX
from firmware_sim.node.rpc_server import RPCHandler
from hsm_hot.rpc_server import _Handler as HotHandler
from tests.node_fixtures import (
    FEE,
    Faucet,
    Key,
    NodeProcess,
    assert_rpc_error,
    hex_of,
    node_rig,
    spend_p2wpkh,
    txid_hex,
)

GENESIS = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"


node, rpc, key, faucet = node_rig("node-rpc", seed="rpc-miner")


def test_genesis_and_chain_info(rpc: BitcoinRPC, faucet: Faucet) -> None:
    assert rpc.get_block_hash(0) == GENESIS
    info = rpc.get_blockchain_info()
    assert info["chain"] == "regtest"
    assert info["blocks"] == rpc.get_block_count() == info["headers"]
    assert info["bestblockhash"] == rpc.get_best_block_hash()
    assert info["initialblockdownload"] is False
    net = rpc.call("getnetworkinfo")
    assert net["version"] >= 250000 and net["relayfee"] == Decimal("0.00001000")


def test_block_header_and_block_shapes(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    h = rpc.get_block_hash(5)
    header = rpc.get_block_header(h)
    assert header["height"] == 5 and header["bits"] == "207fffff"
    assert header["previousblockhash"] == rpc.get_block_hash(4)
    assert header["nextblockhash"] == rpc.get_block_hash(6)
    raw_header = bytes.fromhex(rpc.call("getblockheader", h, False))
    assert len(raw_header) == 80
    assert hashlib.sha256(hashlib.sha256(raw_header).digest()).digest()[::-1].hex() == h
    raw_block = rpc.get_block(h, 0)
    assert raw_block.startswith(raw_header.hex())
    v1 = rpc.get_block(h, 1)
    assert v1["confirmations"] == rpc.get_block_count() - 4
    assert v1["nTx"] == len(v1["tx"]) == 1 and v1["merkleroot"] == v1["tx"][0]
    v2 = rpc.get_block(h, 2)
    coinbase = v2["tx"][0]
    assert coinbase["vin"][0]["coinbase"].startswith("55")  # BIP34: OP_5
    out = coinbase["vout"][0]
    assert out["value"] == Decimal("50.00000000")
    assert out["scriptPubKey"]["address"] == key.address
    assert out["scriptPubKey"]["type"] == "witness_v0_keyhash"
    assert out["scriptPubKey"]["desc"].startswith(f"addr({key.address})#")
    assert coinbase["vout"][1]["scriptPubKey"]["type"] == "nulldata"  # witness commitment


def test_submitblock(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    """Core's answers: null when taken, else the reason; a block off the tip is not taken."""
    tip = rpc.get_best_block_hash()
    height = rpc.get_block_count()
    when = rpc.get_block_header(tip)["time"] + 1
    block = assemble_block(hash_from_hex(tip), height + 1, when, bytes(key.script), [], 0)
    assert rpc.call("submitblock", block.serialize().hex()) is None
    assert rpc.get_best_block_hash() == hash_hex(block.hash())
    assert rpc.call("submitblock", block.serialize().hex()) == "duplicate"
    stale = assemble_block(hash_from_hex(tip), height + 1, when + 1, bytes(key.script), [], 0)
    assert rpc.call("submitblock", stale.serialize().hex()) == "inconclusive"
    bad = assemble_block(block.hash(), height + 2, when + 1, bytes(key.script), [], 0)
    bad.header.merkle = bytes(32)
    grind(bad.header)  # proof of work passes: the merkle root is what is wrong
    assert rpc.call("submitblock", bad.serialize().hex()) == "bad-txnmrklroot"
    assert rpc.get_block_count() == height + 1
    assert_rpc_error(rpc.call, -22, "Block decode failed", "submitblock", "00")


def test_amounts_are_written_with_eight_decimals(node: NodeProcess, faucet: Faucet) -> None:
    body = {"jsonrpc": "1.0", "id": "x", "method": "getblock", "params": [GENESIS, 2]}
    text = node.post(body).text
    assert '"value":50.00000000' in text


def test_errors_and_http_status(node: NodeProcess, rpc: BitcoinRPC) -> None:
    assert_rpc_error(rpc.get_block_hash, -8, "Block height out of range", 10_000)
    assert_rpc_error(rpc.get_block, -5, "Block not found", "00" * 32)
    assert_rpc_error(rpc.get_block, -8, "blockhash must be of length 64 (not 3, for 'abc')", "abc")
    assert_rpc_error(rpc.call, -32601, "Method not found", "getwalletinfo")
    reply = node.post({"jsonrpc": "1.0", "id": 7, "method": "nosuch", "params": []})
    assert reply.status_code == 404
    assert reply.json() == {
        "result": None,
        "error": {"code": -32601, "message": "Method not found"},
        "id": 7,
    }
    reply = node.post({"jsonrpc": "1.0", "id": 8, "method": "getblockhash", "params": [-1]})
    assert reply.status_code == 500 and reply.json()["error"]["code"] == -8
    assert node.post(b"{not json").json()["error"] == {"code": -32700, "message": "Parse error"}


def test_bad_password_gets_401_with_empty_body(node: NodeProcess) -> None:
    reply = node.post({"method": "getblockcount"}, auth=(node.user, "wrong-password"))
    assert reply.status_code == 401 and reply.content == b""
    reply = requests.post(node.url, data="{}", timeout=10)
    assert reply.status_code == 401


def test_cookie_file_authenticates(node: NodeProcess) -> None:
    cookie = (node.datadir / ".cookie").read_text()
    user, _, password = cookie.partition(":")
    assert user == "__cookie__" and len(password) == 64
    rpc = BitcoinRPC(node.url, cookie_file=node.datadir / ".cookie")
    assert rpc.get_block_hash(0) == GENESIS


def test_batch_and_named_params(node: NodeProcess) -> None:
    batch = [
        {"jsonrpc": "1.0", "id": 1, "method": "getblockhash", "params": [0]},
        {"jsonrpc": "1.0", "id": 2, "method": "nosuch", "params": []},
    ]
    reply = node.post(batch)
    assert reply.status_code == 200
    first, second = reply.json()
    assert first == {"result": GENESIS, "error": None, "id": 1}
    assert second["error"]["code"] == -32601 and second["id"] == 2
    named = {
        "jsonrpc": "1.0",
        "id": 3,
        "method": "getblock",
        "params": {"blockhash": GENESIS, "verbosity": 0},
    }
    assert node.post(named).json()["result"].startswith("01000000")


def test_generate_to_addresses(rpc: BitcoinRPC, faucet: Faucet) -> None:
    legacy = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"  # regtest base58 P2PKH
    [h] = rpc.generate_to_address(1, legacy)
    out = rpc.get_block(h, 2)["tx"][0]["vout"][0]["scriptPubKey"]
    assert out["type"] == "pubkeyhash" and out["address"] == legacy
    mainnet = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    assert_rpc_error(rpc.generate_to_address, -5, "Error: Invalid address", 1, mainnet)


def test_estimatesmartfee(rpc: BitcoinRPC) -> None:
    estimate = rpc.estimate_smart_fee(6)
    assert estimate.feerate == Decimal("0.00010000") and estimate.blocks == 6
    assert estimate.sat_per_vbyte == Decimal(10)
    assert_rpc_error(
        rpc.estimate_smart_fee, -8, "Invalid conf_target, must be between 1 and 1008", 0
    )


def test_transaction_lifecycle_shapes(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)])
    txid = txid_hex(tx)
    [accept] = rpc.test_mempool_accept([hex_of(tx)])
    assert accept.allowed is True and accept.fee == Decimal(FEE) / 100_000_000
    decoded = rpc.decode_raw_transaction(hex_of(tx))
    assert decoded["txid"] == txid and "hex" not in decoded
    assert decoded["vin"][0]["txinwitness"][1] == key.pub.hex()

    assert rpc.send_raw_transaction(hex_of(tx)) == txid
    assert txid in rpc.get_raw_mempool()
    entry = rpc.get_mempool_entry(txid)
    assert entry["fees"]["base"] == Decimal("0.00010000") and entry["vsize"] == decoded["vsize"]
    assert rpc.get_raw_mempool(True)[txid]["wtxid"] == decoded["hash"]
    pending = rpc.get_raw_transaction(txid, True)
    assert "blockhash" not in pending and pending["hex"] == hex_of(tx)
    assert rpc.get_raw_transaction(txid, False) == hex_of(tx)
    assert rpc.get_tx_out(coin[0], 0) is None  # spent in the mempool
    assert rpc.get_tx_out(coin[0], 0, include_mempool=False)["coinbase"] is True
    unconfirmed = rpc.get_tx_out(txid, 0)
    assert unconfirmed["confirmations"] == 0

    [block_hash] = rpc.generate_to_address(1, key.address)
    assert rpc.get_raw_mempool() == []
    # Without txindex (Core's default) a mined transaction is found only by its block hash.
    assert_rpc_error(rpc.get_raw_transaction, -5, NO_SUCH_MEMPOOL_TX, txid, True)
    mined = rpc.get_raw_transaction(txid, True, block_hash)
    assert mined["blockhash"] == block_hash and mined["confirmations"] == 1
    assert mined["time"] == mined["blocktime"]
    assert rpc.get_tx_out(txid, 0)["confirmations"] == 1
    block = rpc.get_block(block_hash, 2)
    assert block["tx"][1]["fee"] == Decimal("0.00010000")
    assert block["tx"][0]["vout"][0]["value"] == Decimal("50.00010000")
    assert_rpc_error(rpc.get_mempool_entry, -5, "Transaction not in mempool", txid)
    assert_rpc_error(rpc.get_raw_transaction, -5, NO_SUCH_MEMPOOL_TX, "ab" * 32)
    assert_rpc_error(rpc.decode_raw_transaction, -22, "TX decode failed", "00")


def test_generateblock_with_raw_transaction(rpc: BitcoinRPC, faucet: Faucet, key: Key) -> None:
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)])
    result = rpc.call("generateblock", key.address, [hex_of(tx)])
    assert rpc.get_best_block_hash() == result["hash"]
    assert rpc.get_block(result["hash"], 1)["tx"][1] == txid_hex(tx)
    assert_rpc_error(
        rpc.call,
        -25,
        "TestBlockValidity failed: bad-txns-inputs-missingorspent, "
        "CheckTxInputs: inputs missing/spent",
        "generateblock",
        key.address,
        [hex_of(tx)],
    )


def test_chain_and_mempool_survive_restart(node: NodeProcess, faucet: Faucet, key: Key) -> None:
    rpc = node.rpc()
    coin = faucet.coin()
    tx = spend_p2wpkh(key, coin, [(key.script, coin[2] - FEE)])
    rpc.send_raw_transaction(hex_of(tx))
    height, best = rpc.get_block_count(), rpc.get_best_block_hash()
    assert node.stop() == 0
    node.start()
    rpc = node.rpc()
    assert (rpc.get_block_count(), rpc.get_best_block_hash()) == (height, best)
    assert rpc.get_raw_mempool() == [txid_hex(tx)]
    assert rpc.get_tx_out(coin[0], 0, include_mempool=False) is not None
    [block] = rpc.generate_to_address(1, key.address)
    assert rpc.get_raw_transaction(txid_hex(tx), True, block)["confirmations"] == 1
    assert json.loads(json.dumps(rpc.call("getchaintips"), default=str))[0]["status"] == "active"


def test_port_taken_exits_non_zero_with_a_clear_error(node: NodeProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "firmware_sim.cli", "node", "--dir", str(node.data_dir)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 2
    assert "cannot listen on" in result.stderr and "address already in use" in result.stderr
    assert node.rpc().get_block_count() >= 0  # the running node is untouched


def test_mining_a_hundred_blocks(rpc: BitcoinRPC, key: Key) -> None:
    before = rpc.get_block_count()
    hashes = rpc.generate_to_address(100, key.address)
    assert len(set(hashes)) == 100 and rpc.get_block_count() == before + 100


def test_http_servers_set_tcp_nodelay() -> None:
    """Regression: our HTTP/1.1 servers write headers and body separately; with Nagle on, a
    keep-alive client's delayed ACK held every answer back ~40 ms (the node's watcher took
    180 ms a block, the hot HSM capped co-signing near 120/s). Speed itself is measured in
    benchmarks/, not here."""

    assert RPCHandler.disable_nagle_algorithm is True
    assert HotHandler.disable_nagle_algorithm is True
