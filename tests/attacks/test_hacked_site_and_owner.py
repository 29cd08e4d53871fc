"""A hacked merchant site and a spoofed owner, against the V-device (`vdevice run`, real).

The site attacker holds the site's database and the vtest password, so it can enqueue any
withdrawal the phone will decrypt; the spoofer can send SMS from the owner's number but has no
authenticator. The phone stands between them and custody (played by the stand-in, which
records every request: what it never got, the node never saw): beyond the policy nothing is
signed, above the threshold the owner is asked and only a valid fresh code releases the send,
and owner commands without a valid, unused code change nothing.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable

import pyotp

from cc_common.fingerprint import fingerprint
from cc_common.spending_policy import approved_request_string
from tests.vdevice_fixtures import HOT_TOKEN, encrypted, regtest_address
from tests.vdevice_rig import POLICY_KEYS, Rig, _vdevice_cli
from vdevice.state import new_key
from wallet_core.chaincloud import send_request_string
from wallet_core.messages import recover_pubkey
from wallet_core.secp import compress_pubkey

POLICY = {
    "max_send_sat": 300_000,
    "max_daily_sat": 500_000,
    "max_sends_per_hour": 3,
    "approval_above_sat": 200_000,
}
assert set(POLICY) <= POLICY_KEYS


def current_test() -> str:
    return os.environ["PYTEST_CURRENT_TEST"].split("::")[1].split(" ")[0]


def posted(rig: Rig) -> list[str]:
    return [f["user_tx_no"] for f in rig.web.tx_requests]


def signer_of(rig: Rig, form: dict[str, str], *, approved: bool) -> bytes:
    text = send_request_string(form["outs"], form["user_tx_no"], is_dynamic_fee=1)
    if approved:
        text = approved_request_string(text)
    return compress_pubkey(recover_pubkey(text, form["vc_code"]))


def test_hacked_site_stops_at_the_daily_limit_and_the_hourly_rate(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(approval_timeout=600.0, **POLICY)
    attacker = [regtest_address(f"attacker-{n}") for n in range(5)]
    rig.web.add_vtest("drain-1", encrypted(f"{attacker[0]},150000"))
    rig.web.add_vtest("drain-2", encrypted(f"{attacker[1]},150000"))
    rig.web.add_vtest("drain-big", encrypted(f"{attacker[2]},250000"))  # 150+150+250 > 500
    rig.web.add_vtest("drain-3", encrypted(f"{attacker[3]},150000"))  # 450: still within
    rig.web.add_vtest("drain-4", encrypted(f"{attacker[4]},100000"))  # 550 > 500
    rig.web.add_vtest("drain-5", encrypted(f"{attacker[4]},1000"))  # a 4th send this hour
    rig.start()
    rig.wait_status(lambda s: rig.web.reports_for("drain-5"), "the last vtest handled", 40)
    assert posted(rig) == ["drain-1", "drain-2", "drain-3"]
    for refused in ("drain-big", "drain-4", "drain-5"):
        assert rig.web.reports_for(refused) == [{"vtest_id": refused, "tx_hash": ""}]
    rig.wait_owner("drain-5 refused")
    texts = rig.owner_texts()
    assert any("drain-big refused" in t and "24 h limit" in t for t in texts)
    assert any("drain-4 refused" in t and "24 h limit" in t for t in texts)
    assert any("drain-5 refused" in t and "in the last hour" in t for t in texts)


def test_above_the_threshold_only_the_owners_fresh_code_releases_the_send(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(approval_timeout=600.0, **POLICY)
    dest = regtest_address("big-payee")
    rig.web.add_vtest("big-1", encrypted(f"{dest},250000"))
    rig.start()
    (ask,) = rig.wait_owner("CC APPROVE?")
    assert "250000 sat" in ask and dest in ask
    approval_id = ask.split("CC:APPROVE:")[1].split(":")[0]
    assert rig.web.tx_requests == []

    # spoofed approvals from the owner's number: no code, a code from an hour ago
    old = pyotp.TOTP(rig.totp_secret).at(int(time.time()) - 3600)
    for text in (f"CC:APPROVE:{approval_id}:", f"CC:APPROVE:{approval_id}:{old}"):
        rig.owner_says(text)
    rig.wait_status(
        lambda s: len([t for t in rig.owner_texts() if "CC:REFUSED" in t]) >= 2, "2 refusals"
    )
    assert rig.web.tx_requests == []

    code = rig.owner_code()
    rig.owner_says(f"CC:APPROVE:{approval_id}:{code}")
    rig.wait_owner(f"CC:APPROVED:{approval_id}")
    rig.wait_status(lambda s: rig.web.reports_for("big-1"), "the approved send reported", 30)
    (form,) = rig.web.tx_requests
    assert signer_of(rig, form, approved=True) == rig.cold.channels[form["c_id"]].v_pub
    # a replay of the same approval (the same code) is refused
    rig.owner_says(f"CC:APPROVE:{approval_id}:{code}")
    rig.wait_owner("CC:REFUSED:replayed")
    # what the phone and the simulator wrote is private from its creation
    for path in (
        rig.d.log_dir / "vdevice.log",
        rig.d.log_dir / "firmware-sim.log",
        rig.d.data_dir / f"vdevice-{current_test()}" / "vdevice.db",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_spoofed_owner_commands_change_nothing_and_lock_the_number_out(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.start()
    rig.wait_channel()
    code = rig.owner_code()
    rig.owner_says(f"CC:STOP_LOOP:{code}")
    rig.wait_owner("CC:LOOP:STOPPED")
    for text in ("CC:START_LOOP", "CC:START_LOOP:000000", f"CC:START_LOOP:{code}"):
        rig.owner_says(text)  # no code, a wrong code, the code already used
    rig.wait_owner("ignored for 15 min")
    rig.wait_owner("CC:REFUSED:replayed code")  # answered after the lock-out alert
    refusals = [t for t in rig.owner_texts() if t.startswith("CC:REFUSED")]
    assert sorted(refusals) == sorted(
        ["CC:REFUSED:missing code", "CC:REFUSED:wrong code", "CC:REFUSED:replayed code"]
    )
    assert rig.status()["loop"] == "stopped"
    # locked out: even the right code is ignored for a while (no answer, nothing changes)
    rig.owner_says(f"CC:START_LOOP:{rig.owner_code()}")
    rig.owner_says("CC:PING")
    rig.wait_status(lambda s: s["time"], "a pass")
    since = rig.status()["time"]
    rig.wait_status(lambda s: s["time"] != since, "passes of the stopped loop")
    assert rig.status()["loop"] == "stopped"
    assert not any("LOOP:RUNNING" in t or "PONG" in t for t in rig.owner_texts())


def test_a_bundle_with_another_cold_identity_is_refused(
    sim,
    tmp_path,
) -> None:
    """Custody (hacked at provisioning) hands out its own key as the cold HSM's: the phone
    compares it with the fingerprint read at the cold console and refuses it."""
    d = sim.deployment
    d.configure({"vdevice": {"state_dir": "vdevice-bundle", "wait_for_provisioning": False}})
    _vdevice_cli(sim, "init")
    _, real_cold = new_key()
    _, fake_cold = new_key()
    bundle = {
        "account_id": 1,
        "cold_identity": fake_cold.hex(),
        "cold_numbers": ["+15550000001"],
        "hot_token": HOT_TOKEN,
        "custody_url": "http://127.0.0.1:9",
    }
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    refused = _vdevice_cli(
        sim, "provision", "--bundle", str(path), "--cold-fingerprint", fingerprint(real_cold),
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "does not match the fingerprint" in refused.stderr
    status = json.loads(_vdevice_cli(sim, "status", "--json").stdout)
    assert status["provisioned"] is False
    missing = _vdevice_cli(sim, "provision", "--bundle", str(path), check=False)
    assert missing.returncode == 2 and "--cold-fingerprint" in missing.stderr
