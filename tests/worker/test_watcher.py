"""The chain watcher against a real regtest node process, on SQLite and PostgreSQL.

Deposits are seen in the mempool, confirmed, counted up; reorged out with `invalidateblock`
(confirmations and balance follow) and confirmed again; a transaction that disappears for good
is REMOVED with its outputs; a restarted watcher resumes where it stopped without duplicates;
only one watcher works at a time; the hot balance alert fires once.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from custody import journal
from custody.api import tx_json
from custody.balances import confirmations, confirmed_balance, tip_height, unconfirmed_balance
from custody.chain import BitcoinRPC
from custody.models import (
    Address,
    Alert,
    BlockSeen,
    ChainTxInput,
    JournalEntry,
    TxStatus,
    Utxo,
    Wallet,
)
from custody.watcher import ADVISORY_LOCK_ID, Watcher, WatcherSettings
from tests.node_fixtures import Faucet, NodeProcess
from tests.worker_fixtures import (
    add_addresses,
    chain_tx,
    conflicting_block,
    counts,
    create_account,
    fund,
    fund_with_coin,
    make_watcher,
    mine,
)


@pytest.fixture
def acct(factory: sessionmaker[Session]) -> tuple[int, list[Address], list[Address]]:
    """An account with 3 hot and 3 cold receiving addresses."""
    with factory() as s, s.begin():
        a = create_account(s, "watch")
        hot = add_addresses(s, a.id, Wallet.HOT, 3)
        cold = add_addresses(s, a.id, Wallet.COLD, 3)
    return a.id, hot, cold


def _watcher(factory: sessionmaker[Session], rpc: BitcoinRPC, **kw: object) -> Watcher:
    return make_watcher(factory, rpc, **kw)


def _journal_kinds(s: Session) -> list[str]:
    return list(s.execute(select(JournalEntry.kind).order_by(JournalEntry.id)).scalars())


def confirmed_once_in(s: Session, account_id: int, txid: str, block: str, balance: int) -> None:
    """The hot deposit `txid` is confirmed in `block`, one deep; the hot balance is `balance`."""
    h = chain_tx(s, account_id, Wallet.HOT, txid)
    assert h.status is TxStatus.CONFIRMED and h.block_hash == block
    assert confirmations(tip_height(s), h.block_height) == 1
    assert confirmed_balance(s, account_id, Wallet.HOT) == balance


def test_deposit_seen_confirmed_reorged_and_confirmed_again(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, acct: tuple
) -> None:
    account_id, hot, cold = acct
    w = _watcher(factory, rpc)
    mine(rpc)
    w.step()  # one block below the deposit's, to survive the reorg
    txid = fund(
        rpc, faucet, [(bytes(hot[0].script_pubkey), 50_000), (bytes(cold[1].script_pubkey), 70_000)]
    )

    w.step()
    with factory() as s:
        h = chain_tx(s, account_id, Wallet.HOT, txid)
        c = chain_tx(s, account_id, Wallet.COLD, txid)
        assert h is not None and c is not None
        assert (h.status, h.value, c.status, c.value) == (
            TxStatus.MEMPOOL,
            50_000,
            TxStatus.MEMPOOL,
            70_000,
        )
        assert [o.is_mine for o in h.outputs] == [True, False, False]
        assert [o.is_mine for o in c.outputs] == [False, True, False]
        assert h.outputs[0].address == hot[0].address and not h.outputs[0].spent
        [inp] = h.inputs
        assert not inp.is_mine and inp.address == faucet.key.address and inp.value > 0
        assert confirmations(tip_height(s), h.block_height) == 0
        assert confirmed_balance(s, account_id, Wallet.HOT) == 0
        assert unconfirmed_balance(s, account_id, Wallet.HOT) == 50_000
        assert _journal_kinds(s).count("deposit_seen") == 2

    [b1] = mine(rpc)
    w.step()
    with factory() as s:
        confirmed_once_in(s, account_id, txid, b1, 50_000)
        assert confirmed_balance(s, account_id, Wallet.COLD) == 70_000
        assert confirmed_balance(s, account_id, Wallet.HOT, min_conf=2) == 0

    mine(rpc, 2)
    w.step()
    with factory() as s:
        h = chain_tx(s, account_id, Wallet.HOT, txid)
        assert confirmations(tip_height(s), h.block_height) == 3
        assert confirmed_balance(s, account_id, Wallet.HOT, min_conf=3) == 50_000

    rpc.call("invalidateblock", b1)  # the deposit goes back to the mempool
    w.step()
    with factory() as s:
        h = chain_tx(s, account_id, Wallet.HOT, txid)
        assert h.status is TxStatus.MEMPOOL and h.block_height is None
        assert confirmations(tip_height(s), h.block_height) == 0
        assert confirmed_balance(s, account_id, Wallet.HOT) == 0
        assert confirmed_balance(s, account_id, Wallet.COLD) == 0
        assert tip_height(s) == rpc.get_block_count()
        assert _journal_kinds(s).count("deposit_reorged") == 2

    [b2] = mine(rpc)  # mined again on the new branch
    w.step()
    with factory() as s:
        confirmed_once_in(s, account_id, txid, b2, 50_000)
        assert s.execute(select(func.count(Utxo.id))).scalar_one() == 2
        assert journal.verify(s).ok


def test_inputs_recorded_without_prevout_are_filled_and_shown_once_mined(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, acct: tuple
) -> None:
    """A deposit's foreign input recorded from the mempool without its spent output (the node
    could not say) learns it from the block, and `GET /tx` shows it: the stored arrays follow
    (`tx_json.store_arrays`; the teardown checks every row)."""
    account_id, hot, _cold = acct
    w = _watcher(factory, rpc)
    txid = fund(rpc, faucet, [(bytes(hot[0].script_pubkey), 50_000)])
    w.step()
    with factory() as s, s.begin():
        h = chain_tx(s, account_id, Wallet.HOT, txid)
        assert h is not None
        # as `_prevout` records an input whose spent output the node could not give
        s.execute(
            update(ChainTxInput).where(ChainTxInput.chain_tx_id == h.id).values(address="", value=0)
        )
        tx_json.store_arrays(s, [h.id])

    def shown_input() -> dict[str, object]:
        with factory() as s:
            doc = tx_json.tx_detail(s.connection(), account_id, Wallet.HOT, txid)
        assert doc is not None
        return json.loads(doc)["inputs"][0]

    assert (shown_input()["address"], shown_input()["value"]) == ("", 0)
    mine(rpc)
    w.step()
    assert shown_input()["address"] == faucet.key.address and shown_input()["value"] > 0
    with factory() as s:
        assert tx_json.stale_arrays(s) == []


def test_transaction_that_disappears_is_removed(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, acct: tuple
) -> None:
    account_id, hot, _ = acct
    w = _watcher(factory, rpc)
    # (1) seen in the mempool only, then a conflicting spend is mined
    txid1, coin1 = fund_with_coin(rpc, faucet, [(bytes(hot[0].script_pubkey), 40_000)])
    w.step()
    with factory() as s:
        assert chain_tx(s, account_id, Wallet.HOT, txid1).status is TxStatus.MEMPOOL
    conflicting_block(rpc, faucet, coin1)
    assert txid1 not in rpc.get_raw_mempool()
    w.step()
    with factory() as s:
        assert chain_tx(s, account_id, Wallet.HOT, txid1).status is TxStatus.REMOVED
        assert s.execute(select(Utxo).where(Utxo.txid == txid1)).first() is None
        assert unconfirmed_balance(s, account_id, Wallet.HOT) == 0

    # (2) confirmed, then its block is replaced by one with a conflicting spend
    txid2, coin2 = fund_with_coin(rpc, faucet, [(bytes(hot[1].script_pubkey), 60_000)])
    [b] = mine(rpc)
    w.step()
    with factory() as s:
        assert confirmed_balance(s, account_id, Wallet.HOT) == 60_000
    rpc.call("invalidateblock", b)
    conflicting_block(rpc, faucet, coin2)
    mine(rpc)  # the new branch is longer than the old one
    w.step()
    with factory() as s:
        row = chain_tx(s, account_id, Wallet.HOT, txid2)
        assert row.status is TxStatus.REMOVED and row.block_hash is None
        assert confirmed_balance(s, account_id, Wallet.HOT) == 0
        assert s.execute(select(func.count(Utxo.id))).scalar_one() == 0
        heights = list(s.execute(select(BlockSeen.height).order_by(BlockSeen.height)).scalars())
        assert heights == list(range(heights[0], rpc.get_block_count() + 1))
        assert (
            s.execute(
                select(BlockSeen.block_hash).where(BlockSeen.height == heights[-1])
            ).scalar_one()
            == rpc.get_best_block_hash()
        )


def test_restart_resumes_without_duplicates(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, acct: tuple
) -> None:
    account_id, hot, cold = acct
    start = rpc.get_block_count() + 1
    first = make_watcher(factory, rpc, start_height=start)
    t1 = fund(rpc, faucet, [(bytes(hot[0].script_pubkey), 10_000)])
    mine(rpc)
    t2 = fund(rpc, faucet, [(bytes(cold[0].script_pubkey), 20_000)])  # stays in the mempool
    first.step()
    first.release()  # the process stops
    with factory() as s:
        before = counts(s)
        assert before == {"chain_txs": 2, "utxos": 2}

    mine(rpc, 2)
    t3 = fund(rpc, faucet, [(bytes(hot[2].script_pubkey), 30_000)])
    mine(rpc)
    second = make_watcher(factory, rpc, start_height=start)  # fresh process, same database
    result = second.step()
    assert result.connected == 3  # only the new blocks
    second.step()
    with factory() as s:
        assert counts(s) == {"chain_txs": 3, "utxos": 3}
        assert chain_tx(s, account_id, Wallet.COLD, t2).status is TxStatus.CONFIRMED
        for t in (t1, t3):
            assert chain_tx(s, account_id, Wallet.HOT, t).status is TxStatus.CONFIRMED
        heights = list(s.execute(select(BlockSeen.height).order_by(BlockSeen.height)).scalars())
        assert heights == list(range(start, rpc.get_block_count() + 1))
        assert _journal_kinds(s).count("deposit_seen") == 3
        assert confirmed_balance(s, account_id, Wallet.HOT) == 40_000


def test_only_one_watcher_works_at_a_time(
    factory: sessionmaker[Session], rpc: BitcoinRPC, acct: tuple
) -> None:
    a = _watcher(factory, rpc)
    b = _watcher(factory, rpc)
    with factory() as s:
        postgres = s.get_bind().dialect.name == "postgresql"
    if postgres:
        holder = factory()
        holder.begin()
        holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_ID})
        assert b.step().locked is False
        holder.rollback()
        holder.close()
        assert b.step().locked is True
    else:
        assert a.step().locked is True  # a holds the lease until it stops
        assert b.step().locked is False
        a.release()
        assert b.step().locked is True
        assert a.step().locked is False


def test_hot_balance_low_alert_fires_once(
    factory: sessionmaker[Session],
    rpc: BitcoinRPC,
    faucet: Faucet,
    acct: tuple,
    node: NodeProcess,
) -> None:
    account_id, hot, _ = acct
    settings = WatcherSettings(
        start_height=rpc.get_block_count() + 1, hot_balance_alert_sat=100_000
    )
    w = Watcher(factory, rpc, settings, node.config)
    fund(rpc, faucet, [(bytes(hot[0].script_pubkey), 60_000)])
    mine(rpc)
    w.step()
    w.step()
    fund(rpc, faucet, [(bytes(hot[1].script_pubkey), 1_000)])
    mine(rpc)
    w.step()
    with factory() as s:
        alerts = list(s.execute(select(Alert).where(Alert.kind == "hot_balance_low")).scalars())
        assert len(alerts) == 1 and alerts[0].account_id == account_id
        assert "60000" not in alerts[0].message  # no amounts in the message
    fund(rpc, faucet, [(bytes(hot[2].script_pubkey), 200_000)])
    mine(rpc)
    w.step()
    with factory() as s:
        assert confirmed_balance(s, account_id, Wallet.HOT) == 261_000
        n = s.execute(select(func.count(Alert.id))).scalar_one()
        assert n == 1


def test_first_start_follows_from_the_tip_and_a_rescan_finds_older_deposits(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, acct: tuple
) -> None:
    """By default the watcher starts at the node's tip (a node with years of history would
    take days from genesis); a deliberate rescan re-reads older blocks, idempotently."""
    account_id, hot, cold = acct
    old = fund(rpc, faucet, [(bytes(cold[2].script_pubkey), 40_000)])
    [old_block] = mine(rpc)
    old_height = rpc.get_block_header(old_block)["height"]
    mine(rpc, 3)
    w = Watcher(factory, rpc, WatcherSettings())  # the default: start_height = -1
    first = w.step()
    assert first.connected == 1 and first.height == rpc.get_block_count()
    with factory() as s:
        assert chain_tx(s, account_id, Wallet.COLD, old) is None  # before the first start
        assert list(s.execute(select(BlockSeen.height)).scalars()) == [first.height]

    assert w.request_rescan(old_height) == f"rescanning blocks {old_height}..{first.height}"
    result = w.step()
    assert result.rescanned == first.height - old_height + 1 and result.rescan is None
    with factory() as s:
        row = chain_tx(s, account_id, Wallet.COLD, old)
        assert row is not None and row.status is TxStatus.CONFIRMED and row.value == 40_000
        assert row.block_height == old_height
        assert confirmed_balance(s, account_id, Wallet.COLD) == 40_000
        assert _journal_kinds(s).count("deposit_confirmed") == 1
    w.request_rescan(old_height)  # again: nothing is recorded twice
    w.step()
    with factory() as s:
        assert counts(s) == {"chain_txs": 1, "utxos": 1}
        assert _journal_kinds(s).count("deposit_confirmed") == 1
    # The configured value is honoured once, not at every restart.
    assert "rescanning" in w.request_rescan(old_height, once_per_value=True)
    assert "done before" in w.request_rescan(old_height, once_per_value=True)
