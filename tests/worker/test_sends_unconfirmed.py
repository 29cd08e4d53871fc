"""Sends never fail for want of confirmed coin: they wait, or spend our own unconfirmed change.

Against a real regtest node with the in-test HSM stand-in, on SQLite and PostgreSQL: ten
withdrawals posted within one block interval from a wallet with one confirmed coin are all
broadcast before the next block (each spending the previous one's change), every one signalling
BIP125; the chain stops at Core's limit of 25 and the rest wait with their reason until a block
confirms the chain; a stranger's unconfirmed payment to the hot wallet is never spent.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from custody.chain import BitcoinRPC
from custody.models import SendStatus
from tests.node_fixtures import Faucet
from tests.worker.test_sends import Env, _outs
from tests.worker_fixtures import (
    expire_leases,
    fund,
    mine,
)

RBF_MAX = 0xFFFFFFFD


def test_ten_withdrawals_in_one_block_interval_all_broadcast_on_unconfirmed_change(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, [5_000_000])
    ids = [env.send(f"burst-{i}", _outs(100_000 + i)) for i in range(10)]
    height = rpc.get_block_count()
    result = env.worker().step(limit=10)
    assert result == dict.fromkeys(ids, SendStatus.BROADCAST)
    assert rpc.get_block_count() == height  # no block was needed
    pool = set(rpc.get_raw_mempool())
    txids = [env.get(sid).txid for sid in ids]
    assert set(txids) <= pool
    for i, txid in enumerate(txids):
        tx = rpc.decode_raw_transaction(env.get(ids[i]).tx_hex)
        assert all(v["sequence"] <= RBF_MAX for v in tx["vin"])  # BIP125 signalled
        entry = rpc.get_mempool_entry(txid)
        assert entry["bip125-replaceable"] is True
        assert entry["ancestorcount"] == i + 1  # each spends the previous one's change
    mine(rpc)
    env.sync()
    with factory() as s, s.begin():
        expire_leases(s)
    assert env.worker().step(limit=10) == dict.fromkeys(ids, SendStatus.CONFIRMED)


def test_chain_stops_at_25_and_the_rest_wait_for_a_block(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, [10_000_000])
    ids = [env.send(f"chain-{i}", _outs(50_000)) for i in range(27)]
    w = env.worker()
    result = w.step(limit=27)
    assert [result[sid] for sid in ids[:25]] == [SendStatus.BROADCAST] * 25
    assert [result[sid] for sid in ids[25:]] == [SendStatus.WAITING_FUNDS] * 2
    reason = env.get(ids[25]).state_reason
    assert reason.startswith("waiting for funds: need 50000 sat plus fee, have 0 sat")
    assert rpc.get_mempool_entry(env.get(ids[24]).txid)["ancestorcount"] == 25
    mine(rpc)
    env.sync()
    with factory() as s, s.begin():
        expire_leases(s)
    result = w.step(limit=27)
    assert result[ids[25]] is SendStatus.BROADCAST and result[ids[26]] is SendStatus.BROADCAST
    assert rpc.get_mempool_entry(env.get(ids[26]).txid)["ancestorcount"] == 2


def test_unconfirmed_payment_from_a_stranger_is_never_spent(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, [60_000])
    incoming = fund(rpc, faucet, [(bytes(env.addresses[0].script_pubkey), 3_000_000)])
    env.sync()
    sid = env.send("stranger-1", _outs(1_000_000))
    assert env.worker().step() == {sid: SendStatus.WAITING_FUNDS}
    assert env.reserved(sid) == set()
    mine(rpc)
    env.sync()
    with factory() as s, s.begin():
        expire_leases(s)
    assert env.worker().step() == {sid: SendStatus.BROADCAST}
    assert incoming in {t for t, _ in env.reserved(sid)}
