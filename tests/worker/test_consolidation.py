"""Consolidation in custody against a real regtest node (HSM stand-in), SQLite and PostgreSQL.

The smallest confirmed hot coins go to one new change address, co-signed without a V-device
signature, journalled; the chosen coins are claimed so a send meanwhile never picks them; an
HSM refusal gives them back; a run interrupted after signing broadcasts that same transaction
next time; bad arguments are refused clearly.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import consolidation
from custody.balances import confirmed_balance
from custody.chain import BitcoinRPC
from custody.models import JournalEntry, KeyValue, SendStatus, Utxo, Wallet
from tests.node_fixtures import Faucet
from tests.worker.test_sends import Env, _outs
from tests.worker_fixtures import (
    mine,
)

COINS = [20_000, 30_000, 40_000, 50_000, 900_000]


def run(env: Env, **kw: object) -> consolidation.Consolidated:
    return consolidation.consolidate(env.factory, env.rpc, env.hsm, env.account_id, **kw)


def test_smallest_coins_go_to_one_change_address(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, COINS)
    done = run(env, max_inputs=4, fee_rate=2.0)
    tx = rpc.get_raw_transaction(done.txid, True)
    assert len(tx["vin"]) == 4 and len(tx["vout"]) == 1
    assert done.value == sum(COINS[:4]) - done.fee and done.change_index == 0
    assert env.hsm.calls == [(env.account_id, "consolidation")]
    with factory() as s:
        claimed = s.execute(select(Utxo.value).where(Utxo.spent_by == done.txid)).scalars()
        assert sorted(claimed) == COINS[:4]
        kinds = list(s.execute(select(JournalEntry.kind)).scalars())
        assert kinds.count("consolidation") == 1
    # a send now uses the big coin, never a claimed one
    sid = env.send("after-1", _outs(100_000))
    assert env.worker().step() == {sid: SendStatus.BROADCAST}
    with factory() as s:
        used = s.execute(select(Utxo.value).where(Utxo.reserved_by_send == sid)).scalars()
        assert list(used) == [900_000]
    mine(rpc)
    env.sync()
    with factory() as s:
        change = s.execute(select(Utxo).where(Utxo.txid == done.txid)).scalar_one()
        assert change.block_height is not None and change.value == done.value
        assert s.get(KeyValue, consolidation.PENDING_KEY.format(env.account_id)) is None
        assert confirmed_balance(s, env.account_id, Wallet.HOT) >= done.value


def test_refusals_give_the_coins_back(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, COINS[:2])
    with pytest.raises(consolidation.ConsolidationRefused, match="fee rate must be 1-10"):
        run(env, fee_rate=20.0)
    with pytest.raises(consolidation.ConsolidationRefused, match="max inputs must be 2-200"):
        run(env, max_inputs=1)
    env.hsm.refuse = "fee above policy"
    with pytest.raises(consolidation.ConsolidationRefused, match="fee above policy"):
        run(env)
    with factory() as s:
        assert s.execute(select(Utxo).where(Utxo.spent_by.is_not(None))).first() is None
    env.hsm.refuse = None
    run(env)
    with pytest.raises(consolidation.ConsolidationRefused, match="0 spendable coin"):
        run(env)


def test_a_run_interrupted_after_signing_broadcasts_that_transaction(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, monkeypatch
) -> None:
    env = Env(factory, rpc, faucet, COINS[:3])

    def crash(*args: object) -> None:
        raise KeyboardInterrupt("the process died before broadcasting")

    monkeypatch.setattr(consolidation, "_broadcast", crash)
    with pytest.raises(KeyboardInterrupt):
        run(env)
    monkeypatch.undo()
    with factory() as s:
        pending = json.loads(
            s.get(KeyValue, consolidation.PENDING_KEY.format(env.account_id)).value
        )
    assert pending["txid"] not in rpc.get_raw_mempool()
    with pytest.raises(consolidation.ConsolidationRefused, match="0 spendable coin"):
        run(env)  # it broadcast the pending one first; nothing is left to merge
    assert pending["txid"] in rpc.get_raw_mempool()
    assert len(env.hsm.calls) == 1
    with factory() as s:
        assert s.get(KeyValue, consolidation.PENDING_KEY.format(env.account_id)) is None
