"""The block tree, the active chain, the UTXO set and reorganisations.

Modelled on Core's `Chainstate`: every block ever accepted stays in the index; the active chain
is the valid branch with the most work (the current tip wins ties, as in Core, where a block
of equal work never replaces the tip). `invalidateblock` marks a block failed and reorganises
to the best remaining branch; `reconsiderblock` clears the mark and reorganises again.
Disconnecting a block restores the coins it spent from its undo data.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from firmware_sim.node.blocks import (
    MAX_BLOCK_WEIGHT,
    WITNESS_COMMITMENT_HEADER,
    Block,
    BlockHeader,
    bip34_height_ok,
    block_subsidy,
    block_work,
    check_proof_of_work,
    genesis_block,
    txid_of,
    witness_commitment_script,
    wtxid_of,
)
from firmware_sim.node.storage import Storage, StoredBlock
from firmware_sim.node.validation import (
    Coin,
    TxResult,
    TxValidationError,
    check_transaction,
    check_tx_inputs,
    is_final_tx,
    sequence_locks_ok,
    verify_scripts,
)

log = logging.getLogger(__name__)

Outpoint = tuple[bytes, int]


@dataclass(eq=False)
class BlockIndex:
    """One block of the tree (Core's `CBlockIndex`)."""

    hash: bytes
    prev: BlockIndex | None
    height: int
    seq: int
    failed: bool
    header: BlockHeader
    ntx: int
    size: int
    stripped: int
    chainwork: int

    @property
    def weight(self) -> int:
        return self.stripped * 3 + self.size


@dataclass
class ChainUpdate:
    """What an activation did: blocks taken off the active chain and blocks put on it."""

    disconnected: list[Block] = field(default_factory=list)
    connected: list[Block] = field(default_factory=list)


class ChainState:
    """Blocks, the active chain and its UTXO set. Not thread-safe: the node holds a lock."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.index: dict[bytes, BlockIndex] = {}
        self.active: list[BlockIndex] = []
        self.utxos: dict[Outpoint, Coin] = {}
        self.undo: dict[bytes, list[tuple[Outpoint, Coin]]] = {}
        self.tx_index: dict[bytes, bytes] = {}
        self.tx_position: dict[bytes, int] = {}  # txid -> its place in its block (active chain)
        self._next_seq = 0
        self._cache: OrderedDict[bytes, Block] = OrderedDict()

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Read the block index and replay the active chain (scripts were checked on entry)."""
        stored = self.storage.load_index()
        if not stored:
            genesis = genesis_block()
            idx = self._add_index(genesis, None)
            self._connect(idx, genesis, verify=False)
            self.storage.set_meta("tip", genesis.hash().hex())
            self.storage.commit()
            return
        for entry in stored:
            prev = self.index.get(entry.prev)
            header = BlockHeader.deserialize(entry.header)
            idx = BlockIndex(
                entry.hash,
                prev,
                entry.height,
                entry.seq,
                entry.failed,
                header,
                entry.ntx,
                entry.size,
                entry.stripped,
                (prev.chainwork if prev else 0) + block_work(header.bits),
            )
            self.index[entry.hash] = idx
            self._next_seq = max(self._next_seq, entry.seq + 1)
        saved = self.storage.get_meta("tip")
        target = self.index.get(bytes.fromhex(saved)) if saved else None
        best = self._best_candidate(prefer=target)
        path = list(self._ancestors(best))[::-1]
        for idx in path:
            self._connect(idx, self.block(idx.hash), verify=False)
        log.info("loaded %d blocks; tip height %d", len(self.index), self.height)

    # ------------------------------------------------------------------ queries

    @property
    def tip(self) -> BlockIndex:
        return self.active[-1]

    @property
    def height(self) -> int:
        return len(self.active) - 1

    def contains(self, idx: BlockIndex) -> bool:
        return idx.height < len(self.active) and self.active[idx.height] is idx

    def median_time_past(self, idx: BlockIndex | None) -> int:
        times: list[int] = []
        while idx is not None and len(times) < 11:
            times.append(idx.header.time)
            idx = idx.prev
        if not times:
            return 0
        times.sort()
        return times[len(times) // 2]

    def mtp_at_height(self, height: int) -> int:
        return self.median_time_past(self.active[min(height, self.height)])

    def block(self, block_hash: bytes) -> Block:
        cached = self._cache.get(block_hash)
        if cached is not None:
            self._cache.move_to_end(block_hash)
            return cached
        block = Block.deserialize(self.storage.block_raw(block_hash))
        self._cache[block_hash] = block
        if len(self._cache) > 256:
            self._cache.popitem(last=False)
        return block

    def undo_for(self, block_hash: bytes) -> list[tuple[Outpoint, Coin]] | None:
        return self.undo.get(block_hash)

    def is_invalid(self, idx: BlockIndex) -> bool:
        node: BlockIndex | None = idx
        while node is not None:
            if node.failed:
                return True
            node = node.prev
        return False

    def tips(self) -> list[BlockIndex]:
        """Blocks with no child: the ends of every branch (for `getchaintips`)."""
        has_child = {idx.prev.hash for idx in self.index.values() if idx.prev is not None}
        return [idx for idx in self.index.values() if idx.hash not in has_child]

    # ------------------------------------------------------------------ adding blocks

    def _new_index(self, block: Block, prev: BlockIndex | None) -> BlockIndex:
        size, stripped, _ = block.sizes()
        return BlockIndex(
            block.hash(),
            prev,
            0 if prev is None else prev.height + 1,
            self._next_seq,
            False,
            block.header,
            len(block.txs),
            size,
            stripped,
            (prev.chainwork if prev else 0) + block_work(block.header.bits),
        )

    def _add_index(self, block: Block, prev: BlockIndex | None) -> BlockIndex:
        return self._register(self._new_index(block, prev), block)

    def _register(self, idx: BlockIndex, block: Block) -> BlockIndex:
        """Put a block in the index and the store (only blocks that passed validation)."""
        idx.seq = self._next_seq
        self._next_seq += 1
        self.index[idx.hash] = idx
        self.storage.put_block(
            StoredBlock(
                idx.hash,
                idx.prev.hash if idx.prev else b"\x00" * 32,
                idx.height,
                idx.seq,
                False,
                block.header.serialize(),
                idx.ntx,
                idx.size,
                idx.stripped,
            ),
            block.serialize(),
        )
        self._cache[idx.hash] = block
        return idx

    def submit_block_on_tip(
        self, block: Block, scripts_checked: set[bytes] | None = None
    ) -> BlockIndex:
        """Validate fully and connect a block extending the tip; an invalid one is not kept.

        Like Core's `generateblock` (`TestBlockValidity` first): a refused block leaves no trace.
        """
        if block.header.prev != self.tip.hash:
            raise TxValidationError(TxResult.CONSENSUS, "prev-blk-not-tip")
        self.check_block(block, self.tip)
        idx = self._new_index(block, self.tip)
        self._connect(idx, block, verify=True, scripts_checked=scripts_checked or set())
        self._register(idx, block)
        self.storage.set_meta("tip", idx.hash.hex())
        return idx

    def check_block(self, block: Block, prev: BlockIndex) -> None:
        """Context checks Core runs before connecting (`CheckBlock`, `ContextualCheckBlock`)."""
        height = prev.height + 1
        if not check_proof_of_work(block.header):
            raise TxValidationError(TxResult.CONSENSUS, "high-hash", "proof of work failed")
        if block.header.merkle != block.compute_merkle_root():
            raise TxValidationError(
                TxResult.CONSENSUS, "bad-txnmrklroot", "hashMerkleRoot mismatch"
            )
        if not block.txs or not block.txs[0].is_coinbase():
            raise TxValidationError(
                TxResult.CONSENSUS, "bad-cb-missing", "first tx is not coinbase"
            )
        if any(tx.is_coinbase() for tx in block.txs[1:]):
            raise TxValidationError(TxResult.CONSENSUS, "bad-cb-multiple", "more than one coinbase")
        if block.header.time <= self.median_time_past(prev):
            raise TxValidationError(
                TxResult.CONSENSUS, "time-too-old", "block's timestamp is too early"
            )
        if not bip34_height_ok(block.txs[0], height):
            raise TxValidationError(
                TxResult.CONSENSUS, "bad-cb-height", "block height mismatch in coinbase"
            )
        _, _, weight = block.sizes()
        if weight > MAX_BLOCK_WEIGHT:
            raise TxValidationError(TxResult.CONSENSUS, "bad-blk-weight", "weight limit failed")
        txids = [txid_of(tx) for tx in block.txs]
        if len(set(txids)) != len(txids):
            raise TxValidationError(
                TxResult.CONSENSUS, "bad-txns-duplicate", "duplicate transaction"
            )
        for tx in block.txs:
            check_transaction(tx)
        if any(tx.has_witness() for tx in block.txs[1:]):
            expected = bytes(witness_commitment_script(block.txs[1:]))
            found = [bytes(o.scriptPubKey) for o in block.txs[0].vout]
            found = [s for s in found if s[2:6] == WITNESS_COMMITMENT_HEADER]
            if not found or found[-1][:38] != expected:
                raise TxValidationError(
                    TxResult.CONSENSUS,
                    "bad-witness-merkle-match",
                    "witness merkle commitment mismatch",
                )

    # ------------------------------------------------------------------ connect / disconnect

    def _connect(
        self,
        idx: BlockIndex,
        block: Block,
        *,
        verify: bool,
        scripts_checked: set[bytes] | None = None,
    ) -> None:
        """Apply a block to the UTXO set (all checks first, then the changes)."""
        height = idx.height
        prev_mtp = self.median_time_past(idx.prev)
        created: dict[Outpoint, Coin] = {}
        spent: list[tuple[Outpoint, Coin]] = []
        spent_set: set[Outpoint] = set()
        fees = 0
        txids = []
        for position, tx in enumerate(block.txs):
            txid = txid_of(tx)
            txids.append(txid)
            if position > 0:
                coins = []
                for txin in tx.vin:
                    op = (bytes(txin.prevout.hash), txin.prevout.n)
                    coin = created.pop(op, None)
                    if coin is None and op not in spent_set:
                        coin = self.utxos.get(op)
                    if coin is None:
                        raise TxValidationError(
                            TxResult.MISSING_INPUTS,
                            "bad-txns-inputs-missingorspent",
                            "CheckTxInputs: inputs missing/spent",
                        )
                    spent_set.add(op)
                    spent.append((op, coin))
                    coins.append(coin)
                fees += check_tx_inputs(tx, coins, height)
                if verify:
                    if not is_final_tx(tx, height, prev_mtp):
                        raise TxValidationError(
                            TxResult.CONSENSUS, "bad-txns-nonfinal", "non-final transaction"
                        )
                    if not sequence_locks_ok(tx, coins, height, self.mtp_at_height, prev_mtp):
                        raise TxValidationError(
                            TxResult.CONSENSUS,
                            "bad-txns-nonfinal",
                            "contains a non-BIP68-final transaction",
                        )
                    if scripts_checked is None or wtxid_of(tx) not in scripts_checked:
                        verify_scripts(tx, coins, policy=False)
            for n, out in enumerate(tx.vout):
                script = bytes(out.scriptPubKey)
                if script[:1] == b"\x6a" or len(script) > 10_000:
                    continue  # provably unspendable: never enters the UTXO set
                created[(txid, n)] = Coin(out.nValue, script, height, position == 0)
        if height > 0:
            coinbase_value = sum(o.nValue for o in block.txs[0].vout)
            if coinbase_value > block_subsidy(height) + fees:
                raise TxValidationError(
                    TxResult.CONSENSUS,
                    "bad-cb-amount",
                    f"coinbase pays too much (actual={coinbase_value} vs "
                    f"limit={block_subsidy(height) + fees})",
                )
        else:
            created.clear()  # the genesis coinbase is unspendable
        for op, _ in spent:
            self.utxos.pop(op, None)
        self.utxos.update(created)
        self.undo[idx.hash] = spent
        for position, txid in enumerate(txids):
            self.tx_index[txid] = idx.hash
            self.tx_position[txid] = position
        self.active.append(idx)

    def _disconnect_tip(self) -> Block:
        idx = self.active[-1]
        block = self.block(idx.hash)
        for tx in reversed(block.txs):
            txid = txid_of(tx)
            for n in range(len(tx.vout)):
                self.utxos.pop((txid, n), None)
            if self.tx_index.get(txid) == idx.hash:
                del self.tx_index[txid]
                self.tx_position.pop(txid, None)
        for op, coin in self.undo.pop(idx.hash, []):
            self.utxos[op] = coin
        self.active.pop()
        return block

    # ------------------------------------------------------------------ best chain

    def _ancestors(self, idx: BlockIndex | None) -> Iterator[BlockIndex]:
        while idx is not None:
            yield idx
            idx = idx.prev

    def _best_candidate(self, prefer: BlockIndex | None = None) -> BlockIndex:
        invalid: dict[bytes, bool] = {}
        for idx in sorted(self.index.values(), key=lambda i: i.height):
            invalid[idx.hash] = idx.failed or (idx.prev is not None and invalid[idx.prev.hash])
        valid = [i for i in self.index.values() if not invalid[i.hash]]
        most = max(i.chainwork for i in valid)
        if self.active and not invalid[self.tip.hash] and self.tip.chainwork == most:
            return self.tip
        if prefer is not None and not invalid[prefer.hash] and prefer.chainwork == most:
            return prefer
        return min((i for i in valid if i.chainwork == most), key=lambda i: i.seq)

    def activate_best_chain(self) -> ChainUpdate:
        """Reorganise onto the best valid branch; blocks failing to connect get marked."""
        update = ChainUpdate()
        while True:
            best = self._best_candidate()
            if best is self.tip:
                break
            branch = []
            node: BlockIndex | None = best
            while node is not None and not self.contains(node):
                branch.append(node)
                node = node.prev
            fork = node
            while self.tip is not fork:
                update.disconnected.append(self._disconnect_tip())
            for idx in reversed(branch):
                block = self.block(idx.hash)
                try:
                    self._connect(idx, block, verify=False)
                except TxValidationError as exc:
                    log.warning("block %s failed to connect: %s", idx.hash[::-1].hex(), exc)
                    idx.failed = True
                    self.storage.set_failed(idx.hash, True)
                    break
                update.connected.append(block)
        self.storage.set_meta("tip", self.tip.hash.hex())
        return update

    def invalidate(self, idx: BlockIndex) -> ChainUpdate:
        idx.failed = True
        self.storage.set_failed(idx.hash, True)
        update = ChainUpdate()
        while self.contains(idx):
            update.disconnected.append(self._disconnect_tip())
        more = self.activate_best_chain()
        update.disconnected += more.disconnected
        update.connected += more.connected
        return update

    def reconsider(self, idx: BlockIndex) -> ChainUpdate:
        """Clear the failure mark of `idx`, its ancestors and descendants (Core's behaviour)."""
        for other in self.index.values():
            if other.failed and (
                other is idx
                or any(a is idx for a in self._ancestors(other))
                or any(a is other for a in self._ancestors(idx))
            ):
                other.failed = False
                self.storage.set_failed(other.hash, False)
        return self.activate_best_chain()
