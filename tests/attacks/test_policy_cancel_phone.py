"""A loosening the owner cancels never applies, on the phone nor in the cold HSM: `vdevice run`
and `hsm-cold serve` as real processes, talking only by SMS through `firmware-sim serve`.

The phone signs the loosening, the cold HSM answers it "pending until T" (signed) and tells the
owner; the owner texts `CC:POLICY_CANCEL:<id>` to the cold HSM, which answers the phone
"cancelled". After T the phone still refuses locally the send only the loosening would allow
(the site hears "failed", custody gets nothing) and the cold HSM refuses the same send signed
under the phone's own channel key (what an attacker who made the phone sign it would hold).
A second loosening, not cancelled, applies on the phone only once the cold HSM, asked again
after the delay, says "applied".
Custody and the site are the in-test stand-in (tests/vdevice_fixtures.py).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import coincurve
import pytest

from cc_common.deployment import COLD_NUMBERS, OWNER_NUMBER, VDEVICE_NUMBER
from cc_common.fingerprint import fingerprint
from cc_common.link import LinkRemoteError
from firmware_sim.control import ControlClient
from hsm_cold.errors import ColdErrorCode
from tests.cold_rig import SETTLEMENT, Account
from tests.harness import Deployment, TestProcess, wait_until
from tests.hsm_fixtures import ColdHsm, VDevice, random_address
from tests.vdevice_fixtures import (
    HOT_TOKEN,
    SITE_TOKEN,
    VTEST_PASSWORD,
    WebStandIn,
    encrypted,
    regtest_address,
    status_file,
)

ACCOUNT = 7
DELAY = 10  # seconds: the shortest loosening delay a policy may have
TIMEOUT = 30.0
DEST = regtest_address("cancel-dest")


@dataclass
class Rig:
    d: Deployment
    cold: ColdHsm
    link: Any
    control: ControlClient
    web: WebStandIn
    phone: TestProcess
    account: Account

    def status(self) -> dict[str, Any]:
        return status_file(self.d.run_dir)() or {}

    def wait_status(self, check: Any, what: str, timeout: float = TIMEOUT) -> Any:
        def probe() -> Any:
            self.phone.assert_running()
            return check(self.status())

        return wait_until(probe, timeout, what)

    def cli(self, *args: str) -> str:
        out = self.d.cli(*args, "--dir", str(self.d.data_dir), module="vdevice.cli")
        return str(out.stdout)

    def cold_channel_state(self, c_id: str) -> str | None:
        db = sqlite3.connect(
            f"file:{self.cold.section.path('state_dir') / 'cold.db'}?mode=ro", uri=True
        )
        try:
            row = db.execute("SELECT state FROM channels WHERE c_id = ?", (c_id,)).fetchone()
        finally:
            db.close()
        return None if row is None else str(row[0])

    def phone_channel(self) -> tuple[str, coincurve.PrivateKey]:
        """The phone's live channel id and key, read off its state (the attacker's loot)."""
        db = sqlite3.connect(self.d.data_dir / "vdevice-cancel" / "vdevice.db")
        try:
            c_id, v_priv = db.execute(
                "SELECT c_id, v_priv FROM channels ORDER BY opened_at DESC LIMIT 1"
            ).fetchone()
        finally:
            db.close()
        return c_id, coincurve.PrivateKey(bytes.fromhex(v_priv))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    d = Deployment(
        tmp_path_factory.mktemp("cancel"), config={"hsm_cold": {"sms_poll_interval": 0.5}}
    )
    cold = ColdHsm(d)
    web = WebStandIn()
    phone: TestProcess | None = None
    try:
        d.start_cli("firmware-sim", "firmware_sim.cli", "serve", timeout=60)
        cold.start()
        link = cold.client()
        d.configure(
            {
                "vdevice": {
                    "state_dir": "vdevice-cancel",
                    "merchant_url": web.site_url,
                    "merchant_token": SITE_TOKEN,
                    "vtest_password": VTEST_PASSWORD,
                    "poll_interval": 0.2,
                    "wait_for_provisioning": False,
                    "sms_reply_timeout": 3.0,
                    "tx_poll_max_interval": 0.5,
                    "policy": {
                        "max_send_sat": 100_000,
                        "approval_above_sat": 300_000,
                        "loosen_delay": DELAY,
                    },
                }
            }
        )
        dir_args = ("--dir", str(d.data_dir))
        identity = d.cli("init", *dir_args, module="vdevice.cli").stdout.splitlines()[0]
        hot = coincurve.PrivateKey(hashlib.sha256(b"cancel-hot").digest())
        answer = link.call(
            "provision_account",
            {
                "account": ACCOUNT,
                "network": "regtest",
                "hot_pubkey": hot.public_key.format(compressed=True).hex(),
                "vdevice_identity": identity,
                "settlement_descriptor": SETTLEMENT.to_string(),
                "vdevice_phone": VDEVICE_NUMBER,
                "owner_phone": OWNER_NUMBER,
            },
            timeout=TIMEOUT,
        )
        cold.confirm(
            ACCOUNT,
            identity,
            "--max-send-sat=100000",
            "--approval-above-sat=300000",
            f"--loosen-delay={DELAY}",
        )
        bundle = {
            "account_id": ACCOUNT,
            "cold_identity": cold.identity.hex(),
            "cold_numbers": list(COLD_NUMBERS),
            "hot_token": HOT_TOKEN,
            "custody_url": web.custody_url,
        }
        path = d.data_dir / "bundle.json"
        path.write_text(json.dumps({"vdevice_bundle": bundle}))
        cold_fp = fingerprint(cold.identity)
        d.cli("provision", "--bundle", str(path), "--cold-fingerprint", cold_fp, *dir_args,
              module="vdevice.cli")  # fmt: skip
        phone = d.start_cli("vdevice", "vdevice.cli", "run", wait=True, timeout=30)
        control = ControlClient(d.config.section("firmware_sim").path("control_socket"))
        account = Account(ACCOUNT, answer, hot, VDevice(seed="cancel-unused"))
        yield Rig(d, cold, link, control, web, phone, account)
    except BaseException:
        print(d.log_tails())
        raise
    finally:
        problems = phone.stop() if phone is not None else []
        problems += cold.stop()
        web.close()
        assert not problems, problems


def test_a_cancelled_loosening_applies_neither_on_the_phone_nor_in_the_cold_hsm(rig: Rig) -> None:
    c_id = rig.wait_status(
        lambda s: (c := s.get("channel")) and c["live"] and c["c_id"], "a channel at the phone"
    )
    wait_until(lambda: rig.cold_channel_state(c_id) == "live", TIMEOUT, "the channel live")
    rig.cli("policy", "set", "--max-send-sat", "300000")
    change = rig.wait_status(
        lambda s: (c := s.get("policy_change")) and c["state"] == "pending" and c,
        "the cold HSM's signed 'pending' at the phone",
    )
    applies_at = change["detail"]
    assert applies_at > time.time()
    note = wait_until(
        lambda: [
            m["text"] for m in rig.control.inbox(OWNER_NUMBER) if "POLICY_CANCEL" in m["text"]
        ],
        TIMEOUT,
        "the loosening announced to the owner",
    )[-1]
    change_id = note.split("CC:POLICY_CANCEL:")[1][:8]
    rig.control.inject_sms(COLD_NUMBERS[0], f"CC:POLICY_CANCEL:{change_id}", OWNER_NUMBER)
    rig.wait_status(
        lambda s: s["policy_change"]["state"] == "cancelled", "the cold HSM's 'cancelled'"
    )
    # a loosening the owner lets pass: the phone asks again after its delay and applies it on
    # the cold HSM's signed "applied" (the hourly count only: the cancelled one stays cancelled)
    rig.cli("policy", "set", "--max-sends-per-hour", "20")
    rig.wait_status(
        lambda s: s["policy_change"]["seq"] == 2 and s["policy_change"]["state"] == "applied",
        "the second loosening applied on the cold HSM's word",
        DELAY + 20,
    )
    assert rig.status()["policies"]["max_sends_per_hour"] == 20
    assert time.time() > applies_at

    # the phone refuses locally what only the cancelled loosening would allow
    rig.web.add_vtest("after-cancel", encrypted(f"{DEST},150000"))
    rig.wait_status(lambda s: rig.web.reports_for("after-cancel"), "the phone's refusal")
    assert rig.web.reports_for("after-cancel") == [{"vtest_id": "after-cancel", "tx_hash": ""}]
    assert rig.web.tx_requests == []
    assert rig.status()["policies"]["max_send_sat"] == 100_000
    assert "max 100000 sat/send" in rig.cli("policy")

    # and the cold HSM refuses it even signed under the phone's own channel key
    assert rig.phone_channel()[0] == c_id
    v_key = rig.phone_channel()[1]
    payload, _ = rig.account.send(
        [(random_address(), 150_000)], "made-to-sign", vc_key=v_key, c_id=c_id
    )
    with pytest.raises(LinkRemoteError) as refused:
        rig.link.call("cosign", payload, timeout=TIMEOUT)
    assert refused.value.code == ColdErrorCode.POLICY_REFUSED
