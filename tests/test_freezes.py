"""Who froze an account, and custody's view following the HSMs (real HSM pair processes).

The operator's freeze reaches both HSMs and is lifted by `custody account unfreeze`; a freeze
the cold HSM decides itself (a send the V-device did not sign) shows in custody from the cold
HSM's identity-signed state, cannot be lifted from custody, and custody follows its lifting at
the cold console. A state whose signature does not verify changes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import accounts, freezes
from custody.admin_cli import upgrade_database
from custody.db import make_engine, make_session_factory, transaction
from custody.errors import AccountError
from custody.hsm_client import HotHsmClient, HsmRefused
from custody.models import Account, JournalEntry
from tests.harness import Deployment
from tests.hsm_fixtures import (
    NETWORK,
    PHONES,
    HsmPair,
    VDevice,
    build_send_psbt,
    confirm_account,
    funded_coin,
    hot_wallet,
    random_address,
    send_request,
    settlement_descriptor,
)
from wallet_core.wallets import RECEIVE

FORGED_VC = 706  # the cold HSM's "forged vc_code", relayed


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HsmPair]:
    d = Deployment(tmp_path_factory.mktemp("freezes"))
    with d.serving():
        yield HsmPair(d).start()


@pytest.fixture
def factory(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'custody.db'}"
    upgrade_database(url)
    return make_session_factory(make_engine(url))


def _create(pair: HsmPair, factory: sessionmaker[Session], vdev: VDevice) -> int:
    """An account created by custody and confirmed by the officer at the cold console."""
    client = pair.client()
    with transaction(factory) as s:
        created = accounts.create_account(
            s,
            client,
            f"acme-{os.urandom(2).hex()}",
            PHONES["vdevice_phone"],
            PHONES["owner_phone"],
            settlement_descriptor(1),
            vdev.identity_hex,
            network=NETWORK,
        )
    confirm_account(pair.d, created.account_id, vdev.identity_hex)
    return created.account_id


def _status(factory: sessionmaker[Session], account_id: int) -> tuple[str, dict[str, Any]]:
    with factory() as s:
        a = s.get(Account, account_id)
        assert a is not None
        return a.status.value, freezes.describe(s, a)


def _forged_send(client: HotHsmClient, account_id: int, vdev: VDevice) -> None:
    prov = client.provision_account(
        account_id, "regtest", vdev.identity_hex, settlement_descriptor(1), **PHONES
    )
    coins = [funded_coin(hot_wallet(prov), 300_000, RECEIVE, 2, 0, os.urandom(8).hex())]
    payments = [(random_address(), 50_000)]
    psbt = build_send_psbt(hot_wallet(prov), coins, payments, change=(1, 249_000))
    request = send_request(payments, "forged-1")
    with pytest.raises(HsmRefused) as info:
        client.sign_send(
            account=account_id,
            psbt=psbt.to_base64(),
            request=request,
            vc_code=vdev.vc_code(request, VDevice("forger").channel),
            c_id="ch-1",
        )
    assert info.value.code == FORGED_VC, info.value.message


def test_operator_and_cold_freezes_follow_the_hsms(
    pair: HsmPair, factory: sessionmaker[Session]
) -> None:
    client = pair.client()
    vdev = VDevice("freeze-story")
    account_id = _create(pair, factory, vdev)
    follower = freezes.FreezeFollower(factory, client, None)
    assert follower.step(force=True) == []

    # The operator's freeze: custody and both HSMs, recorded as the operator's.
    with transaction(factory) as s:
        assert accounts.freeze_account(s, client, account_id, "lost phone") is True
    assert account_id in [a for a, _ in client.cold_status()["frozen"]]
    assert follower.step(force=True) == []
    status, shown = _status(factory, account_id)
    assert status == "frozen" and shown["frozen_by"] == "operator"
    with transaction(factory) as s:
        done = freezes.unfreeze_account(s, client, account_id, "phone found")
    assert done == f"account {account_id} unfrozen (custody and both HSMs)"
    assert client.cold_status()["frozen"] == []
    assert _status(factory, account_id) == ("active", {"frozen": False})

    # The cold HSM's own freeze: custody learns it from the signed state.
    client.register_channel(**vdev.channel_registration(account_id, "ch-1"))
    _forged_send(client, account_id, vdev)
    assert follower.step(force=True) == [(account_id, "frozen")]
    status, shown = _status(factory, account_id)
    assert status == "frozen" and shown["frozen_by"] == "cold_hsm"
    assert "vc" in shown["frozen_reason"].lower()
    with transaction(factory) as s, pytest.raises(AccountError) as refused:
        freezes.unfreeze_account(s, client, account_id, "let me")
    assert "only the cold console lifts it" in refused.value.message
    with pytest.raises(HsmRefused):  # nor can a hacked custody host ask the HSMs directly
        client.unfreeze(account_id, "let me")
    assert account_id in [a for a, _ in client.cold_status()["frozen"]]

    # A forged "active" state (not the cold identity's signature) changes nothing.
    [state] = client.account_states([account_id])
    forged = {**state, "frozen": False, "origin": "none", "reason": ""}
    assert follower.apply([forged]) == []
    assert _status(factory, account_id)[0] == "frozen"

    # Lifted at the cold console (with the token PIN): custody follows.
    pin = pair.d.config.section("hsm_cold").secret("user_pin")
    subprocess.run(
        [sys.executable, "-m", "hsm_cold.cli", "unfreeze", str(account_id), "--pin-stdin"]
        + ["--dir", str(pair.d.data_dir)],
        input=pin + "\n",
        env=pair.d.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert follower.step(force=True) == [(account_id, "unfrozen")]
    assert _status(factory, account_id) == ("active", {"frozen": False})
    with factory() as s:
        kinds = list(s.execute(select(JournalEntry.kind).order_by(JournalEntry.id)).scalars())
    assert kinds.count("account_frozen") == 2 and kinds.count("account_unfrozen") == 2
