"""The operator CLI of the custody API (`custody db upgrade`, `account ...`, `token rotate`,
`alerts`, `serve`) and the migrations (they build exactly the models' schema)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from datetime import datetime
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
import tomli_w
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cc_common.deployment import free_port
from custody import admin_cli
from custody.admin_cli import upgrade_database
from custody.batches import account_keys
from custody.cli import main as custody_main
from custody.db import make_engine, make_session_factory
from custody.models import Account, Base, Chain, Wallet
from tests.api_fixtures import SoftwareHsmStandIn, settlement_descriptor, vdevice_identity
from wallet_core import secp
from wallet_core.bip32 import ExtendedKey, parse_xpub
from wallet_core.descriptors import add_checksum, parse_descriptor
from wallet_core.hashes import hash160
from wallet_core.networks import Network
from wallet_core.wallets import (
    AccountKey,
    FixedKey,
    HotWallet,
    KeyOrigin,
    bip48_account_path,
    bip84_account_path,
)


def test_migrations_match_the_models(db_url):
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def _legacy_account_row(n: int, network: Network, with_origins: bool) -> dict:
    """An `accounts` row as custody stored it at revision 0001 (origins only in the hot
    descriptor, none in the cold one)."""
    roots = [ExtendedKey.from_seed(bytes([n, k]) * 16, network) for k in range(3)]
    receiving = AccountKey.from_root(roots[0], bip84_account_path(network, 0))
    cos, rec = (AccountKey.from_root(r, bip48_account_path(network, 0)) for r in roots[1:])
    hot = FixedKey(secp.pubkey_from_privkey(bytes([n + 1]) * 32))
    hot_desc = str(HotWallet((hot, cos, rec), network).descriptor(0)) if with_origins else ""
    return {
        "name": f"legacy{n}",
        "status": "ACTIVE",
        "frozen_reason": "",
        "network": network.value,
        "vdevice_phone": "+15550000100",
        "owner_phone": "+15550000200",
        "settlement_descriptor": "",
        "cold_receiving_xpub": receiving.xpub.serialize(),
        "hot_pubkey": hot.public_key.hex(),
        "cold_cosigner_xpub": cos.xpub.serialize(),
        "recovery_xpub": rec.xpub.serialize(),
        "cold_descriptor": add_checksum(f"wpkh({receiving.xpub.serialize()}/0/*)"),
        "hot_descriptor": hot_desc,
        "cold_identity_pubkey": "02" + "11" * 32,
        "vdevice_identity_pubkey": "02" + "22" * 32,
        "provisioning_proof": "",
        "cold_receive_next": 0,
        "hot_receive_next": 0,
        "hot_change_next": 0,
        "created_at": datetime(2026, 1, 1),
    }


def test_key_origins_migration_upgrades_a_0001_database(empty_db_url):
    """0002 adds the fingerprint columns and fills the cosigner/recovery ones from the stored
    hot descriptor, so an existing account's PSBT origins stay exactly what they were."""
    upgrade_database(empty_db_url, "0001")
    engine = make_engine(empty_db_url)
    rows = [_legacy_account_row(n, Network.REGTEST, with_origins=n == 1) for n in (1, 2)]
    with engine.begin() as conn:
        table = sa.Table("accounts", sa.MetaData(), autoload_with=conn)
        conn.execute(table.insert(), rows)
    upgrade_database(empty_db_url)
    with make_session_factory(engine)() as s:
        with_origins, without = s.query(Account).order_by(Account.id).all()
        keys = account_keys(with_origins)
    desc = parse_descriptor(with_origins.hot_descriptor, require_checksum=True)
    assert [with_origins.cosigner_fingerprint, with_origins.recovery_fingerprint] == [
        k.fingerprint.hex() for k in desc.keys[1:]
    ]
    assert with_origins.receiving_fingerprint == ""  # never known before 0002
    assert with_origins.cold_descriptor == rows[0]["cold_descriptor"]  # stored as it was
    assert keys.descriptor(Wallet.HOT, Chain.RECEIVE) == with_origins.hot_descriptor
    assert (without.cosigner_fingerprint, without.recovery_fingerprint) == ("", "")
    # no origin known: the key is its own origin, as custody always wrote it for such an account
    cos = parse_xpub(without.cold_cosigner_xpub)
    origins = account_keys(without).hot.origins(4, 1)
    assert origins[cos.derive((1, 4)).public_key] == KeyOrigin(hash160(cos.public_key)[:4], (1, 4))
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    command.downgrade(admin_cli.alembic_config(empty_db_url), "0001")
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("accounts")}
    assert "cosigner_fingerprint" not in columns
    engine.dispose()


def write_config(data_dir: Path, sms_url: str, **custody) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "run").mkdir(exist_ok=True)
    raw = {
        "deployment": {"name": "t", "network": "regtest"},
        "phones": {"operator": "+15550001000"},
        "twilio": {
            "account_sid": "AC" + "1" * 32,
            "auth_token": "t" * 32,
            "from_number": "+15550009999",
            "base_url": sms_url,
        },
        "custody": {
            "database_url": f"sqlite:///{data_dir / 'custody.db'}",
            "secret_key": "k" * 64,
            "host": "127.0.0.1",
            "port": free_port(),
            **custody,
        },
        "hsm_cold": {"numbers": ["+15550000001", "+15550000002"]},
    }
    (data_dir / "custody.toml").write_text(tomli_w.dumps(raw))  # custody reads its own file


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = custody_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_with_account(tmp_path, sms_url, capsys, monkeypatch, hsm) -> tuple[str, dict]:
    """A deployment whose database is upgraded and holds account "acme", created through the
    CLI against `hsm` (a stand-in for the HSM pair): its directory and `account create`'s JSON."""
    d = str(tmp_path / "dep")
    write_config(Path(d), sms_url)
    monkeypatch.setattr(admin_cli, "_hsm", lambda config: hsm)
    assert run_cli(capsys, "db", "upgrade", "--dir", d)[0] == 0
    code, out, err = run_cli(
        capsys,
        "account",
        "create",
        "acme",
        "--dir",
        d,
        "--vdevice-phone",
        "+15550000100",
        "--owner-phone",
        "+15550000200",
        "--settlement-descriptor",
        settlement_descriptor(),
        "--vdevice-identity",
        vdevice_identity(),
    )
    assert code == 0, err
    return d, json.loads(out)


def test_account_lifecycle_cli(tmp_path, sms, capsys, monkeypatch):
    hsm = SoftwareHsmStandIn()
    d, created = cli_with_account(tmp_path, sms.url, capsys, monkeypatch, hsm)
    bundle = created["vdevice_bundle"]
    assert bundle["cold_identity"] == hsm.identity_pub.hex()
    assert bundle["cold_numbers"] == ["+15550000001", "+15550000002"]
    assert bundle["hot_token"] == created["tokens"]["hot"]
    assert bundle["custody_url"].startswith("http://127.0.0.1:")
    assert set(created["descriptors"]) == {
        "cold_receive",
        "cold_change",
        "hot_receive",
        "hot_change",
    }
    aid = str(created["account_id"])
    code, out, _ = run_cli(capsys, "account", "list", "--dir", d)
    assert code == 0 and "acme" in out and "active" in out
    code, out, _ = run_cli(capsys, "account", "show", aid, "--dir", d)
    shown = json.loads(out)
    assert shown["name"] == "acme" and len(shown["tokens"]) == 2
    assert created["tokens"]["hot"] not in out and created["tokens"]["cold"] not in out
    code, out, _ = run_cli(capsys, "token", "rotate", aid, "--scope", "hot", "--dir", d)
    assert code == 0 and json.loads(out)["token"] != created["tokens"]["hot"]
    code, out, _ = run_cli(capsys, "account", "freeze", aid, "--reason", "lost phone", "--dir", d)
    assert code == 0 and "frozen" in out
    code, out, _ = run_cli(capsys, "alerts", "--dir", d)
    assert "account_frozen" in out and "yes" in out
    code, out, _ = run_cli(capsys, "journal", "verify", "--dir", d)
    assert code == 0 and "journal ok: 5 entries" in out
    code, _, err = run_cli(capsys, "account", "show", "99", "--dir", d)
    assert code == 2 and "does not exist" in err


def test_serve_refuses_placeholder_secret(tmp_path, sms, capsys):
    d = tmp_path / "dep"
    write_config(d, sms.url, secret_key="change-me")
    code, _, err = run_cli(capsys, "serve", "--dir", str(d))
    assert code == 2 and "secret_key" in err and "placeholder" in err


def test_serve_runs_gunicorn_and_marks_ready(tmp_path, sms):
    d = tmp_path / "dep"
    write_config(d, sms.url, workers=1)
    upgrade_database(f"sqlite:///{d / 'custody.db'}")
    port = tomllib.loads((d / "custody.toml").read_text())["custody"]["port"]
    ready = d / "run" / "custody-api.ready"
    env = {**os.environ, "CC_DATA_DIR": str(d)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "custody.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "custody serve never became ready"
            time.sleep(0.05)
        assert json.loads(ready.read_text())["pid"] == proc.pid
        r = requests.get(f"http://127.0.0.1:{port}/api/v1/open/time", timeout=5)
        assert r.status_code == 401 and r.json()["code"] == 4
        assert requests.get(f"http://127.0.0.1:{port}/api/v1/docs", timeout=5).ok
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("custody serve did not stop on SIGTERM")
    assert not ready.exists()
