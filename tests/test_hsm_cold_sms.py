"""The cold HSM on SMS: real `firmware-sim serve` and `hsm-cold serve`.

The test plays two parts: the hot HSM on the serial line (a `LinkClient`, as test_hsm_cold.py)
and the V-device on its own modem port (`cc_common.sms.GsmModem` and the channel codec, never
`vdevice/`). Attacks come through the carrier: `inject_sms` spoofs any sender number. Silence
(no answer to a refused text) is checked against the carrier's log and the cold state's
counters, after the refusal was counted, so no test sleeps for a fixed time.
"""

from __future__ import annotations

import time

import pytest

from cc_common.deployment import COLD_NUMBERS, OPERATOR_NUMBER, OWNER_NUMBER, VDEVICE_NUMBER
from cc_common.link import LinkRemoteError
from cc_common.sms import channel_messages as cm
from cc_common.sms.channel_messages import AddressesProof, AddressType, OpenRequest, VerifyAddresses
from hsm_cold.errors import ColdErrorCode
from tests.cold_rig import Account
from tests.cold_sms_rig import (
    ATTACKER,
    COLD_A,
    COLD_B,
    LIFETIME,
    MAIN,
    TIMEOUT,
    Channel,
    World,
    _key,
    _pub,
    provision,
)
from tests.harness import wait_until
from tests.hsm_fixtures import random_address
from wallet_core.chaincloud import batch_content
from wallet_core.wallets import batch_addresses

# -- opening a channel and using it --------------------------------------------------------------


def test_open_a_channel_then_cosign_under_it(world: World) -> None:
    ch = world.open_channel(confirm=False)
    assert ch.reply_from == COLD_A  # the SIM the request came in on
    assert world.channels()[ch.c_id] == "pending"
    err = world.cosign_refused(ch, "pending-1")  # not live before CHANNEL_OK
    assert err.code == ColdErrorCode.UNKNOWN_CHANNEL and "not live" in err.message

    world.confirm(ch)
    sigs = world.cosign(ch, "live-1")["signatures"]
    assert len(sigs) == 1 and len(sigs[0]) == 64
    # the cold channel key lives in the token, not in the state
    label = world.query("SELECT cold_key_label FROM channels WHERE c_id = ?", ch.c_id)[0][0]
    assert label == f"chan/{MAIN}/{ch.c_id}"


def test_verify_batches_are_proved_with_the_cold_channel_key(world: World) -> None:
    ch = world.open_channel()
    _, proof, sms = world.verify(ch, AddressType.COLD, 0)
    derived = [a for _, a in batch_addresses(world.main.cold_wallet, 0)]
    assert len(derived) == 1000
    assert proof.recover_signer(derived, MAIN) == ch.cold_pub != world.cold.identity
    # the proof is bound to its batch number, type, account, coin and channel
    assert proof.recover_signer(derived, MAIN + 1) != ch.cold_pub
    for replay in (
        AddressesProof(AddressType.COLD, 1, proof.sig, ch.c_id, "BTC", proof.nonce),
        AddressesProof(AddressType.HOT, 0, proof.sig, ch.c_id, "BTC", proof.nonce),
        AddressesProof(AddressType.COLD, 0, proof.sig, "f" * 16, "BTC", proof.nonce),
    ):
        assert replay.recover_signer(derived, MAIN) != ch.cold_pub
    assert (proof.batch_no, proof.c_id, proof.coin) == (0, ch.c_id, "BTC")
    assert sms.sender == COLD_A and cm.batch_signing_string(derived) == batch_content(derived)
    # a substituted address does not verify
    assert proof.recover_signer([random_address(), *derived[1:]], MAIN) != ch.cold_pub

    _, proof, _ = world.verify(ch, AddressType.HOT, 1)
    hot = [a for _, a in batch_addresses(world.main.wallet, 1)]
    assert proof.address_type is AddressType.HOT
    assert proof.recover_signer(hot, MAIN) == ch.cold_pub


# -- attacks -------------------------------------------------------------------------------------


def test_spoofed_and_unsigned_channel_requests_open_nothing(world: World) -> None:
    before = set(world.channels())
    v_before = world.sent_by_cold_to(VDEVICE_NUMBER)
    attacker_key = _key("attacker")
    forged = OpenRequest.signed(_pub(_key("a-ch")), "evil1", int(time.time()), attacker_key.secret)

    # from the attacker's own number: not a V-device, ignored, never answered
    n = world.counter("refused.unknown_sender")
    world.control.inject_sms(COLD_A, cm.format(forged), sender=ATTACKER)
    world.wait_counter("refused.unknown_sender", n + 1)
    assert world.sent_by_cold_to(ATTACKER) == 0 and world.outbox(ATTACKER) == []

    # from the V-device's number, spoofed, signed by another identity key: refused
    n = world.counter("refused.bad_identity_signature")
    world.control.inject_sms(COLD_A, cm.format(forged), sender=VDEVICE_NUMBER)
    world.wait_counter("refused.bad_identity_signature", n + 1)
    world.wait_inbox(OWNER_NUMBER, "evil1 is not signed by the pinned V-device identity key")

    # from the real V-device: unsigned (the reference's plain form), then wrongly signed
    n = world.counter("refused.plain_form")
    world.v.send(OpenRequest(_pub(_key("p-ch")), "plain1"))
    world.wait_counter("refused.plain_form", n + 1)
    n = world.counter("refused.bad_identity_signature")
    world.v.send(OpenRequest.signed(_pub(_key("w-ch")), "wrong1", int(time.time()), b"\x01" * 32))
    world.wait_counter("refused.bad_identity_signature", n + 1)

    assert set(world.channels()) == before
    assert world.sent_by_cold_to(VDEVICE_NUMBER) == v_before  # nothing answered
    alerts = world.link.call("take_alerts", {}, timeout=TIMEOUT)["alerts"]
    kinds = [a["kind"] for a in alerts if a["account"] == MAIN]
    assert kinds.count("channel_refused") >= 3


def test_replayed_qh_and_verify_change_nothing(world: World) -> None:
    ch = world.open_channel()
    channels = world.channels()
    replies = world.sent_by_cold_to(VDEVICE_NUMBER)

    n = world.counter("refused.replayed")
    world.v.send(ch.qh_text)  # the same QH again (same h_id)
    world.wait_counter("refused.replayed", n + 1)
    assert world.channels() == channels

    req, _, _ = world.verify(ch, AddressType.COLD, 2)
    replies += 1
    world.v.send(req)  # the same VERIFY again (same nonce)
    world.wait_counter("refused.replayed", n + 2)
    assert world.sent_by_cold_to(VDEVICE_NUMBER) == replies  # no second QC, no second proof

    # the same V channel key under a fresh h_id is refused too
    again = OpenRequest.signed(
        _pub(ch.v_key), "fresh-h", int(time.time()), world.main.vdevice.identity.secret
    )
    n = world.counter("refused.channel_key_reused")
    world.v.send(again)
    world.wait_counter("refused.channel_key_reused", n + 1)
    assert world.channels() == channels


def test_stale_qh_is_refused(world: World) -> None:
    before = world.channels()
    n = world.counter("refused.stale")
    old = int(time.time()) - 700  # outside the 600 s window
    qh = OpenRequest.signed(_pub(_key("s-ch")), "stale1", old, world.main.vdevice.identity.secret)
    world.v.send(qh)
    world.wait_counter("refused.stale", n + 1)
    assert world.channels() == before


def test_malformed_text_is_answered_format_error(world: World) -> None:
    world.v.send("CC:HELLO:1:")
    sms = world.v.expect(lambda m: m.text == cm.FORMAT_ERROR_TEXT, "format error reply")
    assert sms.sender == COLD_A
    world.wait_inbox(OWNER_NUMBER, "a malformed SMS from the V-device number")
    # a V-device's own "sms format is error" is not answered (no ping-pong)
    n = world.counter("refused.unexpected")
    replies = world.sent_by_cold_to(VDEVICE_NUMBER)
    world.v.send(cm.FORMAT_ERROR_TEXT)
    world.wait_counter("refused.unexpected", n + 1)
    assert world.sent_by_cold_to(VDEVICE_NUMBER) == replies


# -- expiry and renewal --------------------------------------------------------------------------


@pytest.mark.slow
def test_renewal_keeps_the_previous_channel_until_its_expiry(world: World) -> None:
    old = world.open_channel()
    # half a lifetime later (so the two expiries are well apart), the daily renewal
    wait_until(lambda: time.time() >= old.expiry - LIFETIME / 2, LIFETIME, "half a lifetime")
    signed_before, _ = world.main.send(
        [(random_address(), 100_000)], "renew-1", vc_key=old.v_key, c_id=old.c_id
    )
    new = world.open_channel()
    assert new.c_id != old.c_id and new.expiry > old.expiry
    assert world.link.call("cosign", signed_before, timeout=TIMEOUT)["signatures"]
    assert world.cosign(new, "renew-2")["signatures"]

    wait_until(lambda: time.time() >= old.expiry, LIFETIME, "the old channel's expiry")
    err = world.cosign_refused(old, "renew-3")
    assert err.code == ColdErrorCode.CHANNEL_EXPIRED
    assert world.cosign(new, "renew-4")["signatures"]
    # and an expired channel proves no batch
    n = world.counter("refused.channel_expired")
    world.v.send(
        VerifyAddresses.signed(AddressType.COLD, 0, "BTC", old.c_id, "late1", old.v_key.secret)
    )
    world.wait_counter("refused.channel_expired", n + 1)


# -- freezing, alerts by SMS, SIM fail-over ------------------------------------------------------


def _linked_account(world: World, number: int) -> tuple[Account, Channel]:
    """An account whose V-device is elsewhere, with a channel registered over the link."""
    acct = provision(world.cold, world.link, number, f"+1555000{number:04d}")
    registration = acct.vdevice.channel_registration(number, "c1")
    world.link.call("register_channel", registration, timeout=TIMEOUT)
    ch = Channel("c1", acct.vdevice.channel, b"", registration["expires_at"], "", "")
    return acct, ch


def _frozen(world: World, account: int) -> str | None:
    return dict(world.link.call("status", {}, timeout=TIMEOUT)["frozen"]).get(account)


def test_forged_vc_code_freezes_and_texts_the_operator(world: World) -> None:
    acct, ch = _linked_account(world, 2)
    payload, _ = acct.send([(random_address(), 100_000)], "forge-1", vc_key=_key("forger"))
    with pytest.raises(LinkRemoteError) as info:
        world.link.call("cosign", payload, timeout=TIMEOUT)
    assert info.value.code == ColdErrorCode.FORGED_VC_CODE
    assert "forged vc_code" in (_frozen(world, 2) or "")

    sms = world.wait_inbox(
        OPERATOR_NUMBER, "CC ALERT: account 2 frozen by cold HSM: forged vc_code"
    )
    assert sms["from"] in COLD_NUMBERS and "forge-1" in sms["text"]
    world.wait_inbox(OWNER_NUMBER, "account 2 frozen")
    alerts = world.link.call("take_alerts", {}, timeout=TIMEOUT)["alerts"]
    assert any(a["account"] == 2 and a["kind"] == "account_frozen" for a in alerts)


def test_sim_alpha_down_fails_over_to_the_second_sim(world: World) -> None:
    acct, ch = _linked_account(world, 3)
    world.control.set_carrier("alpha", state="down")
    try:
        # altered outputs under a genuine vc_code: refused, frozen, operator texted via SIM b
        pay = random_address()
        payload, _ = acct.send(
            [(pay, 100_001)], "alter-1", signed_payments=[(pay, 100_000)], c_id=ch.c_id
        )
        with pytest.raises(LinkRemoteError) as info:
            world.link.call("cosign", payload, timeout=TIMEOUT)
        assert info.value.code == ColdErrorCode.OUTPUT_MISMATCH
        assert "output mismatch" in (_frozen(world, 3) or "")
        sms = world.wait_inbox(OPERATOR_NUMBER, "CC ALERT: account 3 frozen by cold HSM")
        assert sms["from"] == COLD_B and "alter-1" in sms["text"]

        # the V-device reaches SIM b; its answer goes out through SIM b
        ch_main = world.open_channel(to=COLD_B)
        assert ch_main.reply_from == COLD_B
        _, proof, reply = world.verify(ch_main, AddressType.COLD, 3, to=COLD_B)
        assert reply.sender == COLD_B
        derived = [a for _, a in batch_addresses(world.main.cold_wallet, 3)]
        assert proof.recover_signer(derived, MAIN) == ch_main.cold_pub
        assert world.counter("send_failed.cold-a") >= 1 and world.counter("sent.cold-b") >= 3
    finally:
        world.control.set_carrier("alpha", state="up")
    log = (world.cold.d.log_dir / "hsm-cold.log").read_text()
    assert "failed over to cold-b" in log


def test_status_shows_channels_and_sms_counters(world: World) -> None:
    ch = world.open_channel()
    out = world.cold.cold_cli("status")
    assert out.returncode == 0, out.stderr
    assert ch.c_id in out.stdout and "live" in out.stdout
    for counter in ("received", "sent.cold-a", "refused.unknown_sender", "opened"):
        assert counter in out.stdout


def test_no_sms_body_or_secret_in_the_cold_log(world: World) -> None:
    """Runs last: bodies only at DEBUG (off), never a PIN."""
    log = (world.cold.d.log_dir / "hsm-cold.log").read_text()
    assert "CC:QH:" not in log and "CC:VERIFY" not in log and "SIG:" not in log
    assert world.cold.section.str("user_pin") not in log
