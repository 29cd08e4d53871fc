"""A hacked custody host against batched payouts, with the real HSM pair and node.

The attacker holds custody's database (every genuine V-device-signed request) and the hot
HSM's RPC secret. A batch through `sign_batch` is co-signed only if it pays exactly the union
of its members' signed `outs` plus change: an added output, a dropped or rewritten member's
payment, or a member the V-device never signed is refused whole by the cold HSM, which freezes
the account and alerts; no signature comes back, nothing reaches the node. The honest batch
is accepted by the node, every member's number is bound to its txid, and the batch is fee
bumped only as a whole. Custody's own send worker, on the same pair and node, puts pending
sends in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from custody.batches import AccountKeys
from custody.models import Account as CustodyAccount
from custody.models import Chain, Send, SendStatus, Wallet
from custody.sends import SendSettings, SendWorker
from tests.attacks.custody_host import HostAttack, Victim
from tests.harness import Deployment
from tests.hsm_fixtures import Coin, VDevice, build_send_psbt, random_address, send_request
from tests.worker_fixtures import add_addresses, fresh_factory, make_watcher
from wallet_core.psbt import Psbt

FORGED, REUSED, MISMATCH, EXTRA = 706, 707, 708, 709
FEE = 5_000
COIN = 100_000_000


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostAttack]:
    d = Deployment(
        tmp_path_factory.mktemp("custody-host-batch"),
        config={"hsm_hot": {"max_requests_per_minute": 10_000}},
    )
    h = HostAttack(d)
    with d.serving():
        yield h.start()


Payments = list[tuple[str, int]]


def member(victim: Victim, pay: Payments, no: str) -> dict[str, Any]:
    return {k: v for k, v in victim.genuine(pay, no).items() if k != "account"}


def batch_psbt(
    victim: Victim, coin: Coin, paid: Payments, *, fee: int = FEE, change: int = 0
) -> Psbt:
    return build_send_psbt(
        victim.wallet, [coin], paid, change=(change, coin.value - sum(v for _, v in paid) - fee)
    )


def batches_signed(host: HostAttack, prefix: str) -> list[list[str]]:
    return [
        e["user_tx_nos"]
        for e in host.pair.audit()
        if e["event"] == "sign_batch" and str(e["user_tx_nos"][0]).startswith(prefix)
    ]


def test_an_honest_batch_is_mined_and_bumped_only_whole(host: HostAttack) -> None:
    victim = host.victim()
    coin = host.hot_coin(victim, 0)
    host.mature()
    pays = [[(random_address(), 1_000_000 + i)] for i in range(3)]
    members = [member(victim, p, f"honest-{i}") for i, p in enumerate(pays)]
    psbt = batch_psbt(victim, coin, [p for pay in pays for p in pay])
    answer = host.hot.sign_batch(victim.id, psbt.to_base64(), members)
    assert host.hot.sign_batch(victim.id, psbt.to_base64(), members) == answer  # a retry
    signed = Psbt.from_base64(answer)
    signed.finalize()
    txid = host.node.send_raw_transaction(signed.extract_hex())
    assert txid == psbt.txid and txid in host.node.get_raw_mempool()
    for i in range(3):
        assert host.hot.send_statement(victim.id, f"honest-{i}")["txid"] == txid
    assert batches_signed(host, "honest-") == [[f"honest-{i}" for i in range(3)]]

    # a fee bump pays the same union with more fee: co-signed, and it replaces the batch
    bump = batch_psbt(victim, coin, [p for pay in pays for p in pay], fee=3 * FEE, change=1)
    signed = Psbt.from_base64(host.hot.sign_batch(victim.id, bump.to_base64(), members))
    signed.finalize()
    assert host.node.send_raw_transaction(signed.extract_hex()) == bump.txid
    pool = host.node.get_raw_mempool()
    assert bump.txid in pool and txid not in pool
    for i in range(3):
        assert host.hot.send_statement(victim.id, f"honest-{i}")["txid"] == bump.txid

    # a "bump" that drops a member would evict its payment: a reuse, refused, frozen
    before = host.chain()
    dropped = batch_psbt(victim, coin, pays[0] + pays[1], fee=6 * FEE, change=2)
    err = host.refused(
        REUSED, "sign_batch", account=victim.id, psbt=dropped.to_base64(), members=members[:2]
    )
    assert "not a replacement" in err.message
    assert host.chain() == before
    host.assert_frozen_and_alerted(victim, "user_tx_no reused")


@pytest.mark.parametrize(
    ("attack", "code", "words"),
    [
        ("added-output", EXTRA, "extra output"),
        ("dropped-member", MISMATCH, "output mismatch"),
        ("rewritten-member", MISMATCH, "output mismatch"),
        ("unsigned-member", FORGED, "forged vc_code"),
    ],
)
def test_a_tampered_batch_is_refused_whole_and_freezes(
    host: HostAttack, attack: str, code: int, words: str
) -> None:
    victim = host.victim()
    coin = host.hot_coin(victim, 0)
    prefix = f"{attack}-"
    pays = [[(random_address(), 2_000_000 + i)] for i in range(3)]
    members = [member(victim, p, f"{prefix}{i}") for i, p in enumerate(pays)]
    paid = [p for pay in pays for p in pay]
    thief = random_address()
    if attack == "added-output":  # the attacker's own output beside the signed payments
        paid.append((thief, 500_000))
    elif attack == "dropped-member":  # member 1 is claimed paid but its payment is left out
        paid = [paid[0], paid[2]]
    elif attack == "rewritten-member":  # member 2's payment goes to the attacker
        paid[2] = (thief, paid[2][1])
    elif attack == "unsigned-member":  # a member of the attacker's making, signed by no phone
        request = send_request([(thief, 700_000)], f"{prefix}x")
        members.append(
            {
                "request": request,
                "vc_code": VDevice("impostor").vc_code(request),
                "c_id": victim.c_id,
            }
        )
        paid.append((thief, 700_000))
    psbt = batch_psbt(victim, coin, paid)
    before = host.chain()
    err = host.refused(
        code, "sign_batch", account=victim.id, psbt=psbt.to_base64(), members=members
    )
    assert f"account {victim.id} frozen" in err.message
    assert host.chain() == before  # nothing reached the node
    assert batches_signed(host, prefix) == []  # no hot signature either
    host.assert_frozen_and_alerted(victim, words)


# -- custody's worker with the real pair ---------------------------------------------------


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    yield from fresh_factory(f"sqlite:///{tmp_path / 'custody.db'}")


def custody_account(s: Session, acct: Victim) -> None:
    """The account as `custody account create` stores it: the pair's public keys only."""
    p = acct.prov
    row = CustodyAccount(
        id=acct.id,
        name=f"batch-{acct.id}",
        network="regtest",
        vdevice_phone="+15550000100",
        owner_phone="+15550000200",
        settlement_descriptor="",
        cold_receiving_xpub=p.receiving_xpub,
        hot_pubkey=p.hot_pubkey,
        cold_cosigner_xpub=p.cosigner_xpub,
        recovery_xpub=p.recovery_xpub,
        receiving_fingerprint=p.receiving_fingerprint or "00000000",
        cosigner_fingerprint=p.cosigner_fingerprint,
        recovery_fingerprint=p.recovery_fingerprint,
        cold_descriptor="",
        hot_descriptor="",
        cold_identity_pubkey=p.cold_identity,
        vdevice_identity_pubkey=acct.vdev.identity_hex,
        provisioning_proof=p.proof,
    )
    keys = AccountKeys.from_account(row)
    row.cold_descriptor = keys.descriptor(Wallet.COLD, Chain.RECEIVE)
    row.hot_descriptor = keys.descriptor(Wallet.HOT, Chain.RECEIVE)
    s.add(row)
    s.flush()


def test_custodys_worker_sends_pending_sends_in_one_transaction(
    host: HostAttack, factory: sessionmaker[Session]
) -> None:
    """custody's send worker (in this process, on SQLite) with the real pair and node: five
    V-device-signed sends pending together go out in one transaction; the cold HSM's signed
    statement for every number names it, and every send shows it."""
    acct, node, client = host.victim(), host.node, host.hot
    watcher = make_watcher(factory, node)
    with factory() as s, s.begin():
        custody_account(s, acct)
        [address] = add_addresses(s, acct.id, Wallet.HOT, 1)
    node.generate_to_address(1, address.address)  # a coinbase to the hot wallet
    node.generate_to_address(100, random_address())
    watcher.step()
    numbers = [f"pair-batch-{i}" for i in range(5)]
    payments = [(random_address(), COIN // 10 + i) for i in range(5)]
    with factory() as s, s.begin():
        for no, pay in zip(numbers, payments, strict=True):
            request = send_request([pay], no)
            s.add(
                Send(
                    account_id=acct.id,
                    user_tx_no=no,
                    outs=request["outs"],
                    is_dynamic_fee=request["is_dynamic_fee"],
                    vc_code=acct.vdev.vc_code(request),
                    c_id=acct.c_id,
                )
            )
    worker = SendWorker(factory, node, client, SendSettings(batching=True), owner="w")
    assert set(worker.step().values()) == {SendStatus.BROADCAST}
    with factory() as s:
        sends = s.query(Send).order_by(Send.id).all()
        txids = {x.txid for x in sends}
    [txid] = txids
    assert txid in node.get_raw_mempool()
    tx = node.get_raw_transaction(txid, True)
    paid = {
        (o["scriptPubKey"]["address"], int(Decimal(str(o["value"])) * COIN)) for o in tx["vout"]
    }
    assert set(payments) <= paid and len(tx["vout"]) == 6  # five payments and the change
    for no in numbers:  # the cold HSM bound every number to the one transaction
        assert client.send_statement(acct.id, no)["txid"] == txid
    assert batches_signed(host, "pair-batch-") == [numbers]
