"""Fee bumping in custody against a real regtest node (HSM stand-in), SQLite and PostgreSQL.

A send stuck at a low fee is replaced by one paying the same outputs with a higher fee; the
watcher marks the old transaction replaced and the send confirms with the new txid. A crash
between signing the replacement and broadcasting it resumes that very replacement (no second
signing) and at most one of the two ever reaches the chain. If the original is mined after
all, the send follows it. A send whose change a later send spends cannot be bumped.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import fee_bump
from custody.chain import BitcoinRPC
from custody.models import (
    DepositState,
    Event,
    ReplacementStatus,
    SendReplacement,
    SendStatus,
    TxStatus,
    Wallet,
)
from tests.node_fixtures import Faucet
from tests.worker.test_sends import Env, _outs
from tests.worker_fixtures import (
    MINER,
    chain_tx,
    mine,
)


@pytest.fixture
def env(factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet) -> Env:
    """A send rig with one 400 000 sat coin of the test's own."""
    return Env(factory, rpc, faucet, [400_000])


def stuck_send(env: Env, no: str, value: int = 100_000) -> int:
    sid = env.send(no, _outs(value))
    assert env.worker(fee_rate=1.0).step() == {sid: SendStatus.BROADCAST}
    env.sync()  # the watcher saw it in the mempool
    return sid


def test_bump_replaces_and_the_send_confirms_with_the_new_txid(
    factory: sessionmaker[Session], rpc: BitcoinRPC, env: Env
) -> None:
    sid = stuck_send(env, "bump-1")
    old, inputs = env.get(sid), env.reserved(sid)
    result = fee_bump.bump(env.worker("bumper"), "bump-1", fee_rate=8.0)
    new = env.get(sid)
    assert result.replaced_txid == old.txid and result.txid == new.txid != old.txid
    assert new.fee == result.fee and new.fee >= 8 * rpc.decode_raw_transaction(new.tx_hex)["vsize"]
    assert new.status is SendStatus.BROADCAST and new.locked_by is None
    pool = set(rpc.get_raw_mempool())
    assert new.txid in pool and old.txid not in pool
    assert env.reserved(sid) == inputs  # the same inputs, still reserved
    env.sync()
    with factory() as s:
        gone = chain_tx(s, env.account_id, Wallet.HOT, old.txid)
        assert gone.status is TxStatus.REMOVED and gone.state is DepositState.REPLACED
        kinds = list(s.execute(select(Event.kind).order_by(Event.seq)).scalars())
        assert "send.replaced" in kinds
    mine(rpc)
    env.sync()
    assert env.worker().step() == {sid: SendStatus.CONFIRMED}
    assert env.get(sid).txid == result.txid
    assert env.payments_to_dest([result.txid]) == 1


def test_crash_between_signing_and_broadcasting_the_bump_resumes_it(
    factory: sessionmaker[Session], rpc: BitcoinRPC, env: Env
) -> None:
    sid = stuck_send(env, "bump-crash")
    old = env.get(sid)
    first = env.worker("first")
    fee_bump._lease(first, sid)
    rep_id = fee_bump._pending_or_new(first, sid, 6.0)
    fee_bump._sign(first, sid, rep_id)
    calls = len(env.hsm.calls)
    fee_bump._release(first, sid)  # the process died here: signed, never broadcast
    assert set(rpc.get_raw_mempool()) >= {old.txid}
    result = fee_bump.bump(env.worker("second"), "bump-crash", fee_rate=50.0)
    assert len(env.hsm.calls) == calls  # the signed replacement was resumed, not re-made
    with factory() as s:
        rep = s.get(SendReplacement, rep_id)
        assert rep.status is ReplacementStatus.CURRENT and rep.txid == result.txid
    pool = set(rpc.get_raw_mempool())
    assert result.txid in pool and old.txid not in pool
    mine(rpc)
    block = rpc.get_block(rpc.get_best_block_hash(), 1)["tx"]
    assert env.payments_to_dest(block[1:]) == 1


def test_original_mined_after_all_is_followed(
    factory: sessionmaker[Session], rpc: BitcoinRPC, env: Env
) -> None:
    sid = stuck_send(env, "bump-orig")
    old = env.get(sid)
    result = fee_bump.bump(env.worker(), "bump-orig", fee_rate=5.0)
    rpc.call("generateblock", MINER.address, [old.tx_hex])  # a miner took the original
    assert result.txid not in rpc.get_raw_mempool()
    env.sync()
    assert env.worker().step() == {sid: SendStatus.CONFIRMED}
    send = env.get(sid)
    assert send.txid == old.txid and send.fee == old.fee
    with factory() as s:
        statuses = {
            r.txid: r.status
            for r in s.execute(
                select(SendReplacement).where(SendReplacement.send_id == sid)
            ).scalars()
        }
    assert statuses == {
        old.txid: ReplacementStatus.CURRENT,
        result.txid: ReplacementStatus.REPLACED,
    }


def test_bump_refusals(factory: sessionmaker[Session], rpc: BitcoinRPC, env: Env) -> None:
    sid = stuck_send(env, "parent")
    child = env.send("child", _outs(50_000))
    assert env.worker().step()[child] is SendStatus.BROADCAST  # spends parent's change
    with pytest.raises(fee_bump.BumpRefused, match="spent by a later send"):
        fee_bump.bump(env.worker(), "parent", fee_rate=5.0)
    with pytest.raises(fee_bump.BumpRefused, match="no send with user_tx_no 'nope'"):
        fee_bump.bump(env.worker(), "nope")
    mine(rpc)
    env.sync()
    env.worker().step()
    with pytest.raises(fee_bump.BumpRefused, match="send is confirmed"):
        fee_bump.bump(env.worker(), "child", fee_rate=5.0)
    assert env.get(sid).status is SendStatus.CONFIRMED


def test_automatic_bump_after_n_blocks(
    factory: sessionmaker[Session], rpc: BitcoinRPC, env: Env
) -> None:
    sid = stuck_send(env, "auto-1")
    old = env.get(sid)
    w = env.worker("auto", fee_ceiling=50.0)
    assert fee_bump.auto_bump(w, 2) == 0  # not stuck yet
    for _ in range(2):  # blocks that leave it out (as if the miners preferred others)
        rpc.call("generateblock", MINER.address, [])
    env.sync()
    assert fee_bump.auto_bump(w, 0) == 0  # off
    assert fee_bump.auto_bump(w, 2) == 1
    new = env.get(sid)
    assert new.txid != old.txid and new.txid in rpc.get_raw_mempool()
    assert new.fee >= 2 * old.fee
    assert fee_bump.auto_bump(w, 2) == 0  # the next try only after 2 more blocks
