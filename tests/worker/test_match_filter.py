"""The watcher's script filter never filters out one of our scripts: every address stored
before a refresh passes it, including one whose transaction took its id before another
writer's but committed after it (PostgreSQL hands ids out before commit), and it keeps
almost all foreign scripts out; a watcher that loaded it sees a deposit to an address another
session added afterwards."""

from __future__ import annotations

import hashlib

from sqlalchemy.orm import Session, sessionmaker

from custody.chain import BitcoinRPC
from custody.match_filter import MatchFilter
from custody.models import Address, Chain, TxStatus, Wallet
from tests.node_fixtures import Faucet
from tests.worker_fixtures import (
    add_addresses,
    chain_tx,
    create_account,
    fund,
    make_watcher,
    mine,
)


def _address(account_id: int, index: int) -> Address:
    program = hashlib.sha256(b"late %d" % index).digest()[:20]
    return Address(
        account_id=account_id,
        wallet=Wallet.HOT,
        chain=Chain.CHANGE,
        index=index,
        address=f"late-{index}",
        script_pubkey=b"\x00\x14" + program,
    )


def test_every_stored_script_passes_and_foreign_ones_mostly_do_not(
    factory: sessionmaker[Session],
) -> None:
    with factory() as s, s.begin():
        account = create_account(s, "filter")
        ours = [bytes(a.script_pubkey) for a in add_addresses(s, account.id, Wallet.COLD, 200)]
    f = MatchFilter([(Address.id, Address.script_pubkey)])
    with factory() as s:
        assert f.refresh(s) == 200
    foreign = [b"\x00\x14" + hashlib.sha256(b"x %d" % i).digest()[:20] for i in range(5000)]
    assert f.candidates(ours) == ours
    assert len(f.candidates(foreign)) <= 5  # 200 bits of 2^27 set


def test_an_address_committed_after_a_later_one_is_still_seen(
    factory: sessionmaker[Session],
) -> None:
    with factory() as s, s.begin():
        account_id = create_account(s, "late").id
    f = MatchFilter([(Address.id, Address.script_pubkey)])
    with factory() as s:
        f.refresh(s)
    slow = factory()
    slow.begin()
    if slow.get_bind().dialect.name == "postgresql":
        early = _address(account_id, 1)
        slow.add(early)
        slow.flush()  # its id is taken, its row not visible yet
        with factory() as s, s.begin():
            later = _address(account_id, 2)
            s.add(later)
            s.flush()
            assert later.id > early.id
    else:  # one writer at a time: the second waits for the first to commit
        early = _address(account_id, 1)
        slow.add(early)
        slow.flush()
        later = None
    with factory() as s:
        f.refresh(s)  # sees the later row only
    if later is not None:
        assert f.candidates([bytes(later.script_pubkey)])
    slow.commit()
    slow.close()
    for _ in range(2):
        with factory() as s:
            f.refresh(s)
    assert f.candidates([bytes(early.script_pubkey)]) == [bytes(early.script_pubkey)]


def test_the_watcher_sees_a_deposit_to_an_address_added_after_it_started(
    factory: sessionmaker[Session], rpc: BitcoinRPC, faucet: Faucet
) -> None:
    with factory() as s, s.begin():
        account_id = create_account(s, "late-watch").id
        add_addresses(s, account_id, Wallet.HOT, 1)
    w = make_watcher(factory, rpc)
    mine(rpc)
    w.step()  # the filter is loaded
    with factory() as s, s.begin():  # another writer (the API) adds an address
        late = bytes(add_addresses(s, account_id, Wallet.COLD, 1)[0].script_pubkey)
    mine(rpc)
    txid = fund(rpc, faucet, [(late, 25_000)])
    mine(rpc, 2)  # a chunk of two blocks, the deposit in the first
    assert w.step().connected >= 2
    with factory() as s:
        row = chain_tx(s, account_id, Wallet.COLD, txid)
        assert row is not None and row.status is TxStatus.CONFIRMED and row.value == 25_000
