"""Batched payouts in the send pipeline, against a real regtest node with the in-test HSM
stand-in, on SQLite and PostgreSQL.

With `batch_sends` the worker combines the pending sends of an account into one transaction
(at most `batch_max_outputs` payments): every member gets the shared txid (`GET
/tx/<user_tx_no>` shows it) and its own `send.broadcast`, and is confirmed with it; a refused
batch is unbatched and each member judged alone; a batch is fee-bumped whole; two workers
racing never put one send in two transactions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import fee_bump
from custody.accounts import rotate_token
from custody.app import create_app
from custody.chain import BitcoinRPC
from custody.models import JournalEntry, Send, SendStatus, Utxo
from custody.sends import SendWorker
from tests.api_fixtures import SmsRecorder, make_config
from tests.node_fixtures import Faucet
from tests.worker.test_sends import DEST, Env, _outs
from tests.worker_fixtures import MINER, expire_leases, make_sends, mine, race

ON = {"batching": True}  # no window: whatever is pending when a send is built goes with it


def _dest_values(env: Env, txid: str) -> list[int]:
    tx = env.find_tx(txid)
    dest = bytes(DEST.script).hex()
    return sorted(
        round(o["value"] * 100_000_000) for o in tx["vout"] if o["scriptPubKey"]["hex"] == dest
    )


def test_pending_sends_go_out_in_one_transaction_with_a_shared_hash(
    factory: sessionmaker[Session],
    rpc: BitcoinRPC,
    faucet: Faucet,
    db_url: str,
    tmp_path: Path,
    sms: SmsRecorder,
) -> None:
    env = Env(factory, rpc, faucet, [3_000_000])
    ids = [env.send(f"batch-{i}", _outs(100_000 + i)) for i in range(10)]
    w = env.worker(**ON)
    assert w.step(limit=10) == dict.fromkeys(ids, SendStatus.BROADCAST)
    sends = [env.get(sid) for sid in ids]
    txid = sends[0].txid
    assert txid and {s.txid for s in sends} == {txid} and txid in rpc.get_raw_mempool()
    assert {s.batch_id for s in sends} == {ids[0]}
    assert _dest_values(env, txid) == [100_000 + i for i in range(10)]  # each paid once
    assert len(rpc.decode_raw_transaction(sends[0].tx_hex)["vout"]) == 11  # and one change
    assert env.hsm.calls == [(env.account_id, "batch:" + ",".join(f"batch-{i}" for i in range(10)))]
    with factory() as s:
        broadcast = (
            s.execute(select(JournalEntry.data).where(JournalEntry.kind == "send_broadcast"))
            .scalars()
            .all()
        )
    assert sorted(broadcast) == sorted(
        f'{{"txid":"{txid}","user_tx_no":"batch-{i}"}}' for i in range(10)
    )
    # GET /tx/<user_tx_no> of every member shows the shared hash
    app = create_app(make_config(tmp_path, db_url, sms.url), hsm=env.hsm, session_factory=factory)
    with factory() as s, s.begin():
        token = rotate_token(s, env.account_id, "hot")
    api = app.test_client()
    for i in range(10):
        shown = api.get(f"/api/v1/open/tx/batch-{i}", headers={"token": token}).get_json()
        assert (shown["tx_hash"], shown["hot_wallet_tx_status"]) == (txid, "OK")
    mine(rpc)
    env.sync()
    with factory() as s, s.begin():
        expire_leases(s)
    assert w.step(limit=10) == dict.fromkeys(ids, SendStatus.CONFIRMED)


def test_batches_stay_within_the_output_count(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, [3_000_000])
    ids = [env.send(f"cap-{i}", _outs(50_000 + i)) for i in range(10)]
    assert env.worker(**ON, batch_max_outputs=4).step(limit=10) == dict.fromkeys(
        ids, SendStatus.BROADCAST
    )
    sizes = Counter(env.get(sid).txid for sid in ids)
    assert sorted(sizes.values()) == [2, 4, 4]
    for txid, n in sizes.items():
        assert len(_dest_values(env, txid)) == n


def test_a_send_waits_for_the_window_then_goes_with_the_others(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, [1_000_000])
    first = env.send("window-0", _outs(70_000))
    w = env.worker(batching=True, batch_window=3600.0)
    assert w.step() == {first: SendStatus.PENDING}  # held for companions
    second = env.send("window-1", _outs(80_000))
    with factory() as s, s.begin():  # the window has passed for the first one
        s.get(Send, first).request_at = s.get(Send, first).request_at.replace(year=2000)
        expire_leases(s)
    assert w.step() == {first: SendStatus.BROADCAST, second: SendStatus.BROADCAST}
    assert env.get(first).txid == env.get(second).txid


def test_a_refused_batch_is_unbatched_and_each_send_judged_alone(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    """The HSMs refuse a batch whole; custody frees its coins and sends each member alone,
    so the one request the policy refuses fails and the others go."""
    env = Env(factory, rpc, faucet, [1_000_000])
    ids = [env.send(f"refused-{i}", _outs(60_000 + i)) for i in range(3)]
    env.hsm.refuse_numbers = {"refused-1"}
    w = env.worker(**ON)
    w.step()
    with factory() as s, s.begin():
        expire_leases(s)
    w.step()
    assert [env.get(sid).status for sid in ids] == [
        SendStatus.BROADCAST,
        SendStatus.FAILED,
        SendStatus.BROADCAST,
    ]
    assert "over the policy" in env.get(ids[1]).failure_reason
    assert env.get(ids[0]).txid != env.get(ids[2]).txid  # alone, each
    assert env.hsm.calls[0][1] == "batch:refused-0,refused-1,refused-2"
    with factory() as s:
        waiting = (
            s.execute(select(JournalEntry.data).where(JournalEntry.kind == "send_waiting"))
            .scalars()
            .all()
        )
        assert s.execute(select(Utxo.id).where(Utxo.reserved_by_send == ids[1])).all() == []
    assert len(waiting) == 3 and all("batch refused by the HSM" in d for d in waiting)


def test_two_workers_never_batch_the_same_send_twice(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, [2_000_000] * 3)
    n = 24
    ids = [env.send(f"race-{i}", _outs(30_000 + i)) for i in range(n)]
    workers = [
        make_sends(factory, rpc, env.hsm, owner=f"racer-{k}", **ON, claim_batch=3) for k in range(2)
    ]

    def run(w: SendWorker) -> None:
        for _ in range(50):
            if not w.step():
                return

    race(workers, run, 300)
    sends = [env.get(sid) for sid in ids]
    assert {s.status for s in sends} == {SendStatus.BROADCAST}, Counter(s.status for s in sends)
    by_tx: dict[str, list[int]] = {}
    for i, s in enumerate(sends):
        assert s.txid
        by_tx.setdefault(s.txid, []).append(30_000 + i)
    pool = set(rpc.get_raw_mempool())
    assert set(by_tx) <= pool  # the node took every transaction: no coin spent twice
    for txid, values in by_tx.items():  # each transaction pays exactly its members, once
        assert _dest_values(env, txid) == sorted(values)
    assert sum(len(v) for v in by_tx.values()) == n
    # every signing request named each number once, across both workers
    numbers = [no for _, call in env.hsm.calls for no in call.removeprefix("batch:").split(",")]
    assert sorted(numbers) == sorted(s.user_tx_no for s in sends)


def _stuck_batch(env: Env, prefix: str, n: int = 3) -> list[int]:
    ids = [env.send(f"{prefix}-{i}", _outs(90_000 + i)) for i in range(n)]
    w = env.worker(fee_rate=1.0, **ON)
    assert w.step() == dict.fromkeys(ids, SendStatus.BROADCAST)
    env.sync()
    return ids


def test_a_batch_is_bumped_whole_and_every_member_takes_the_new_txid(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, [1_000_000])
    ids = _stuck_batch(env, "bb")
    old = env.get(ids[0]).txid
    result = fee_bump.bump(env.worker("bumper"), "bb-2", fee_rate=8.0)  # asked for a member
    assert result.replaced_txid == old != result.txid
    assert {env.get(sid).txid for sid in ids} == {result.txid}
    assert env.hsm.calls[-1][1] == "batch:bb-0,bb-1,bb-2"  # co-signed as the same batch
    pool = set(rpc.get_raw_mempool())
    assert result.txid in pool and old not in pool
    assert _dest_values(env, result.txid) == [90_000, 90_001, 90_002]
    with factory() as s:
        replaced = s.execute(
            select(JournalEntry.id).where(JournalEntry.kind == "send_replaced")
        ).all()
    assert len(replaced) == 3
    mine(rpc)
    env.sync()
    with factory() as s, s.begin():
        expire_leases(s)
    assert env.worker().step() == dict.fromkeys(ids, SendStatus.CONFIRMED)


def test_a_batch_whose_original_is_mined_after_all_follows_it(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, [1_000_000])
    ids = _stuck_batch(env, "bo")
    old = env.get(ids[0])
    result = fee_bump.bump(env.worker(), "bo-0", fee_rate=5.0)
    rpc.call("generateblock", MINER.address, [old.tx_hex])  # a miner took the original
    assert result.txid not in rpc.get_raw_mempool()
    env.sync()
    with factory() as s, s.begin():
        expire_leases(s)
    assert env.worker().step() == dict.fromkeys(ids, SendStatus.CONFIRMED)
    assert {env.get(sid).txid for sid in ids} == {old.txid}


def test_new_sends_are_claimed_before_broadcast_ones_waiting_for_a_block(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    """Ten sends in the mempool fill a claim of ten; the next one is built all the same."""
    env = Env(factory, rpc, faucet, [3_000_000])
    waiting = [env.send(f"mempool-{i}", _outs(40_000 + i)) for i in range(10)]
    w = env.worker()
    assert w.step(limit=10) == dict.fromkeys(waiting, SendStatus.BROADCAST)
    new = env.send("after", _outs(70_000))
    assert w.step(limit=10)[new] is SendStatus.BROADCAST
