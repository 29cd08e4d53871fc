"""The chain watcher: follows the node over JSON-RPC and records what concerns our accounts.

Per step it (1) walks the node's best chain from the last block it processed (`blocks_seen`),
disconnecting our stored blocks that the node no longer has (a reorg: their transactions go
back to MEMPOOL if the node still has them in its mempool, else REMOVED, and their outputs
stop counting) and connecting the new ones; then (2) looks at the node's mempool for new
transactions and for ours that disappeared.

Matching is by index, never by scan, and the watcher's memory does not grow with the number of
addresses: a block is read raw once (`getblock` verbosity 0) and its output scripts are passed
through a fixed-size filter of our scripts (`custody.match_filter`), the few that pass looked up
in one query on the unique `addresses.script_pubkey` index, its spent outpoints in one on `utxos
(txid, vout)`, its txids in one on `chain_txs.txid` (the two behind a filter of our txids); the
few transactions that match are decoded from the raw block, and those spending outputs not ours
asked decoded from the node for their prevouts (verbosity 2, one batch).
The new mempool transactions are matched the same way. A transaction is recorded once per
(account, wallet) it touches, with the reference's input/output shape and `value` = its net
effect on that side.

Each unit is one database transaction: one block at the tip; while catching up, a chunk of up to
`watch_chunk_blocks` consecutive blocks matched together and recorded with a few multi-row
statements (`journal.batched`), as the same blocks one by one would be. A crash leaves the
database at a block boundary and a restart resumes from `blocks_seen`. Several watchers may run
against one database: each unit of work first takes the watcher lock (PostgreSQL:
`pg_try_advisory_xact_lock`; SQLite: a lease row in `service_state`, written first so SQLite's
write lock is held from the start) and only then reads the state it will change; a watcher that
does not get the lock does nothing.

The node is asked BEFORE each unit's transaction, never inside it: on SQLite the lease write
holds the database's only write lock, so a node call inside it would make every other writer
(the API creating a batch, the send pipeline) wait for the node, and a catch-up of many blocks
done back to back would starve them (SQLite's busy handler polls and loses every race against
a writer that takes the lock again at once). The transaction re-checks that what it was planned
against (our last block, the rescan position) is unchanged, else the unit is planned again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from custody import deposit_states, journal
from custody.alerts import AlertKind, raise_alert
from custody.api.tx_json import store_arrays
from custody.balances import confirmed_balance
from custody.chain.errors import ChainUnavailable, RPCError
from custody.chain.rawblock import RawBlock, RawTx, scan_block
from custody.chain.rpc import BitcoinRPC, btc_to_sats
from custody.chain.txjson import tx_json
from custody.db import default_owner, is_postgres, rowcount, transaction
from custody.journal import JournalKind
from custody.match_filter import MatchFilter
from custody.models import (
    Address,
    BlockSeen,
    Chain,
    ChainTx,
    ChainTxInput,
    ChainTxOutput,
    DepositState,
    KeyValue,
    Send,
    SendStatus,
    TxStateChange,
    TxStatus,
    Utxo,
    Wallet,
    utcnow,
)
from wallet_core.networks import Network

log = logging.getLogger(__name__)

ADVISORY_LOCK_ID = 0x4343_5741_5443  # "CCWATC"
LEASE_KEY = "watcher_lease"
RESCAN_KEY = "watcher_rescan"  # "next|end": blocks still to re-read below the followed tip
RESCAN_DONE_KEY = "watcher_rescan_requested"  # the last configured rescan height honoured
BALANCE_FLAG = "hot_balance_low:{}"
IN_CHUNK = 500  # bound on IN (...) lists (SQLite's parameter limit, planner sanity)
# Catching up, a unit connects up to this many blocks in one database transaction (fewer once
# their raw size reaches CHUNK_BYTES, which bounds the memory a unit holds). At the tip: one.
CHUNK_BLOCKS = 10
CHUNK_BYTES = 8_000_000
COINBASE_PREV = "0" * 64


@dataclass(frozen=True)
class WatcherSettings:
    """`[custody]` keys: watch_start_height (-1 = the node's tip at first start),
    min_confirmations, hot_balance_alert_sat (0 = off), watcher_lease_seconds,
    final_confirmations (depth at which a transaction is final), dust_threshold_sat (outputs
    to our receiving addresses below it are flagged dust and never spent),
    watch_chunk_blocks (blocks connected per database transaction while catching up)."""

    start_height: int = -1
    min_conf: int = 1
    hot_balance_alert_sat: int = 0
    lease_seconds: float = 60.0
    max_blocks_per_step: int = 500
    chunk_blocks: int = CHUNK_BLOCKS
    final_conf: int = 6
    dust_threshold: int = 1000

    @classmethod
    def from_config(cls, config: Config) -> WatcherSettings:
        s = config.section("custody")
        d = cls()
        return cls(
            start_height=s.int("watch_start_height", d.start_height),
            min_conf=s.int("min_confirmations", d.min_conf),
            hot_balance_alert_sat=s.int("hot_balance_alert_sat", d.hot_balance_alert_sat),
            lease_seconds=s.float("watcher_lease_seconds", d.lease_seconds),
            max_blocks_per_step=s.int("watch_max_blocks_per_step", d.max_blocks_per_step),
            chunk_blocks=max(1, s.int("watch_chunk_blocks", d.chunk_blocks)),
            final_conf=max(1, s.int("final_confirmations", d.final_conf)),
            dust_threshold=max(0, s.int("dust_threshold_sat", d.dust_threshold)),
        )


@dataclass
class StepResult:
    """What one `Watcher.step` did (for logs and tests)."""

    locked: bool = True
    connected: int = 0
    disconnected: int = 0
    mempool_seen: int = 0
    removed: int = 0
    rescanned: int = 0
    tip: int | None = None
    height: int | None = None  # the last block processed
    rescan: tuple[int, int] | None = None  # (next, end) still to re-read


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _any_in(s: Session, column: Any, values: Sequence[Any]) -> list[Any]:
    """The `values` (str, or bytes for a binary column) present in the indexed `column`."""
    return [r[0] for r in _any_in_rows(s, select(column), column, values)]


def _any_in_rows(s: Session, query: Any, column: Any, values: Sequence[Any]) -> list[Any]:
    """Rows of `query` whose indexed `column` is one of `values`, in one query on PostgreSQL:
    `= ANY(ARRAY(...))` over a single text parameter (a block's 7,500 scripts as one bound
    array cost 100 ms of client-side adaptation; as one string, nothing), which the planner
    always answers with the column's index (the array's size is unknown to it). SQLite: IN
    lists of `IN_CHUNK`."""
    if not values:
        return []
    if is_postgres(s):
        binary = isinstance(values[0], bytes)
        joined = ",".join(v.hex() for v in values) if binary else ",".join(values)
        element = "decode(x, 'hex')" if binary else "x"
        name = f"{column.table.name}.{column.name}"  # our own column; the values are bound
        array = f"ARRAY(SELECT {element} FROM unnest(string_to_array(:v, ',')) AS x)"  # noqa: S608
        match = text(f"{name} = ANY({array})")
        return list(s.execute(query.where(match), {"v": joined}).all())
    rows: list[Any] = []
    for part in chunks(values):
        rows.extend(s.execute(query.where(column.in_(part))).all())
    return rows


def _needs_prevout(vin: dict[str, Any]) -> bool:
    """An input spending a previous output (not a coinbase) whose prevout the node left out."""
    return "txid" in vin and not vin.get("prevout")


def block_time(ts: int | None) -> datetime:
    if ts is None:
        return utcnow()
    return datetime.fromtimestamp(int(ts), UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class _Plan:
    """One block unit, planned from the node against our last block `last_hash`: connect
    `blocks` (consecutive, in order), or (with `pool`, the node's mempool) disconnect our last
    block, or look again."""

    last_hash: str | None
    blocks: tuple[dict[str, Any], ...] = ()
    pool: set[str] | None = None
    retry: bool = False


@dataclass(frozen=True)
class _Pool:
    """The node's mempool as asked before the mempool unit: its txids in order, the best
    block hash, and the new transactions (decoded)."""

    txids: list[str]
    best: str
    txs: dict[str, dict[str, Any]]


@dataclass
class _Match:
    """Our addresses and UTXOs touched by a set of transactions (filled by two queries)."""

    addresses: dict[bytes, Address] = field(default_factory=dict)
    utxos: dict[tuple[str, int], Utxo] = field(default_factory=dict)
    known: dict[str, list[ChainTx]] = field(default_factory=dict)
    recorded: set[tuple[str, tuple[int, Wallet]]] = field(default_factory=set)  # new here


@dataclass
class _NewRow:
    """A side's first record of a transaction: its `chain_txs` columns, its inputs' and
    outputs' columns, and its first deposit state (confirmations), written with the others of
    its batch by `Watcher._write_new`."""

    values: dict[str, Any]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    confirmations: int


class Watcher:
    """One chain watcher; `step()` is called by the worker loop (or by tests)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        rpc: BitcoinRPC,
        settings: WatcherSettings | None = None,
        config: Config | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        self.factory = session_factory
        self.rpc = rpc
        self.settings = settings or WatcherSettings()
        self.config = config
        self.owner = owner or default_owner("watcher")
        self._mempool_checked: set[str] = set()  # mempool txids already looked at
        self._prev_cache: dict[tuple[str, int], tuple[str, int]] = {}
        self._touched_hot: set[int] = set()
        # in front of the matching queries: our scripts; the txids of our UTXOs and records
        self._scripts = MatchFilter([(Address.id, Address.script_pubkey)])
        self._txids = MatchFilter([(Utxo.id, Utxo.txid), (ChainTx.id, ChainTx.txid)])
        self._chain: str | None = None  # the node's chain name (getblockchaininfo), asked once
        self._pending: list[_NewRow] = []  # new records not written yet (see `_write_new`)

    # ------------------------------------------------------------------ locking

    def _lock(self, session: Session) -> bool:
        """Take the watcher lock for this transaction; False if another watcher has it."""
        if is_postgres(session):
            got = session.execute(
                text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_ID}
            ).scalar()
            return bool(got)
        now = utcnow()
        until = (now + timedelta(seconds=self.settings.lease_seconds)).isoformat()
        value = f"{self.owner}|{until}"
        # The first statement is a write: SQLite's write lock is ours until commit.
        res = session.execute(
            update(KeyValue)
            .where(KeyValue.key == LEASE_KEY, KeyValue.value.like(f"{self.owner}|%"))
            .values(value=value)
        )
        if rowcount(res) == 1:
            return True
        row = session.get(KeyValue, LEASE_KEY, populate_existing=True)
        if row is None:
            session.add(KeyValue(key=LEASE_KEY, value=value))
            session.flush()
            return True
        holder, _, held_until = row.value.partition("|")
        try:
            expired = datetime.fromisoformat(held_until) < now
        except ValueError:
            expired = True
        if holder == self.owner or expired:
            row.value = value
            session.flush()
            return True
        return False

    def release(self) -> None:
        """Give up the SQLite lease at a clean shutdown (PostgreSQL locks end with each step)."""
        try:
            with transaction(self.factory) as s:
                if not is_postgres(s):
                    s.execute(
                        delete(KeyValue).where(
                            KeyValue.key == LEASE_KEY, KeyValue.value.like(f"{self.owner}|%")
                        )
                    )
        except Exception:  # noqa: BLE001 - best effort; the lease expires anyway
            log.warning("could not release the watcher lease")

    # ------------------------------------------------------------------ the step

    def step(self) -> StepResult:
        """Follow the chain to the node's tip, then the mempool. Raises `ChainUnavailable`."""
        result = StepResult()
        self._touched_hot = set()
        for _ in range(2 * self.settings.max_blocks_per_step + 2):
            plan = self._plan_advance(result)  # the node is asked outside any transaction
            if plan is None:
                break
            if plan.retry:
                continue
            with transaction(self.factory) as s:
                if not self._lock(s):
                    result.locked = False
                    return result
                with journal.batched(s):
                    self._advance(s, plan, result)
        for _ in range(self.settings.max_blocks_per_step):
            rescan = self._plan_rescan()
            if rescan is None:
                break
            with transaction(self.factory) as s:
                if not self._lock(s):
                    result.locked = False
                    return result
                with journal.batched(s):
                    more = self._rescan_one(s, result, *rescan)
                if not more:
                    break
        pool = self._plan_mempool()
        with transaction(self.factory) as s:
            if not self._lock(s):
                result.locked = False
                return result
            result.height = s.execute(select(func.max(BlockSeen.height))).scalar()
            result.rescan = self._rescan_range(s)
            with journal.batched(s):
                self._sync_mempool(s, result, pool)
            self._check_hot_balances(s)
        return result

    def _last_block(self) -> tuple[int, str] | None:
        """Our last processed block (height, hash), read without a write transaction."""
        with self.factory() as rs:
            row = rs.execute(
                select(BlockSeen.height, BlockSeen.block_hash)
                .order_by(BlockSeen.height.desc())
                .limit(1)
            ).first()
        return None if row is None else (int(row[0]), str(row[1]))

    def _plan_advance(self, result: StepResult) -> _Plan | None:
        """What the next block unit does, from the node; None when at the node's tip."""
        tip = self.rpc.get_block_count()
        result.tip = tip
        last = self._last_block()
        last_hash = None if last is None else last[1]
        if last is not None:
            node_hash = self._hash_at(last[0]) if last[0] <= tip else None
            if node_hash != last_hash:
                return _Plan(last_hash, pool=set(self.rpc.get_raw_mempool()))
            height = last[0] + 1
        else:
            start = self.settings.start_height
            height = tip if start < 0 else start
        if height > tip:
            return None
        count = min(self.settings.chunk_blocks, self.settings.max_blocks_per_step, tip - height + 1)
        hashes = self._hashes_from(height, max(count, 1))
        if not hashes:
            return _Plan(last_hash, retry=True)  # the chain changed under us; look again
        raws: list[tuple[int, RawBlock]] = []
        size = 0
        previous = last_hash
        self._refresh_filters()
        spent: set[str] = set()  # candidates' txids: later blocks of the chunk may spend them
        for offset, block_hash in enumerate(hashes):
            parsed, raw_size = self._read_block(block_hash, spent)
            if previous is not None and parsed.previous != previous:
                if not raws:
                    return _Plan(last_hash, retry=True)  # a reorg between the calls
                break
            raws.append((height + offset, parsed))
            previous = parsed.hash
            size += raw_size
            if size >= CHUNK_BYTES:
                break
        return _Plan(last_hash, blocks=tuple(self._matched_blocks(raws)))

    def _hashes_from(self, height: int, count: int) -> list[str]:
        """The node's block hashes at `height` and up (one batch); [] if the chain got shorter."""
        if count == 1:
            one = self._hash_at(height)
            return [] if one is None else [one]
        try:
            return self.rpc.get_block_hashes(height, count)
        except RPCError as exc:
            if exc.rpc_code == -8:
                return []
            raise

    def _advance(self, s: Session, plan: _Plan, result: StepResult) -> None:
        """Disconnect our stale last block or connect the planned one, if our last block is
        still the one the plan was made against (else the next plan looks again)."""
        last = s.execute(
            select(BlockSeen).order_by(BlockSeen.height.desc()).limit(1)
        ).scalar_one_or_none()
        if (None if last is None else last.block_hash) != plan.last_hash:
            return
        if plan.blocks:
            for block in plan.blocks:
                self._connect(s, block)
                result.connected += 1
        elif last is not None and plan.pool is not None:
            self._disconnect(s, last, plan.pool)
            result.disconnected += 1

    # ------------------------------------------------------------------ rescan

    def request_rescan(self, height: int, *, once_per_value: bool = False) -> str:
        """Re-read blocks from `height` up to the last processed one (deposits made before
        the watcher's first start, or missed by an operator's mistake). With
        `once_per_value` (the config key) a height already honoured is not rescanned again."""
        if height < 0:
            raise ValueError("the rescan height must be >= 0")
        with transaction(self.factory) as s:
            if once_per_value:
                done = s.get(KeyValue, RESCAN_DONE_KEY)
                if done is not None and done.value == str(height):
                    return f"rescan from {height} was done before"
                self._put(s, RESCAN_DONE_KEY, str(height))
            last = s.execute(select(func.max(BlockSeen.height))).scalar()
            if last is None:
                self.settings = replace(self.settings, start_height=height)
                return f"first start: following the chain from block {height}"
            if height > last:
                return f"nothing to rescan: block {height} is beyond the last processed ({last})"
            self._put(s, RESCAN_KEY, f"{height}|{last}")
        log.info("rescan requested: blocks %d..%d", height, last)
        return f"rescanning blocks {height}..{last}"

    @staticmethod
    def _put(s: Session, key: str, value: str) -> None:
        row = s.get(KeyValue, key)
        if row is None:
            s.add(KeyValue(key=key, value=value))
        else:
            row.value = value
        s.flush()

    @staticmethod
    def _rescan_range(s: Session) -> tuple[int, int] | None:
        row = s.get(KeyValue, RESCAN_KEY)
        if row is None:
            return None
        first, _, last = row.value.partition("|")
        try:
            return int(first), int(last)
        except ValueError:
            return None

    def _plan_rescan(self) -> tuple[tuple[int, int], dict[str, Any] | None] | None:
        """The rescan position and its block from the node (None: the node has no block at
        that height any more); None when there is nothing to rescan."""
        with self.factory() as rs:
            span = self._rescan_range(rs)
        if span is None:
            return None
        block = None
        if span[0] <= span[1]:
            block_hash = self._hash_at(span[0])
            if block_hash is not None:
                block = self._fetch_block(block_hash, span[0])
        return span, block

    def _rescan_one(
        self,
        s: Session,
        result: StepResult,
        planned: tuple[int, int],
        block: dict[str, Any] | None,
    ) -> bool:
        """Re-read the planned rescan block (idempotent: known transactions stay as they are);
        False when there is nothing (more) to rescan."""
        span = self._rescan_range(s)
        if span is None:
            return False
        if span != planned:
            return True  # moved meanwhile (a new request): plan again
        height, last = span
        if height > last:
            s.execute(delete(KeyValue).where(KeyValue.key == RESCAN_KEY))
            log.info("rescan finished at block %d", last)
            return False
        if block is not None:
            block_hash = str(block["hash"])
            when = block_time(block.get("time"))
            self._apply(s, list(block["tx"]), TxStatus.CONFIRMED, block_hash, height, when)
        self._put(s, RESCAN_KEY, f"{height + 1}|{last}")
        result.rescanned += 1
        return True

    def _hash_at(self, height: int) -> str | None:
        try:
            return self.rpc.get_block_hash(height)
        except RPCError as exc:
            if exc.rpc_code == -8:  # height out of range: the chain got shorter meanwhile
                return None
            raise

    def _fetch_block(self, block_hash: str, height: int) -> dict[str, Any]:
        """The block as `_connect` reads it (see `_matched_blocks`)."""
        self._refresh_filters()
        parsed, _ = self._read_block(block_hash, set())
        return self._matched_blocks([(height, parsed)])[0]

    def load_filters(self) -> None:
        """Fill the match filters now, at start, so the first step does not pay for it: at a
        million watched addresses that is about 0.2 s of this process's CPU and 0.3 s of the
        database's. Later steps only add the rows that are new since."""
        self._refresh_filters()

    def _refresh_filters(self) -> None:
        """Bring the filters up to date before blocks are scanned through them."""
        with self.factory() as rs:
            self._scripts.refresh(rs)
        with self.factory() as rs:
            self._txids.refresh(rs)

    def _read_block(self, block_hash: str, spent: set[str]) -> tuple[RawBlock, int]:
        """The block read raw once (`getblock` verbosity 0) and scanned through the filters
        (which the caller refreshed), keeping only the transactions that may concern an account (see
        `scan_block`; `spent` carries the candidates' txids along a chunk); with its size."""
        raw = self.rpc.get_block(block_hash, 0)
        try:
            data = bytes.fromhex(raw)
        except ValueError:
            raise ChainUnavailable("node answered getblock with a malformed block") from None
        parsed = scan_block(data, self._scripts.bits, self._txids.bits, spent)
        if parsed.hash != block_hash:
            raise ChainUnavailable("node answered getblock with another block")
        return parsed, len(data)

    def _matched_blocks(self, raws: list[tuple[int, RawBlock]]) -> list[dict[str, Any]]:
        """Consecutive blocks as `_connect` reads them (verbosity 2's shape), each holding
        only the transactions that touch an account: their output scripts and spent outpoints
        matched with one indexed query each for all the blocks. A match that spends only our
        outputs (or is a coinbase) is decoded here from the raw block (`txjson`); the others
        need their spent outputs' scripts and values, which only the node has (its undo data):
        those are asked for decoded with their prevouts (`getrawtransaction` verbosity 2 with
        the block hash, which needs no txindex), in one batch. The filters were refreshed
        before the blocks were scanned."""
        with self.factory() as rs:
            ours, spendable = self._relevant(rs, [b.txs for _, b in raws])
        network = self._network()
        local: dict[tuple[int, int], dict[str, Any]] = {}
        wanted: list[tuple[str, str]] = []
        for i, ((_, b), mine) in enumerate(zip(raws, ours, strict=True)):
            for j, t in enumerate(mine):
                if network is not None and (t.coinbase or all(p in spendable for p in t.inputs)):
                    local[(i, j)] = tx_json(t, network)
                else:
                    wanted.append((t.txid, b.hash))
        decoded = [dict(tx) for tx in self.rpc.get_raw_transactions_of(wanted, 2)]
        if any(str(tx.get("txid")) != w[0] for tx, w in zip(decoded, wanted, strict=True)):
            raise ChainUnavailable("node answered getrawtransaction with another transaction")
        self._prefetch_prevouts(decoded)
        asked = iter(decoded)
        blocks = []
        for i, ((height, parsed), mine) in enumerate(zip(raws, ours, strict=True)):
            txs = [local.get((i, j)) or next(asked) for j in range(len(mine))]
            blocks.append(
                {
                    "hash": parsed.hash,
                    "height": height,
                    "time": parsed.time,
                    "previousblockhash": parsed.previous,
                    "tx": txs,
                }
            )
        return blocks

    def _network(self) -> Network | None:
        """The node's network (for the addresses of outputs decoded here), asked once; None if
        the node names a chain we do not know (then every match is asked for decoded)."""
        if self._chain is None:
            self._chain = str(self.rpc.get_blockchain_info().get("chain", ""))
        try:
            return Network.from_name(self._chain)
        except ValueError:
            return Network.from_name("test") if self._chain.startswith("test") else None

    def _relevant(
        self, s: Session, blocks: list[list[RawTx]]
    ) -> tuple[list[list[RawTx]], set[tuple[str, int]]]:
        """The transactions of consecutive blocks that touch an account, per block in block
        order: they pay one of our scripts, spend one of our outputs (recorded, or made earlier
        in these blocks), or are already recorded (seen in the mempool); with those outputs of
        ours they may spend. Three indexed queries for all the blocks."""
        scripts = self._scripts.candidates(
            script for txs in blocks for tx in txs for _, script in tx.outputs
        )
        mine = set(_any_in(s, Address.script_pubkey, sorted(set(scripts))))
        txids = self._txids.candidates(tx.txid for txs in blocks for tx in txs)
        prev = self._txids.candidates(
            p for txs in blocks for tx in txs if not tx.coinbase for p, _ in tx.inputs
        )
        ours: set[tuple[str, int]] = set()
        spent_txids = sorted(set(prev) | set(txids))
        for row in _any_in_rows(s, select(Utxo.txid, Utxo.vout), Utxo.txid, spent_txids):
            ours.add((str(row[0]), int(row[1])))
        known = set(_any_in(s, ChainTx.txid, sorted(set(txids))))
        out = []
        for txs in blocks:
            relevant = []
            for tx in txs:
                paid = [n for n, (_, script) in enumerate(tx.outputs) if script in mine]
                spends = not tx.coinbase and any(p in ours for p in tx.inputs)
                if paid or spends or tx.txid in known:
                    relevant.append(tx)
                    ours.update((tx.txid, n) for n in paid)
            out.append(relevant)
        return out, ours

    # ------------------------------------------------------------------ blocks

    def _connect(self, s: Session, block: dict[str, Any]) -> None:
        height = int(block["height"])
        bhash = str(block["hash"])
        when = block_time(block.get("time"))
        self._apply(s, list(block["tx"]), TxStatus.CONFIRMED, bhash, height, when)
        s.add(
            BlockSeen(
                height=height,
                block_hash=bhash,
                prev_hash=str(block.get("previousblockhash") or COINBASE_PREV),
                time=when,
            )
        )
        s.flush()
        deposit_states.finalize(s, height, self.settings.final_conf)

    def _disconnect(self, s: Session, last: BlockSeen, pool: set[str]) -> None:
        """Undo our view of block `last`: its transactions lose their confirmations (those
        in the node's mempool `pool` go back to MEMPOOL)."""
        rows = (
            s.execute(
                select(ChainTx).where(ChainTx.block_hash == last.block_hash).order_by(ChainTx.id)
            )
            .scalars()
            .all()
        )
        txids = sorted({r.txid for r in rows})
        # Children before parents, so a removed parent's outputs are not resurrected.
        for row in reversed(rows):
            status = TxStatus.MEMPOOL if row.txid in pool else TxStatus.REMOVED
            self._unconfirm(s, row, status, DepositState.REORGED)
        for part in chunks(txids):
            s.execute(
                update(Send)
                .where(Send.txid.in_(part), Send.status == SendStatus.CONFIRMED)
                .values(status=SendStatus.BROADCAST)
            )
        log.info("reorg: disconnected block at height %d (%d of our txs)", last.height, len(rows))
        s.delete(last)
        s.flush()

    def _unconfirm(self, s: Session, row: ChainTx, status: TxStatus, state: DepositState) -> None:
        previous = row.status
        deposit_states.enter(s, row, state)
        row.status = status
        row.block_hash = None
        row.block_height = None
        row.confirm_at = None
        mine = (Utxo.account_id == row.account_id, Utxo.wallet == row.wallet)
        if status is TxStatus.MEMPOOL:
            s.execute(update(Utxo).where(Utxo.txid == row.txid, *mine).values(block_height=None))
        else:
            # Gone: its outputs never existed, the coins it spent are unspent again.
            s.execute(delete(Utxo).where(Utxo.txid == row.txid, *mine))
            spent = s.execute(select(Utxo).where(Utxo.spent_by == row.txid, *mine)).scalars()
            for utxo in spent:
                utxo.spent_by = None
                self._mark_output(s, row.account_id, row.wallet, utxo.txid, utxo.vout, False)
            self._mempool_checked.discard(row.txid)
        if row.wallet is Wallet.HOT:
            self._touched_hot.add(row.account_id)
        if state is not DepositState.REORGED:
            deposit_states.journal_deposit(s, row, state)
        elif previous is not status:
            journal.append(
                s,
                JournalKind.DEPOSIT_REORGED,
                row.account_id,
                {
                    "txid": row.txid,
                    "wallet": row.wallet.name.lower(),
                    "value": row.value,
                    "from": previous.value,
                    "to": status.value,
                },
            )
        s.flush()

    # ------------------------------------------------------------------ mempool

    def _plan_mempool(self) -> _Pool:
        """The node's mempool, best block and the new transactions, asked before the
        mempool unit's transaction."""
        pool_list = [str(t) for t in self.rpc.get_raw_mempool()]
        best = self.rpc.get_best_block_hash()
        with self.factory() as rs:
            removed = set(
                rs.execute(select(ChainTx.txid).where(ChainTx.status == TxStatus.REMOVED))
                .scalars()
                .all()
            )
        checked = (self._mempool_checked & set(pool_list)) - removed
        txs: dict[str, dict[str, Any]] = {}
        for txid in pool_list:
            if txid in checked:
                continue
            try:
                txs[txid] = dict(self.rpc.get_raw_transaction(txid, True))
            except RPCError:
                continue  # left the mempool meanwhile
        self._prefetch_prevouts(list(txs.values()))
        return _Pool(pool_list, best, txs)

    def _sync_mempool(self, s: Session, result: StepResult, fetched: _Pool) -> None:
        pool_list = fetched.txids
        pool = set(pool_list)
        self._mempool_checked &= pool
        # Our mempool transactions the node no longer has: mined (the next block pass records
        # it) or gone for good (conflict, eviction, expiry).
        best = fetched.best
        ours_last = s.execute(
            select(BlockSeen.block_hash).order_by(BlockSeen.height.desc()).limit(1)
        ).scalar()
        if best == ours_last:
            waiting = s.execute(select(ChainTx).where(ChainTx.status == TxStatus.MEMPOOL)).scalars()
            for row in list(waiting):
                if row.txid in pool or self._in_chain(s, row.txid):
                    continue
                why = deposit_states.why_removed(s, self.rpc, row)
                self._unconfirm(s, row, TxStatus.REMOVED, why)
                result.removed += 1
        # Removed transactions that came back: look at them again.
        removed = s.execute(
            select(ChainTx.txid).where(ChainTx.status == TxStatus.REMOVED)
        ).scalars()
        self._mempool_checked -= set(removed)
        new = [t for t in pool_list if t not in self._mempool_checked]
        txs = [fetched.txs[t] for t in new if t in fetched.txs]
        if txs:
            result.mempool_seen += self._apply(s, txs, TxStatus.MEMPOOL, None, None, None)
        self._mempool_checked.update(new)

    @staticmethod
    def _in_chain(s: Session, txid: str) -> bool:
        """Whether a block the watcher already processed holds `txid`: our own records, since a
        node without txindex (Core's default) cannot answer this for mined transactions."""
        row = s.execute(
            select(ChainTx.id)
            .where(ChainTx.txid == txid, ChainTx.status == TxStatus.CONFIRMED)
            .limit(1)
        ).scalar()
        return row is not None

    # ------------------------------------------------------------------ recording

    def _lookup(self, s: Session, txs: list[dict[str, Any]]) -> _Match:
        """Two indexed queries (plus one for known txids) for all `txs` together."""
        m = _Match()
        scripts = sorted(
            {bytes.fromhex(o["scriptPubKey"]["hex"]) for tx in txs for o in tx.get("vout", [])}
        )
        for part in chunks(scripts):
            for a in s.execute(select(Address).where(Address.script_pubkey.in_(part))).scalars():
                m.addresses[bytes(a.script_pubkey)] = a
        txids = sorted({str(tx["txid"]) for tx in txs})
        prev = {str(v["txid"]) for tx in txs for v in tx.get("vin", []) if "txid" in v}
        # UTXOs spent by these transactions, and those they created (seen before, e.g. mempool)
        for part in chunks(sorted(prev | set(txids))):
            for u in s.execute(select(Utxo).where(Utxo.txid.in_(part))).scalars():
                m.utxos[(u.txid, u.vout)] = u
        for part in chunks(txids):
            for c in s.execute(select(ChainTx).where(ChainTx.txid.in_(part))).scalars():
                m.known.setdefault(c.txid, []).append(c)
        return m

    def _apply(
        self,
        s: Session,
        txs: list[dict[str, Any]],
        status: TxStatus,
        bhash: str | None,
        height: int | None,
        when: datetime | None,
    ) -> int:
        """Record every transaction of `txs` that touches an account; returns how many."""
        self._pending = []
        try:
            return self._apply_txs(s, txs, status, bhash, height, when)
        finally:
            self._pending = []  # written, or dropped with the failed unit

    def _apply_txs(
        self,
        s: Session,
        txs: list[dict[str, Any]],
        status: TxStatus,
        bhash: str | None,
        height: int | None,
        when: datetime | None,
    ) -> int:
        m = self._lookup(s, txs)
        if not m.addresses and not m.utxos and not m.known:
            return 0
        count = 0
        for tx in txs:
            txid = str(tx["txid"])
            outs = tx.get("vout", [])
            vins = tx.get("vin", [])
            my_outs: dict[int, Address] = {}
            for o in outs:
                a = m.addresses.get(bytes.fromhex(o["scriptPubKey"]["hex"]))
                if a is not None:
                    my_outs[int(o["n"])] = a
            my_ins: dict[int, Utxo] = {}
            for i, v in enumerate(vins):
                u = m.utxos.get((str(v.get("txid")), int(v.get("vout", -1))))
                if u is not None:
                    my_ins[i] = u
            sides = {(a.account_id, a.wallet) for a in my_outs.values()}
            sides |= {(u.account_id, u.wallet) for u in my_ins.values()}
            sides |= {(c.account_id, c.wallet) for c in m.known.get(txid, [])}
            if not sides:
                continue
            count += 1
            # Outputs paying us become UTXOs (or learn their block).
            for n, a in my_outs.items():
                u = m.utxos.get((txid, n))
                if u is None:
                    u = Utxo(
                        account_id=a.account_id,
                        wallet=a.wallet,
                        txid=txid,
                        vout=n,
                        value=btc_to_sats(outs[n]["value"]),
                        address_id=a.id,
                        block_height=height,
                    )
                    u.is_dust = self._is_dust(a, u.value)
                    s.add(u)
                elif status is TxStatus.CONFIRMED or u.block_height is None:
                    u.block_height = height
                m.utxos[(txid, n)] = u
            for side in sorted(sides):
                self._record(s, side, tx, status, bhash, height, when, m, my_outs, my_ins)
            for u in my_ins.values():
                if u.spent_by != txid:
                    u.spent_by = txid
                    self._mark_output(s, u.account_id, u.wallet, u.txid, u.vout, True)
            for acct, wallet in sides:
                if wallet is Wallet.HOT:
                    self._touched_hot.add(acct)
        s.flush()
        self._write_new(s)
        return count

    def _write_new(self, s: Session) -> None:
        """Write the new records (`_new_row`) in three multi-row statements, their inputs,
        outputs and first states with them (an ORM flush costs ~1 ms of the watcher's CPU
        per row; a block of a few deposits took most of the watcher's recording time). Called
        before any statement that could read them (`_mark_output`, `_prevout`), as an ORM
        autoflush would."""
        rows = list(self._pending)
        self._pending.clear()
        if not rows:
            return
        ids = s.scalars(
            insert(ChainTx).returning(ChainTx.id, sort_by_parameter_order=True),
            [r.values for r in rows],
        ).all()
        inputs = [{**i, "chain_tx_id": n} for r, n in zip(rows, ids, strict=True) for i in r.inputs]
        outputs = [
            {**o, "chain_tx_id": n} for r, n in zip(rows, ids, strict=True) for o in r.outputs
        ]
        if inputs:
            s.execute(insert(ChainTxInput), inputs)
        if outputs:
            s.execute(insert(ChainTxOutput), outputs)
        for part in chunks(ids):
            store_arrays(s, part)
        s.execute(
            insert(TxStateChange),
            [
                {
                    "chain_tx_id": n,
                    "state": r.values["state"],
                    "confirmations": r.confirmations,
                    "at": r.values["state_at"],
                }
                for r, n in zip(rows, ids, strict=True)
            ],
        )

    def _record(
        self,
        s: Session,
        side: tuple[int, Wallet],
        tx: dict[str, Any],
        status: TxStatus,
        bhash: str | None,
        height: int | None,
        when: datetime | None,
        m: _Match,
        my_outs: dict[int, Address],
        my_ins: dict[int, Utxo],
    ) -> None:
        """Record `tx` for one account side: a new row the first time, a status change
        after."""
        txid = str(tx["txid"])
        if (txid, side) in m.recorded:
            return  # recorded by this batch already (a transaction listed twice)
        row = next(
            (c for c in m.known.get(txid, []) if (c.account_id, c.wallet) == side),
            None,
        )
        if row is None:
            # built first: building it may write the records before it (`_prevout`)
            new = self._new_row(s, side, tx, status, bhash, height, when, my_outs, my_ins)
            self._pending.append(new)
            m.recorded.add((txid, side))
            return
        self._update_row(s, row, tx, status, bhash, height, when)

    def _outputs_of(
        self, side: tuple[int, Wallet], tx: dict[str, Any], my_outs: dict[int, Address]
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """The outputs as rows, what they pay this side, and whether any of that is dust."""
        outputs = []
        received = 0
        dust = False
        for o in tx.get("vout", []):
            n = int(o["n"])
            a = my_outs.get(n)
            mine = a is not None and (a.account_id, a.wallet) == side
            value = btc_to_sats(o["value"])
            received += value if mine else 0
            dust = dust or (mine and a is not None and self._is_dust(a, value))
            outputs.append(
                {
                    "sn": n,
                    "address": str(o["scriptPubKey"].get("address", "")),
                    "value": value,
                    "is_mine": mine,
                    "spent": False,
                }
            )
        return outputs, received, dust

    def _inputs_of(
        self, s: Session, side: tuple[int, Wallet], tx: dict[str, Any], my_ins: dict[int, Utxo]
    ) -> tuple[list[dict[str, Any]], int]:
        """The inputs as rows (their previous outputs found), and what they take from this side."""
        inputs = []
        paid = 0
        for i, v in enumerate(tx.get("vin", [])):
            u = my_ins.get(i)
            mine = u is not None and (u.account_id, u.wallet) == side
            if "txid" not in v:
                prev_hash, prev_n, addr, value = COINBASE_PREV, -1, "", 0
            else:
                prev_hash, prev_n = str(v["txid"]), int(v["vout"])
                addr, value = self._prevout(s, v, u)
            paid += value if mine else 0
            inputs.append(
                {
                    "sn": i,
                    "prev_tx_hash": prev_hash,
                    "prev_out_sn": prev_n,
                    "address": addr,
                    "value": value,
                    "is_mine": mine,
                }
            )
        return inputs, paid

    def _new_row(
        self,
        s: Session,
        side: tuple[int, Wallet],
        tx: dict[str, Any],
        status: TxStatus,
        bhash: str | None,
        height: int | None,
        when: datetime | None,
        my_outs: dict[int, Address],
        my_ins: dict[int, Utxo],
    ) -> _NewRow:
        """The side's first sight of `tx`: its record (written by `_write_new`) and its
        journal."""
        account_id, wallet = side
        txid = str(tx["txid"])
        outputs, received, dust = self._outputs_of(side, tx, my_outs)
        inputs, paid = self._inputs_of(s, side, tx, my_ins)
        confirmed = status is TxStatus.CONFIRMED
        value = received - paid
        now = utcnow()
        row = _NewRow(
            {
                "account_id": account_id,
                "wallet": wallet,
                "txid": txid,
                "status": status,
                "block_hash": bhash,
                "block_height": height,
                "value": value,
                "tx_at": now,
                "confirm_at": when if confirmed else None,
                "state": DepositState.CONFIRMED if confirmed else DepositState.SEEN,
                "state_at": now,
                "has_dust": dust,
            },
            inputs,
            outputs,
            int(confirmed),
        )
        data = {"txid": txid, "wallet": wallet.name.lower(), "value": value}
        if value > 0:
            journal.append(s, JournalKind.DEPOSIT_SEEN, account_id, data)
            if confirmed:
                journal.append(
                    s, JournalKind.DEPOSIT_CONFIRMED, account_id, {**data, "height": height}
                )
        return row

    def _update_row(
        self,
        s: Session,
        row: ChainTx,
        tx: dict[str, Any],
        status: TxStatus,
        bhash: str | None,
        height: int | None,
        when: datetime | None,
    ) -> None:
        """A known transaction seen again: mined, or back in the mempool after a reorg."""
        previous = row.status
        if status is TxStatus.MEMPOOL and previous is TxStatus.CONFIRMED:
            return  # only a block disconnect takes confirmations away
        data = {"txid": row.txid, "wallet": row.wallet.name.lower(), "value": row.value}
        row.status = status
        if status is TxStatus.CONFIRMED:
            row.block_hash = bhash
            row.block_height = height
            if previous is not TxStatus.CONFIRMED:
                row.confirm_at = when
                deposit_states.enter(s, row, DepositState.CONFIRMED, 1)
                if row.value > 0:
                    journal.append(
                        s, JournalKind.DEPOSIT_CONFIRMED, row.account_id, {**data, "height": height}
                    )
            self._fill_prevouts(s, row, tx)
        elif previous is TxStatus.REMOVED:
            deposit_states.enter(s, row, DepositState.SEEN)
        if status is TxStatus.MEMPOOL and previous is TxStatus.REMOVED and row.value > 0:
            journal.append(s, JournalKind.DEPOSIT_SEEN, row.account_id, data)

    def _is_dust(self, address: Address, value: int) -> bool:
        """A payment to a receiving address too small to be worth spending (never our change)."""
        return address.chain is Chain.RECEIVE and value < self.settings.dust_threshold

    def _prevout(self, s: Session, vin: dict[str, Any], utxo: Utxo | None) -> tuple[str, int]:
        """(address, value) of the output an input spends, from the cheapest source."""
        if utxo is not None:
            addr = s.get(Address, utxo.address_id)
            return (addr.address if addr is not None else ""), utxo.value
        prevout = vin.get("prevout")
        if prevout:
            return str(prevout["scriptPubKey"].get("address", "")), btc_to_sats(prevout["value"])
        key = (str(vin["txid"]), int(vin["vout"]))
        cached = self._prev_cache.get(key)
        if cached is not None:
            return cached
        self._write_new(s)
        recorded = s.execute(
            select(ChainTxOutput.address, ChainTxOutput.value)
            .join(ChainTx, ChainTx.id == ChainTxOutput.chain_tx_id)
            .where(ChainTx.txid == key[0], ChainTxOutput.sn == key[1])
            .limit(1)
        ).first()
        if recorded is not None:  # a transaction we recorded: our own records suffice
            return str(recorded[0]), int(recorded[1])
        try:
            # A mined parent: its output is still in the chain's UTXO set while only a mempool
            # transaction spends it (what a node without txindex answers).
            out = self.rpc.get_tx_out(key[0], key[1], include_mempool=False)
            if out is None:  # a parent in the mempool: the node has it without txindex
                parent = self.rpc.get_raw_transaction(key[0], True)
                out = parent["vout"][key[1]]
            found = (str(out["scriptPubKey"].get("address", "")), btc_to_sats(out["value"]))
        except (RPCError, IndexError, KeyError):
            return "", 0  # learnt from the block's prevouts once mined (verbosity 2)
        if len(self._prev_cache) > 10_000:
            self._prev_cache.clear()
        self._prev_cache[key] = found
        return found

    def _prefetch_prevouts(self, txs: list[dict[str, Any]]) -> None:
        """Ask the node, before the transaction that records `txs`, for the spent outputs
        `_prevout` would otherwise ask it for while holding the write lock (inputs of our
        transactions that are neither our UTXOs, nor carry a prevout, nor recorded by us)."""
        txs = [tx for tx in txs if any(_needs_prevout(v) for v in tx.get("vin", []))]
        if not txs:
            return  # transactions decoded with verbosity 2 carry every prevout
        with self.factory() as rs:
            m = self._lookup(rs, txs)
            if not m.addresses and not m.utxos and not m.known:
                return
            for tx in txs:
                vins = [v for v in tx.get("vin", []) if "txid" in v]
                ours = str(tx["txid"]) in m.known or any(
                    bytes.fromhex(o["scriptPubKey"]["hex"]) in m.addresses
                    for o in tx.get("vout", [])
                )
                mine = [(str(v["txid"]), int(v.get("vout", -1))) in m.utxos for v in vins]
                if not (ours or any(mine)):
                    continue
                for v, is_mine in zip(vins, mine, strict=True):
                    if not is_mine and _needs_prevout(v):
                        self._prevout(rs, v, None)

    def _fill_prevouts(self, s: Session, row: ChainTx, tx: dict[str, Any]) -> None:
        """Foreign inputs recorded from the mempool without a prevout learn it from the block."""
        vins = tx.get("vin", [])
        filled = False
        for inp in row.inputs:
            if inp.address or inp.is_mine or inp.sn >= len(vins):
                continue
            prevout = vins[inp.sn].get("prevout")
            if prevout:
                inp.address = str(prevout["scriptPubKey"].get("address", ""))
                inp.value = btc_to_sats(prevout["value"])
                filled = True
        if filled:
            s.flush()
            store_arrays(s, [row.id])

    def _mark_output(
        self, s: Session, account_id: int, wallet: Wallet, txid: str, vout: int, spent: bool
    ) -> None:
        """Keep the reference's output `status` (spent or not) in step with the UTXO."""
        self._write_new(s)
        funding = select(ChainTx.id).where(
            ChainTx.account_id == account_id, ChainTx.wallet == wallet, ChainTx.txid == txid
        )
        marked = s.execute(
            update(ChainTxOutput)
            .where(ChainTxOutput.chain_tx_id.in_(funding), ChainTxOutput.sn == vout)
            .values(spent=spent)
            .execution_options(synchronize_session=False)
        )
        if rowcount(marked):
            store_arrays(s, funding)

    # ------------------------------------------------------------------ alerts

    def _check_hot_balances(self, s: Session) -> None:
        """Alert once when a touched account's confirmed hot balance falls below the threshold."""
        threshold = self.settings.hot_balance_alert_sat
        if threshold <= 0 or not self._touched_hot:
            return
        for account_id in sorted(self._touched_hot):
            balance = confirmed_balance(s, account_id, Wallet.HOT, self.settings.min_conf)
            key = BALANCE_FLAG.format(account_id)
            flag = s.get(KeyValue, key)
            if balance < threshold and flag is None:
                s.add(KeyValue(key=key, value=utcnow().isoformat()))
                s.flush()
                if self.config is not None:
                    raise_alert(
                        s,
                        self.config,
                        AlertKind.HOT_BALANCE_LOW,
                        "the hot wallet's confirmed balance is below the alert threshold",
                        account_id=account_id,
                    )
            elif balance >= threshold and flag is not None:
                s.delete(flag)
        s.flush()
