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

from cc_common.config import Config
from cc_common.errors import ConfigError
from custody import consolidation, consolidation_schedule
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


def _scheduled(env: Env, below: float, **kw: int) -> consolidation_schedule.ConsolidationSchedule:
    settings = consolidation_schedule.ScheduleSettings(
        below_fee_rate=below, min_utxos=kw.get("min_utxos", 3), max_inputs=4, every_blocks=3
    )
    return consolidation_schedule.ConsolidationSchedule(env.factory, env.rpc, env.hsm, settings)


def _kinds(factory: sessionmaker[Session]) -> list[str]:
    with factory() as s:
        return list(s.execute(select(JournalEntry.kind).order_by(JournalEntry.id)).scalars())


def test_schedule_runs_when_the_fee_is_cheap_at_most_once_per_n_blocks(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    """Against the node's real `estimatesmartfee`: above the configured rate nothing happens;
    at or below it the smallest coins are consolidated, journalled with the estimate; not
    again until `consolidate_every_blocks` blocks later."""
    env = Env(factory, rpc, faucet, COINS)
    estimate = rpc.estimate_smart_fee(144).sat_per_vbyte
    assert estimate is not None
    assert _scheduled(env, float(estimate) - 1).step() == []  # expensive: not now
    assert env.hsm.calls == [] and "consolidation" not in _kinds(factory)
    [done] = _scheduled(env, float(estimate)).step()  # cheap
    assert done.inputs == 4 and env.hsm.calls == [(env.account_id, "consolidation")]
    kinds = _kinds(factory)
    assert kinds.count("consolidation") == 1 and kinds.count("consolidation_scheduled") == 1
    with factory() as s:
        data = s.execute(
            select(JournalEntry.data).where(JournalEntry.kind == "consolidation_scheduled")
        ).scalar_one()
    assert json.loads(data)["txid"] == done.txid
    assert json.loads(data)["fee_estimate"] == float(estimate)
    mine(rpc)
    env.sync()
    # one block later: two coins are enough now, but the last run was too recent
    assert _scheduled(env, float(estimate), min_utxos=2).step() == []
    mine(rpc, 2)
    env.sync()
    [again] = _scheduled(env, float(estimate), min_utxos=2).step()
    assert again.inputs == 2


def test_schedule_is_off_by_default_and_refuses_a_rate_above_the_policy(tmp_path) -> None:
    def settings(**custody: object) -> consolidation_schedule.ScheduleSettings:
        raw = {"custody": custody}
        cfg = Config(data_dir=tmp_path, path=tmp_path / "chaincloud.toml", raw=raw)
        return consolidation_schedule.ScheduleSettings.from_config(cfg)

    assert not settings().enabled
    assert settings(consolidate_below_fee_rate=3).enabled
    with pytest.raises(ConfigError, match="consolidate_below_fee_rate must be 0 .off. or 1-10"):
        settings(consolidate_below_fee_rate=20)
    with pytest.raises(ConfigError, match="consolidate_max_inputs must be 2-200"):
        settings(consolidate_max_inputs=1)
