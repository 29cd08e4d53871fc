"""Deposit states against a real regtest node, on SQLite and PostgreSQL.

Every transition is recorded with its time (`tx_state_changes`) and journalled: seen ->
confirmed -> final at the configured depth; a BIP125 replacement that pays elsewhere leaves the
first deposit `replaced`; a block with a conflicting spend leaves it `conflicted`; a disconnected
block makes it `reorged` until it is mined again. None of them ever counts in a balance before
it is confirmed, and a dust payment is flagged and never spent.
"""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.balances import confirmed_balance, unconfirmed_balance
from custody.chain import BitcoinRPC
from custody.models import (
    Address,
    DepositState,
    JournalEntry,
    SendStatus,
    TxStateChange,
    Utxo,
    Wallet,
)
from custody.watcher import Watcher, WatcherSettings
from tests.api_fixtures import SoftwareHsmStandIn
from tests.node_fixtures import (
    FEE,
    Faucet,
    Key,
    hex_of,
    spend_p2wpkh,
    txid_hex,
)
from tests.worker_fixtures import (
    MINER,
    add_addresses,
    chain_tx,
    conflicting_block,
    create_account,
    fund,
    fund_with_coin,
    make_sends,
    mine,
    new_send,
)

RBF = 0xFFFFFFFD
ELSEWHERE = Key.from_seed("deposit-elsewhere")


@pytest.fixture
def acct(
    factory: sessionmaker[Session], request: pytest.FixtureRequest
) -> tuple[int, list[Address]]:
    """Fresh keys per test: the node's chain is shared by the module's tests."""
    name = "deposits-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
    with factory() as s, s.begin():
        a = create_account(s, name)
        hot = add_addresses(s, a.id, Wallet.HOT, 3)
    return a.id, hot


@pytest.fixture
def w(factory: sessionmaker[Session], rpc: BitcoinRPC) -> Watcher:
    """A watcher that starts at the chain's tip as the test begins."""
    settings = WatcherSettings(start_height=rpc.get_block_count(), final_conf=3)
    return Watcher(factory, rpc, settings)


def history(s: Session, account_id: int, txid: str) -> list[tuple[str, int]]:
    row = chain_tx(s, account_id, Wallet.HOT, txid)
    assert row is not None
    changes = s.execute(
        select(TxStateChange).where(TxStateChange.chain_tx_id == row.id).order_by(TxStateChange.id)
    ).scalars()
    out = []
    for c in changes:
        assert c.at is not None
        out.append((c.state.value, c.confirmations))
    return out


def state(factory: sessionmaker[Session], account_id: int, txid: str) -> DepositState:
    """The hot-wallet deposit's state as the watcher recorded it."""
    with factory() as s:
        return chain_tx(s, account_id, Wallet.HOT, txid).state


def hot_balance(factory: sessionmaker[Session], account_id: int) -> int:
    with factory() as s:
        return confirmed_balance(s, account_id, Wallet.HOT)


def mine_and_step(rpc: BitcoinRPC, w: Watcher) -> list[str]:
    """One block mined, then one pass of the watcher; the block's hash."""
    blocks = mine(rpc)
    w.step()
    return blocks


def kinds(s: Session) -> list[str]:
    return list(s.execute(select(JournalEntry.kind).order_by(JournalEntry.id)).scalars())


def test_seen_confirmed_final_and_only_confirmed_counts(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, acct: tuple, w: Watcher
) -> None:
    account_id, hot = acct
    txid = fund(rpc, faucet, [(bytes(hot[0].script_pubkey), 70_000)])
    w.step()
    assert state(factory, account_id, txid) is DepositState.SEEN
    assert hot_balance(factory, account_id) == 0
    mine_and_step(rpc, w)
    assert state(factory, account_id, txid) is DepositState.CONFIRMED
    assert hot_balance(factory, account_id) == 70_000
    mine_and_step(rpc, w)
    assert state(factory, account_id, txid) is DepositState.CONFIRMED
    mine_and_step(rpc, w)
    assert state(factory, account_id, txid) is DepositState.FINAL
    with factory() as s:
        assert history(s, account_id, txid) == [("seen", 0), ("confirmed", 1), ("final", 3)]
        deposits = [k for k in kinds(s) if k.startswith("deposit_")]
        assert deposits == ["deposit_seen", "deposit_confirmed", "deposit_final"]


def test_replaced_deposit_never_counts_and_is_marked_replaced(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, acct: tuple, w: Watcher
) -> None:
    account_id, hot = acct
    coin = faucet.coin()
    pay = (bytes(hot[1].script_pubkey), 90_000)
    first = spend_p2wpkh(MINER, coin, [pay, (MINER.script, coin[2] - 90_000 - FEE)], sequence=RBF)
    rpc.send_raw_transaction(hex_of(first))
    w.step()
    with factory() as s:
        assert unconfirmed_balance(s, account_id, Wallet.HOT) == 90_000
        assert confirmed_balance(s, account_id, Wallet.HOT) == 0
    elsewhere = spend_p2wpkh(MINER, coin, [(ELSEWHERE.script, coin[2] - 5 * FEE)], sequence=RBF)
    rpc.send_raw_transaction(hex_of(elsewhere))
    w.step()
    with factory() as s:
        row = chain_tx(s, account_id, Wallet.HOT, txid_hex(first))
        assert row.state is DepositState.REPLACED
        assert history(s, account_id, txid_hex(first)) == [("seen", 0), ("replaced", 0)]
        assert unconfirmed_balance(s, account_id, Wallet.HOT) == 0
        assert s.execute(select(Utxo).where(Utxo.txid == txid_hex(first))).first() is None
        assert "deposit_replaced" in kinds(s)
    mine_and_step(rpc, w)
    assert state(factory, account_id, txid_hex(first)) is DepositState.REPLACED
    assert hot_balance(factory, account_id) == 0


def test_conflicted_then_reorged_deposits(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, acct: tuple, w: Watcher
) -> None:
    account_id, hot = acct
    txid, coin = fund_with_coin(rpc, faucet, [(bytes(hot[0].script_pubkey), 40_000)])
    w.step()
    conflicting_block(rpc, faucet, coin)
    w.step()
    assert state(factory, account_id, txid) is DepositState.CONFLICTED
    with factory() as s:
        assert history(s, account_id, txid) == [("seen", 0), ("conflicted", 0)]
        assert "deposit_conflicted" in kinds(s)

    txid2 = fund(rpc, faucet, [(bytes(hot[2].script_pubkey), 55_000)])
    [block] = mine_and_step(rpc, w)
    rpc.call("invalidateblock", block)
    w.step()
    assert state(factory, account_id, txid2) is DepositState.REORGED
    assert hot_balance(factory, account_id) == 0
    mine_and_step(rpc, w)
    assert state(factory, account_id, txid2) is DepositState.CONFIRMED
    with factory() as s:
        assert history(s, account_id, txid2) == [
            ("confirmed", 1),  # first seen in its block
            ("reorged", 0),
            ("confirmed", 1),
        ]
        assert confirmed_balance(s, account_id, Wallet.HOT) == 55_000


def test_dust_is_flagged_and_never_spent(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, acct: tuple, w: Watcher
) -> None:
    account_id, hot = acct
    dust = fund(rpc, faucet, [(bytes(hot[0].script_pubkey), 600)])
    mine(rpc)
    w.step()
    with factory() as s:
        assert chain_tx(s, account_id, Wallet.HOT, dust).has_dust is True
        assert s.execute(select(Utxo.is_dust).where(Utxo.txid == dust)).scalar_one() is True
    hsm = SoftwareHsmStandIn()
    with factory() as s, s.begin():
        sid = new_send(s, account_id, "dust-1", f"{ELSEWHERE.address},400")
    assert make_sends(factory, rpc, hsm, owner="w").step() == {sid: SendStatus.WAITING_FUNDS}
