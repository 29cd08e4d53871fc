"""Helpers for tests of the simulated hardware: a running `firmware-sim serve`, AT ports.

`firmware_sims(tmp_path_factory)` yields a starter: each call runs one real
`firmware-sim serve` process on a fresh data directory made by `custody init` and waits for
its ready file. On exit each one is stopped with SIGTERM, and the test fails if one left a
traceback, a process, a port link, its control socket or its ready file behind.

Registered for every test by `pytest_plugins` in tests/conftest.py: a module asks for
`start_sim` (the module's starter), `firmware_sim` (one simulator for the module) or `at_port`
(an opener of modem ports, closed after the test) by name.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import serial

from firmware_sim.control import ControlClient
from tests.harness import Deployment, TestProcess, wait_until

FINAL = re.compile(rb"\r\n(OK|ERROR|\+CMS ERROR: \d+|\+CME ERROR: \d+)\r\n")
PROMPT = b"\r\n> "


@dataclass
class FirmwareSim:
    """A running `firmware-sim serve` and the ways to reach it."""

    deployment: Deployment
    process: TestProcess
    control: ControlClient

    @property
    def fw(self) -> Any:
        return self.deployment.config.section("firmware_sim")

    def link(self, key: str) -> Path:
        return self.fw.section("serial").path(key)

    def modem_link(self, name: str) -> Path:
        for entry in self.fw.list("modems"):
            if entry["name"] == name:
                return self.deployment.data_dir / entry["link"]
        raise KeyError(name)

    def clean_carrier(self) -> None:
        """The carrier as tests expect it unless they change it: up, 20 ms, no loss."""
        self.control.set_carrier(delay_ms=20, loss=0.0, duplicate=0.0, state="up")

    def modem_number(self, name: str) -> str:
        return next(e["number"] for e in self.fw.list("modems") if e["name"] == name)

    def leftovers(self) -> list[str]:
        found = [str(p) for p in self.deployment.dev_dir.iterdir()]
        socket_path = self.fw.path("control_socket")
        if socket_path.exists():
            found.append(str(socket_path))
        ready = self.deployment.run_dir / "firmware-sim.ready"
        if ready.exists():
            found.append(str(ready))
        return found


@contextlib.contextmanager
def firmware_sims(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., FirmwareSim]]:
    """A starter of `firmware-sim serve` processes, all stopped and checked on exit."""
    started: list[FirmwareSim] = []

    def start(
        name: str = "fw", *, env: dict[str, str] | None = None, config: dict | None = None
    ) -> FirmwareSim:
        d = Deployment(tmp_path_factory.mktemp(name), config=config, env=env)
        proc = d.start_cli("firmware-sim", "firmware_sim.cli", "serve", timeout=30)
        control = ControlClient(d.config.section("firmware_sim").path("control_socket"))
        sim = FirmwareSim(d, proc, control)
        started.append(sim)
        return sim

    try:
        yield start
    finally:
        problems: list[str] = []
        for sim in started:
            problems += sim.deployment.stop()
            left = sim.leftovers()
            if left:
                problems.append(f"left behind after SIGTERM: {left}")
        if problems:
            pytest.fail("firmware-sim teardown:\n  " + "\n  ".join(problems), pytrace=False)


class AtPort:
    """A host talking AT commands to a modem port through pyserial, as an HSM would."""

    def __init__(self, path: Path) -> None:
        self.ser = serial.Serial(str(path), 115200, timeout=0.05)
        self.pending = b""

    def close(self) -> None:
        self.ser.close()

    def _read_until(self, pattern: re.Pattern[bytes], timeout: float) -> bytes:
        """Read until `pattern` matches what arrived; return up to the end of the match."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.pending)
            if match:
                out, self.pending = self.pending[: match.end()], self.pending[match.end() :]
                return out
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out waiting for {pattern!r}; got {self.pending!r}")
            self.pending += self.ser.read(self.ser.in_waiting or 1)

    def command(self, line: str, timeout: float = 5.0) -> str:
        """Send `AT...` and return everything up to and including the final result code."""
        self.ser.write(line.encode() + b"\r")
        return self._read_until(FINAL, timeout).decode()

    def send_sms(self, number: str, text: str | bytes, timeout: float = 5.0) -> str:
        """`AT+CMGS`, wait for the prompt, send the text and Ctrl-Z; the final answer."""
        self.ser.write(f'AT+CMGS="{number}"\r'.encode())
        head = self._read_until(re.compile(rb"\r\n> |" + FINAL.pattern), timeout)
        if not head.endswith(PROMPT):
            return head.decode()
        body = text.encode() if isinstance(text, str) else text
        self.ser.write(body + b"\x1a")
        return self._read_until(FINAL, timeout).decode()

    def wait_cmti(self, timeout: float = 5.0) -> int:
        """Wait for `+CMTI: "SM",<index>` and return the index."""
        urc = self._read_until(re.compile(rb'\+CMTI: "SM",(\d+)\r\n'), timeout)
        return int(re.findall(rb'\+CMTI: "SM",(\d+)', urc)[-1])

    def setup(self) -> None:
        """What a host does after opening a modem: echo off, text mode, GSM charset."""
        self.ser.reset_input_buffer()
        self.pending = b""
        assert self.command("ATE0").endswith("OK\r\n")
        assert self.command("AT+CMGF=1").endswith("OK\r\n")
        assert self.command('AT+CSCS="GSM"').endswith("OK\r\n")
        self.command("AT+CMGD=1,4")


@contextlib.contextmanager
def at_ports() -> Iterator[Callable[[Path], AtPort]]:
    """An opener of modem ports (each set up for text mode), all closed on exit."""
    opened: list[AtPort] = []

    def open_port(path: Path) -> AtPort:
        port = AtPort(path)
        opened.append(port)
        port.setup()
        return port

    try:
        yield open_port
    finally:
        for port in opened:
            port.close()


def wait_log(control: ControlClient, msg_id: str, event: str, count: int = 1) -> list[dict]:
    """Poll the carrier log until `msg_id` has `count` entries of `event`."""

    def check() -> list[dict]:
        entries = [e for e in control.sms_log() if e["id"] == msg_id and e["event"] == event]
        return entries if len(entries) >= count else []

    return wait_until(check, 10.0, f"{event} x{count} for {msg_id} in the carrier log")


@pytest.fixture(scope="module")
def start_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., FirmwareSim]]:
    with firmware_sims(tmp_path_factory) as start:
        yield start


@pytest.fixture(scope="module")
def firmware_sim(start_sim: Callable[..., FirmwareSim]) -> FirmwareSim:
    """One `firmware-sim serve` for the module, with the configuration `custody init` writes."""
    return start_sim()


@pytest.fixture
def at_port() -> Iterator[Callable[[Path], AtPort]]:
    with at_ports() as open_port:
        yield open_port
