"""`vdevice policy set`: the owner's change is signed by the phone's identity key, texted to
the cold HSM, and applied on the phone as the cold HSM will: a tightening at once, a
loosening only after the delay of the policy in force (the real cold HSM's side is in
tests/attacks/test_policy_changes.py)."""

from __future__ import annotations

from collections.abc import Callable

from cc_common.spending_policy import SpendingPolicy, change_statement
from tests.harness import wait_until
from tests.vdevice_fixtures import encrypted, regtest_address
from tests.vdevice_rig import Rig, _vdevice_cli
from wallet_core.messages import verify_message_pubkey

DEST = regtest_address("policy-dest")


def test_policy_set_signs_sends_and_applies_like_the_cold_hsm(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(max_send_sat=300_000, approval_above_sat=300_000, loosen_delay=3600)
    rig.start()
    rig.wait_channel()
    out = _vdevice_cli(rig.sim, "policy", "set", "--max-send-sat", "100000").stdout
    assert "applies at once" in out

    def policy_texts() -> list[str]:
        return [t for _, _, t in rig.cold.received if t.startswith("CC:POLICY:")]

    (text,) = wait_until(policy_texts, 15, "the signed change at the cold HSM")
    statement, sig = text.rsplit(":", 1)
    account, seq, body = statement.split(":", 4)[2:]
    new = SpendingPolicy.from_text(body)
    assert (account, seq, new.max_send_sat) == ("1", "1", 100_000)
    assert statement == change_statement(1, 1, new)
    assert verify_message_pubkey(rig.identity, statement, sig)

    rig.web.add_vtest("after-tightening", encrypted(f"{DEST},150000"))
    rig.wait_status(lambda s: rig.web.reports_for("after-tightening"), "the refusal", 20)
    assert rig.web.tx_requests == []
    rig.wait_owner("per-send limit of 100000")

    out = _vdevice_cli(rig.sim, "policy", "set", "--max-send-sat", "300000").stdout
    assert "loosens: applies after 3600s" in out
    wait_until(lambda: len(policy_texts()) == 2, 15, "the second change at the cold HSM")
    rig.web.add_vtest("before-the-delay", encrypted(f"{DEST},150000"))
    rig.wait_status(lambda s: rig.web.reports_for("before-the-delay"), "the refusal", 20)
    assert rig.web.tx_requests == []
    assert "max 100000 sat/send" in _vdevice_cli(rig.sim, "policy").stdout
    assert rig.status()["policies"]["max_send_sat"] == 100_000
    bad = _vdevice_cli(rig.sim, "policy", "set", "--max-send-sat", "0", check=False)
    assert bad.returncode == 2 and "positive" in bad.stderr
