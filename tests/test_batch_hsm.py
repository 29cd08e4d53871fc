"""Batched payouts through the real HSM pair, driven by custody's send worker.

`firmware-sim`, `hsm-cold serve` and `hsm-hot serve` are real processes, the node is the
regtest node, custody's worker runs in the test's process against a SQLite database holding
an account provisioned on that pair (public keys only). Five V-device-signed sends pending
together go out in one transaction: the cold HSM binds every `user_tx_no` to it (its signed
statement names the shared txid), the node takes it, and every send shows the shared hash.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from custody.batches import AccountKeys
from custody.chain import BitcoinRPC
from custody.hsm_client import HotHsmClient
from custody.models import Account as CustodyAccount
from custody.models import Chain, Send, SendStatus, Wallet
from custody.sends import SendSettings, SendWorker
from tests.hsm_fixtures import HsmPair, random_address, send_request
from tests.test_hsm_pair import COIN, Account, client, node, pair
from tests.worker_fixtures import add_addresses, fresh_factory, make_watcher

__all__ = ["client", "node", "pair"]  # module fixtures shared with test_hsm_pair


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    yield from fresh_factory(f"sqlite:///{tmp_path / 'custody.db'}")


def custody_account(s: Session, acct: Account) -> None:
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


def test_pending_sends_go_out_in_one_transaction_cosigned_by_the_pair(
    pair: HsmPair, client: HotHsmClient, node: BitcoinRPC, factory: sessionmaker[Session]
) -> None:
    acct = Account(client, pair)
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
    audit = [e for e in pair.audit() if e["event"] == "sign_batch"]
    assert [e["user_tx_nos"] for e in audit] == [numbers]
