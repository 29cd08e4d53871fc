"""The spending policy inside the cold HSM, attacked from the hot side of the serial link.

The attacker holds what a hacked custody or hot host holds: the link (the test plays the hot
HSM with the pairing key) and requests the V-device really signed, because a hacked site made
it sign them or the phone's own policy was out of step. The cold HSM (`hsm-cold serve`, a real
process on a pty) must refuse whatever the account's policy does not allow, with its own code,
without freezing (the V-device did sign), alerting the owner; and a pending account (not yet
confirmed at the cold console with the phone's fingerprint) gets nothing at all.
"""

from __future__ import annotations

from typing import Any

from cc_common.fingerprint import fingerprint
from cc_common.spending_policy import approved_request_string
from hsm_cold.errors import ColdErrorCode
from tests.cold_rig import TIMEOUT, Account, provision, refused
from tests.hsm_fixtures import ColdHsm, random_address
from wallet_core import messages
from wallet_core.chaincloud import send_request_string

# A small policy so that made-up 1 000 000 sat coins can cross every limit.
POLICY = (
    "--max-send-sat=300000",
    "--max-daily-sat=500000",
    "--max-sends-per-hour=10",
    "--approval-above-sat=200000",
)


def confirmed(cold: ColdHsm, link: Any, number: int, *policy: str) -> Account:
    acct = provision(cold, link, number, register=False, confirm=False)
    cold.confirm(number, acct.vdevice.identity_hex, *(policy or POLICY))
    link.call("register_channel", acct.vdevice.channel_registration(number, "c1"), timeout=TIMEOUT)
    return acct


def approved(acct: Account, payload: dict[str, Any]) -> dict[str, Any]:
    """The same request, signed by the V-device with the owner's approval inside."""
    text = send_request_string(
        payload["outs"], payload["user_tx_no"], is_dynamic_fee=payload["is_dynamic_fee"]
    )
    vc_code = messages.sign_message(acct.vdevice.channel.secret, approved_request_string(text))
    return {**payload, "vc_code": vc_code}


def alerts_of(link: Any, account: int) -> list[dict[str, Any]]:
    return [
        a
        for a in link.call("take_alerts", {}, timeout=TIMEOUT)["alerts"]
        if a["account"] == account
    ]


def test_a_send_the_vdevice_signed_beyond_the_policy_is_refused(cold: ColdHsm, link: Any) -> None:
    acct = confirmed(cold, link, 41)
    ok, _ = acct.send([(random_address(), 150_000)], "p-1")
    assert len(link.call("cosign", ok, timeout=TIMEOUT)["signatures"]) == 1

    over, _ = acct.send([(random_address(), 350_000)], "p-2")
    err = refused(link, "cosign", over)
    assert err.code == ColdErrorCode.POLICY_REFUSED and "per-send limit" in err.message

    big, _ = acct.send([(random_address(), 250_000)], "p-3")
    err = refused(link, "cosign", big)  # signed by the phone, but without the owner's approval
    assert err.code == ColdErrorCode.APPROVAL_MISSING and "approval" in err.message
    assert len(link.call("cosign", approved(acct, big), timeout=TIMEOUT)["signatures"]) == 1

    more, _ = acct.send([(random_address(), 150_000)], "p-4")  # 150k + 250k + 150k > 500k
    err = refused(link, "cosign", more)
    assert err.code == ColdErrorCode.POLICY_REFUSED and "24 h limit" in err.message

    # a retry of what was co-signed is not a new send: it is neither counted nor refused
    assert len(link.call("cosign", ok, timeout=TIMEOUT)["signatures"]) == 1
    status = link.call("status", {}, timeout=TIMEOUT)
    assert 41 not in [a for a, _ in status["frozen"]]  # the V-device did sign: no freeze
    kinds = [a["kind"] for a in alerts_of(link, 41)]
    assert kinds.count("policy_refused") == 3


def test_an_approval_flag_cannot_be_added_by_the_hot_side(cold: ColdHsm, link: Any) -> None:
    """Only the channel key can put the approval in: a request re-signed by anyone else is a
    forged vc_code (frozen), and a plain one stays unapproved."""
    acct = confirmed(cold, link, 42)
    big, _ = acct.send([(random_address(), 250_000)], "a-1")
    assert refused(link, "cosign", big).code == ColdErrorCode.APPROVAL_MISSING
    text = send_request_string(big["outs"], big["user_tx_no"])
    attacker = messages.sign_message(b"\x07" * 32, approved_request_string(text))
    err = refused(link, "cosign", {**big, "vc_code": attacker})
    assert err.code == ColdErrorCode.FORGED_VC_CODE


def test_sends_per_hour_and_the_whitelist(cold: ColdHsm, link: Any) -> None:
    acct = confirmed(cold, link, 43, *POLICY[:2], "--max-sends-per-hour=2", POLICY[3])
    for n in range(2):
        payload, _ = acct.send([(random_address(), 10_000)], f"h-{n}")
        link.call("cosign", payload, timeout=TIMEOUT)
    third, _ = acct.send([(random_address(), 10_000)], "h-2")
    err = refused(link, "cosign", third)
    assert err.code == ColdErrorCode.POLICY_REFUSED and "in the last hour" in err.message

    allowed = random_address()
    listed = confirmed(cold, link, 44, *POLICY, f"--whitelist={allowed}")
    elsewhere, _ = listed.send([(random_address(), 10_000)], "w-1")
    err = refused(link, "cosign", elsewhere)
    assert err.code == ColdErrorCode.POLICY_REFUSED and "not whitelisted" in err.message
    fine, _ = listed.send([(allowed, 10_000)], "w-2")
    assert len(link.call("cosign", fine, timeout=TIMEOUT)["signatures"]) == 1


def test_a_pending_account_gets_no_channel_no_proof_no_signature(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 45, register=False, confirm=False)
    registration = acct.vdevice.channel_registration(45, "c1")
    assert refused(link, "register_channel", registration).code == ColdErrorCode.ACCOUNT_PENDING
    batch = {"account": 45, "wallet": "cold", "batch_no": 0}
    assert refused(link, "prove_batch", batch).code == ColdErrorCode.ACCOUNT_PENDING
    payload, _ = acct.send([(random_address(), 10_000)], "x-1")
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.ACCOUNT_PENDING and "confirm-account" in err.message

    # custody delivered some other key than the customer's phone shows: the officer's typed
    # fingerprint does not match, nothing is confirmed
    pin = cold.section.str("user_pin")
    phone = fingerprint(bytes.fromhex(acct.vdevice.identity_hex))
    other = fingerprint(b"\x02" + b"\x11" * 32)
    wrong = cold.cold_cli(
        "confirm-account", "45", "--vdevice-fingerprint", other, "--pin-stdin", stdin=pin + "\n"
    )
    assert wrong.returncode == 2 and "does not match" in wrong.stderr
    assert refused(link, "register_channel", registration).code == ColdErrorCode.ACCOUNT_PENDING
    bad_pin = cold.cold_cli(
        "confirm-account", "45", "--vdevice-fingerprint", phone, "--pin-stdin", stdin="nope-123\n"
    )
    assert bad_pin.returncode == 2
    assert refused(link, "prove_batch", batch).code == ColdErrorCode.ACCOUNT_PENDING

    ok = cold.cold_cli(
        "confirm-account", "45", "--vdevice-fingerprint", phone.upper().replace("-", " "),
        "--pin-stdin", stdin=pin + "\n",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "account 45 confirmed" in ok.stdout and pin not in ok.stdout + ok.stderr
    link.call("register_channel", registration, timeout=TIMEOUT)
    assert link.call("prove_batch", batch, timeout=60)["signature"]
    policy = cold.cold_cli("policy").stdout
    assert phone in policy and "25000000 sat/send" in policy  # the documented defaults


def test_identity_prints_the_fingerprint_of_the_pinned_key(cold: ColdHsm) -> None:
    out = cold.cold_cli("identity")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == fingerprint(cold.identity)
