"""Blocks: header and block serialization, merkle roots, coinbase building and mining.

python-bitcointx has no block classes, so the 80-byte header and the block layout are written
here, following Bitcoin Core's `primitives/block.h`. Proof of work is real but trivial at the
regtest target `207fffff` (about two hashes per block), which keeps mining 100 blocks cheap.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from io import BytesIO

from bitcointx.core import (
    COutPoint,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
)
from bitcointx.core.script import OP_RETURN, CScript, CScriptWitness
from bitcointx.core.serialize import VarIntSerializer

COIN = 100_000_000
MAX_MONEY = 21_000_000 * COIN
COINBASE_MATURITY = 100
SUBSIDY_HALVING_INTERVAL = 150  # regtest
MAX_BLOCK_WEIGHT = 4_000_000
DEFAULT_BLOCK_MAX_WEIGHT = MAX_BLOCK_WEIGHT - 4_000
WITNESS_SCALE_FACTOR = 4
REGTEST_BITS = 0x207FFFFF
BLOCK_VERSION = 0x20000000
WITNESS_COMMITMENT_HEADER = bytes.fromhex("aa21a9ed")

REGTEST_GENESIS_HASH = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
_GENESIS_SCRIPTSIG = bytes.fromhex(
    "04ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e"
    "206272696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73"
)
_GENESIS_PUBKEY = bytes.fromhex(
    "04678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f355"
    "04e51ec112de5c384df7ba0b8d578a4c702b6bf11d5f"
)


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def hash_hex(h: bytes) -> str:
    """Display form of a hash: byte-reversed hex, as Core prints txids and block hashes."""
    return h[::-1].hex()


def hash_from_hex(text: str) -> bytes:
    return bytes.fromhex(text)[::-1]


def bits_to_target(bits: int) -> int:
    exponent = bits >> 24
    mantissa = bits & 0x007FFFFF
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def block_work(bits: int) -> int:
    """Expected hashes for one block at `bits` (Core's `GetBlockProof`)."""
    target = bits_to_target(bits)
    return (~target & ((1 << 256) - 1)) // (target + 1) + 1


def difficulty(bits: int) -> float:
    """Core's `GetDifficulty` (regtest: 4.656542373906925e-10)."""
    shift = (bits >> 24) & 0xFF
    diff = float(0x0000FFFF) / float(bits & 0x00FFFFFF)
    while shift < 29:
        diff *= 256.0
        shift += 1
    while shift > 29:
        diff /= 256.0
        shift -= 1
    return diff


def block_subsidy(height: int) -> int:
    halvings = height // SUBSIDY_HALVING_INTERVAL
    if halvings >= 64:
        return 0
    return (50 * COIN) >> halvings


def txid_of(tx: CTransaction) -> bytes:
    return sha256d(tx.serialize(include_witness=False))


def wtxid_of(tx: CTransaction) -> bytes:
    return sha256d(tx.serialize())


def tx_weight(tx: CTransaction) -> int:
    stripped = len(tx.serialize(include_witness=False))
    total = len(tx.serialize())
    return stripped * (WITNESS_SCALE_FACTOR - 1) + total


def merkle_root(hashes: list[bytes]) -> bytes:
    """Core's `ComputeMerkleRoot` (odd levels duplicate their last hash)."""
    if not hashes:
        return b"\x00" * 32
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


@dataclass
class BlockHeader:
    version: int
    prev: bytes
    merkle: bytes
    time: int
    bits: int
    nonce: int

    def serialize(self) -> bytes:
        return (
            struct.pack("<i", self.version)
            + self.prev
            + self.merkle
            + struct.pack("<III", self.time, self.bits, self.nonce)
        )

    @classmethod
    def deserialize(cls, data: bytes) -> BlockHeader:
        version = struct.unpack_from("<i", data, 0)[0]
        time, bits, nonce = struct.unpack_from("<III", data, 68)
        return cls(version, data[4:36], data[36:68], time, bits, nonce)

    def hash(self) -> bytes:
        return sha256d(self.serialize())


@dataclass
class Block:
    header: BlockHeader
    txs: list[CTransaction]

    def hash(self) -> bytes:
        return self.header.hash()

    def serialize(self, include_witness: bool = True) -> bytes:
        out = BytesIO()
        out.write(self.header.serialize())
        VarIntSerializer.stream_serialize(len(self.txs), out)
        for tx in self.txs:
            out.write(tx.serialize(include_witness=include_witness))
        return out.getvalue()

    @classmethod
    def deserialize(cls, data: bytes) -> Block:
        f = BytesIO(data)
        header = BlockHeader.deserialize(f.read(80))
        count = VarIntSerializer.stream_deserialize(f)
        txs = [CTransaction.stream_deserialize(f) for _ in range(count)]
        if f.read(1):
            raise ValueError("extra data after block")
        return cls(header, txs)

    def sizes(self) -> tuple[int, int, int]:
        """(size, strippedsize, weight) as `getblock` reports them."""
        size = len(self.serialize())
        stripped = len(self.serialize(include_witness=False))
        return size, stripped, stripped * (WITNESS_SCALE_FACTOR - 1) + size

    def compute_merkle_root(self) -> bytes:
        return merkle_root([txid_of(tx) for tx in self.txs])


def check_proof_of_work(header: BlockHeader) -> bool:
    return int.from_bytes(header.hash(), "little") <= bits_to_target(header.bits)


def grind(header: BlockHeader) -> BlockHeader:
    """Find a nonce meeting the target (about two tries at regtest difficulty)."""
    target = bits_to_target(header.bits)
    prefix = header.serialize()[:76]
    nonce = 0
    while int.from_bytes(sha256d(prefix + struct.pack("<I", nonce)), "little") > target:
        nonce += 1
    header.nonce = nonce
    return header


def genesis_block() -> Block:
    """Bitcoin Core's regtest genesis block (same coinbase as mainnet, its own header)."""
    coinbase = CTransaction(
        [CTxIn(COutPoint(), CScript(_GENESIS_SCRIPTSIG), 0xFFFFFFFF)],
        [CTxOut(50 * COIN, CScript(bytes([len(_GENESIS_PUBKEY)]) + _GENESIS_PUBKEY + b"\xac"))],
        nLockTime=0,
        nVersion=1,
    )
    header = BlockHeader(1, b"\x00" * 32, txid_of(coinbase), 1296688602, REGTEST_BITS, 2)
    block = Block(header, [coinbase])
    header.merkle = block.compute_merkle_root()
    if hash_hex(block.hash()) != REGTEST_GENESIS_HASH:  # pragma: no cover - constant data
        raise AssertionError("regtest genesis block does not hash as expected")
    return block


def witness_commitment_script(txs_after_coinbase: list[CTransaction]) -> CScript:
    """BIP141 commitment output for a block whose coinbase witness is 32 zero bytes."""
    wtxids = [b"\x00" * 32] + [wtxid_of(tx) for tx in txs_after_coinbase]
    commitment = sha256d(merkle_root(wtxids) + b"\x00" * 32)
    return CScript([OP_RETURN, WITNESS_COMMITMENT_HEADER + commitment])


def build_coinbase(
    height: int, script_pubkey: bytes, value: int, txs: list[CTransaction], extra_nonce: int
) -> CTransaction:
    """A coinbase with the BIP34 height push and a BIP141 witness commitment."""
    script_sig = CScript([height, extra_nonce])
    outputs = [CTxOut(value, CScript(script_pubkey)), CTxOut(0, witness_commitment_script(txs))]
    witness = CTxWitness([CTxInWitness(CScriptWitness([b"\x00" * 32]))])
    return CTransaction(
        [CTxIn(COutPoint(), script_sig, 0xFFFFFFFF)],
        outputs,
        nLockTime=0,
        nVersion=2,
        witness=witness,
    )


def assemble_block(
    prev: bytes,
    height: int,
    time: int,
    script_pubkey: bytes,
    txs: list[CTransaction],
    fees: int,
    extra_nonce: int = 0,
) -> Block:
    """Build and mine a block on `prev` paying subsidy plus `fees` to `script_pubkey`."""
    coinbase = build_coinbase(height, script_pubkey, block_subsidy(height) + fees, txs, extra_nonce)
    block = Block(BlockHeader(BLOCK_VERSION, prev, b"", time, REGTEST_BITS, 0), [coinbase, *txs])
    block.header.merkle = block.compute_merkle_root()
    grind(block.header)
    return block


def bip34_height_ok(coinbase: CTransaction, height: int) -> bool:
    expected = bytes(CScript([height]))
    return bytes(coinbase.vin[0].scriptSig)[: len(expected)] == expected
