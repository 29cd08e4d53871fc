"""Listening ports: picked below the kernel's ephemeral range, checked again before start.

A port inside `ip_local_port_range` can be taken at any moment by an outgoing connection of
any process on the host, so a port picked there at `custody init` may be busy at `custody up`.
Below the range only listeners compete, and the operator is told which key to change.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default
SPAN = 12_000  # how far below the ephemeral range we pick
FLOOR = 1024  # never a privileged port


def ephemeral_range(path: Path = RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports."""
    try:
        low, high = (int(x) for x in path.read_text().split()[:2])
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class PortPicker:
    """Hands out distinct ports free right now, below the ephemeral range."""

    def __init__(self, host: str = "127.0.0.1", rng: random.Random | None = None) -> None:
        self.host = host
        self.rng = rng or random.SystemRandom()
        low, _ = ephemeral_range()
        self.high = low - 1
        self.low = max(FLOOR, low - SPAN)
        self.given: set[int] = set()

    def __call__(self) -> int:
        if self.high <= self.low:
            raise RuntimeError(
                f"no room for ports below the ephemeral range (starts {self.high + 1})"
            )
        for _ in range(1000):
            port = self.rng.randint(self.low, self.high)
            if port not in self.given and port_is_free(port, self.host):
                self.given.add(port)
                return port
        raise RuntimeError(f"no free port in {self.low}..{self.high}")


@dataclass(frozen=True)
class Listener:
    """One configured listening port and the config key that sets it."""

    key: str  # e.g. "[custody] port"
    host: str
    port: int
    process: str


# Config keys of the listeners, with the process that binds each (supervisor names).
LISTENERS: tuple[tuple[str, str, str, str], ...] = (
    ("firmware_sim.twilio_gateway", "host", "port", "firmware-sim"),
    ("firmware_sim.node", "host", "port", "node"),
    ("hsm_hot", "rpc_host", "rpc_port", "hsm-hot"),
    ("custody", "host", "port", "custody-api"),
    ("operator", "host", "port", "custody-operator"),
    ("merchant_site", "host", "port", "merchant-site"),
)


def _get(raw: Mapping[str, Any], dotted: str) -> Mapping[str, Any] | None:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Mapping) else None


def configured_listeners(raw: Mapping[str, Any], processes: Iterable[str]) -> list[Listener]:
    """The listeners of `processes` in a configuration's raw mapping."""
    wanted = set(processes)
    found = []
    for section, host_key, port_key, process in LISTENERS:
        if process not in wanted:
            continue
        table = _get(raw, section)
        if table is None or not isinstance(table.get(port_key), int):
            continue
        host = str(table.get(host_key, "127.0.0.1"))
        found.append(Listener(f"[{section}] {port_key}", host, int(table[port_key]), process))
    return found


def busy(listener: Listener) -> str | None:
    """Why `listener` cannot bind now (None if it can)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((listener.host, listener.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "already in use"
            return exc.strerror or str(exc)
    return None
