"""The simulated serial line between the HSMs, through pyserial on its two link paths.

Bytes arrive intact and at the emulated 8N1 line rate; each fault injected through the
control channel is seen at the far end, in the direction it was aimed at, and only there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
import serial

from firmware_sim.errors import BadRequest
from tests.firmware_fixtures import FirmwareSim
from tests.harness import wait_until

TOLERANCE = 0.10


def read_exactly(port: serial.Serial, n: int, timeout: float) -> bytes:
    """Read `n` bytes, polling until a deadline; return what arrived (maybe fewer)."""
    deadline = time.monotonic() + timeout
    got = bytearray()
    while len(got) < n and time.monotonic() < deadline:
        got += port.read(min(n - len(got), max(1, port.in_waiting)))
    return bytes(got)


def read_for(port: serial.Serial, seconds: float) -> bytes:
    """Everything that arrives within `seconds` (used to show that nothing does)."""
    deadline = time.monotonic() + seconds
    got = bytearray()
    while time.monotonic() < deadline:
        got += port.read(max(1, port.in_waiting))
    return bytes(got)


def hamming(a: bytes, b: bytes) -> int:
    return sum(bin(x ^ y).count("1") for x, y in zip(a, b, strict=True))


@pytest.fixture
def ports(firmware_sim: FirmwareSim) -> Iterator[tuple[serial.Serial, serial.Serial]]:
    """Both ends opened by path, with no fault pending and nothing in flight."""
    firmware_sim.control.clear_faults()
    hot = serial.Serial(str(firmware_sim.link("hot_link")), 115200, timeout=0.05)
    cold = serial.Serial(str(firmware_sim.link("cold_link")), 115200, timeout=0.05)
    yield hot, cold
    hot.close()
    cold.close()
    firmware_sim.control.clear_faults()


def lane(sim: FirmwareSim, direction: str) -> dict:
    return sim.control.status()["serial"]["lanes"][direction]


def measure_rate(hot: serial.Serial, cold: serial.Serial, n: int, timeout: float) -> float:
    data = os.urandom(n)
    start = time.monotonic()
    hot.write(data)
    got = read_exactly(cold, n, timeout)
    elapsed = time.monotonic() - start
    assert got == data, "bytes changed on a clean line"
    return n / elapsed


def test_links_are_symlinks_to_ptys(firmware_sim: FirmwareSim) -> None:
    for key in ("hot_link", "cold_link"):
        link = firmware_sim.link(key)
        assert link.is_symlink()
        assert os.readlink(link).startswith("/dev/pts/")


def test_bytes_arrive_intact_both_ways(ports: tuple[serial.Serial, serial.Serial]) -> None:
    hot, cold = ports
    data = bytes(range(256)) * 4
    hot.write(data)
    assert read_exactly(cold, len(data), 5.0) == data
    cold.write(data[::-1])
    assert read_exactly(hot, len(data), 5.0) == data[::-1]


def test_rate_at_115200(ports: tuple[serial.Serial, serial.Serial]) -> None:
    """11,520 bytes at 115200 baud 8N1 take one second."""
    hot, cold = ports
    rate = measure_rate(hot, cold, 11520, timeout=5.0)
    expected = 115200 / 10
    print(f"measured {rate:.0f} B/s at 115200 baud (expected {expected:.0f})")
    assert abs(rate - expected) / expected <= TOLERANCE


def test_rate_at_9600(start_sim: Callable[..., FirmwareSim]) -> None:
    """The baud rate comes from the configuration (`CC__FIRMWARE_SIM__SERIAL__BAUD`)."""
    sim = start_sim("fw9600", env={"CC__FIRMWARE_SIM__SERIAL__BAUD": "9600"})
    assert sim.control.status()["serial"]["baud"] == 9600
    hot = serial.Serial(str(sim.link("hot_link")), 9600, timeout=0.05)
    cold = serial.Serial(str(sim.link("cold_link")), 9600, timeout=0.05)
    try:
        rate = measure_rate(cold, hot, 1920, timeout=6.0)
    finally:
        hot.close()
        cold.close()
    print(f"measured {rate:.0f} B/s at 9600 baud (expected 960)")
    assert abs(rate - 960) / 960 <= TOLERANCE


def test_flip_bits(firmware_sim: FirmwareSim, ports: tuple[serial.Serial, serial.Serial]) -> None:
    """Five bits flipped somewhere in the next 64 bytes, in one direction only."""
    hot, cold = ports
    firmware_sim.control.flip_bits(5, "hot-to-cold", window=64)
    data = os.urandom(256)
    hot.write(data)
    got = read_exactly(cold, len(data), 5.0)
    assert len(got) == len(data)
    assert hamming(got, data) == 5
    assert got[64:] == data[64:]
    cold.write(data)
    assert read_exactly(hot, len(data), 5.0) == data, "the other direction was hit"


def test_flip_next_bytes(
    firmware_sim: FirmwareSim, ports: tuple[serial.Serial, serial.Serial]
) -> None:
    """Without a window, one bit in each of the next N bytes (here N=3, both directions)."""
    hot, cold = ports
    firmware_sim.control.flip_bits(3)
    data = bytes(32)
    hot.write(data)
    got = read_exactly(cold, len(data), 5.0)
    assert [bin(b).count("1") for b in got[:3]] == [1, 1, 1]
    assert got[3:] == data[3:]
    cold.write(data)
    got = read_exactly(hot, len(data), 5.0)
    assert hamming(got, data) == 3


def test_drop_bytes(firmware_sim: FirmwareSim, ports: tuple[serial.Serial, serial.Serial]) -> None:
    hot, cold = ports
    before = lane(firmware_sim, "hot-to-cold")["counters"]["dropped"]
    firmware_sim.control.drop_bytes(10, "hot-to-cold")
    data = bytes(range(100))
    hot.write(data)
    assert read_exactly(cold, 90, 5.0) == data[10:]
    assert read_for(cold, 0.1) == b""
    assert lane(firmware_sim, "hot-to-cold")["counters"]["dropped"] == before + 10
    cold.write(data)
    assert read_exactly(hot, 100, 5.0) == data


def test_insert_garbage(
    firmware_sim: FirmwareSim, ports: tuple[serial.Serial, serial.Serial]
) -> None:
    hot, cold = ports
    firmware_sim.control.insert_garbage(16, "cold-to-hot")
    data = b"the real message follows the noise"
    cold.write(data)
    got = read_exactly(hot, 16 + len(data), 5.0)
    assert len(got) == 16 + len(data)
    assert got.endswith(data), "garbage goes on the line before later bytes"
    assert read_for(hot, 0.1) == b""


def test_cut_line(firmware_sim: FirmwareSim, ports: tuple[serial.Serial, serial.Serial]) -> None:
    """Nothing passes while the line is cut, not even later; it works again afterwards."""
    hot, cold = ports
    firmware_sim.control.cut(1.0, "both")
    started = time.monotonic()
    hot.write(b"lost in the cut")
    cold.write(b"lost the other way")
    assert read_for(cold, 0.6) == b""
    assert read_for(hot, 0.1) == b""
    wait_until(
        lambda: lane(firmware_sim, "hot-to-cold")["pending"]["cut_for"] == 0, 5.0, "cut to end"
    )
    assert time.monotonic() - started >= 0.9
    assert read_for(cold, 0.05) == b"", "bytes sent during the cut came through later"
    hot.write(b"back again")
    assert read_exactly(cold, 10, 5.0) == b"back again"
    cold.write(b"both ways")
    assert read_exactly(hot, 9, 5.0) == b"both ways"


def test_bad_fault_is_refused(firmware_sim: FirmwareSim) -> None:

    with pytest.raises(BadRequest, match="direction|one of"):
        firmware_sim.control.fault("drop", "sideways", count=1)
    with pytest.raises(BadRequest, match="count"):
        firmware_sim.control.drop_bytes(0)
    with pytest.raises(BadRequest, match="one of"):
        firmware_sim.control.fault("melt", count=1)


def test_fault_cli(firmware_sim: FirmwareSim, ports: tuple[serial.Serial, serial.Serial]) -> None:
    """`firmware-sim fault drop 4 --direction hot-to-cold` reaches the running line."""
    hot, cold = ports
    d = firmware_sim.deployment
    d.cli(
        "fault",
        "--dir",
        str(d.data_dir),
        "drop",
        "4",
        "--direction",
        "hot-to-cold",
        module="firmware_sim.cli",
    )
    hot.write(b"abcdefgh")
    assert read_exactly(cold, 4, 5.0) == b"efgh"
    out = d.cli("status", "--dir", str(d.data_dir), module="firmware_sim.cli").stdout
    assert '"baud": 115200' in out


def test_second_instance_refuses_and_leaves_links_alone(
    firmware_sim: FirmwareSim, ports: tuple[serial.Serial, serial.Serial]
) -> None:
    hot, cold = ports
    link = firmware_sim.link("hot_link")
    device = os.readlink(link)
    second = firmware_sim.deployment.start_cli(
        "firmware-sim-2", "firmware_sim.cli", "serve", wait=False
    )
    assert second.wait_exit(30) == 2
    assert "another firmware-sim answers" in second.stderr()
    assert os.readlink(link) == device
    hot.write(b"still mine")
    assert read_exactly(cold, 10, 5.0) == b"still mine"
