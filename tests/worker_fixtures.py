"""Fixtures for the chain watcher and the hot-send worker (tests/worker/).

- A real regtest node process per test module (`tests.node_fixtures`), funded by a faucet.
- A fresh custody database per test, from `custody.models.Base.metadata.create_all`, on
  SQLite (a file in the test's directory) and on PostgreSQL (`CC_TEST_PG_URL`, default
  `postgresql://postgres@127.0.0.1:5432/test`): one database `cc_w_<random>` per module,
  dropped afterwards, tables recreated per test. PostgreSQL tests are skipped, saying why,
  when the server is unreachable.
- Accounts inserted directly, with public keys from wallet_core software keys.
- `SoftwareHsmPairStandIn`: an IN-TEST STAND-IN for the hot+cold HSM pair's `sign_send`,
  signing with software keys (the hot key and the cold cosigner key from test seeds). It is
  not the HSM: it does the checks the brief of the cold HSM names that matter to the send
  pipeline (outputs equal to `outs` in order plus derivable change, `user_tx_no` not reused
  for a different transaction) so the worker's behaviour can be tested before the real HSM
  processes exist. The full-process tests replace it with `hsm_hot` + `hsm_cold`.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from custody.api import tx_json
from custody.batches import AccountKeys, account_keys
from custody.chain import BitcoinRPC
from custody.db import make_engine, make_session_factory
from custody.models import (
    Account,
    Address,
    Base,
    Chain,
    ChainTx,
    Send,
    Utxo,
    Wallet,
)
from custody.sends import SendSettings, SendWorker
from custody.watcher import Watcher, WatcherSettings
from tests.api_fixtures import SoftKeys, SoftwareHsmStandIn, TestAccount, emptied
from tests.node_fixtures import FEE, Faucet, Key, hex_of, spend_p2wpkh, txid_hex
from wallet_core.networks import Network
from wallet_core.wallets import AccountKey, bip84_account_path

NET = Network.REGTEST
PG_URL = os.environ.get("CC_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
FAUCET_SEED = "worker-tests-faucet"
MINER = Key.from_seed(FAUCET_SEED)  # every block reward goes to the faucet's key


# ---------------------------------------------------------------------- databases


def _pg_admin_url() -> str:
    return PG_URL


def pg_reachable() -> str | None:
    """None if PostgreSQL answers, else the reason (for the skip message)."""
    try:
        with psycopg.connect(_pg_admin_url(), connect_timeout=3):
            return None
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} unreachable: {type(exc).__name__}"


def fresh_pg_database() -> Iterator[str]:
    """Body of a module fixture: a fresh database `cc_w_<random>`, dropped at the end."""
    reason = pg_reachable()
    if reason is not None:
        pytest.skip(reason)

    name = f"cc_w_{secrets.token_hex(6)}"
    with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def db_url_for(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Body of the `db_url` fixture, parametrized over ["sqlite", "postgresql"]."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'custody.db'}"
    return str(request.getfixturevalue("pg_database"))


# The PostgreSQL databases whose tables this session created: later tests only empty them
# (`emptied`: tens of milliseconds, where dropping and creating the tables takes most of a
# second on PostgreSQL).
_CREATED: set[str] = set()


def fresh_factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    """Body of the `factory` fixture: empty tables from the models, disposed afterwards."""
    eng = make_engine(db_url, pool_size=4)
    if db_url in _CREATED:
        emptied(db_url)
    else:
        Base.metadata.drop_all(eng)
        Base.metadata.create_all(eng)
        if eng.dialect.name == "postgresql":
            _CREATED.add(db_url)
    try:
        factory = make_session_factory(eng)
        yield factory
        assert_arrays_stored(factory)
    finally:
        eng.dispose()


def assert_arrays_stored(factory: sessionmaker[Session]) -> None:
    """Every transaction the worker recorded has its `GET /tx` arrays stored, as its inputs
    and outputs now are: run after every worker test (deposits, confirmations, sends, reorgs,
    fee bumps, consolidations), so a writer of those rows that skips
    `tx_json.store_arrays` fails the test that exercises it."""
    with factory() as s:
        unstored = s.scalars(
            select(ChainTx.txid).where(
                ChainTx.inputs_json.is_(None) | ChainTx.outputs_json.is_(None)
            )
        ).all()
        assert unstored == [], f"recorded without their arrays stored: {unstored}"
        assert tx_json.stale_arrays(s) == [], "arrays stored before their rows last changed"


# ---------------------------------------------------------------------- node


def mine(rpc: BitcoinRPC, n: int = 1) -> list[str]:
    return rpc.generate_to_address(n, MINER.address)


def fund(rpc: BitcoinRPC, faucet: Faucet, payments: list[tuple[bytes, int]]) -> str:
    """A transaction from a faucet coin paying `payments` (script, sats); returns its txid."""
    return fund_with_coin(rpc, faucet, payments)[0]


def fund_with_coin(
    rpc: BitcoinRPC, faucet: Faucet, payments: list[tuple[bytes, int]]
) -> tuple[str, tuple[str, int, int]]:
    """Like `fund`, also returning the coin spent (to build a conflicting spend)."""
    coin = faucet.coin()
    rest = coin[2] - sum(v for _, v in payments) - FEE
    tx = spend_p2wpkh(faucet.key, coin, [*payments, (faucet.key.script, rest)])
    rpc.send_raw_transaction(hex_of(tx))
    return txid_hex(tx), coin


def conflicting_block(rpc: BitcoinRPC, faucet: Faucet, coin: tuple[str, int, int]) -> str:
    """Mine a block with a different spend of `coin`: the first spend can never confirm."""
    tx = spend_p2wpkh(faucet.key, coin, [(MINER.script, coin[2] - 3 * FEE)])
    return str(rpc.call("generateblock", MINER.address, [hex_of(tx)])["hash"])


# ---------------------------------------------------------------------- accounts


def create_account(session: Session, name: str) -> TestAccount:
    """Insert an account with public keys only, as `custody account create` would store."""
    t = TestAccount(0, SoftKeys.from_label(name, NET), name=name)
    receiving = AccountKey.from_root(t.keys.receiving_root, bip84_account_path(NET, 0))
    cos, rec = t.keys.cosigner(), t.keys.recovery()
    account = Account(
        name=name,
        network="regtest",
        vdevice_phone="+15550000100",
        owner_phone="+15550000200",
        settlement_descriptor="",
        cold_receiving_xpub=receiving.xpub.serialize(),
        hot_pubkey=t.keys.hot_pubkey.hex(),
        cold_cosigner_xpub=cos.xpub.serialize(),
        recovery_xpub=rec.xpub.serialize(),
        receiving_fingerprint=receiving.fingerprint.hex(),
        cosigner_fingerprint=cos.fingerprint.hex(),
        recovery_fingerprint=rec.fingerprint.hex(),
        cold_descriptor="",
        hot_descriptor="",
        cold_identity_pubkey="02" + "11" * 32,
        vdevice_identity_pubkey="02" + "22" * 32,
        provisioning_proof="",
    )
    keys = AccountKeys.from_account(account)
    account.cold_descriptor = keys.descriptor(Wallet.COLD, Chain.RECEIVE)
    account.hot_descriptor = keys.descriptor(Wallet.HOT, Chain.RECEIVE)
    session.add(account)
    session.flush()
    t.id = account.id
    return t


def add_addresses(
    session: Session, account_id: int, wallet: Wallet, count: int, chain: Chain = Chain.RECEIVE
) -> list[Address]:
    """Receiving addresses 0..count-1 of one side (what batches insert)."""
    account = session.get(Account, account_id)
    assert account is not None
    rows = []
    for d in account_keys(account).derive(wallet, chain, 0, count):
        rows.append(
            Address(
                account_id=account_id,
                wallet=wallet,
                chain=chain,
                index=d.index,
                address=d.address,
                script_pubkey=d.script_pubkey,
            )
        )
    session.add_all(rows)
    session.flush()
    return rows


# ---------------------------------------------------------------------- helpers


def make_watcher(factory: sessionmaker[Session], rpc: BitcoinRPC, **kw: Any) -> Watcher:
    """A watcher starting after the node's current tip (earlier tests' blocks are not ours)."""
    start = kw.pop("start_height", rpc.get_block_count() + 1)
    return Watcher(factory, rpc, WatcherSettings(start_height=start, **kw))


def make_sends(
    factory: sessionmaker[Session], rpc: BitcoinRPC, hsm: SoftwareHsmStandIn, **kw: Any
) -> SendWorker:
    owner = kw.pop("owner", None)
    return SendWorker(factory, rpc, hsm, SendSettings(**kw), owner=owner)


def counts(session: Session) -> dict[str, int]:
    return {
        "chain_txs": session.execute(select(func.count(ChainTx.id))).scalar_one(),
        "utxos": session.execute(select(func.count(Utxo.id))).scalar_one(),
    }


def chain_tx(session: Session, account_id: int, wallet: Wallet, txid: str) -> ChainTx | None:
    return session.execute(
        select(ChainTx).where(
            ChainTx.account_id == account_id, ChainTx.wallet == wallet, ChainTx.txid == txid
        )
    ).scalar_one_or_none()


def new_send(
    session: Session, account_id: int, user_tx_no: str, outs: str, *, dynamic: int = 0
) -> int:
    """A send as `POST /tx/request` stores it (validation is the API's job)."""
    send = Send(
        account_id=account_id,
        user_tx_no=user_tx_no,
        outs=outs,
        is_dynamic_fee=dynamic,
        vc_code="H" + "A" * 87,
        c_id="c-1",
    )
    session.add(send)
    session.flush()
    return send.id


def race(workers: list[SendWorker], work: Callable[[SendWorker], object], timeout: float) -> None:
    """Run `work` on every worker, each in its own thread, all starting at once; fail if
    any of them raised."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def run(w: SendWorker) -> None:
        try:
            barrier.wait()
            work(w)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not errors


def expire_leases(session: Session) -> None:
    """Time passes: every lease and backoff ran out (what a crashed worker leaves behind)."""
    session.execute(update(Send).values(locked_until=datetime(2000, 1, 1)))


def node_faucet(rpc: BitcoinRPC) -> Faucet:
    rpc.generate_to_address(101, MINER.address)
    return Faucet(rpc, MINER)
