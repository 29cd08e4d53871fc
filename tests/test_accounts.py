"""Accounts: provisioning checks the cold identity's proof and stores public material only;
tokens are stored hashed; rotation and freezing; alerts through the real twilio client to a
recording endpoint (delivery failures recorded, not raised)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import func, select, text

from custody import accounts
from custody.alerts import AlertKind, raise_alert
from custody.batches import account_keys
from custody.errors import AccountError, Conflict, HsmUnavailableError, ProofInvalid
from custody.models import (
    Account,
    AccountStatus,
    Alert,
    ApiToken,
    Base,
    Chain,
    JournalEntry,
    Wallet,
)
from tests.api_fixtures import (
    NETWORK,
    SoftwareHsmStandIn,
    make_config,
    new_account,
    settlement_descriptor,
    vdevice_identity,
)
from wallet_core.bip32 import ExtendedKey
from wallet_core.descriptors import parse_descriptor, split_checksum, wpkh_descriptor
from wallet_core.networks import Network
from wallet_core.wallets import bip48_account_path, bip84_account_path


def create(factory, hsm, name="alice", **over):
    args = {
        "vdevice_phone": "+15550000100",
        "owner_phone": "+15550000200",
        "settlement_descriptor": settlement_descriptor(),
        "vdevice_identity": vdevice_identity(),
    }
    args.update(over)
    with factory() as s, s.begin():
        return accounts.create_account(s, hsm, name, network=NETWORK, **args)


def test_create_account_stores_public_material_only(session_factory, hsm):
    created = create(session_factory, hsm)
    assert len(created.cold_token) == 64 and len(created.hot_token) == 64
    assert created.cold_identity == hsm.identity_pub.hex()
    with session_factory() as s:
        a = s.get(Account, created.account_id)
        assert a.status is AccountStatus.ACTIVE and a.network == "regtest"
        assert a.cold_receiving_xpub.startswith("tpub") and a.provisioning_proof
        assert split_checksum(a.cold_descriptor, require=True) == (
            f"wpkh([{a.receiving_fingerprint}/84h/1h/0h]{a.cold_receiving_xpub}/0/*)"
        )
        assert split_checksum(a.hot_descriptor, require=True).startswith(
            f"wsh(sortedmulti(2,{a.hot_pubkey},["
        )
        tokens = s.execute(select(ApiToken)).scalars().all()
        assert {t.scope.value for t in tokens} == {"cold", "hot"}
        stored = {t.token_hash for t in tokens}
        assert created.cold_token not in stored and created.hot_token not in stored
        assert accounts.hash_token(created.cold_token) in stored
        # nothing private anywhere in the database (invariant 3)
        for table in Base.metadata.sorted_tables:
            for row in s.execute(text(f"SELECT * FROM {table.name}")):
                blob = " ".join(str(v) for v in row)
                assert "prv" not in blob, table.name
                assert created.cold_token not in blob and created.hot_token not in blob
        kinds = s.execute(select(JournalEntry.kind)).scalars().all()
        assert kinds == ["account_created", "token_issued", "token_issued"]
    assert set(created.descriptors) == {"cold_receive", "cold_change", "hot_receive", "hot_change"}


def test_descriptors_carry_the_key_origins(session_factory, hsm):
    """The stored descriptors name each derived key's master fingerprint and account path
    (the cold one too, now that the HSM returns the receiving fingerprint), and parse."""
    created = create(session_factory, hsm)
    soft = hsm.accounts[created.account_id]
    with session_factory() as s:
        a = s.get(Account, created.account_id)
        assert a.receiving_fingerprint == soft.receiving_root.fingerprint.hex()
        assert a.cosigner_fingerprint == soft.cosigner_root.fingerprint.hex()
        assert a.recovery_fingerprint == soft.recovery_root.fingerprint.hex()
        cold = parse_descriptor(a.cold_descriptor, require_checksum=True)
        hot = parse_descriptor(a.hot_descriptor, require_checksum=True)
        keys = account_keys(a)
    (key,) = cold.keys
    assert key.fingerprint == soft.receiving_root.fingerprint
    assert key.origin_path == bip84_account_path(NETWORK, 0)
    assert key.xpub.serialize() == a.cold_receiving_xpub
    assert [k.fingerprint.hex() for k in hot.keys[1:]] == [
        a.cosigner_fingerprint,
        a.recovery_fingerprint,
    ]
    assert all(k.origin_path == bip48_account_path(NETWORK, 0) for k in hot.keys[1:])
    assert created.descriptors["cold_change"].startswith(f"wpkh([{a.receiving_fingerprint}/")
    for index in (0, 7, 999):
        for wallet, desc in ((Wallet.COLD, cold), (Wallet.HOT, hot)):
            assert desc.script_pubkey(index) == keys.one(wallet, Chain.RECEIVE, index).script_pubkey


def test_provisioning_without_receiving_fingerprint_stores_nothing(
    session_factory, hsm, monkeypatch
):
    real = hsm.provision_account

    def old_hsm(*a, **kw):
        return replace(real(*a, **kw), receiving_fingerprint=None)

    monkeypatch.setattr(hsm, "provision_account", old_hsm)
    with pytest.raises(ProofInvalid, match="malformed"):
        create(session_factory, hsm)
    with session_factory() as s:
        assert s.execute(select(func.count(Account.id))).scalar() == 0


def test_bad_provisioning_proof_stores_nothing(session_factory, hsm, monkeypatch):
    real = hsm.provision_account

    def lying(account, network, vdev, settle, **phones):
        p = real(account, network, vdev, settle, **phones)
        other = SoftwareHsmStandIn().provision_account(account, network, vdev, settle)
        return replace(p, recovery_xpub=other.recovery_xpub)  # substituted key, old proof

    monkeypatch.setattr(hsm, "provision_account", lying)
    with pytest.raises(ProofInvalid, match="does not verify"):
        create(session_factory, hsm)
    with session_factory() as s:
        assert s.execute(select(func.count(Account.id))).scalar() == 0
        assert s.execute(select(func.count(ApiToken.id))).scalar() == 0


def test_pinned_identity_must_match(session_factory, hsm):
    with pytest.raises(ProofInvalid, match="pinned"):
        create(session_factory, hsm, pinned_cold_identity="02" + "11" * 32)


def test_hsm_unavailable(session_factory, hsm, monkeypatch):
    def down(*a, **kw):
        raise HsmUnavailableError("hot HSM unreachable (ConnectionError)")

    monkeypatch.setattr(hsm, "provision_account", down)
    with pytest.raises(HsmUnavailableError):
        create(session_factory, hsm)


def _mainnet_descriptor() -> str:

    root = ExtendedKey.from_seed(b"mainnet settlement wallet", Network.MAINNET)
    path = bip84_account_path(Network.MAINNET, 0)
    xpub = root.derive(path).to_public()
    return str(wpkh_descriptor(xpub, root.fingerprint, path, 0))


@pytest.mark.parametrize(
    "over,needle",
    [
        ({"name": ""}, "name"),
        ({"vdevice_phone": "5550000100"}, "vdevice phone"),
        ({"owner_phone": "+1555x"}, "owner phone"),
        ({"settlement_descriptor": "wpkh(nonsense)"}, "settlement"),
        ({"settlement_descriptor": f"wpkh({'02' + '11' * 32})"}, "plain public key"),
        (
            {"settlement_descriptor": settlement_descriptor().split("#")[0].replace("/*)", ")")},
            "not ranged",  # .../0 instead of .../0/*: one fixed address
        ),
        ({"settlement_descriptor": _mainnet_descriptor()}, "is for mainnet, not regtest"),
        ({"vdevice_identity": "02abcd"}, "vdevice identity"),
        ({"vdevice_identity": "zz"}, "hex"),
    ],
)
def test_create_account_validates(session_factory, hsm, over, needle):
    over = dict(over)
    name = over.pop("name", "alice")
    with pytest.raises(AccountError, match=needle):
        create(session_factory, hsm, name, **over)


def test_duplicate_name(session_factory, hsm):
    create(session_factory, hsm)
    with pytest.raises(Conflict):
        create(session_factory, hsm)


def test_rotate_and_freeze(session_factory, hsm, config, sms):
    acct = new_account(session_factory, hsm)
    with session_factory() as s, s.begin():
        new = accounts.rotate_token(s, acct.id, "cold")
    assert new != acct.cold_token
    with session_factory() as s:
        live = (
            s.execute(
                select(ApiToken).where(ApiToken.scope == "cold", ApiToken.revoked_at.is_(None))
            )
            .scalars()
            .all()
        )
        assert [t.token_hash for t in live] == [accounts.hash_token(new)]
    with session_factory() as s, s.begin():
        assert accounts.freeze_account(s, hsm, acct.id, "operator says so", config)
    with session_factory() as s:
        a = s.get(Account, acct.id)
        assert a.status is AccountStatus.FROZEN and a.frozen_reason == "operator says so"
        alert = s.execute(select(Alert)).scalar_one()
        assert alert.kind == "account_frozen" and alert.delivered and alert.provider_id
    assert hsm.frozen == [(acct.id, "operator says so")]
    msg = sms.messages[0]
    assert msg["path"].endswith("/Messages.json") and msg["To"] == "+15550001000"
    assert msg["From"] == "+15550009999" and "operator says so" in msg["Body"]
    assert msg["auth"].startswith("Basic ")


def test_alert_delivery_failure_is_recorded_not_raised(session_factory, config, sms):
    sms.fail = True
    with session_factory() as s, s.begin():
        alert = raise_alert(s, config, AlertKind.HOT_BALANCE_LOW, "hot balance low")
    assert not alert.delivered and "21211" in alert.error or "invalid" in alert.error
    with session_factory() as s:
        assert s.execute(select(Alert)).scalar_one().delivered is False


def test_alert_to_a_dead_gateway(session_factory, tmp_path, db_url):

    dead = make_config(tmp_path, db_url, "http://127.0.0.1:9")  # nothing listens on port 9
    with session_factory() as s, s.begin():
        alert = raise_alert(s, dead, AlertKind.COLD_UNREACHABLE, "cold HSM does not answer", None)
    assert alert.delivered is False and alert.error
