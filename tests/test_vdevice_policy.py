"""`vdevice policy set`: the owner's change is signed by the phone's identity key, texted to
the cold HSM, and applied on the phone as the cold HSM will: a tightening at once, a
loosening only after the delay of the policy in force (the real cold HSM's side is in
tests/attacks/test_policy_changes.py)."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path

from cc_common.spending_policy import AckState, PolicyAck, SpendingPolicy, change_statement
from tests.harness import wait_until
from tests.vdevice_fixtures import encrypted, regtest_address
from tests.vdevice_rig import Rig, _vdevice_cli
from vdevice import policy_changes
from vdevice.approvals import MAX_HELD, Decision, SendPolicy
from vdevice.state import State, new_key
from wallet_core.chaincloud import send_signed_statement
from wallet_core.messages import sign_message, verify_message_pubkey

DEST = regtest_address("policy-dest")
DELAY = 10  # the shortest loosening delay a policy may have


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


def test_a_held_send_does_not_stop_the_queue(
    make_rig: Callable[..., Rig],
) -> None:
    """A send waiting for the owner is set aside: later sends within the policy go, counting
    the held one against the daily limit; once approved it goes."""
    rig = make_rig(
        approval_timeout=600.0,
        max_send_sat=300_000,
        max_daily_sat=500_000,
        approval_above_sat=200_000,
    )
    rig.web.add_vtest("big", encrypted(f"{DEST},250000"))
    rig.web.add_vtest("small", encrypted(f"{DEST},150000"))
    rig.web.add_vtest("too-much", encrypted(f"{DEST},150000"))  # 250 held + 150 + 150 > 500
    rig.start()
    (ask,) = rig.wait_owner("CC APPROVE?")
    rig.wait_status(lambda s: rig.web.reports_for("too-much"), "the queue past the held send", 30)
    assert [f["user_tx_no"] for f in rig.web.tx_requests] == ["small"]
    assert rig.web.reports_for("too-much") == [{"vtest_id": "too-much", "tx_hash": ""}]
    rig.wait_owner("too-much refused")
    assert any("24 h limit" in t for t in rig.owner_texts() if "too-much" in t)
    assert rig.web.reports_for("big") == []
    approval_id = ask.split("CC:APPROVE:")[1].split(":")[0]
    rig.owner_says(f"CC:APPROVE:{approval_id}:{rig.owner_code()}")
    rig.wait_status(lambda s: rig.web.reports_for("big"), "the approved send", 30)
    assert [f["user_tx_no"] for f in rig.web.tx_requests] == ["small", "big"]
    assert rig.web.reports_for("big")[0]["tx_hash"]


def test_the_phone_learns_a_fee_bumps_txid_from_the_cold_hsm(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.web.add_vtest("bumped", encrypted(f"{DEST},50000"))
    rig.start()
    rig.wait_status(lambda s: rig.web.reports_for("bumped"), "the send reported", 30)
    old = rig.wait_status(
        lambda s: (s.get("last_send") or {}).get("tx_hash"), "the send's txid in the status", 15
    )
    new = "ab" * 32
    rig.cold.say(send_signed_statement(1, "cd" * 32, "bumped"), key=b"\x07" * 32)  # forged
    rig.cold.say(send_signed_statement(1, new, "bumped"))
    rig.wait_status(lambda s: s["last_send"]["tx_hash"] == new, "the new txid", 20)
    assert rig.status()["last_send"]["replaced"] == [old]
    shown = _vdevice_cli(rig.sim, "status").stdout
    assert new in shown and f"fee bump of {old}" in shown


def test_the_phones_change_record_follows_only_the_cold_hsms_word(tmp_path: Path) -> None:
    """No processes: the record's rules (which answers count, when the change is texted)."""
    state = State(tmp_path / "v.db")
    state.init_identity()
    cold_priv, cold_pub = new_key()
    strict = SpendingPolicy(100_000, 1_000_000, 10, 100_000, loosen_delay=DELAY)
    loose = dataclasses.replace(strict, max_send_sat=200_000)
    texts: list[str] = []
    _, at_once = policy_changes.request(state, 1, strict, loose)
    assert not at_once

    def answer(seq: int, ack_state: AckState, detail: int, key: bytes = cold_priv) -> str:
        statement = PolicyAck(1, seq, ack_state, detail).statement()
        return f"{statement}:{sign_message(key, statement)}"

    now = time.time()
    policy_changes.tick(state, lambda t: texts.append(t) or True, 5.0, now)
    policy_changes.tick(state, lambda t: texts.append(t) or True, 5.0, now + 1)  # not yet
    policy_changes.tick(state, lambda t: texts.append(t) or True, 5.0, now + 6)  # no answer
    assert len(texts) == 2 and texts[0] == texts[1]
    on_ack = functools.partial(policy_changes.on_ack, state, cold_pub, 1)
    assert on_ack(answer(1, AckState.APPLIED, 0, key=b"\x07" * 32), now) is None  # forged
    assert on_ack(answer(2, AckState.APPLIED, 0), now) is None  # not the change asked
    assert on_ack(answer(1, AckState.PENDING, int(now) + 60), now + 7)
    assert policy_changes.current(state, strict) == strict
    policy_changes.tick(state, lambda t: texts.append(t) or True, 5.0, now + 30)
    assert len(texts) == 2  # pending: asked again only once its time has passed
    policy_changes.tick(state, lambda t: texts.append(t) or True, 5.0, now + 62)
    assert len(texts) == 3
    on_ack(answer(1, AckState.PENDING, int(now) + 60), now + 62)  # the cold HSM's clock lags
    policy_changes.tick(state, lambda t: texts.append(t) or True, 5.0, now + 63)
    assert len(texts) == 3  # not texted again at once: the backoff holds
    assert on_ack(answer(1, AckState.APPLIED, int(now) + 63), now + 64)
    assert policy_changes.current(state, strict) == loose
    assert on_ack(answer(1, AckState.CANCELLED, int(now) + 65), now + 65) is None  # final
    assert policy_changes.current(state, strict) == loose
    state.close()


@dataclasses.dataclass
class OwnersPhone:
    """What `SendPolicy` uses of `vdevice.phone.Phone` (its number and `send`), recorded."""

    owner_number: str = "+15550000200"
    texts: list[str] = dataclasses.field(default_factory=list)

    def send(self, number: str, text: str) -> bool:
        self.texts.append(text)
        return True


def test_held_sends_count_against_the_limits_and_are_bounded(tmp_path: Path) -> None:
    """No processes: the rules of `approvals.py` for sends set aside."""
    state = State(tmp_path / "v.db")
    phone = OwnersPhone()
    policy = SpendingPolicy(300_000, 1_000_000, 10, 100_000)
    held = SendPolicy(state, phone, policy, approval_timeout=600.0)  # type: ignore[arg-type]
    now = time.time()
    for n in range(MAX_HELD):
        assert held.decide(f"big-{n}", f"{DEST},150000", [DEST], 150_000, now, "blob").held
    assert held.waiting(now) == [f"big-{n}" for n in range(MAX_HELD)]
    assert len(phone.texts) == MAX_HELD
    refused = held.decide("one-more", f"{DEST},150000", [DEST], 150_000, now, "blob").refusal
    assert refused == f"{MAX_HELD} sends already wait for the owner's approval"
    # 5 x 150 000 held: a 300 000 send would pass the 1 000 000 a day
    over = held.decide("small", f"{DEST},90000", [DEST], 300_000, now).refusal
    assert over is not None and "24 h limit" in over
    assert held.decide("small", f"{DEST},90000", [DEST], 90_000, now) == Decision()
    approval_id = phone.texts[2].split("CC:APPROVE:")[1].split(":")[0]
    assert held.due(now) is None
    assert held.approve(approval_id, now)
    assert held.due(now) == ("big-2", "blob")
    # the approved one is judged without its own share of the held total
    assert held.decide("big-2", f"{DEST},150000", [DEST], 150_000, now).approved
    assert held.due(now + 601) == ("big-0", "blob")  # expired: taken up (to be refused)
    assert held.waiting(now + 601) == []
    state.close()
