"""Catching up in chunks (several blocks per database transaction) records what connecting the
blocks one at a time records: the same transactions, outputs, deposit states (with their
confirmations), journal entries and merchant events in the same order, numbered the same.

Two watchers follow the same regtest node into two databases: one connecting one block per
unit, one connecting ten blocks per unit. Only the `balance` records differ in number
(one per changed side per committed transaction), not in the totals they end with.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import journal
from custody.chain import BitcoinRPC
from custody.journal import JournalKind
from custody.models import ChainTx, Event, JournalEntry, TxStateChange, Utxo, Wallet
from custody.watcher import Watcher
from tests.node_fixtures import Faucet
from tests.worker_fixtures import (
    add_addresses,
    create_account,
    fresh_factory,
    fund,
    make_watcher,
    mine,
)


@pytest.fixture
def single_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A second database, for the watcher that connects one block per transaction."""
    yield from fresh_factory(f"sqlite:///{tmp_path / 'one-by-one.db'}")


def _accounts(factory: sessionmaker[Session]) -> list[bytes]:
    """Two accounts with hot and cold addresses; their scripts, the same in every database."""
    scripts = []
    with factory() as s, s.begin():
        for name in ("chunk-a", "chunk-b"):
            a = create_account(s, name)
            for wallet in (Wallet.HOT, Wallet.COLD):
                scripts += [bytes(x.script_pubkey) for x in add_addresses(s, a.id, wallet, 2)]
    return scripts


def _recorded(factory: sessionmaker[Session]) -> dict[str, Any]:
    """Everything the watcher wrote, without database ids; balance records apart."""
    with factory() as s:
        txs = {c.id: c for c in s.execute(select(ChainTx)).scalars()}
        entries = list(s.execute(select(JournalEntry).order_by(JournalEntry.id)).scalars())
        balances: dict[tuple[int | None, str], str] = {}
        for e in entries:
            if e.kind == JournalKind.BALANCE:
                balances[(e.account_id, json.loads(e.data)["wallet"])] = e.data
        recorded = {
            "txs": sorted(
                (c.account_id, c.wallet, c.txid, c.status, c.value, c.block_height, c.state)
                + tuple((o.sn, o.address, o.value, o.is_mine) for o in c.outputs)
                + tuple((i.sn, i.prev_tx_hash, i.address, i.value) for i in c.inputs)
                for c in txs.values()
            ),
            "states": [
                (txs[x.chain_tx_id].txid, txs[x.chain_tx_id].account_id, x.state, x.confirmations)
                for x in s.execute(select(TxStateChange).order_by(TxStateChange.id)).scalars()
            ],
            "utxos": sorted(
                (u.account_id, u.txid, u.vout, u.value, u.block_height, u.spent_by)
                for u in s.execute(select(Utxo)).scalars()
            ),
            "journal": [
                (e.kind, e.account_id, e.data) for e in entries if e.kind != JournalKind.BALANCE
            ],
            "balances": balances,
            "balance_records": sum(e.kind == JournalKind.BALANCE for e in entries),
            "events": [
                (e.account_id, e.seq, e.kind, e.side, e.data)
                for e in s.execute(select(Event).order_by(Event.account_id, Event.seq)).scalars()
            ],
        }
        assert journal.verify(s).ok
        return recorded


def test_a_chunk_records_what_block_by_block_records(
    factory: sessionmaker[Session],
    single_factory: sessionmaker[Session],
    rpc: BitcoinRPC,
    faucet: Faucet,
) -> None:
    scripts = _accounts(factory)
    assert _accounts(single_factory) == scripts
    chunked: Watcher = make_watcher(factory, rpc, chunk_blocks=10, final_conf=6)
    single: Watcher = make_watcher(single_factory, rpc, chunk_blocks=1, final_conf=6)

    seen_first = fund(rpc, faucet, [(scripts[0], 30_000), (scripts[6], 40_000)])
    for w in (chunked, single):
        w.step()  # seen in the mempool by both, then mined in the chunk
    fund(rpc, faucet, [(scripts[1], 50_000), (scripts[2], 60_000)])
    mine(rpc)
    fund(rpc, faucet, [(scripts[4], 70_000)])
    mine(rpc)
    fund(rpc, faucet, [(scripts[5], 80_000)])
    fund(rpc, faucet, [(scripts[7], 90_000), (scripts[3], 1_000)])
    mine(rpc, 8)  # the first deposits become final inside the chunk
    fund(rpc, faucet, [(scripts[0], 20_000)])  # left in the mempool

    a, b = chunked.step(), single.step()
    assert a.connected == b.connected >= 10  # (and the blocks the faucet mined itself)
    got, want = _recorded(factory), _recorded(single_factory)
    assert seen_first in {t[2] for t in got["txs"]}
    for key in ("txs", "states", "utxos", "journal", "balances", "events"):
        assert got[key] == want[key], key
    assert [k for k, *_ in got["journal"]].count("deposit_final") >= 4
    assert got["balance_records"] < want["balance_records"]  # one commit for ten blocks
