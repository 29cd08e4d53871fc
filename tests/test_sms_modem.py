"""The GSM modem driver and the fail-over sender, against a real `firmware-sim serve`.

Each test opens its own `GsmModem`s on the simulated modems' serial ports (pyserial, AT
commands, text mode) and drives the carrier through the control channel: outages, loss,
duplication. Waits poll with deadlines; nothing sleeps a fixed time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cc_common.sms.errors import (
    AllModemsFailed,
    InvalidNumber,
    InvalidText,
    ModemUnavailable,
    NoNetworkService,
)
from cc_common.sms.failover import FailoverSender
from cc_common.sms.modem import GsmModem, IncomingSms, parse_scts
from tests.firmware_fixtures import FirmwareSim, firmware_sims, wait_log
from tests.harness import in_threads, wait_until

OpenModem = Callable[..., GsmModem]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirmwareSim]:
    with firmware_sims(tmp_path_factory) as start:
        yield start("sms")


@pytest.fixture(autouse=True)
def clean_carrier(sim: FirmwareSim) -> Iterator[None]:
    sim.clean_carrier()
    yield
    sim.clean_carrier()


@pytest.fixture
def open_modem(sim: FirmwareSim) -> Iterator[OpenModem]:
    """Opens `GsmModem`s by simulated modem name; each starts with an empty SIM."""
    opened: list[GsmModem] = []

    def open_(name: str, poll_interval: float = 0.5) -> GsmModem:
        modem = GsmModem(
            str(sim.modem_link(name)),
            own_number=sim.modem_number(name),
            name=name,
            poll_interval=poll_interval,
        )
        opened.append(modem)
        modem.receive()  # leftovers of earlier tests
        return modem

    yield open_
    for modem in opened:
        modem.close()


def collect(modem: GsmModem, count: int, timeout: float = 10.0) -> list[IncomingSms]:
    """Receive until `count` messages arrived (or fail at `timeout`)."""
    got: list[IncomingSms] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"got {len(got)} of {count} messages"
        got += modem.wait_for_messages(remaining)
    return got


def last_submitted(sim: FirmwareSim) -> str:
    return [e for e in sim.control.sms_log() if e["event"] == "submitted"][-1]["id"]


def stored(sim: FirmwareSim, name: str) -> int:
    return next(m["stored"] for m in sim.control.status()["modems"] if m["name"] == name)


def test_two_modems_exchange_messages(sim: FirmwareSim, open_modem: OpenModem) -> None:
    cold, v = open_modem("cold-a"), open_modem("vdevice")
    ref = cold.send(sim.modem_number("vdevice"), "CC:PING")
    assert 0 <= ref < 256
    [msg] = collect(v, 1)
    assert (msg.sender, msg.text) == (sim.modem_number("cold-a"), "CC:PING")
    assert msg.timestamp is not None and msg.timestamp.tzinfo is not None
    v.send(sim.modem_number("cold-a"), "CC:V:2016-08-02T12:51:34")
    [answer] = collect(cold, 1)
    assert (answer.sender, answer.text) == (sim.modem_number("vdevice"), "CC:V:2016-08-02T12:51:34")


def test_long_message_arrives_whole_once(sim: FirmwareSim, open_modem: OpenModem) -> None:
    """300 characters travel as two concatenated segments and come out as one message."""
    cold, v = open_modem("cold-a"), open_modem("vdevice")
    text = "CC:" + "".join(chr(ord("A") + i % 26) for i in range(297))
    cold.send(sim.modem_number("vdevice"), text)
    msg_id = last_submitted(sim)
    assert wait_log(sim.control, msg_id, "submitted")[0]["segments"] == 2
    wait_log(sim.control, msg_id, "delivered", count=2)
    [msg] = collect(v, 1)
    assert msg.text == text
    assert v.receive() == []


def test_cmti_wakes_the_waiter_promptly(sim: FirmwareSim, open_modem: OpenModem) -> None:
    """With polling every minute, only the `+CMTI` can explain a quick wake-up."""
    cold, v = open_modem("cold-a"), open_modem("vdevice", poll_interval=60.0)
    result: list[IncomingSms] = []
    waiting = threading.Thread(target=lambda: result.extend(v.wait_for_messages(30.0)))
    waiting.start()
    start = time.monotonic()
    cold.send(sim.modem_number("vdevice"), "CC:TIME")
    waiting.join(timeout=30.0)
    elapsed = time.monotonic() - start
    assert [m.text for m in result] == ["CC:TIME"]
    assert elapsed < 5.0, f"woke after {elapsed:.1f}s"


def test_messages_are_deleted_after_reading(sim: FirmwareSim, open_modem: OpenModem) -> None:
    cold, v = open_modem("cold-a"), open_modem("vdevice")
    for i in range(3):
        cold.send(sim.modem_number("vdevice"), f"CC:PING {i}")
    wait_until(lambda: stored(sim, "vdevice") == 3, 10.0, "three stored messages")
    got = collect(v, 3)
    assert sorted(m.text for m in got) == ["CC:PING 0", "CC:PING 1", "CC:PING 2"]
    assert stored(sim, "vdevice") == 0


def test_messages_arrived_while_closed_are_read_after_opening(
    sim: FirmwareSim, open_modem: OpenModem
) -> None:
    """The `+CMTI` of a message stored while nobody had the port open is lost: poll."""
    cold = open_modem("cold-a")
    cold.send(sim.modem_number("vdevice"), "CC:START_LOOP")
    wait_until(lambda: stored(sim, "vdevice") == 1, 10.0, "the message stored")
    v = GsmModem(str(sim.modem_link("vdevice")), name="vdevice", poll_interval=60.0)
    try:
        assert [m.text for m in v.wait_for_messages(5.0)] == ["CC:START_LOOP"]
    finally:
        v.close()


def test_sim_down_is_no_network_service_and_failover_uses_the_other_sim(
    sim: FirmwareSim, open_modem: OpenModem
) -> None:
    cold_a, cold_b, v = open_modem("cold-a"), open_modem("cold-b"), open_modem("vdevice")
    v_number = sim.modem_number("vdevice")
    sim.control.set_carrier(network="beta", state="down")
    assert not cold_b.registered()
    assert cold_b.signal_quality().rssi is None
    with pytest.raises(NoNetworkService) as caught:
        cold_b.send(v_number, "CC:PING")
    assert (caught.value.cms, caught.value.code) == (331, 813)

    sender = FailoverSender([cold_b, cold_a])
    receipt = sender.send(v_number, "CC:CHANNEL_OK:42:")
    assert (receipt.modem, receipt.position, receipt.failed_over) == ("cold-a", 1, True)
    assert receipt.failures[0][0] == "cold-b"
    [msg] = collect(v, 1)
    assert (msg.sender, msg.text) == (sim.modem_number("cold-a"), "CC:CHANNEL_OK:42:")
    again = sender.send(v_number, "CC:PING")
    assert (again.modem, again.failed_over) == ("cold-a", False)
    assert sender.preferred is cold_a
    collect(v, 1)

    sim.control.set_carrier(network="alpha", state="down")
    with pytest.raises(AllModemsFailed) as all_failed:
        sender.send(v_number, "CC:PING")
    assert [name for name, _ in all_failed.value.failures] == ["cold-a", "cold-b"]


def test_text_outside_the_gsm_alphabet_is_refused(sim: FirmwareSim, open_modem: OpenModem) -> None:
    cold_a, cold_b = open_modem("cold-a"), open_modem("cold-b")
    v_number = sim.modem_number("vdevice")
    with pytest.raises(InvalidText) as caught:
        cold_a.send(v_number, "balance low ✓")
    assert caught.value.cms == 305
    with pytest.raises(InvalidText):
        FailoverSender([cold_a, cold_b]).send(v_number, "余额不足")
    with pytest.raises(InvalidNumber):
        cold_a.send('+1555"; AT+CMGD=1,4', "CC:PING")
    assert cold_a.registered()  # the modem is still in step after the refusals


def test_carrier_loss_delivers_nothing(sim: FirmwareSim, open_modem: OpenModem) -> None:
    cold, v = open_modem("cold-a"), open_modem("vdevice")
    sim.control.set_carrier(network="gamma", loss=1.0)
    cold.send(sim.modem_number("vdevice"), "CC:PING")
    wait_log(sim.control, last_submitted(sim), "lost")
    sim.control.set_carrier(network="gamma", loss=0.0)
    cold.send(sim.modem_number("vdevice"), "CC:TIME")
    assert [m.text for m in collect(v, 1)] == ["CC:TIME"]
    assert v.receive() == []


def test_carrier_duplication_delivers_two_copies(sim: FirmwareSim, open_modem: OpenModem) -> None:
    """The driver does not deduplicate: replays are the channel protocol's business."""
    cold, v = open_modem("cold-a"), open_modem("vdevice")
    sim.control.set_carrier(network="gamma", duplicate=1.0)
    cold.send(sim.modem_number("vdevice"), "CC:STOP_LOOP")
    wait_log(sim.control, last_submitted(sim), "delivered", count=2)
    got = collect(v, 2)
    assert [m.text for m in got] == ["CC:STOP_LOOP", "CC:STOP_LOOP"]
    assert v.receive() == []


def test_texts_that_look_like_modem_output_stay_texts(
    sim: FirmwareSim, open_modem: OpenModem
) -> None:
    """The line after a +CMGL header is the text, whatever it looks like; senders as given."""
    cold, v = open_modem("cold-a"), open_modem("vdevice")
    v_number = sim.modem_number("vdevice")
    for text in ("OK", '+CMTI: "SM",9', "ERROR"):
        sim.control.inject_sms(v_number, text, "+15550000666")
    cold.send(v_number, "line one\nline two")
    got = collect(v, 4)
    assert sorted(m.text for m in got) == sorted(
        ["OK", '+CMTI: "SM",9', "ERROR", "line one\nline two"]
    )
    assert {m.sender for m in got} == {"+15550000666", sim.modem_number("cold-a")}
    assert v.receive() == []


def test_identity_and_signal(sim: FirmwareSim, open_modem: OpenModem) -> None:
    cold = open_modem("cold-a")
    assert cold.own_number() == sim.modem_number("cold-a")
    assert cold.registered()
    quality = cold.signal_quality()
    assert quality.rssi is not None and quality.dbm is not None and quality.dbm < 0


def test_reopens_with_backoff_when_the_port_appears(sim: FirmwareSim, tmp_path: Path) -> None:
    """A port that is missing at first is retried with backoff and then used normally."""
    link = tmp_path / "modem"
    modem = GsmModem(str(link), name="late", lazy=True)
    try:
        with pytest.raises(ModemUnavailable, match="cannot open"):
            modem.registered()
        with pytest.raises(ModemUnavailable, match="next attempt"):
            modem.registered()  # backing off: no new attempt yet
        link.symlink_to(sim.modem_link("cold-b").resolve())

        def works() -> bool:
            try:
                return modem.registered()
            except ModemUnavailable:
                return False

        assert wait_until(works, 10.0, "the modem to reopen")
        assert modem.own_number() == sim.modem_number("cold-b")
    finally:
        modem.close()
    with pytest.raises(ModemUnavailable, match="closed"):
        modem.registered()


def test_concurrent_senders_share_one_modem(sim: FirmwareSim, open_modem: OpenModem) -> None:
    cold, v = open_modem("cold-a"), open_modem("vdevice")
    in_threads(lambda i: cold.send(sim.modem_number("vdevice"), f"CC:PING {i}"), 4, timeout=30.0)
    assert sorted(m.text for m in collect(v, 4)) == [f"CC:PING {i}" for i in range(4)]


def test_scts_parsing() -> None:
    stamp = parse_scts("16/08/02,12:51:34+32")
    assert stamp is not None and stamp.utcoffset() is not None
    assert stamp.utcoffset().total_seconds() == 8 * 3600  # type: ignore[union-attr]
    assert parse_scts("garbage") is None
    assert parse_scts("16/13/40,12:51:34+00") is None
