"""The memory pool and Bitcoin Core's acceptance rules (`MemPoolAccept`), check by check.

The order of the checks follows Core's `PreChecks`, `ReplacementChecks` and the script
checks, so a transaction with several faults gets the reason Core would give first.
Replacement follows BIP125 opt-in RBF as in Core 25 (no full-RBF).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bitcointx.core import CTransaction

from firmware_sim.node.blocks import Block, tx_weight, txid_of, wtxid_of
from firmware_sim.node.chainstate import ChainState, ChainUpdate, Outpoint
from firmware_sim.node.validation import (
    MEMPOOL_HEIGHT,
    Coin,
    TxResult,
    TxValidationError,
    are_inputs_standard,
    check_taproot_unsupported,
    check_transaction,
    check_tx_inputs,
    check_tx_size_small,
    format_money,
    is_final_tx,
    is_standard_tx,
    is_witness_standard,
    sequence_locks_ok,
    verify_scripts,
)

log = logging.getLogger(__name__)

MIN_RELAY_FEERATE = 1000  # sat/kvB, Core's DEFAULT_MIN_RELAY_TX_FEE
INCREMENTAL_RELAY_FEERATE = 1000  # sat/kvB
MAX_REPLACEMENT_CANDIDATES = 100
MAX_BIP125_RBF_SEQUENCE = 0xFFFFFFFD
ANCESTOR_LIMIT = 25  # Core's DEFAULT_ANCESTOR_LIMIT: a transaction plus its unconfirmed ancestors
DESCENDANT_LIMIT = 25  # Core's DEFAULT_DESCENDANT_LIMIT: an ancestor plus its descendants


def fee_for(feerate_sat_kvb: int, vsize: int) -> int:
    """Core's `CFeeRate::GetFee` (rounds up since Core 0.21)."""
    return -(-feerate_sat_kvb * vsize // 1000)


def feerate_string(fee: int, vsize: int) -> str:
    """Core's `CFeeRate::ToString()`: `0.00001000 BTC/kvB`."""
    rate = fee * 1000 // vsize if vsize else 0
    return f"{rate // 100_000_000}.{rate % 100_000_000:08d} BTC/kvB"


@dataclass
class MempoolEntry:
    tx: CTransaction
    txid: bytes
    wtxid: bytes
    fee: int
    vsize: int
    weight: int
    time: int
    height: int
    parents: set[bytes] = field(default_factory=set)

    @property
    def raw(self) -> bytes:
        return self.tx.serialize()

    @property
    def signals_rbf(self) -> bool:
        return any(txin.nSequence <= MAX_BIP125_RBF_SEQUENCE for txin in self.tx.vin)


class Mempool:
    """Unconfirmed transactions in arrival order (parents always before their children)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, MempoolEntry] = {}
        self.spenders: dict[Outpoint, bytes] = {}
        self.script_checked: set[bytes] = set()

    def __contains__(self, txid: bytes) -> bool:
        return txid in self.entries

    def coin(self, op: Outpoint) -> Coin | None:
        entry = self.entries.get(op[0])
        if entry is None or op[1] >= len(entry.tx.vout):
            return None
        out = entry.tx.vout[op[1]]
        return Coin(out.nValue, bytes(out.scriptPubKey), MEMPOOL_HEIGHT, False)

    def children(self, txid: bytes) -> set[bytes]:
        entry = self.entries.get(txid)
        if entry is None:
            return set()
        found = set()
        for n in range(len(entry.tx.vout)):
            spender = self.spenders.get((txid, n))
            if spender is not None:
                found.add(spender)
        return found

    def ancestors(self, txid: bytes) -> set[bytes]:
        found: set[bytes] = set()
        todo = list(self.entries[txid].parents)
        while todo:
            t = todo.pop()
            if t not in found:
                found.add(t)
                todo.extend(self.entries[t].parents)
        return found

    def descendants(self, txid: bytes) -> set[bytes]:
        found: set[bytes] = set()
        todo = list(self.children(txid))
        while todo:
            t = todo.pop()
            if t not in found:
                found.add(t)
                todo.extend(self.children(t))
        return found

    def add(self, entry: MempoolEntry) -> None:
        self.entries[entry.txid] = entry
        for txin in entry.tx.vin:
            self.spenders[(bytes(txin.prevout.hash), txin.prevout.n)] = entry.txid

    def remove(self, txids: set[bytes]) -> None:
        for txid in txids:
            entry = self.entries.pop(txid, None)
            if entry is None:
                continue
            for txin in entry.tx.vin:
                op = (bytes(txin.prevout.hash), txin.prevout.n)
                if self.spenders.get(op) == txid:
                    del self.spenders[op]

    def clear(self) -> list[MempoolEntry]:
        old = list(self.entries.values())
        self.entries.clear()
        self.spenders.clear()
        return old

    # ------------------------------------------------------------------ acceptance

    def accept(
        self,
        tx: CTransaction,
        chain: ChainState,
        *,
        now: int,
        test_only: bool = False,
        bypass_fee: bool = False,
    ) -> MempoolEntry:
        """Validate `tx` against the chain tip and this pool; add it unless `test_only`."""
        txid, wtxid = txid_of(tx), wtxid_of(tx)
        check_transaction(tx)
        if tx.is_coinbase():
            raise TxValidationError(TxResult.CONSENSUS, "coinbase")
        is_standard_tx(tx)
        check_tx_size_small(tx)
        next_height = chain.height + 1
        tip_mtp = chain.median_time_past(chain.tip)
        if not is_final_tx(tx, next_height, tip_mtp):
            raise TxValidationError(TxResult.NOT_STANDARD, "non-final")
        if txid in self.entries:
            if self.entries[txid].wtxid == wtxid:
                raise TxValidationError(TxResult.CONFLICT, "txn-already-in-mempool")
            raise TxValidationError(TxResult.CONFLICT, "txn-same-nonwitness-data-in-mempool")

        conflicts: set[bytes] = set()
        for txin in tx.vin:
            spender = self.spenders.get((bytes(txin.prevout.hash), txin.prevout.n))
            if spender is not None and spender not in conflicts:
                if not self.entries[spender].signals_rbf:
                    raise TxValidationError(TxResult.CONFLICT, "txn-mempool-conflict")
                conflicts.add(spender)

        coins: list[Coin] = []
        parents: set[bytes] = set()
        for txin in tx.vin:
            op = (bytes(txin.prevout.hash), txin.prevout.n)
            coin = self.coin(op)
            if coin is not None:
                parents.add(op[0])
            else:
                coin = chain.utxos.get(op)
            if coin is None:
                if any((txid, n) in chain.utxos for n in range(len(tx.vout))):
                    raise TxValidationError(TxResult.CONFLICT, "txn-already-known")
                raise TxValidationError(TxResult.MISSING_INPUTS, "bad-txns-inputs-missingorspent")
            coins.append(coin)

        if not sequence_locks_ok(tx, coins, next_height, chain.mtp_at_height, tip_mtp):
            raise TxValidationError(TxResult.NOT_STANDARD, "non-BIP68-final")
        fee = check_tx_inputs(tx, coins, next_height)
        check_taproot_unsupported(coins)
        are_inputs_standard(tx, coins)
        is_witness_standard(tx, coins)

        weight = tx_weight(tx)
        vsize = (weight + 3) // 4
        if not bypass_fee and fee < fee_for(MIN_RELAY_FEERATE, vsize):
            raise TxValidationError(
                TxResult.RECONSIDERABLE,
                "min relay fee not met",
                f"{fee} < {fee_for(MIN_RELAY_FEERATE, vsize)}",
            )
        if not bypass_fee:
            self._package_limits(parents, conflicts)
        if conflicts:
            self._replacement_checks(tx, txid, fee, vsize, conflicts, parents)

        if wtxid not in self.script_checked:
            verify_scripts(tx, coins, policy=True)
            self.script_checked.add(wtxid)

        entry = MempoolEntry(tx, txid, wtxid, fee, vsize, weight, now, chain.height, parents)
        if not test_only:
            if conflicts:
                evicted = set(conflicts)
                for c in conflicts:
                    evicted |= self.descendants(c)
                self.remove(evicted)
                log.info("replaced %d transaction(s) with %s", len(evicted), txid[::-1].hex())
            self.add(entry)
        return entry

    def _package_limits(self, parents: set[bytes], conflicts: set[bytes]) -> None:
        """Core's chain limits, so a wallet that chains unconfirmed change meets them here first.

        Transactions this one replaces do not count (they leave the pool with it).
        """
        evicted = set(conflicts)
        for c in conflicts:
            evicted |= self.descendants(c)
        ancestors = set(parents)
        for p in parents:
            ancestors |= self.ancestors(p)
        ancestors -= evicted
        if len(ancestors) + 1 > ANCESTOR_LIMIT:
            raise TxValidationError(
                TxResult.MEMPOOL_POLICY,
                "too-long-mempool-chain",
                f"too many unconfirmed ancestors [limit: {ANCESTOR_LIMIT}]",
            )
        for a in ancestors:
            family = 1 + len(self.descendants(a) - evicted)
            if family + 1 > DESCENDANT_LIMIT:
                raise TxValidationError(
                    TxResult.MEMPOOL_POLICY,
                    "too-long-mempool-chain",
                    f"too many descendants for tx {a[::-1].hex()} [limit: {DESCENDANT_LIMIT}]",
                )

    def _replacement_checks(
        self,
        tx: CTransaction,
        txid: bytes,
        fee: int,
        vsize: int,
        conflicts: set[bytes],
        parents: set[bytes],
    ) -> None:
        """BIP125 rules 2-6 as Core 25 applies them."""
        all_conflicts = set(conflicts)
        for c in conflicts:
            all_conflicts |= self.descendants(c)
        shown = txid[::-1].hex()
        if len(all_conflicts) > MAX_REPLACEMENT_CANDIDATES:
            raise TxValidationError(
                TxResult.MEMPOOL_POLICY,
                "too many potential replacements",
                f"rejecting replacement {shown}; too many potential replacements "
                f"({len(all_conflicts)} > {MAX_REPLACEMENT_CANDIDATES})",
            )
        if parents & all_conflicts:
            raise TxValidationError(
                TxResult.CONSENSUS,
                "bad-txns-spends-conflicting-tx",
                f"{shown} spends conflicting transaction",
            )
        conflict_parents = set()
        for c in conflicts:
            conflict_parents |= {bytes(i.prevout.hash) for i in self.entries[c].tx.vin}
        for p in parents:
            if p not in conflict_parents:
                raise TxValidationError(
                    TxResult.MEMPOOL_POLICY,
                    "replacement-adds-unconfirmed",
                    f"replacement {shown} adds unconfirmed input, idx {0}",
                )
        for c in conflicts:
            old = self.entries[c]
            if fee * old.vsize <= old.fee * vsize:
                raise TxValidationError(
                    TxResult.MEMPOOL_POLICY,
                    "insufficient fee",
                    f"rejecting replacement {shown}; new feerate {feerate_string(fee, vsize)} "
                    f"<= old feerate {feerate_string(old.fee, old.vsize)}",
                )
        old_fees = sum(self.entries[c].fee for c in all_conflicts)
        if fee < old_fees:
            raise TxValidationError(
                TxResult.MEMPOOL_POLICY,
                "insufficient fee",
                f"rejecting replacement {shown}, less fees than conflicting txs; "
                f"{format_money(fee)} < {format_money(old_fees)}",
            )
        needed = fee_for(INCREMENTAL_RELAY_FEERATE, vsize)
        if fee - old_fees < needed:
            raise TxValidationError(
                TxResult.MEMPOOL_POLICY,
                "insufficient fee",
                f"rejecting replacement {shown}, not enough additional fees to relay; "
                f"{format_money(fee - old_fees)} < {format_money(needed)}",
            )

    # ------------------------------------------------------------------ chain updates

    def update_for_chain(self, chain: ChainState, update: ChainUpdate, now: int) -> None:
        """After blocks came or went: resubmit disconnected and pooled transactions.

        Like Core's `MaybeUpdateMempoolForReorg` plus `removeForBlock`: transactions of
        disconnected blocks return (oldest first); whatever a new block confirmed, conflicts
        with, or made invalid (e.g. an immature coinbase spend) drops out with its descendants.
        """
        times = {e.txid: e.time for e in self.entries.values()}
        candidates: list[CTransaction] = []
        for block in reversed(update.disconnected):
            candidates.extend(block.txs[1:])
        candidates.extend(e.tx for e in self.clear())
        for tx in candidates:
            txid = txid_of(tx)
            if txid in chain.tx_index or txid in self.entries:
                continue
            try:
                self.accept(tx, chain, now=times.get(txid, now), bypass_fee=True)
            except TxValidationError as exc:
                log.info("removed %s from the mempool: %s", txid[::-1].hex(), exc.message)

    def block_template(self, max_weight: int) -> tuple[list[CTransaction], int]:
        """Transactions for a new block in arrival order, within `max_weight`; and their fees."""
        chosen: list[CTransaction] = []
        included: set[bytes] = set()
        fees, weight = 0, 0
        for entry in self.entries.values():
            if weight + entry.weight > max_weight or not entry.parents <= included:
                continue
            chosen.append(entry.tx)
            included.add(entry.txid)
            fees += entry.fee
            weight += entry.weight
        return chosen, fees


def block_txids(block: Block) -> set[bytes]:
    return {txid_of(tx) for tx in block.txs}
