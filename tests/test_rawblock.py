"""The watcher's raw block reader against the simulated node's own serialization (python-bitcointx):
same txids, outpoints and outputs for legacy and segwit transactions; a damaged block is
`ChainUnavailable`, never an IndexError."""

from __future__ import annotations

import pytest
from bitcointx.core import COutPoint, CTransaction, CTxIn, CTxInWitness, CTxOut, CTxWitness
from bitcointx.core.script import CScript, CScriptWitness

from custody.chain.errors import ChainUnavailable
from custody.chain.rawblock import parse_block
from firmware_sim.node.blocks import (
    REGTEST_GENESIS_HASH,
    assemble_block,
    genesis_block,
    hash_hex,
    txid_of,
)


def _spend(prev: bytes, n: int, witness: bool, outputs: int) -> CTransaction:
    wit = CTxWitness([CTxInWitness(CScriptWitness([b"\x51", b"\x00" * 300]))]) if witness else None
    outs = [CTxOut(1000 + i, CScript(b"\x00\x14" + bytes([i % 256]) * 20)) for i in range(outputs)]
    script_sig = CScript() if witness else CScript(b"\x01" * 260)  # a 3-byte length prefix
    return CTransaction(
        [CTxIn(COutPoint(prev, n), script_sig, 0xFFFFFFFE)], outs, nVersion=2, witness=wit
    )


def test_genesis_block() -> None:
    block = genesis_block()
    parsed = parse_block(block.serialize())
    assert parsed.hash == REGTEST_GENESIS_HASH
    assert parsed.previous == "0" * 64
    assert [t.txid for t in parsed.txs] == [hash_hex(txid_of(block.txs[0]))]
    assert parsed.txs[0].coinbase


def test_mixed_block_matches_the_node() -> None:
    txs = [
        _spend(bytes([1]) * 32, 0, witness=True, outputs=3),
        _spend(bytes([2]) * 32, 7, witness=False, outputs=300),  # a 3-byte output count
        _spend(bytes([3]) * 32, 1, witness=True, outputs=1),
    ]
    block = assemble_block(genesis_block().hash(), 1, 1_700_000_000, b"\x51", txs, 0)
    parsed = parse_block(block.serialize())
    assert parsed.hash == hash_hex(block.hash())
    assert parsed.time == 1_700_000_000
    assert [t.txid for t in parsed.txs] == [hash_hex(txid_of(tx)) for tx in block.txs]
    for raw_tx, tx in zip(parsed.txs[1:], txs, strict=True):
        assert not raw_tx.coinbase
        assert raw_tx.inputs == [(hash_hex(bytes(i.prevout.hash)), i.prevout.n) for i in tx.vin]
        assert raw_tx.outputs == [(o.nValue, bytes(o.scriptPubKey)) for o in tx.vout]


@pytest.mark.parametrize("cut", [10, 81, 200, -1])
def test_damaged_block_is_refused(cut: int) -> None:
    raw = assemble_block(
        genesis_block().hash(), 1, 1, b"\x51", [_spend(bytes(32), 0, True, 2)], 0
    ).serialize()
    with pytest.raises(ChainUnavailable):
        parse_block(raw[:cut])
    with pytest.raises(ChainUnavailable):
        parse_block(raw + b"\x00")
