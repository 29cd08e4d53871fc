"""The maintained balance (`account_balances`, kept by triggers on `utxos`) on both backends.

Every kind of UTXO change the watcher and the send worker make (mempool arrival, mining,
spending, a reorg back to the mempool, removal) must move the maintained row in the same
transaction, reservations must not, and `verify_balances` / `custody balance verify` must
find a row that was changed behind the triggers' back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from custody import journal
from custody.balances import confirmed_balance, unconfirmed_balance, verify_balances
from custody.cli import main as custody_main
from custody.models import (
    AccountBalance,
    Address,
    Base,
    Chain,
    JournalEntry,
    Utxo,
    Wallet,
)
from tests.api_fixtures import SoftwareHsmStandIn, new_account, seen_block, write_database_config


def _address(s: Session, account_id: int, wallet: Wallet, index: int) -> int:
    a = Address(
        account_id=account_id,
        wallet=wallet,
        chain=Chain.CHANGE,
        index=index,
        address=f"bcrt1qtest{account_id}-{int(wallet)}-{index}",
        script_pubkey=bytes([account_id, int(wallet), index]) * 8,
    )
    s.add(a)
    s.flush()
    return a.id


def _utxo(
    s: Session,
    account_id: int,
    wallet: Wallet,
    txid: str,
    value: int,
    address_id: int,
    block_height: int | None = None,
    vout: int = 0,
) -> None:
    utxo = Utxo(account_id=account_id, wallet=wallet, txid=txid, vout=vout, value=value)
    utxo.address_id, utxo.block_height = address_id, block_height
    s.add(utxo)


def _state(factory: sessionmaker[Session], account_id: int, wallet: Wallet) -> tuple[int, ...]:
    """(conf >= 1, conf >= 2, mempool), after checking the maintained rows against the sums."""
    with factory() as s:
        assert verify_balances(s) == []
        return (
            confirmed_balance(s, account_id, wallet, 1),
            confirmed_balance(s, account_id, wallet, 2),
            unconfirmed_balance(s, account_id, wallet),
        )


def test_balance_follows_every_utxo_change(
    session_factory: sessionmaker[Session], hsm: SoftwareHsmStandIn
) -> None:
    acct = new_account(session_factory, hsm).id
    other = new_account(session_factory, hsm).id
    hot, cold = Wallet.HOT, Wallet.COLD
    with session_factory() as s, s.begin():
        for h in (100, 101):
            s.add(seen_block(h))
        addr = _address(s, acct, hot, 0)
        other_addr = _address(s, other, cold, 0)
        _utxo(s, other, cold, "c" * 64, 777, other_addr, block_height=100)
    assert _state(session_factory, acct, hot) == (0, 0, 0)

    def change(**values: object) -> None:
        with session_factory() as s, s.begin():
            s.execute(update(Utxo).where(Utxo.txid == "a" * 64).values(**values))

    with session_factory() as s, s.begin():  # arrives in the mempool
        _utxo(s, acct, hot, "a" * 64, 5_000, addr)
    assert _state(session_factory, acct, hot) == (0, 0, 5_000)
    change(block_height=101)  # mined in the tip block: one confirmation
    assert _state(session_factory, acct, hot) == (5_000, 0, 0)
    with session_factory() as s, s.begin():  # a second output, two blocks deep
        _utxo(s, acct, hot, "b" * 64, 300, addr, block_height=100, vout=1)
    assert _state(session_factory, acct, hot) == (5_300, 300, 0)
    with session_factory() as s, s.begin():  # a send reserves it: no balance change
        before = s.execute(select(AccountBalance.confirmed)).all()
        s.execute(update(Utxo).where(Utxo.txid == "a" * 64).values(reserved_by_send=None))
        assert s.execute(select(AccountBalance.confirmed)).all() == before
    change(spent_by="d" * 64)  # spent
    assert _state(session_factory, acct, hot) == (300, 300, 0)
    change(spent_by=None, block_height=None)  # the spend and the block were reorged away
    assert _state(session_factory, acct, hot) == (300, 300, 5_000)
    with session_factory() as s, s.begin():  # its transaction left the mempool
        s.execute(delete(Utxo).where(Utxo.txid == "a" * 64))
    assert _state(session_factory, acct, hot) == (300, 300, 0)
    assert _state(session_factory, acct, cold) == (0, 0, 0)
    assert _state(session_factory, other, cold) == (777, 777, 0)


def test_a_failed_transaction_leaves_the_balance(
    session_factory: sessionmaker[Session], hsm: SoftwareHsmStandIn
) -> None:
    acct = new_account(session_factory, hsm).id
    with session_factory() as s, s.begin():
        s.add(seen_block(100))
        addr = _address(s, acct, Wallet.COLD, 0)
    with pytest.raises(RuntimeError), session_factory() as s, s.begin():
        _utxo(s, acct, Wallet.COLD, "e" * 64, 9, addr, block_height=100)
        s.flush()
        raise RuntimeError("rolled back")
    assert _state(session_factory, acct, Wallet.COLD) == (0, 0, 0)


def test_bulk_statements_move_every_side(
    session_factory: sessionmaker[Session], hsm: SoftwareHsmStandIn
) -> None:
    """One statement over many rows of several accounts (a bulk load, a block's update)."""
    accts = [new_account(session_factory, hsm).id for _ in range(2)]
    with session_factory() as s, s.begin():
        s.add(seen_block(100))
        s.add(seen_block(101))
        addrs = [_address(s, a, Wallet.HOT, 0) for a in accts]
        s.execute(
            insert(Utxo),
            [
                {
                    "account_id": a,
                    "wallet": Wallet.HOT,
                    "txid": f"{a:02x}{i:062x}",
                    "vout": 0,
                    "value": 10 + i,
                    "address_id": addr,
                    "block_height": None,
                }
                for a, addr in zip(accts, addrs, strict=True)
                for i in range(50)
            ],
        )
    assert _state(session_factory, accts[1], Wallet.HOT) == (0, 0, 50 * 10 + 1225)
    with session_factory() as s, s.begin():
        s.execute(update(Utxo).where(Utxo.vout == 0).values(block_height=100))
    assert _state(session_factory, accts[0], Wallet.HOT) == (1725, 1725, 0)
    with session_factory() as s, s.begin():
        s.execute(delete(Utxo).where(Utxo.account_id == accts[0]))
    assert _state(session_factory, accts[0], Wallet.HOT) == (0, 0, 0)
    assert _state(session_factory, accts[1], Wallet.HOT) == (1725, 1725, 0)


def test_verify_finds_a_row_changed_behind_the_triggers(
    tmp_path: Path,
    db_url: str,
    session_factory: sessionmaker[Session],
    hsm: SoftwareHsmStandIn,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_database_config(tmp_path, db_url)
    acct = new_account(session_factory, hsm).id
    with session_factory() as s, s.begin():
        addr = _address(s, acct, Wallet.COLD, 0)
        _utxo(s, acct, Wallet.COLD, "f" * 64, 1_000, addr, block_height=5)
    assert custody_main(["balance", "verify", "--dir", str(tmp_path)]) == 0
    assert "equals the sum" in capsys.readouterr().out
    with session_factory() as s, s.begin():
        s.execute(update(AccountBalance).values(confirmed=AccountBalance.confirmed + 1))
    with session_factory() as s:
        [bad] = verify_balances(s)
    assert (bad.account_id, bad.wallet, bad.maintained, bad.summed) == (
        acct,
        Wallet.COLD,
        (1_001, 0),
        (1_000, 0),
    )
    assert custody_main(["balance", "verify", "--dir", str(tmp_path)]) == 1
    assert f"account {acct} cold: maintained 1001 mined" in capsys.readouterr().out


def _balance_records(factory: sessionmaker[Session], account_id: int) -> list[dict[str, object]]:
    with factory() as s:
        rows = s.execute(
            select(JournalEntry.data)
            .where(JournalEntry.kind == "balance", JournalEntry.account_id == account_id)
            .order_by(JournalEntry.id)
        ).scalars()
        return [json.loads(r) for r in rows]


def test_every_change_is_journalled_and_a_forged_balance_fails_verify(
    tmp_path: Path,
    db_url: str,
    session_factory: sessionmaker[Session],
    hsm: SoftwareHsmStandIn,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each balance change leaves a hash-chained journal record of the new totals (none for a
    reservation); rewriting the balance row and the outputs to agree with each other is
    still caught, by the journal, naming the account."""
    write_database_config(tmp_path, db_url)
    acct = new_account(session_factory, hsm).id
    with session_factory() as s, s.begin():
        s.add(seen_block(100))
        addr = _address(s, acct, Wallet.HOT, 0)
        s.add(
            Utxo(
                account_id=acct,
                wallet=Wallet.HOT,
                txid="a" * 64,
                vout=0,
                value=700,
                address_id=addr,
            )
        )
    with session_factory() as s, s.begin():
        s.execute(update(Utxo).values(block_height=100))
    with session_factory() as s, s.begin():  # a reservation moves no balance: no record
        s.execute(update(Utxo).values(reserved_by_send=None))
    assert _balance_records(session_factory, acct) == [
        {"wallet": "hot", "confirmed": 0, "unconfirmed": 700},
        {"wallet": "hot", "confirmed": 700, "unconfirmed": 0},
    ]
    with session_factory() as s:
        assert verify_balances(s) == []
        assert journal.verify(s).ok
    # the attacker's edit: outputs and balance agree with each other, 700 -> 70 000
    with session_factory.kw["bind"].begin() as conn:
        conn.execute(update(Utxo).values(value=70_000))
        conn.execute(update(AccountBalance).values(confirmed=70_000, unjournalled=False))
    with session_factory() as s:
        [bad] = verify_balances(s)
    assert (bad.account_id, bad.maintained, bad.summed, bad.journalled) == (
        acct,
        (70_000, 0),
        (70_000, 0),
        (700, 0),
    )
    assert custody_main(["balance", "verify", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"account {acct} hot: maintained 70000 mined" in out
    assert "the journal records 700 + 0" in out


def test_create_all_installs_the_triggers(tmp_path: Path) -> None:
    """Test databases made from the models (not the migrations) keep the balance too."""
    engine = create_engine(f"sqlite:///{tmp_path / 'models.db'}")
    Base.metadata.create_all(engine)
    with engine.connect() as conn:
        names = {
            r[0]
            for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
    engine.dispose()
    assert {"utxos_balance_insert", "utxos_balance_update", "utxos_balance_delete"} <= names
