"""The Twilio-compatible gateway, through the real `twilio` client pointed at it.

Configuration gives the client its base URL, account SID and token, exactly as production
gives it Twilio's; messages go through the simulated carrier to phones and modems.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from cc_common.deployment import OPERATOR_NUMBER, TWILIO_FROM_NUMBER
from tests.firmware_fixtures import AtPort, FirmwareSim
from tests.harness import Deployment


def client_for(sim: FirmwareSim, *, token: str | None = None) -> Client:
    """A twilio client configured the way our services configure it (`[twilio]`)."""
    tw = sim.deployment.config.section("twilio")
    client = Client(tw.str("account_sid"), token or tw.str("auth_token"))
    client.api.base_url = tw.str("base_url")
    return client


def test_send_lands_in_inbox(firmware_sim: FirmwareSim) -> None:
    firmware_sim.control.inbox(OPERATOR_NUMBER, clear=True)
    client = client_for(firmware_sim)
    msg = client.messages.create(to=OPERATOR_NUMBER, from_=TWILIO_FROM_NUMBER, body="disk full")
    assert msg.sid.startswith("SM") and len(msg.sid) == 34
    assert msg.status == "queued"
    assert (msg.to, msg.from_, msg.body) == (OPERATOR_NUMBER, TWILIO_FROM_NUMBER, "disk full")
    assert msg.num_segments == "1"
    assert msg.date_created is not None
    inbox = firmware_sim.control.wait_inbox(OPERATOR_NUMBER, 1)
    assert [(m["from"], m["text"]) for m in inbox] == [(TWILIO_FROM_NUMBER, "disk full")]
    fetched = client.messages(msg.sid).fetch()
    assert fetched.sid == msg.sid and fetched.status == "sent"


def test_long_alert_is_segmented_and_reassembled(firmware_sim: FirmwareSim) -> None:
    firmware_sim.control.inbox(OPERATOR_NUMBER, clear=True)
    body = "ALERT " + "x" * 400
    msg = client_for(firmware_sim).messages.create(
        to=OPERATOR_NUMBER, from_=TWILIO_FROM_NUMBER, body=body
    )
    assert msg.num_segments == "3"
    inbox = firmware_sim.control.wait_inbox(OPERATOR_NUMBER, 1)
    assert inbox[0]["text"] == body and inbox[0]["segments"] == 3


def test_send_to_a_modem(firmware_sim: FirmwareSim, at_port: Callable[[Path], AtPort]) -> None:
    port = at_port(firmware_sim.modem_link("vdevice"))
    client_for(firmware_sim).messages.create(
        to=firmware_sim.modem_number("vdevice"), from_=TWILIO_FROM_NUMBER, body="hi phone"
    )
    index = port.wait_cmti()
    answer = port.command(f"AT+CMGR={index}")
    assert f'"{TWILIO_FROM_NUMBER}"' in answer and "hi phone" in answer


def test_bad_credentials(firmware_sim: FirmwareSim) -> None:
    client = client_for(firmware_sim, token="0" * 32)
    with pytest.raises(TwilioRestException) as info:
        client.messages.create(to=OPERATOR_NUMBER, from_=TWILIO_FROM_NUMBER, body="x")
    assert info.value.code == 20003
    assert info.value.status == 401


def test_bad_to_number(firmware_sim: FirmwareSim) -> None:
    with pytest.raises(TwilioRestException) as info:
        client_for(firmware_sim).messages.create(to="12345", from_=TWILIO_FROM_NUMBER, body="x")
    assert info.value.code == 21211
    assert info.value.status == 400
    assert "12345" in info.value.msg


def test_from_not_owned(firmware_sim: FirmwareSim) -> None:
    with pytest.raises(TwilioRestException) as info:
        client_for(firmware_sim).messages.create(to=OPERATOR_NUMBER, from_="+15551112222", body="x")
    assert info.value.code == 21606


def test_unknown_message(firmware_sim: FirmwareSim) -> None:
    with pytest.raises(TwilioRestException) as info:
        client_for(firmware_sim).messages("SM" + "0" * 32).fetch()
    assert info.value.code == 20404 and info.value.status == 404


def test_port_in_use_fails_clearly(deployment: Callable[..., Deployment]) -> None:
    """`firmware-sim serve` exits non-zero with a one-line reason, and leaves nothing behind."""
    d = deployment()
    port = d.port("firmware_sim.twilio_gateway")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen(1)
        proc = d.start_cli("firmware-sim", "firmware_sim.cli", "serve", wait=False)
        code = proc.wait_exit(30)
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr()
    assert "Traceback" not in proc.stderr()
    assert list(d.dev_dir.iterdir()) == []
    assert not (d.run_dir / "firmware-sim.sock").exists()
