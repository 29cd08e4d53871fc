"""The node: chain state and mempool behind one lock, with the operations RPC methods need.

Every state change goes through here so that a reorg, a mined block and a submitted
transaction each leave the mempool consistent with the tip, and each is persisted before the
RPC call returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bitcointx.core import CTransaction

from firmware_sim.node.blocks import (
    DEFAULT_BLOCK_MAX_WEIGHT,
    Block,
    assemble_block,
    txid_of,
    wtxid_of,
)
from firmware_sim.node.chainstate import BlockIndex, ChainState, ChainUpdate
from firmware_sim.node.mempool import Mempool, MempoolEntry
from firmware_sim.node.storage import Storage
from firmware_sim.node.validation import Coin, TxValidationError

log = logging.getLogger(__name__)

DB_FILENAME = "chainstate.sqlite"


@dataclass(frozen=True)
class NodeSettings:
    """Policy knobs that differ from Core's defaults only where the simulation needs them."""

    estimate_feerate_sat_kvb: int = 10_000  # what estimatesmartfee answers; 0 = no estimate
    # Core's default is no transaction index: getrawtransaction then finds mined transactions
    # only when given their block hash, so the service must never need one.
    txindex: bool = False


class Node:
    """A regtest node's state. Callers hold `lock` around reads; mutators take it themselves."""

    def __init__(
        self,
        datadir: Path,
        settings: NodeSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.datadir = datadir
        self.settings = settings or NodeSettings()
        self.clock = clock
        self.started = clock()
        self.lock = threading.RLock()
        self.stop_requested = threading.Event()
        self.storage = Storage(datadir / DB_FILENAME)
        self.chain = ChainState(self.storage)
        self.mempool = Mempool()

    def load(self) -> None:
        with self.lock:
            self.chain.load()
            now = int(self.clock())
            for raw, t in self.storage.load_mempool():
                try:
                    self.mempool.accept(CTransaction.deserialize(raw), self.chain, now=t or now)
                except (TxValidationError, ValueError) as exc:
                    log.info("dropped a persisted mempool transaction: %s", exc)
            self._persist()

    def close(self) -> None:
        with self.lock:
            self._persist()
            self.storage.close()

    def _persist(self) -> None:
        self.storage.replace_mempool([(e.raw, e.time) for e in self.mempool.entries.values()])
        self.storage.commit()

    def _after(self, update: ChainUpdate) -> None:
        self.mempool.update_for_chain(self.chain, update, int(self.clock()))
        self._persist()

    # ------------------------------------------------------------------ transactions

    def accept(self, tx: CTransaction, *, test_only: bool = False) -> MempoolEntry:
        with self.lock:
            entry = self.mempool.accept(tx, self.chain, now=int(self.clock()), test_only=test_only)
            if not test_only:
                self._persist()
                log.info("accepted %s to the mempool", entry.txid[::-1].hex())
            return entry

    def test_package(self, txs: list[CTransaction]) -> list[MempoolEntry | TxValidationError]:
        """Validate in order against a scratch copy of the mempool (children see parents)."""
        with self.lock:
            scratch = Mempool()
            scratch.entries = dict(self.mempool.entries)
            scratch.spenders = dict(self.mempool.spenders)
            scratch.script_checked = self.mempool.script_checked
            results: list[MempoolEntry | TxValidationError] = []
            for tx in txs:
                try:
                    results.append(scratch.accept(tx, self.chain, now=int(self.clock())))
                except TxValidationError as exc:
                    results.append(exc)
                    break
            return results

    # ------------------------------------------------------------------ blocks

    def _next_time(self) -> int:
        return max(self.chain.median_time_past(self.chain.tip) + 1, int(self.clock()))

    def _mine(self, script_pubkey: bytes, txs: list[CTransaction], fees: int) -> BlockIndex:
        block = assemble_block(
            self.chain.tip.hash,
            self.chain.height + 1,
            self._next_time(),
            script_pubkey,
            txs,
            fees,
            extra_nonce=len(self.chain.index),
        )
        checked = self.mempool.script_checked
        idx = self.chain.submit_block_on_tip(
            block, scripts_checked={wtxid_of(tx) for tx in txs} & checked
        )
        self._after(ChainUpdate(connected=[block]))
        return idx

    def generate(self, count: int, script_pubkey: bytes) -> list[BlockIndex]:
        """`generatetoaddress`: blocks with the mempool's transactions, as Core's miner."""
        with self.lock:
            mined = []
            for _ in range(count):
                txs, fees = self.mempool.block_template(DEFAULT_BLOCK_MAX_WEIGHT)
                mined.append(self._mine(script_pubkey, txs, fees))
            log.info("mined %d block(s); tip height %d", count, self.chain.height)
            return mined

    def generate_block(self, script_pubkey: bytes, txs: list[CTransaction]) -> BlockIndex:
        """`generateblock`: exactly these transactions, checked by consensus rules only."""
        with self.lock:
            fees = 0
            view = dict(self.chain.utxos)
            for tx in txs:
                for txin in tx.vin:
                    coin = view.pop((bytes(txin.prevout.hash), txin.prevout.n), None)
                    fees += coin.value if coin is not None else 0
                txid = txid_of(tx)
                for n, out in enumerate(tx.vout):
                    fees -= out.nValue
                    view[(txid, n)] = _placeholder_coin(out.nValue)
            return self._mine(script_pubkey, txs, max(fees, 0))

    def submit(self, block: Block) -> BlockIndex:
        """`submitblock` of a block extending the tip: validated fully, then connected."""
        with self.lock:
            checked = {wtxid_of(tx) for tx in block.txs[1:]} & self.mempool.script_checked
            idx = self.chain.submit_block_on_tip(block, scripts_checked=checked)
            self._after(ChainUpdate(connected=[block]))
            log.info("accepted a submitted block; tip height %d", self.chain.height)
            return idx

    def invalidate(self, idx: BlockIndex) -> None:
        with self.lock:
            update = self.chain.invalidate(idx)
            self._after(update)
            log.info("invalidated %s; tip height %d", idx.hash[::-1].hex(), self.chain.height)

    def reconsider(self, idx: BlockIndex) -> None:
        with self.lock:
            update = self.chain.reconsider(idx)
            self._after(update)
            log.info("reconsidered %s; tip height %d", idx.hash[::-1].hex(), self.chain.height)


def _placeholder_coin(value: int) -> Coin:
    """A coin created inside the block being built; only its value matters for the fee."""
    return Coin(value, b"", 0, False)
