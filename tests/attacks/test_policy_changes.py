"""Changes of the spending policy, attacked by SMS (the cold HSM as a real process).

A change is an SMS from the V-device's number signed by its identity key with a sequence
number above the last. The attacker can send any SMS from any number (the carrier lets numbers
be spoofed) and can replay what it overheard; it holds neither the identity key nor the owner's
phone. A tightening applies at once; a loosening is announced to the owner and applies only
after the account's delay, unless the owner cancels it: a send that only the looser policy
allows is refused until then, and for ever once cancelled. Every change signed by the
V-device is answered to its number with the cold HSM's signed word (applied, pending until T,
cancelled, refused with a code), and a change sent again under the same seq changes nothing
and is answered with its state now.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from typing import Any

import coincurve
import pytest

from cc_common.deployment import OWNER_NUMBER, VDEVICE_NUMBER
from cc_common.spending_policy import AckState, PolicyAck, SpendingPolicy, change_statement
from hsm_cold.errors import ColdErrorCode
from tests.cold_rig import SETTLEMENT, Account
from tests.cold_sms_rig import ATTACKER, COLD_A, MIN_LOOSEN_DELAY, TIMEOUT, World
from tests.harness import wait_until
from tests.hsm_fixtures import VDevice, random_address
from wallet_core import messages

ACCOUNT = 46
# seconds: the account's loosening delay, chosen at the console; short (the world's cold HSM
# has a floor of MIN_LOOSEN_DELAY) but long enough for one co-sign attempt inside it
DELAY = 4
START = SpendingPolicy(
    max_send_sat=300_000,
    max_daily_sat=5_000_000,
    max_sends_per_hour=100,
    approval_above_sat=300_000,
    loosen_delay=DELAY,
)


@pytest.fixture(scope="module")
def acct(world: World) -> Account:
    hot = coincurve.PrivateKey(hashlib.sha256(b"policy-hot").digest())
    vdevice = VDevice(seed="policy-vdevice")
    answer = world.link.call(
        "provision_account",
        {
            "account": ACCOUNT,
            "network": "regtest",
            "hot_pubkey": hot.public_key.format(compressed=True).hex(),
            "vdevice_identity": vdevice.identity_hex,
            "settlement_descriptor": SETTLEMENT.to_string(),
            "vdevice_phone": VDEVICE_NUMBER,
            "owner_phone": OWNER_NUMBER,
        },
        timeout=TIMEOUT,
    )
    world.cold.confirm(
        ACCOUNT,
        vdevice.identity_hex,
        f"--max-send-sat={START.max_send_sat}",
        f"--max-daily-sat={START.max_daily_sat}",
        f"--max-sends-per-hour={START.max_sends_per_hour}",
        f"--approval-above-sat={START.approval_above_sat}",
        f"--loosen-delay={DELAY}",
    )
    registration = vdevice.channel_registration(ACCOUNT, "p1")
    world.link.call("register_channel", registration, timeout=TIMEOUT)
    return Account(ACCOUNT, answer, hot, vdevice, c_id="p1")


def change_text(acct: Account, seq: int, policy: SpendingPolicy, key: bytes | None = None) -> str:
    statement = change_statement(ACCOUNT, seq, policy)
    sig = messages.sign_message(key or acct.vdevice.identity.secret, statement)
    return f"{statement}:{sig}"


def cosign(world: World, acct: Account, pay: int, tag: str) -> Any:
    payload, _ = acct.send([(random_address(), pay)], f"{tag}-{time.monotonic_ns()}")
    return world.link.call("cosign", payload, timeout=TIMEOUT)


def refused_code(world: World, acct: Account, pay: int, tag: str) -> int:
    try:
        cosign(world, acct, pay, tag)
    except Exception as exc:  # the link's remote error carries the code
        return int(getattr(exc, "code", 0))
    raise AssertionError(f"a {pay} sat send was co-signed")


def ack(world: World, seq: int, state: AckState) -> PolicyAck:
    """The cold HSM's answer to change `seq`, at the V-device's number, signed by its identity."""
    prefix = f"CC:POLICY_ACK:{ACCOUNT}:{seq}:{state.value}:"
    sms = world.v.expect(lambda m: m.text.startswith(prefix), f"{state.value} ack of {seq}")
    answer, sig = PolicyAck.parse(sms.text)
    assert messages.verify_message_pubkey(world.cold.identity, answer.statement(), sig)
    return answer


def policy_row(world: World) -> str:
    return world.query("SELECT policy FROM account_policies WHERE account = ?", ACCOUNT)[0][0]


def pending_changes(world: World) -> list[tuple[str, float]]:
    return world.query(
        "SELECT id, applies_at FROM policy_changes WHERE account = ? AND state = 'pending'",
        ACCOUNT,
    )


def test_tightening_applies_at_once_and_cannot_be_replayed_or_forged(
    world: World,
    acct: Account,
) -> None:
    tighter = SpendingPolicy(100_000, 5_000_000, 100, 100_000, loosen_delay=DELAY)
    n = world.counter("policy_applied")
    world.v.send(change_text(acct, 1, tighter))
    world.wait_counter("policy_applied", n + 1)
    assert policy_row(world) == tighter.to_text()
    assert abs(ack(world, 1, AckState.APPLIED).detail - time.time()) < 60
    assert refused_code(world, acct, 150_000, "t") == ColdErrorCode.POLICY_REFUSED
    # the same change again (its answer lost): answered again, nothing changes
    resent = world.counter("policy_resent")
    world.v.send(change_text(acct, 1, tighter))
    world.wait_counter("policy_resent", resent + 1)
    ack(world, 1, AckState.APPLIED)

    refused = world.counter("policy_refused")
    world.v.send(change_text(acct, 1, START))  # seq not above the last: stale
    world.v.send(change_text(acct, 2, START, key=b"\x05" * 32))  # not the identity key
    world.control.inject_sms(COLD_A, change_text(acct, 2, START, b"\x05" * 32), ATTACKER)
    # signed, but with a delay below the cold HSM's floor
    world.v.send(change_text(acct, 3, replace(tighter, loosen_delay=MIN_LOOSEN_DELAY - 1)))
    world.wait_counter("policy_refused", refused + 4)
    assert policy_row(world) == tighter.to_text() and not pending_changes(world)
    # the phone signed the stale one and the short one: it hears why (the forged ones get no
    # answer)
    assert ack(world, 1, AckState.REFUSED).detail == ColdErrorCode.POLICY_CHANGE_REFUSED
    assert ack(world, 3, AckState.REFUSED).detail == ColdErrorCode.POLICY_CHANGE_REFUSED
    assert world.counter("policy_applied") == n + 1


def test_a_loosening_waits_its_delay_and_a_cancelled_one_never_applies(
    world: World,
    acct: Account,
) -> None:
    looser = SpendingPolicy(300_000, 5_000_000, 100, 300_000, loosen_delay=DELAY)
    before = policy_row(world)
    n = world.counter("policy_pending")
    world.v.send(change_text(acct, 10, looser))
    world.wait_counter("policy_pending", n + 1)
    ((change_id, applies_at),) = pending_changes(world)
    # before its delay the looser policy is not in force: the send it would allow is refused
    assert refused_code(world, acct, 250_000, "early") == ColdErrorCode.POLICY_REFUSED
    assert time.time() < applies_at, "the early attempt came too late to prove anything"
    assert policy_row(world) == before
    note = world.wait_inbox(OWNER_NUMBER, f"CC:POLICY_CANCEL:{change_id}")["text"]
    assert "loosening" in note and "max_send_sat" in note
    assert ack(world, 10, AckState.PENDING).detail == int(applies_at)
    wait_until(lambda: time.time() > applies_at, DELAY + 5, "the loosening delay to pass")
    assert len(cosign(world, acct, 250_000, "late")["signatures"]) == 1
    assert policy_row(world) == looser.to_text()
    ack(world, 10, AckState.APPLIED)  # told when it applied
    world.v.send(change_text(acct, 10, looser))  # the phone asking after the delay
    ack(world, 10, AckState.APPLIED)

    loosest = SpendingPolicy(400_000, 5_000_000, 100, 400_000, loosen_delay=DELAY)
    n = world.counter("policy_pending")
    world.v.send(change_text(acct, 11, loosest))
    world.wait_counter("policy_pending", n + 1)
    ((change_id, applies_at),) = pending_changes(world)
    world.wait_inbox(OWNER_NUMBER, f"CC:POLICY_CANCEL:{change_id}")
    refused = world.counter("policy_refused")
    # a cancel from another number, or of another id, does nothing (and is counted)
    world.control.inject_sms(COLD_A, f"CC:POLICY_CANCEL:{change_id}", ATTACKER)
    world.control.inject_sms(COLD_A, "CC:POLICY_CANCEL:00000000", OWNER_NUMBER)
    world.wait_counter("policy_refused", refused + 2)
    assert pending_changes(world) == [(change_id, applies_at)]
    cancelled = world.counter("policy_cancelled")
    world.control.inject_sms(COLD_A, f"CC:POLICY_CANCEL:{change_id}", OWNER_NUMBER)
    world.wait_counter("policy_cancelled", cancelled + 1)
    assert not pending_changes(world)
    ack(world, 11, AckState.CANCELLED)  # the phone drops the loosening too
    wait_until(lambda: time.time() > applies_at, DELAY + 5, "the cancelled change's time")
    assert refused_code(world, acct, 350_000, "cancelled") == ColdErrorCode.POLICY_REFUSED
    world.v.send(change_text(acct, 11, loosest))  # asked again after the delay: still cancelled
    ack(world, 11, AckState.CANCELLED)
    assert policy_row(world) == looser.to_text()
    world.wait_inbox(OWNER_NUMBER, f"loosening {change_id} cancelled")
