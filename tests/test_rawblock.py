"""The watcher's raw block reader against the simulated node's own serialization (python-bitcointx):
same txids, outpoints and outputs for legacy and segwit transactions; a damaged block is
`ChainUnavailable`, never an IndexError. The C scan reads the same as the Python reader and
keeps what the filters let through (the fuzz harness `rawblock` compares them on mutated
blocks)."""

from __future__ import annotations

import pytest
from bitcointx.core import COutPoint, CTransaction, CTxIn, CTxInWitness, CTxOut, CTxWitness
from bitcointx.core.script import CScript, CScriptWitness

from custody.chain import rawblock
from custody.chain.errors import ChainUnavailable
from custody.chain.rawblock import parse_block, scan_block
from custody.match_filter import mark, mark_packed
from firmware_sim.node.blocks import (
    REGTEST_GENESIS_HASH,
    Block,
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


# -- the C scan (custody/chain/_blockscan.c) against the Python reader --------------------------


def _mixed_block() -> tuple[Block, list[CTransaction]]:
    txs = [
        _spend(bytes([1]) * 32, 0, witness=True, outputs=3),
        _spend(bytes([2]) * 32, 7, witness=False, outputs=300),
        _spend(bytes([3]) * 32, 1, witness=True, outputs=1),
        _spend(bytes([4]) * 32, 2, witness=False, outputs=2),
    ]
    return assemble_block(genesis_block().hash(), 1, 1_700_000_000, b"\x51", txs, 0), txs


def _bitmap(*keys: object) -> bytearray:
    bits = bytearray(1 << 16)
    mark(bits, keys)
    return bits


def test_the_extension_is_built() -> None:
    assert rawblock._blockscan is not None, "pip install -e . builds custody.chain._blockscan"


def test_scan_reads_what_the_python_reader_reads() -> None:
    block, _ = _mixed_block()
    for raw in (block.serialize(), genesis_block().serialize()):
        assert scan_block(raw) == parse_block(raw)


def test_scan_keeps_only_what_the_filters_let_through() -> None:
    block, txs = _mixed_block()
    raw = block.serialize()
    full = parse_block(raw).txs
    empty = bytearray(1 << 16)
    assert scan_block(raw, empty, empty, set()).txs == []
    # an output script only the 300-output one has; the legacy one's spent txid; the last txid
    by_script = scan_block(raw, _bitmap(full[2].outputs[100][1]), empty, set())
    assert by_script.txs == [full[2]]
    by_spent = scan_block(raw, empty, _bitmap(full[2].inputs[0][0]), set())
    assert by_spent.txs == [full[2]]
    assert scan_block(raw, empty, _bitmap(full[4].txid), None).txs == [full[4]]
    header = scan_block(raw, empty, empty, None)
    assert (header.hash, header.previous, header.time) == (
        hash_hex(block.hash()),
        hash_hex(genesis_block().hash()),
        1_700_000_000,
    )


def test_scan_follows_spends_of_earlier_candidates() -> None:
    """A transaction spending one the scan kept (in this block or an earlier one of the chunk,
    carried in `spent`) is kept too: it may spend a deposit not yet recorded."""
    first = _spend(bytes([9]) * 32, 0, witness=True, outputs=2)
    child = _spend(txid_of(first), 1, witness=False, outputs=1)
    other = _spend(bytes([8]) * 32, 0, witness=True, outputs=1)
    raw = assemble_block(genesis_block().hash(), 1, 1, b"\x51", [first, other, child], 0)
    parsed = parse_block(raw.serialize())
    empty = bytearray(1 << 16)
    spent: set[str] = set()
    kept = scan_block(raw.serialize(), _bitmap(parsed.txs[1].outputs[1][1]), empty, spent)
    assert [t.txid for t in kept.txs] == [parsed.txs[1].txid, parsed.txs[3].txid]
    assert spent == {parsed.txs[1].txid, parsed.txs[3].txid}
    later = scan_block(raw.serialize(), empty, empty, {parsed.txs[1].txid})
    assert [t.txid for t in later.txs] == [parsed.txs[3].txid]


@pytest.mark.parametrize("cut", [10, 81, 85, 200, -1])
def test_scan_refuses_a_damaged_block_naming_what_is_wrong(cut: int) -> None:
    block, _ = _mixed_block()
    raw = block.serialize()
    with pytest.raises(ChainUnavailable, match="malformed block"):
        scan_block(raw[:cut])
    with pytest.raises(ChainUnavailable, match="extra data"):
        scan_block(raw + b"\x00")


def test_scan_refuses_a_filter_of_the_wrong_size() -> None:
    raw = genesis_block().serialize()
    with pytest.raises(ValueError, match="power of two"):
        scan_block(raw, bytearray(3), None, None)
    with pytest.raises(ValueError, match="power of two"):
        mark(bytearray(0), [b"x"])


def test_packed_keys_set_the_bits_their_keys_set() -> None:
    """The PostgreSQL load packs keys (2-byte length + bytes; a txid as its ASCII bytes):
    the same bits as the keys themselves, bytes or str."""
    keys: list[bytes] = [b"", b"\x00\x14" + b"\x07" * 20, b"\x51" * 300]
    txids = [f"{i:064x}" for i in range(50)]
    packed = b"".join(len(k).to_bytes(2, "big") + k for k in [*keys, *(t.encode() for t in txids)])
    by_packing = bytearray(1 << 16)
    mark_packed(by_packing, packed)
    assert by_packing == _bitmap(*keys, *txids)
    with pytest.raises(ValueError, match="past the end"):
        mark_packed(bytearray(1 << 16), packed[:-1])
