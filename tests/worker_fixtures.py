"""Fixtures for the chain watcher and the hot-send worker (tests/test_watcher.py, test_sends.py).

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

import hashlib
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from custody.batches import AccountKeys, account_keys
from custody.chain import BitcoinRPC
from custody.db import make_engine, make_session_factory
from custody.errors import HsmUnavailableError
from custody.hsm_client import HsmRefused
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
from tests.node_fixtures import FEE, Faucet, Key, NodeProcess, hex_of, spend_p2wpkh, txid_hex
from wallet_core import secp
from wallet_core.bip32 import ExtendedKey
from wallet_core.chaincloud import parse_outs
from wallet_core.networks import Network
from wallet_core.psbt import Psbt
from wallet_core.signatures import SoftwareSigner
from wallet_core.wallets import AccountKey, bip48_account_path, bip84_account_path

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
        import psycopg  # noqa: PLC0415

        with psycopg.connect(_pg_admin_url(), connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL at {PG_URL} unreachable: {type(exc).__name__}"


def fresh_pg_database() -> Iterator[str]:
    """Body of a module fixture: a fresh database `cc_w_<random>`, dropped at the end."""
    reason = pg_reachable()
    if reason is not None:
        pytest.skip(reason)
    import psycopg  # noqa: PLC0415

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


def fresh_factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    """Body of the `factory` fixture: empty tables from the models, disposed afterwards."""
    eng = make_engine(db_url, pool_size=4)
    Base.metadata.drop_all(eng)
    Base.metadata.create_all(eng)
    try:
        yield make_session_factory(eng)
    finally:
        eng.dispose()


# ---------------------------------------------------------------------- node


def start_node(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path_factory.mktemp(name))
    node.start()
    try:
        yield node
    finally:
        code = node.stop()
        assert code == 0, f"node exited with {code}:\n{node.log()}"


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


def _root(label: str) -> ExtendedKey:
    return ExtendedKey.from_seed(hashlib.sha256(label.encode()).digest(), NET)


@dataclass
class TestAccount:
    """An account's software keys (tests only) and its database row id."""

    name: str
    id: int = 0
    receiving_root: ExtendedKey = field(init=False)
    cosigner_root: ExtendedKey = field(init=False)
    recovery_root: ExtendedKey = field(init=False)
    hot_priv: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.receiving_root = _root(f"{self.name}/receiving")
        self.cosigner_root = _root(f"{self.name}/cosigner")
        self.recovery_root = _root(f"{self.name}/recovery")
        self.hot_priv = hashlib.sha256(f"{self.name}/hot".encode()).digest()

    @property
    def hot_pubkey(self) -> bytes:
        return secp.pubkey_from_privkey(self.hot_priv)

    def cosigner(self) -> AccountKey:
        return AccountKey.from_root(self.cosigner_root, bip48_account_path(NET, 0))

    def recovery(self) -> AccountKey:
        return AccountKey.from_root(self.recovery_root, bip48_account_path(NET, 0))


def create_account(session: Session, name: str) -> TestAccount:
    """Insert an account with public keys only, as `custody account create` would store."""
    t = TestAccount(name)
    receiving = AccountKey.from_root(t.receiving_root, bip84_account_path(NET, 0))
    cos, rec = t.cosigner(), t.recovery()
    account = Account(
        name=name,
        network="regtest",
        vdevice_phone="+15550000100",
        owner_phone="+15550000200",
        settlement_descriptor="",
        cold_receiving_xpub=receiving.xpub.serialize(),
        hot_pubkey=t.hot_pubkey.hex(),
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


# ---------------------------------------------------------------------- the HSM stand-in


class SoftwareHsmPairStandIn:
    """IN-TEST STAND-IN for `HotHsmClient.sign_send` (hot + cold HSM) with software keys.

    Checks what the pipeline relies on: the PSBT pays exactly `outs` in order plus at most one
    change output derivable on chain 1; a `user_tx_no` is signed for one transaction only (a
    repeat of the *same* transaction is answered again, as after a worker crash). Knobs:
    `refuse` (the cold HSM's refusal message), `unavailable` (cold HSM unreachable).
    """

    def __init__(self) -> None:
        self.accounts: dict[int, TestAccount] = {}
        self.signed: dict[tuple[int, str], str] = {}  # (account, user_tx_no) -> txid
        self.calls: list[tuple[int, str]] = []
        self.refuse: str | None = None
        self.unavailable = False
        self.lock = threading.Lock()
        self.pause: threading.Event | None = None

    def add(self, account: TestAccount) -> None:
        self.accounts[account.id] = account

    def sign_send(
        self, account: int, psbt: str, request: dict[str, Any], vc_code: str, c_id: str
    ) -> str:
        with self.lock:
            self.calls.append((account, request["user_tx_no"]))
            if self.unavailable:
                raise HsmUnavailableError("cold HSM unreachable (stand-in)")
            if self.refuse is not None:
                raise HsmRefused(self.refuse, code=611)
            keys = self.accounts[account]
            p = Psbt.from_base64(psbt)
            outs = parse_outs(request["outs"], NET)
            outputs = p.outputs
            from wallet_core.addresses import address_to_script  # noqa: PLC0415

            expected = [(address_to_script(o.address, NET), o.value) for o in outs]
            if [(o.script_pubkey, o.value) for o in outputs[: len(expected)]] != expected:
                raise HsmRefused("output mismatch", code=615)
            extra = outputs[len(expected) :]
            if len(extra) > 1:
                raise HsmRefused("extra output", code=616)
            for change in extra:
                origin = next(
                    (
                        o
                        for o in change.origins.values()
                        if o.fingerprint == keys.cosigner_root.fingerprint
                    ),
                    None,
                )
                if origin is None or origin.path[-2] != 1:
                    raise HsmRefused("change not derivable", code=617)
            key = (account, request["user_tx_no"])
            if self.signed.get(key, p.txid) != p.txid:
                raise HsmRefused("user_tx_no reused", code=614)
            self.signed[key] = p.txid
            p.sign_with_root(keys.cosigner_root)
            p.sign(SoftwareSigner(keys.hot_priv), keys.hot_pubkey)
            return p.to_base64()


# ---------------------------------------------------------------------- helpers


def make_watcher(factory: sessionmaker[Session], rpc: BitcoinRPC, **kw: Any) -> Watcher:
    """A watcher starting after the node's current tip (earlier tests' blocks are not ours)."""
    start = kw.pop("start_height", rpc.get_block_count() + 1)
    return Watcher(factory, rpc, WatcherSettings(start_height=start, **kw))


def make_sends(
    factory: sessionmaker[Session], rpc: BitcoinRPC, hsm: SoftwareHsmPairStandIn, **kw: Any
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


def expire_leases(session: Session) -> None:
    """Time passes: every lease and backoff ran out (what a crashed worker leaves behind)."""
    session.execute(update(Send).values(locked_until=datetime(2000, 1, 1)))


def node_faucet(rpc: BitcoinRPC) -> Faucet:
    rpc.generate_to_address(101, MINER.address)
    return Faucet(rpc, MINER)
