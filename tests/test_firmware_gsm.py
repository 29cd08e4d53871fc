"""The simulated GSM modems and carrier, through AT commands on the modem ports.

A host opens a modem port with pyserial and speaks 3GPP TS 27.005 text mode to it; messages
travel through the simulated carrier (segmentation, delay, loss, duplication, per-network
outages). Carrier settings, plain phones' inboxes and spoofed messages go through the control
channel only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cc_common.deployment import OWNER_NUMBER
from firmware_sim.errors import BadRequest
from tests.firmware_fixtures import AtPort, FirmwareSim, wait_log
from tests.harness import wait_until

Open = Callable[[Path], AtPort]
CMGR = re.compile(
    r'\+CMGR: "(REC UNREAD|REC READ)","([^"]+)",,"(\d\d/\d\d/\d\d,[\d:]+[+-]\d\d)"\r\n'
)


@pytest.fixture(autouse=True)
def clean_carrier(firmware_sim: FirmwareSim) -> Iterator[None]:
    firmware_sim.clean_carrier()
    yield
    firmware_sim.clean_carrier()


@pytest.fixture
def modems(firmware_sim: FirmwareSim, at_port: Open) -> tuple[AtPort, AtPort, AtPort]:
    """cold-a, cold-b and the V-device's modem, set up for text mode."""
    return (
        at_port(firmware_sim.modem_link("cold-a")),
        at_port(firmware_sim.modem_link("cold-b")),
        at_port(firmware_sim.modem_link("vdevice")),
    )


def last_id(sim: FirmwareSim) -> str:
    return [e for e in sim.control.sms_log() if e["event"] == "submitted"][-1]["id"]


def read_message(port: AtPort, index: int) -> tuple[str, str, str]:
    """`AT+CMGR`: (status, sender, text)."""
    answer = port.command(f"AT+CMGR={index}")
    m = CMGR.search(answer)
    assert m, answer
    text = answer[m.end() :].removesuffix("\r\n\r\nOK\r\n")
    return m.group(1), m.group(2), text


def test_full_dialogue(firmware_sim: FirmwareSim, modems: tuple[AtPort, ...]) -> None:
    """A sends to B; B announces +CMTI, reads with CMGR (unread, then read), lists, deletes."""
    a, _, b = modems
    a_number = firmware_sim.modem_number("cold-a")
    assert a.command("AT").endswith("\r\nOK\r\n")
    answer = a.send_sms(firmware_sim.modem_number("vdevice"), "hello from cold-a")
    assert re.fullmatch(r"\r\n\+CMGS: \d+\r\n\r\nOK\r\n", answer), answer
    index = b.wait_cmti()
    assert read_message(b, index) == ("REC UNREAD", a_number, "hello from cold-a")
    assert read_message(b, index) == ("REC READ", a_number, "hello from cold-a")
    listing = b.command('AT+CMGL="ALL"')
    assert f'+CMGL: {index},"REC READ","{a_number}",,' in listing
    assert "hello from cold-a" in listing
    assert b.command('AT+CMGL="REC UNREAD"') == "\r\nOK\r\n"
    assert b.command(f"AT+CMGD={index}") == "\r\nOK\r\n"
    assert b.command(f"AT+CMGR={index}") == "\r\n+CMS ERROR: 321\r\n"


def test_identity_and_signal(firmware_sim: FirmwareSim, modems: tuple[AtPort, ...]) -> None:
    a = modems[0]
    assert f'+CNUM: "","{firmware_sim.modem_number("cold-a")}",145' in a.command("AT+CNUM")
    assert re.search(r"\+CSQ: (\d+),\d+\r\n", a.command("AT+CSQ"))
    assert "+CREG: 0,1" in a.command("AT+CREG?")
    assert "+CMGF: 1" in a.command("AT+CMGF?")


def test_echo(firmware_sim: FirmwareSim, at_port: Open) -> None:
    port = at_port(firmware_sim.modem_link("cold-b"))
    assert port.command("ATE1") == "\r\nOK\r\n"
    assert port.command("AT") == "AT\r\r\nOK\r\n"
    assert port.command("ATE0") == "ATE0\r\r\nOK\r\n"
    assert port.command("AT") == "\r\nOK\r\n"


def test_long_message_arrives_whole(firmware_sim: FirmwareSim, modems: tuple[AtPort, ...]) -> None:
    """500 GSM-7 characters travel as 4 concatenated segments and are announced once."""
    a, _, b = modems
    text = "".join(chr(ord("a") + i % 26) for i in range(490)) + "[0123456]"  # '[' costs two
    assert len(text) == 499
    text += "!"
    answer = a.send_sms(firmware_sim.modem_number("vdevice"), text)
    assert "+CMGS:" in answer
    msg_id = last_id(firmware_sim)
    submitted = wait_log(firmware_sim.control, msg_id, "submitted")[0]
    assert submitted["segments"] == 4
    wait_log(firmware_sim.control, msg_id, "delivered", count=4)
    index = b.wait_cmti()
    assert read_message(b, index)[2] == text
    assert b.command('AT+CMGL="ALL"').count("+CMGL:") == 1


def test_errors(firmware_sim: FirmwareSim) -> None:
    port = AtPort(firmware_sim.modem_link("cold-b"))
    try:
        port.ser.reset_input_buffer()
        port.command("ATE0")
        port.command("AT+CMGF=0")
        assert port.send_sms("+15550000100", "x") == "\r\n+CMS ERROR: 303\r\n", "PDU mode"
        port.command("AT+CMGF=1")
        assert port.command("AT+NOSUCH") == "\r\nERROR\r\n"
        assert port.command("ATX9") == "\r\nERROR\r\n"
        assert port.command("AT+CMGR=42") == "\r\n+CMS ERROR: 321\r\n"
        assert port.command("AT+CMGD=42") == "\r\n+CMS ERROR: 321\r\n"
        assert port.send_sms("not-a-number", "x") == "\r\n+CMS ERROR: 304\r\n"
        assert port.send_sms("+1", "x") == "\r\n+CMS ERROR: 304\r\n"
        answer = port.send_sms("+15550000100", "price: 5 \u00a5 \u2192 \u65e5\u672c")
        assert answer == "\r\n+CMS ERROR: 305\r\n", "not in the GSM 7-bit alphabet"
        assert port.send_sms("+15550000100", "back`tick") == "\r\n+CMS ERROR: 305\r\n"
        assert port.command('AT+CMGL="BOGUS"') == "\r\n+CMS ERROR: 305\r\n"
        assert port.command("AT") == "\r\nOK\r\n", "the modem is still in command mode"
    finally:
        port.close()


def test_escape_cancels(firmware_sim: FirmwareSim, modems: tuple[AtPort, ...]) -> None:
    a = modems[0]
    before = firmware_sim.control.status()["carrier"]["counters"]["submitted"]
    a.ser.write(b'AT+CMGS="+15550000100"\r')
    a._read_until(re.compile(rb"\r\n> "), 5.0)
    a.ser.write(b"never mind\x1b")
    assert a._read_until(re.compile(rb"\r\nOK\r\n"), 5.0).endswith(b"\r\nOK\r\n")
    assert firmware_sim.control.status()["carrier"]["counters"]["submitted"] == before


def test_message_to_plain_phone(firmware_sim: FirmwareSim, modems: tuple[AtPort, ...]) -> None:
    a = modems[0]
    firmware_sim.control.inbox(OWNER_NUMBER, clear=True)
    assert "+CMGS:" in a.send_sms(OWNER_NUMBER, "account frozen")
    inbox = firmware_sim.control.wait_inbox(OWNER_NUMBER, 1)
    assert [(m["from"], m["text"]) for m in inbox] == [
        (firmware_sim.modem_number("cold-a"), "account frozen")
    ]


def test_injected_spoofed_sms(firmware_sim: FirmwareSim, modems: tuple[AtPort, ...]) -> None:
    """The control channel can deliver a message from any number, even one nobody owns."""
    b = modems[2]
    firmware_sim.control.inject_sms("+15550000100", "FREEZE", sender="+19995550123")
    index = b.wait_cmti()
    assert read_message(b, index) == ("REC UNREAD", "+19995550123", "FREEZE")
    with pytest.raises(BadRequest):
        firmware_sim.control.inject_sms("+15559999999", "to nobody", sender="+1999")


def test_loss_delivers_nothing(firmware_sim: FirmwareSim, modems: tuple[AtPort, ...]) -> None:
    a, _, b = modems
    firmware_sim.control.set_carrier("gamma", loss=1.0)
    assert "+CMGS:" in a.send_sms("+15550000100", "into the void")
    msg_id = last_id(firmware_sim)
    wait_log(firmware_sim.control, msg_id, "lost")
    assert not [
        e for e in firmware_sim.control.sms_log() if e["id"] == msg_id and e["event"] == "delivered"
    ]
    assert b.command('AT+CMGL="ALL"') == "\r\nOK\r\n"


def test_duplicate_delivers_twice(firmware_sim: FirmwareSim, modems: tuple[AtPort, ...]) -> None:
    a, _, b = modems
    firmware_sim.control.set_carrier("gamma", duplicate=1.0)
    assert "+CMGS:" in a.send_sms("+15550000100", "echo echo")
    msg_id = last_id(firmware_sim)
    wait_log(firmware_sim.control, msg_id, "delivered", count=2)
    first, second = b.wait_cmti(), b.wait_cmti()
    assert first != second
    assert read_message(b, first)[2] == read_message(b, second)[2] == "echo echo"


def test_carrier_delay(firmware_sim: FirmwareSim, modems: tuple[AtPort, ...]) -> None:

    a, _, b = modems
    firmware_sim.control.set_carrier("gamma", delay_ms=400)
    start = time.monotonic()
    assert "+CMGS:" in a.send_sms("+15550000100", "slow")
    b.wait_cmti()
    assert time.monotonic() - start >= 0.4


def test_one_carrier_down_the_other_works(
    firmware_sim: FirmwareSim, modems: tuple[AtPort, ...]
) -> None:
    """The cold HSM's SIM on `beta` loses service; its SIM on `alpha` still gets through."""
    a, cold_b, b = modems
    firmware_sim.control.set_carrier("beta", state="down")
    assert "+CREG: 0,0" in cold_b.command("AT+CREG?")
    assert "+CSQ: 99,99" in cold_b.command("AT+CSQ")
    assert cold_b.send_sms("+15550000100", "via beta") == "\r\n+CMS ERROR: 331\r\n"
    assert "+CMGS:" in a.send_sms("+15550000100", "via alpha")
    index = b.wait_cmti()
    assert read_message(b, index)[2] == "via alpha"
    # Messages *to* a SIM on a network that is down are held, then delivered when it is back.
    assert "+CMGS:" in b.send_sms(firmware_sim.modem_number("cold-b"), "are you there")
    msg_id = last_id(firmware_sim)
    wait_log(firmware_sim.control, msg_id, "held")
    firmware_sim.control.set_carrier("beta", state="up")
    index = cold_b.wait_cmti()
    assert read_message(cold_b, index)[2] == "are you there"


def test_blackhole_accepts_but_never_delivers(
    firmware_sim: FirmwareSim, modems: tuple[AtPort, ...]
) -> None:
    a, _, b = modems
    firmware_sim.control.set_carrier("alpha", state="blackhole")
    assert "+CMGS:" in a.send_sms("+15550000100", "swallowed")
    wait_log(firmware_sim.control, last_id(firmware_sim), "lost")
    assert b.command('AT+CMGL="ALL"') == "\r\nOK\r\n"


def test_carrier_cli_and_log(firmware_sim: FirmwareSim) -> None:
    d = firmware_sim.deployment
    out = d.cli(
        "carrier",
        "--dir",
        str(d.data_dir),
        "--network",
        "alpha",
        "--loss",
        "0.25",
        module="firmware_sim.cli",
    ).stdout
    assert '"loss": 0.25' in out
    assert firmware_sim.control.carrier()["alpha"]["loss"] == 0.25
    bad = d.cli(
        "carrier",
        "--dir",
        str(d.data_dir),
        "--network",
        "nope",
        "--loss",
        "1",
        module="firmware_sim.cli",
        check=False,
    )
    assert bad.returncode == 2 and "no network named 'nope'" in bad.stderr
    log_path = d.data_dir / "logs" / "carrier.jsonl"
    wait_until(lambda: log_path.exists() and log_path.read_text(), 5.0, "the carrier log")
    out = d.cli(
        "sms-log", "--dir", str(d.data_dir), "--limit", "3", module="firmware_sim.cli"
    ).stdout
    assert '"event"' in out
