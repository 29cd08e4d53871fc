"""Fixtures of the custody API tests: databases (SQLite, PostgreSQL), the app, a software
stand-in for the HSM pair, a recording Twilio endpoint, and provisioned accounts.

Import the fixtures a test module uses by name from here. Every API test runs on SQLite and,
when `postgresql://postgres@127.0.0.1:5432` answers, on a PostgreSQL database created for the
test session (`cc_test_<random>`, dropped at the end); otherwise the PostgreSQL variants are
skipped with the reason.

`SoftwareHsmStandIn` is a TEST FIXTURE ONLY: it implements `HotHsmClient`'s methods with
software keys (wallet_core), so the API can be tested while the real HSM processes are built.
It derives batch addresses from the *private* roots along full BIP32 paths, independently of
custody's fast public derivation, so the proofs are a real cross-check.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import psycopg
import pytest
import tomli_w
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from custody import accounts
from custody.accounts import provision_message
from custody.admin_cli import upgrade_database
from custody.app import create_app
from custody.db import make_engine, make_session_factory
from custody.errors import HsmUnavailableError
from custody.hsm_client import HsmRefused, ProvisionedAccount
from custody.models import Base, BlockSeen
from hsm_cold.errors import ColdErrorCode
from wallet_core import secp
from wallet_core.addresses import address_to_script, p2wpkh_address, p2wsh_address
from wallet_core.bip32 import ExtendedKey
from wallet_core.chaincloud import (
    BATCH_SIZE,
    batch_statement,
    channel_key_statement,
    parse_outs,
    send_refused_statement,
    send_request_string,
    send_signed_statement,
)
from wallet_core.descriptors import add_checksum
from wallet_core.messages import sign_message
from wallet_core.networks import Network
from wallet_core.psbt import Psbt, PsbtOutput
from wallet_core.rawtx import parse_signed_tx
from wallet_core.script import multisig_script
from wallet_core.signatures import SoftwareSigner
from wallet_core.wallets import AccountKey, bip48_account_path, bip84_account_path

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
NETWORK = Network.REGTEST


# -- the HSM stand-in ---------------------------------------------------------------------
def channel_priv_for(c_id: str) -> bytes:
    """The V-device channel key the stand-in vouches for under `c_id` (tests sign with it)."""
    return hashlib.sha256(f"test channel {c_id}".encode()).digest()


def sign_vc_code(form: dict[str, Any]) -> str:
    """The `vc_code` of a send form, signed with `channel_priv_for(form["c_id"])`."""
    text = send_request_string(
        form["outs"],
        form["user_tx_no"],
        coin_code=form.get("coin_code") or "BTC",
        is_dynamic_fee=int(form.get("is_dynamic_fee") or 1),
    )
    return sign_message(channel_priv_for(form["c_id"]), text)


@dataclass
class SoftKeys:
    """An account's keys in software (tests only): what the two HSMs hold, and the recovery
    key. Random, or derived from a label so a test can rebuild them."""

    network: Network
    receiving_root: ExtendedKey
    cosigner_root: ExtendedKey
    recovery_root: ExtendedKey
    hot_priv: bytes
    frozen: bool = False

    @classmethod
    def random(cls, network: Network = NETWORK) -> SoftKeys:
        def root() -> ExtendedKey:
            return ExtendedKey.from_seed(secrets.token_bytes(32), network)

        return cls(network, root(), root(), root(), secrets.token_bytes(32))

    @classmethod
    def from_label(cls, label: str, network: Network = NETWORK) -> SoftKeys:
        def root(part: str) -> ExtendedKey:
            return ExtendedKey.from_seed(
                hashlib.sha256(f"{label}/{part}".encode()).digest(), network
            )

        hot = hashlib.sha256(f"{label}/hot".encode()).digest()
        return cls(network, root("receiving"), root("cosigner"), root("recovery"), hot)

    @property
    def hot_pubkey(self) -> bytes:
        return secp.pubkey_from_privkey(self.hot_priv)

    def cosigner(self) -> AccountKey:
        return AccountKey.from_root(self.cosigner_root, bip48_account_path(self.network, 0))

    def recovery(self) -> AccountKey:
        return AccountKey.from_root(self.recovery_root, bip48_account_path(self.network, 0))

    def receiving_account(self) -> ExtendedKey:
        return self.receiving_root.derive(bip84_account_path(self.network, 0))

    def multisig_account(self, root: ExtendedKey) -> ExtendedKey:
        return root.derive(bip48_account_path(self.network, 0))


class SoftwareHsmStandIn:
    """Test-only stand-in for the hot HSM and the cold HSM behind it (`custody.hsm_client.HotHsm`),
    with software keys, in the test's process.

    It checks what custody relies on, as the cold HSM does: a send pays exactly the request's
    `outs` in order plus at most one change output on the account's change chain, and a
    `user_tx_no` is signed for one transaction only (the same transaction again is answered
    again, as after a worker crash). Knobs: `tamper_batch = (position, address)` signs batches
    with that address substituted (a compromised link or HSM); `refuse` (the cold HSM's refusal
    message) and `unavailable` (cold HSM unreachable) for sends.
    """

    def __init__(self) -> None:
        self.identity_priv = secrets.token_bytes(32)
        self.identity_pub = secp.pubkey_from_privkey(self.identity_priv)
        self.accounts: dict[int, SoftKeys] = {}
        self.tamper_batch: tuple[int, str] | None = None
        self.proofs_made = 0
        self.frozen: list[tuple[int, str]] = []
        self.alerts: list[dict[str, Any]] = []
        self.channels: dict[tuple[int, str], str] = {}
        self.unknown_channels: set[str] = set()
        self.channel_key_calls = 0
        self.statements_made = 0
        # a key other than the identity's makes the channel statements forgeries
        self.channel_statement_priv: bytes | None = None
        self.signed: dict[tuple[int, str], str] = {}  # (account, user_tx_no) -> txid
        self.inputs: dict[tuple[int, str], set[tuple[str, int]]] = {}  # spent by that txid
        self.calls: list[tuple[int, str]] = []
        self.refuse: str | None = None
        self.refuse_numbers: set[str] = set()  # user_tx_nos the cold policy refuses
        self.unavailable = False
        self.closed: dict[tuple[int, str], int] = {}  # (account, user_tx_no) -> code
        self._lock = threading.Lock()

    def add(self, account: TestAccount) -> None:
        """Hold the keys of an account inserted into the database directly."""
        self.accounts[account.id] = account.keys

    def health(self) -> dict[str, Any]:
        return {"paired": True, "cold_reachable": True, "accounts": len(self.accounts)}

    def provision_account(
        self,
        account: int,
        network: str,
        vdevice_identity: str,
        settlement_descriptor: str,
        *,
        vdevice_phone: str = "",
        owner_phone: str = "",
    ) -> ProvisionedAccount:
        net = Network.from_name(network)
        with self._lock:
            acct = SoftKeys.random(net)
            self.accounts[account] = acct
        cos = acct.multisig_account(acct.cosigner_root).to_public()
        rec = acct.multisig_account(acct.recovery_root).to_public()
        p = ProvisionedAccount(
            receiving_xpub=acct.receiving_account().to_public().serialize(),
            receiving_fingerprint=acct.receiving_root.fingerprint.hex(),
            cosigner_xpub=cos.serialize(),
            cosigner_fingerprint=acct.cosigner_root.fingerprint.hex(),
            recovery_xpub=rec.serialize(),
            recovery_fingerprint=acct.recovery_root.fingerprint.hex(),
            hot_pubkey=acct.hot_pubkey.hex(),
            cold_identity=self.identity_pub.hex(),
            proof="",
        )
        proof = sign_message(self.identity_priv, provision_message(account, net.value, p))
        return ProvisionedAccount(**{**p.__dict__, "proof": proof})

    def batch_addresses(self, account: int, wallet: str, batch_no: int) -> list[str]:
        """The batch derived from the private roots along full paths (the slow, sure way)."""
        acct = self.accounts[account]
        start = batch_no * BATCH_SIZE
        if wallet == "cold":
            chain = acct.receiving_account().child(0)
            return [
                p2wpkh_address(chain.child(i).public_key, acct.network)
                for i in range(start, start + BATCH_SIZE)
            ]
        cos = acct.multisig_account(acct.cosigner_root).child(0)
        rec = acct.multisig_account(acct.recovery_root).child(0)
        out = []
        for i in range(start, start + BATCH_SIZE):
            keys = [acct.hot_pubkey, cos.child(i).public_key, rec.child(i).public_key]
            out.append(p2wsh_address(multisig_script(2, keys, sort=True), acct.network))
        return out

    def prove_batch(self, account: int, wallet: str, batch_no: int) -> str:
        if account not in self.accounts:
            raise HsmRefused("unknown account", code=ColdErrorCode.UNKNOWN_ACCOUNT)
        addresses = self.batch_addresses(account, wallet, batch_no)
        if self.tamper_batch is not None:
            pos, substitute = self.tamper_batch
            addresses[pos] = substitute
        self.proofs_made += 1
        return sign_message(
            self.identity_priv, batch_statement(wallet, account, batch_no, addresses)
        )

    def register_channel(
        self, account: int, c_id: str, channel_pubkey: str, expires_at: int, identity_sig: str
    ) -> None:
        self.channels[(account, c_id)] = channel_pubkey

    def channel_key(self, account: int, c_id: str) -> dict[str, Any]:
        """Every `c_id` is live here, with the key `channel_priv_for(c_id)` (so a test can
        sign a real `vc_code`); the statement is signed by the identity key, as the cold HSM's."""
        if account not in self.accounts:
            raise HsmRefused("unknown account", code=702)
        if c_id in self.unknown_channels:
            raise HsmRefused(f"no live channel {c_id!r}", code=704)
        self.channel_key_calls += 1
        pubkey = secp.pubkey_from_privkey(channel_priv_for(c_id))
        expires_at = 2_000_000_000
        statement = channel_key_statement(account, c_id, pubkey, expires_at)
        return {
            "channel_pubkey": pubkey.hex(),
            "expires_at": expires_at,
            "signature": sign_message(self.channel_statement_priv or self.identity_priv, statement),
        }

    def send_statement(self, account: int, user_tx_no: str) -> dict[str, Any]:
        """As the cold HSM: signed txid, or refused (and closed for good), identity-signed."""
        if account not in self.accounts:
            raise HsmRefused("unknown account", code=ColdErrorCode.UNKNOWN_ACCOUNT)
        self.statements_made += 1
        txid = self.signed.get((account, user_tx_no))
        if txid is not None:
            text = send_signed_statement(account, txid, user_tx_no)
            return {
                "state": "signed",
                "txid": txid,
                "signature": sign_message(self.identity_priv, text),
            }
        code = self.closed.setdefault((account, user_tx_no), int(ColdErrorCode.SEND_CLOSED))
        text = send_refused_statement(account, code, user_tx_no)
        return {
            "state": "refused",
            "code": code,
            "signature": sign_message(self.identity_priv, text),
        }

    def sign_send(
        self, account: int, psbt: str, request: dict[str, Any], vc_code: str, c_id: str
    ) -> str:
        with self._lock:
            self.calls.append((account, request["user_tx_no"]))
            if self.unavailable:
                raise HsmUnavailableError("cold HSM unreachable (stand-in)")
            if self.refuse is not None:
                raise HsmRefused(self.refuse, code=ColdErrorCode.BAD_REQUEST)
            if request["user_tx_no"] in self.refuse_numbers:
                raise HsmRefused("over the policy", code=ColdErrorCode.POLICY_REFUSED)
            keys = self.accounts.get(account)
            if keys is None:
                raise HsmRefused("unknown account", code=ColdErrorCode.UNKNOWN_ACCOUNT)
            if keys.frozen:
                raise HsmRefused("account frozen", code=ColdErrorCode.ACCOUNT_FROZEN)
            key = (account, request["user_tx_no"])
            if key in self.closed:
                raise HsmRefused("user_tx_no closed", code=ColdErrorCode.SEND_CLOSED)
            p = Psbt.from_base64(psbt)
            self._check_outputs(keys, p, request["outs"])
            inputs = set(parse_signed_tx(p.unsigned_tx_bytes()).outpoints)
            replaces = bool(inputs & self.inputs.get(key, set()))  # a fee bump (simplified)
            if self.signed.get(key, p.txid) != p.txid and not replaces:
                raise HsmRefused("user_tx_no reused", code=ColdErrorCode.USER_TX_NO_REUSED)
            self.signed[key] = p.txid
            self.inputs[key] = inputs
            p.sign_with_root(keys.cosigner_root)
            p.sign(SoftwareSigner(keys.hot_priv), keys.hot_pubkey)
            return p.to_base64()

    def sign_batch(self, account: int, psbt: str, members: list[dict[str, Any]]) -> str:
        """A batched payout: the union of the members' outs in order, each number once."""
        with self._lock:
            numbers = [m["request"]["user_tx_no"] for m in members]
            self.calls.append((account, "batch:" + ",".join(numbers)))
            if self.unavailable:
                raise HsmUnavailableError("cold HSM unreachable (stand-in)")
            if self.refuse is not None:
                raise HsmRefused(self.refuse, code=ColdErrorCode.BAD_REQUEST)
            if self.refuse_numbers & set(numbers):
                raise HsmRefused("over the policy", code=ColdErrorCode.POLICY_REFUSED)
            keys = self.accounts[account]
            if len(set(numbers)) != len(numbers):
                raise HsmRefused("user_tx_no twice", code=ColdErrorCode.USER_TX_NO_REUSED)
            p = Psbt.from_base64(psbt)
            self._check_outputs(keys, p, ";".join(m["request"]["outs"] for m in members))
            inputs = set(parse_signed_tx(p.unsigned_tx_bytes()).outpoints)
            for no in numbers:
                replaces = bool(inputs & self.inputs.get((account, no), set()))
                if self.signed.get((account, no), p.txid) != p.txid and not replaces:
                    raise HsmRefused("user_tx_no reused", code=ColdErrorCode.USER_TX_NO_REUSED)
            for no in numbers:
                self.signed[(account, no)] = p.txid
                self.inputs[(account, no)] = inputs
            p.sign_with_root(keys.cosigner_root)
            p.sign(SoftwareSigner(keys.hot_priv), keys.hot_pubkey)
            return p.to_base64()

    def sign_consolidation(self, account: int, psbt: str) -> str:
        """Co-sign only if every output is the account's change (the cold HSM's rule)."""
        with self._lock:
            self.calls.append((account, "consolidation"))
            if self.unavailable:
                raise HsmUnavailableError("cold HSM unreachable (stand-in)")
            if self.refuse is not None:
                raise HsmRefused(self.refuse, code=ColdErrorCode.FEE_ABOVE_POLICY)
            keys = self.accounts[account]
            p = Psbt.from_base64(psbt)
            for out in p.outputs:
                self._check_change(keys, out, "not change")
            p.sign_with_root(keys.cosigner_root)
            p.sign(SoftwareSigner(keys.hot_priv), keys.hot_pubkey)
            return p.to_base64()

    @staticmethod
    def _check_outputs(keys: SoftKeys, p: Psbt, outs: str) -> None:
        expected = [
            (address_to_script(o.address, keys.network), o.value)
            for o in parse_outs(outs, keys.network)
        ]
        outputs = p.outputs
        if [(o.script_pubkey, o.value) for o in outputs[: len(expected)]] != expected:
            raise HsmRefused("output mismatch", code=ColdErrorCode.OUTPUT_MISMATCH)
        extra = outputs[len(expected) :]
        if len(extra) > 1:
            raise HsmRefused("extra output", code=ColdErrorCode.EXTRA_OUTPUT)
        for change in extra:
            SoftwareHsmStandIn._check_change(keys, change, "change not derivable")

    @staticmethod
    def _check_change(keys: SoftKeys, out: PsbtOutput, refusal: str) -> None:
        """`out` must carry the cosigner's origin on the change chain (as the cold HSM checks)."""
        mine = keys.cosigner_root.fingerprint
        origin = next((o for o in out.origins.values() if o.fingerprint == mine), None)
        if origin is None or origin.path[-2] != 1:
            raise HsmRefused(refusal, code=ColdErrorCode.CHANGE_NOT_DERIVABLE)

    def freeze(self, account: int, reason: str) -> None:
        self.frozen.append((account, reason))
        if account in self.accounts:
            self.accounts[account].frozen = True

    def cold_status(self) -> dict[str, Any]:
        return {"accounts": len(self.accounts), "frozen": [a for a, _ in self.frozen]}

    def take_alerts(self) -> list[dict[str, Any]]:
        out, self.alerts = self.alerts, []
        return out


def vdevice_identity() -> str:
    return secp.pubkey_from_privkey(secrets.token_bytes(32)).hex()


def settlement_descriptor() -> str:
    root = ExtendedKey.from_seed(secrets.token_bytes(32), NETWORK)
    xpub = root.derive(bip84_account_path(NETWORK, 0)).to_public().serialize()
    return add_checksum(f"wpkh([{root.fingerprint.hex()}/84h/1h/0h]{xpub}/0/*)")


# -- a recording Twilio endpoint ----------------------------------------------------------
@dataclass
class SmsRecorder:
    url: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False


class _TwilioHandler(BaseHTTPRequestHandler):
    recorder: SmsRecorder

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        rec = self.server.recorder  # type: ignore[attr-defined]
        if rec.fail:
            body = json.dumps({"code": 21211, "message": "invalid 'To'", "status": 400})
            self.send_response(400)
        else:
            rec.messages.append({"path": self.path, "auth": self.headers["Authorization"], **form})
            sid = "SM" + secrets.token_hex(16)
            body = json.dumps(
                {
                    "sid": sid,
                    "status": "queued",
                    "to": form.get("To"),
                    "from": form.get("From"),
                    "body": form.get("Body"),
                    "date_created": "Mon, 01 Jan 2024 00:00:00 +0000",
                }
            )
            self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def sms_server() -> Iterator[SmsRecorder]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TwilioHandler)
    recorder = SmsRecorder(f"http://127.0.0.1:{server.server_address[1]}")
    server.recorder = recorder  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield recorder
    server.shutdown()
    server.server_close()


@pytest.fixture
def sms(sms_server: SmsRecorder) -> Iterator[SmsRecorder]:
    sms_server.messages.clear()
    sms_server.fail = False
    yield sms_server
    sms_server.fail = False


# -- databases -----------------------------------------------------------------------------
def _pg_reachable() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL at 127.0.0.1:5432 not reachable ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied for each test (migrations run once)."""
    path = tmp_path_factory.mktemp("custody-db") / "template.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@contextmanager
def scratch_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards (the test skips without one)."""
    reason = _pg_reachable()
    if reason:
        pytest.skip(reason)

    name = f"cc_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    with scratch_pg_database() as url:
        upgrade_database(url)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new database without any migration applied, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with scratch_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database for one test, on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "custody.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    yield emptied(request.getfixturevalue("pg_database"))


def emptied(url: str) -> str:
    """The migrated PostgreSQL database at `url`, every table emptied and every sequence
    restarted, as `TRUNCATE ... RESTART IDENTITY` would leave it.

    DELETE, children first, in one round trip: on tables of a few rows it takes tens of
    milliseconds where TRUNCATE (new files for every table, flushed at commit) takes hundreds,
    and this runs before every PostgreSQL test of the API.
    """
    engine = make_engine(url)
    with engine.begin() as conn:
        sequences = conn.execute(
            text("SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema()")
        ).scalars()
        statements = [f'DELETE FROM "{t.name}"' for t in reversed(Base.metadata.sorted_tables)]
        statements += [f'ALTER SEQUENCE "{name}" RESTART' for name in sequences]
        conn.exec_driver_sql("; ".join(statements))
    engine.dispose()
    return url


@pytest.fixture
def session_factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url, pool_size=5)
    yield make_session_factory(engine)
    engine.dispose()


# -- config, app, client, runner ----------------------------------------------------------
def make_config(tmp_path: Path, db_url: str, sms_url: str, **custody: Any) -> Config:
    raw: dict[str, Any] = {
        "deployment": {"name": "test", "network": "regtest"},
        "phones": {"operator": "+15550001000", "owner": "+15550000200"},
        "twilio": {
            "account_sid": "AC" + "0" * 32,
            "auth_token": secrets.token_hex(16),
            "from_number": "+15550009999",
            "base_url": sms_url,
            "timeout": 5.0,
        },
        "custody": {
            "database_url": db_url,
            "secret_key": secrets.token_hex(32),
            "host": "127.0.0.1",
            "port": 1,
            **custody,
        },
        "hsm_cold": {"numbers": ["+15550000001", "+15550000002"]},
    }
    (tmp_path / "run").mkdir(exist_ok=True)
    return Config(data_dir=tmp_path, path=tmp_path / "chaincloud.toml", raw=raw)


def seen_block(height: int, day: datetime = datetime(2024, 1, 1)) -> BlockSeen:
    """A block the watcher saw at `height`: its hash is the height, linked to the one below."""
    return BlockSeen(
        height=height, block_hash=f"{height:064x}", prev_hash=f"{height - 1:064x}", time=day
    )


def write_database_config(data_dir: Path, db_url: str) -> None:
    """The smallest config file for `custody` commands that only open the database."""
    custody = {"database_url": db_url, "secret_key": "x" * 32, "host": "127.0.0.1", "port": 1}
    (data_dir / "custody.toml").write_text(tomli_w.dumps({"custody": custody}))


@pytest.fixture
def hsm() -> SoftwareHsmStandIn:
    return SoftwareHsmStandIn()


@pytest.fixture
def config(tmp_path: Path, db_url: str, sms: SmsRecorder) -> Config:
    return make_config(tmp_path, db_url, sms.url)


@pytest.fixture
def app(config: Config, hsm: SoftwareHsmStandIn, session_factory: sessionmaker[Session]) -> Flask:
    a = create_app(config, hsm=hsm, session_factory=session_factory)
    a.testing = True
    return a


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


@dataclass
class TestAccount:
    """An account of the tests: its row id, its keys (held by the stand-in HSM), and the
    tokens when it was created through `custody.accounts` (empty when inserted directly)."""

    __test__ = False  # not a pytest test class

    id: int
    keys: SoftKeys
    name: str = ""
    cold_token: str = ""
    hot_token: str = ""
    created: accounts.CreatedAccount | None = None

    @property
    def cold(self) -> dict[str, str]:
        return {"token": self.cold_token}

    @property
    def hot(self) -> dict[str, str]:
        return {"token": self.hot_token}


def new_account(
    factory: sessionmaker[Session], hsm: SoftwareHsmStandIn, name: str | None = None
) -> TestAccount:
    with factory() as session, session.begin():
        created = accounts.create_account(
            session,
            hsm,
            name or f"merchant-{secrets.token_hex(3)}",
            "+15550000100",
            "+15550000200",
            settlement_descriptor(),
            vdevice_identity(),
            network=NETWORK,
        )
    return TestAccount(
        created.account_id,
        hsm.accounts[created.account_id],
        name=created.name,
        cold_token=created.cold_token,
        hot_token=created.hot_token,
        created=created,
    )


@pytest.fixture
def account(session_factory: sessionmaker[Session], hsm: SoftwareHsmStandIn) -> TestAccount:
    return new_account(session_factory, hsm, "alice")


@pytest.fixture
def other_account(session_factory: sessionmaker[Session], hsm: SoftwareHsmStandIn) -> TestAccount:
    return new_account(session_factory, hsm, "bob")
