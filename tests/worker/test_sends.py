"""The hot-send pipeline against a real regtest node, with the in-test HSM stand-in.

A full send (PSBT with derivations, both signatures, finalized, accepted and mined, confirmed);
crashes between BUILT and SIGNED and after the broadcast pay once; two workers racing never
spend the same coin; insufficient funds and an HSM refusal fail cleanly and release the coins;
an unreachable HSM is retried with backoff and alerted.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from custody import journal
from custody.balances import confirmed_balance
from custody.chain import BitcoinRPC
from custody.models import (
    Account,
    Address,
    Alert,
    Chain,
    JournalEntry,
    Send,
    SendStatus,
    TxStatus,
    Utxo,
    Wallet,
)
from custody.prevtxs import with_prev_txs
from custody.sends import SendFailed, SendWorker
from tests.api_fixtures import SoftwareHsmStandIn
from tests.node_fixtures import Faucet, Key, NodeProcess
from tests.worker_fixtures import (
    add_addresses,
    chain_tx,
    create_account,
    expire_leases,
    fund,
    make_sends,
    make_watcher,
    mine,
    new_send,
    race,
)
from wallet_core.hashes import hash160
from wallet_core.prevtx import parse_prev_tx
from wallet_core.psbt import Psbt
from wallet_core.rawtx import parse_signed_tx

DEST = Key.from_seed("send-destination")


class Env:
    """One funded account, its watcher and the HSM stand-in."""

    def __init__(
        self, factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, values: list[int]
    ) -> None:
        self.factory, self.rpc = factory, rpc
        self.hsm = SoftwareHsmStandIn()
        self.watcher = make_watcher(factory, rpc)
        with factory() as s, s.begin():
            acct = create_account(s, "sender")
            self.addresses = add_addresses(s, acct.id, Wallet.HOT, len(values))
        self.account_id = acct.id
        self.hsm.add(acct)
        self.keys = acct.keys
        for a, v in zip(self.addresses, values, strict=True):
            fund(rpc, faucet, [(bytes(a.script_pubkey), v)])
        mine(rpc)
        self.sync()
        with factory() as s:
            assert confirmed_balance(s, self.account_id, Wallet.HOT) == sum(values)

    def sync(self) -> None:
        self.watcher.step()

    def worker(self, owner: str = "w1", **kw: object) -> SendWorker:
        return make_sends(self.factory, self.rpc, self.hsm, owner=owner, **kw)

    def send(self, user_tx_no: str, outs: str, dynamic: int = 0) -> int:
        with self.factory() as s, s.begin():
            return new_send(s, self.account_id, user_tx_no, outs, dynamic=dynamic)

    def get(self, send_id: int) -> Send:
        with self.factory() as s:
            send = s.get(Send, send_id)
            assert send is not None
            return send

    def reserved(self, send_id: int) -> set[tuple[str, int]]:
        with self.factory() as s:
            rows = s.execute(
                select(Utxo.txid, Utxo.vout).where(Utxo.reserved_by_send == send_id)
            ).all()
            return {(t, v) for t, v in rows}

    def payments_to_dest(self, txids: list[str]) -> int:
        """How many of the node's transactions `txids` pay DEST (mempool or chain)."""
        n = 0
        for txid in txids:
            tx = self.find_tx(txid)
            n += sum(1 for o in tx["vout"] if o["scriptPubKey"]["hex"] == bytes(DEST.script).hex())
        return n

    def find_tx(self, txid: str) -> dict[str, Any]:
        """A transaction from the mempool or one of the last blocks (a node without txindex)."""
        if txid in self.rpc.get_raw_mempool():
            return dict(self.rpc.get_raw_transaction(txid, True))
        tip = self.rpc.get_block_count()
        for height in range(tip, max(tip - 10, 0), -1):
            for tx in self.rpc.get_block(self.rpc.get_block_hash(height), 2)["tx"]:
                if tx["txid"] == txid:
                    return dict(tx)
        raise AssertionError(f"{txid} neither in the mempool nor in the last blocks")


def _outs(value: int) -> str:
    return f"{DEST.address},{value}"


def test_full_hot_send_built_signed_broadcast_mined_confirmed(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, [300_000, 200_000])
    sid = env.send("order-1", _outs(120_000), dynamic=1)
    w = env.worker()
    assert w.step() == {sid: SendStatus.BROADCAST}
    send = env.get(sid)
    assert send.txid in rpc.get_raw_mempool()
    assert send.failure_reason == "" and send.fee and send.fee > 0
    assert send.change_index == 0

    # The PSBT carries what the hot HSM needs for the compact cold request.
    psbt = Psbt.from_base64(send.psbt)
    keys = env.keys
    cos_fp = keys.cosigner_root.fingerprint
    for i in range(psbt.input_count):
        origins = psbt.input_origins(i)
        assert origins[keys.hot_pubkey].fingerprint == hash160(keys.hot_pubkey)[:4]
        paths = {o.fingerprint: o.path for o in origins.values()}
        assert paths[cos_fp][-2] == 0 and len(paths[cos_fp]) == 6
        assert keys.recovery_root.fingerprint in paths
    change = psbt.outputs[-1]
    assert {o.path[-2:] for o in change.origins.values() if o.path} == {(1, 0)}
    assert change.witness_script is not None

    # The node accepted and mined exactly the recorded transaction.
    tx = parse_signed_tx(bytes.fromhex(send.tx_hex))
    assert tx.txid == send.txid and set(tx.outpoints) == env.reserved(sid)
    assert tx.outputs[0] == (bytes(DEST.script), 120_000)
    decoded = rpc.decode_raw_transaction(send.tx_hex)
    assert send.fee >= decoded["vsize"]  # at least 1 sat/vB (fallback 2 without estimates)
    env.sync()
    with factory() as s:
        row = chain_tx(s, env.account_id, Wallet.HOT, send.txid)
        assert row.status is TxStatus.MEMPOOL and row.value == -(120_000 + send.fee)
        assert all(i.is_mine for i in row.inputs)
        assert [o.is_mine for o in row.outputs] == [False, True]
        account = s.get(Account, env.account_id)
        assert account.hot_change_next == 1
        change_addr = s.execute(
            select(Address).where(Address.chain == Chain.CHANGE, Address.index == 0)
        ).scalar_one()
        assert change_addr.account_id == env.account_id
    mine(rpc)
    env.sync()
    assert w.step() == {sid: SendStatus.CONFIRMED}
    assert w.step() == {}
    with factory() as s:
        assert chain_tx(s, env.account_id, Wallet.HOT, send.txid).status is TxStatus.CONFIRMED
        assert confirmed_balance(s, env.account_id, Wallet.HOT) == 500_000 - 120_000 - send.fee
        kinds = list(s.execute(select(JournalEntry.kind).order_by(JournalEntry.id)).scalars())
        sends = [k for k in kinds if k.startswith("send_")]
        assert sends == ["send_built", "send_signed", "send_broadcast", "send_confirmed"]
        assert journal.verify(s).ok
        spent = s.execute(select(func.count(Utxo.id)).where(Utxo.spent_by == send.txid))
        assert spent.scalar_one() == len(tx.vin)
    assert env.hsm.calls == [(env.account_id, "order-1")]

    # A static-fee send uses the configured rate (2 sat/vB by default).
    sid2 = env.send("order-2", _outs(50_000), dynamic=0)
    assert w.step() == {sid2: SendStatus.BROADCAST}
    send2 = env.get(sid2)
    vsize = rpc.decode_raw_transaction(send2.tx_hex)["vsize"]
    assert 2 * vsize <= send2.fee <= 2 * vsize + 20
    assert send2.change_index == 1


def test_crash_between_built_and_signed_rebuilds_nothing_and_pays_once(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, [100_000, 100_000, 100_000])
    sid = env.send("crash-1", _outs(150_000))
    first = env.worker("first")
    assert first.claim() == [sid]
    assert first.advance(sid) is SendStatus.BUILT
    built = env.get(sid)
    inputs = env.reserved(sid)
    # The first worker even reached the HSM before dying: the cold side has signed once.
    env.hsm.sign_send(
        env.account_id,
        built.psbt,
        {"user_tx_no": "crash-1", "outs": built.outs},
        built.vc_code,
        built.c_id,
    )
    del first  # crash: the lease is left behind

    second = env.worker("second")
    assert second.step() == {}  # the lease still holds
    with factory() as s, s.begin():
        expire_leases(s)
    assert second.step() == {sid: SendStatus.BROADCAST}
    after = env.get(sid)
    assert after.psbt == built.psbt and after.fee == built.fee
    assert env.reserved(sid) == inputs
    with factory() as s:
        assert s.get(Account, env.account_id).hot_change_next == 1
        assert (
            s.execute(
                select(func.count(Address.id)).where(Address.chain == Chain.CHANGE)
            ).scalar_one()
            == 1
        )
    assert env.hsm.signed == {(env.account_id, "crash-1"): Psbt.from_base64(built.psbt).txid}
    pool = rpc.get_raw_mempool()
    assert after.txid in pool and env.payments_to_dest(pool) == 1


@pytest.mark.parametrize("mined_before_retry", [False, True])
def test_crash_after_broadcast_before_recording_does_not_pay_twice(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, mined_before_retry: bool
) -> None:
    env = Env(factory, rpc, faucet, [250_000])
    sid = env.send("bcast-1", _outs(100_000))
    first = env.worker("first")
    first.claim()
    assert first.advance(sid) is SendStatus.BUILT
    assert first.advance(sid) is SendStatus.SIGNED
    signed = env.get(sid)
    rpc.send_raw_transaction(signed.tx_hex)  # the node took it; then the worker died
    if mined_before_retry:
        mine(rpc)
    with factory() as s, s.begin():
        expire_leases(s)
    second = env.worker("second")
    assert second.step() == {sid: SendStatus.BROADCAST}
    assert env.get(sid).txid == signed.txid
    mine(rpc)
    env.sync()
    assert second.step() == {sid: SendStatus.CONFIRMED}
    block = rpc.get_block(rpc.get_best_block_hash(), 1)
    txids = [*rpc.get_raw_mempool(), *block["tx"][1:]]
    if mined_before_retry:
        txids += rpc.get_block(rpc.get_block_hash(rpc.get_block_count() - 1), 1)["tx"][1:]
    assert env.payments_to_dest(txids) == 1


def test_two_workers_racing_never_select_the_same_utxo(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, [100_000] * 8)
    ids = [env.send(f"race-{i}", _outs(40_000)) for i in range(6)]
    workers = [env.worker(f"racer-{n}") for n in range(2)]

    def run(w: SendWorker) -> None:
        while True:
            claimed = w.claim(limit=1, statuses=[SendStatus.PENDING])
            if not claimed:
                return
            for sid in claimed:
                w.advance(sid)  # build only

    race(workers, run, 120)
    spent: list[tuple[str, int]] = []
    with factory() as s:
        sends = {x.id: x for x in s.execute(select(Send)).scalars()}
        assert {x.status for x in sends.values()} == {SendStatus.BUILT}
        builders = [x.locked_by for x in sends.values()]
        assert set(builders) <= {"racer-0", "racer-1"}
        assert sorted(x.change_index for x in sends.values()) == list(range(6))
    for sid in ids:
        inputs = env.reserved(sid)
        assert inputs
        spent += inputs
    assert len(spent) == len(set(spent))  # no coin in two sends
    # And the node agrees: every transaction is accepted (no conflicting spends).
    finisher = env.worker("finisher")
    with factory() as s, s.begin():
        expire_leases(s)
    result = finisher.step(limit=10)
    assert set(result.values()) == {SendStatus.BROADCAST}
    pool = set(rpc.get_raw_mempool())
    assert {env.get(sid).txid for sid in ids} <= pool


def test_insufficient_funds_waits_with_a_clear_reason_then_goes(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    env = Env(factory, rpc, faucet, [30_000])
    sid = env.send("big-1", _outs(1_000_000))
    w = env.worker()
    assert w.step() == {sid: SendStatus.WAITING_FUNDS}
    send = env.get(sid)
    assert send.state_reason.startswith("waiting for funds: need 1000000 sat plus fee, have")
    assert send.failure_reason == "" and send.status.public_status == "pending"
    assert send.psbt is None and env.reserved(sid) == set()
    assert env.hsm.calls == []
    assert w.step() == {}  # not before send_wait_seconds
    with factory() as s, s.begin():
        expire_leases(s)
    assert w.step() == {sid: SendStatus.WAITING_FUNDS}  # still short: no second journal entry
    fund(rpc, faucet, [(bytes(env.addresses[0].script_pubkey), 2_000_000)])
    mine(rpc)
    env.sync()
    with factory() as s, s.begin():
        expire_leases(s)
    assert w.step() == {sid: SendStatus.BROADCAST}
    assert env.get(sid).state_reason == ""
    with factory() as s:
        kinds = list(s.execute(select(JournalEntry.kind).order_by(JournalEntry.id)).scalars())
    assert [k for k in kinds if k.startswith("send_")] == [
        "send_waiting",
        "send_built",
        "send_signed",
        "send_broadcast",
    ]


def test_hsm_refusal_fails_the_send_and_releases_its_coins(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, node: NodeProcess
) -> None:
    env = Env(factory, rpc, faucet, [80_000, 90_000])
    w = make_sends(factory, rpc, env.hsm, owner="w")
    w.config = node.config  # alerts are recorded (their SMS delivery fails: no gateway)
    env.hsm.refuse = "forged vc_code"
    sid = env.send("refused-1", _outs(60_000))
    assert w.step() == {sid: SendStatus.FAILED}
    send = env.get(sid)
    assert "forged vc_code" in send.failure_reason
    assert env.reserved(sid) == set() and send.tx_hex is None
    with factory() as s:
        assert s.execute(select(Alert.kind)).scalars().all() == ["send_failed"]
        unreserved = s.execute(
            select(func.count(Utxo.id)).where(Utxo.reserved_by_send.is_(None))
        ).scalar_one()
        assert unreserved == 2
    env.hsm.refuse = None
    sid2 = env.send("refused-2", _outs(60_000))
    assert w.step() == {sid2: SendStatus.BROADCAST}


def test_unreachable_hsm_is_retried_with_backoff_and_alerted(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, node: NodeProcess
) -> None:
    env = Env(factory, rpc, faucet, [120_000])
    w = make_sends(factory, rpc, env.hsm, owner="w", alert_after=2)
    w.config = node.config
    env.hsm.unavailable = True
    sid = env.send("later-1", _outs(50_000))
    assert w.step() == {sid: SendStatus.BUILT}
    assert env.get(sid).attempts == 1
    assert w.step() == {}  # backing off
    with factory() as s, s.begin():
        expire_leases(s)
    assert w.step() == {sid: SendStatus.BUILT}
    with factory() as s:
        assert s.execute(select(Alert.kind)).scalars().all() == ["cold_unreachable"]
    env.hsm.unavailable = False
    with factory() as s, s.begin():
        expire_leases(s)
    assert w.step() == {sid: SendStatus.BROADCAST}
    assert env.get(sid).attempts == 0


def test_a_truncated_or_non_hex_final_transaction_fails_the_send_with_a_reason() -> None:
    """Custody reads the final transaction with `wallet_core.rawtx`, the one parser: a
    truncated transaction is a send failure naming the problem, not an `IndexError`."""
    raw = bytes.fromhex(
        "02000000000101" + "ab" * 32 + "00000000" + "00" + "fdffffff" + "01" + "50c3000000000000"
        "160014" + "11" * 20 + "02" + "01" + "aa" + "01" + "bb" + "00000000"
    )
    assert parse_signed_tx(raw).outputs == [(bytes.fromhex("0014" + "11" * 20), 50_000)]
    for cut in (1, 10, 50, len(raw) - 1):
        with pytest.raises(SendFailed, match="final transaction unreadable: tx: truncated"):
            SendWorker._parse_final(raw[:-cut].hex())
    with pytest.raises(SendFailed, match="not hex"):
        SendWorker._parse_final("zz")


def test_funding_transactions_come_from_their_recorded_block(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet, monkeypatch
) -> None:
    """The cold HSM verifies amounts from funding transactions: custody attaches those of
    deposits, fetched from the block the watcher recorded (no txindex needed), and not those
    of its own sends' outputs (the cold HSM signed them, so it knows them)."""

    env = Env(factory, rpc, faucet, [300_000])
    sid = env.send("order-prev", _outs(100_000), dynamic=1)
    assert env.worker().step() == {sid: SendStatus.BROADCAST}
    send = env.get(sid)
    asked: list[tuple[str, str | None]] = []
    fetch = rpc.get_raw_transaction

    def recording(txid: str, verbose: bool = True, block_hash: str | None = None) -> object:
        asked.append((txid, block_hash))
        return fetch(txid, verbose, block_hash)

    monkeypatch.setattr(rpc, "get_raw_transaction", recording)
    full = Psbt.from_base64(with_prev_txs(factory, rpc, send.psbt, all_inputs=False))
    [(funding, _)] = env.reserved(sid)
    raw = full.input_prev_tx(0)
    assert raw is not None and parse_prev_tx(raw).txid == funding
    with factory() as s:
        recorded = chain_tx(s, env.account_id, Wallet.HOT, funding).block_hash
    assert asked == [(funding, recorded)] and recorded is not None
    # a PSBT spending the send's own change: nothing to attach up front
    change = Psbt.from_base64(send.psbt)
    monkeypatch.setattr(
        "custody.prevtxs._input_txids", lambda raw_tx: [send.txid] * change.input_count
    )
    asked.clear()
    with_prev_txs(factory, rpc, send.psbt, all_inputs=False)
    assert asked == []
