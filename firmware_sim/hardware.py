"""All the simulated hardware of one deployment, built from its configuration.

Reads `[firmware_sim]` (control socket), `[firmware_sim.serial]` (hot_link, cold_link,
baud), `[firmware_sim.carrier]` (delay_ms, loss, duplicate, log, log_bodies),
`[[firmware_sim.modems]]` (name, number, carrier, link, capacity), `[firmware_sim.phones]`
(numbers, carrier) and `[firmware_sim.twilio_gateway]` (host, port, account_sid, auth_token,
numbers). Starts the parts in order, stops them in reverse, and answers the control channel.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cc_common.config import Config, Section
from firmware_sim.control import ControlServer, Op
from firmware_sim.errors import BadRequest, FirmwareSimError
from firmware_sim.gsm.carrier import Carrier, Endpoint, NetworkSettings
from firmware_sim.gsm.modem_port import ModemPort
from firmware_sim.gsm.phone import Phone
from firmware_sim.gsm.sms import check_number
from firmware_sim.serial_relay import Direction, Fault, FaultKind, SerialLine
from firmware_sim.twilio_gateway import NETWORK as TWILIO_NETWORK
from firmware_sim.twilio_gateway import TwilioGateway

log = logging.getLogger(__name__)

PHONES_NETWORK = "phones"


@dataclass(frozen=True)
class ModemSpec:
    name: str
    number: str
    carrier: str
    link: Path
    capacity: int = 50


@dataclass(frozen=True)
class GatewaySpec:
    host: str
    port: int
    account_sid: str
    auth_token: str = field(repr=False)
    numbers: tuple[str, ...]


@dataclass(frozen=True)
class HardwareSpec:
    """Everything `Hardware` needs, read once from the configuration."""

    control_socket: Path
    hot_link: Path
    cold_link: Path
    baud: int
    carrier: NetworkSettings
    carrier_log: Path | None
    log_bodies: bool
    modems: tuple[ModemSpec, ...]
    phones: tuple[str, ...]
    phones_network: str
    gateway: GatewaySpec | None

    @classmethod
    def from_config(cls, config: Config) -> HardwareSpec:
        fw = config.section("firmware_sim")
        serial = fw.section("serial")
        carrier = fw.section("carrier") if fw.has("carrier") else Section("c", {}, config.data_dir)
        settings = NetworkSettings().changed(
            {
                "delay_ms": carrier.int("delay_ms", default=0),
                "loss": carrier.float("loss", default=0.0),
                "duplicate": carrier.float("duplicate", default=0.0),
            }
        )
        modems = []
        for i, entry in enumerate(fw.list("modems") if fw.has("modems") else []):
            s = Section(f"firmware_sim.modems[{i}]", entry, config.data_dir)
            modems.append(
                ModemSpec(
                    s.str("name"),
                    check_number(s.str("number")),
                    s.str("carrier"),
                    s.path("link"),
                    s.int("capacity", default=50),
                )
            )
        phones: list[str] = []
        phones_network = PHONES_NETWORK
        if fw.has("phones"):
            p = fw.section("phones")
            phones = [check_number(str(n)) for n in p.list("numbers")]
            phones_network = p.str("carrier", default=PHONES_NETWORK)
        gateway = None
        if fw.has("twilio_gateway"):
            g = fw.section("twilio_gateway")
            gateway = GatewaySpec(
                g.str("host"),
                g.int("port"),
                g.str("account_sid"),
                g.secret("auth_token"),
                tuple(check_number(str(n)) for n in g.list("numbers")),
            )
        return cls(
            control_socket=fw.path("control_socket"),
            hot_link=serial.path("hot_link"),
            cold_link=serial.path("cold_link"),
            baud=serial.int("baud", default=115200),
            carrier=settings,
            carrier_log=carrier.path("log") if carrier.has("log") else None,
            log_bodies=carrier.bool("log_bodies", default=False),
            modems=tuple(modems),
            phones=tuple(phones),
            phones_network=phones_network,
            gateway=gateway,
        )


class Hardware:
    """The serial line, modems, carrier, phones, gateway and control socket, run together."""

    def __init__(self, spec: HardwareSpec) -> None:
        self.spec = spec
        if spec.carrier_log is not None:
            spec.carrier_log.parent.mkdir(parents=True, exist_ok=True)
        self.carrier = Carrier(spec.carrier, spec.carrier_log, log_bodies=spec.log_bodies)
        self.serial = SerialLine(spec.hot_link, spec.cold_link, spec.baud)
        self.modems = [
            ModemPort(m.name, m.number, m.carrier, m.link, self.carrier, capacity=m.capacity)
            for m in spec.modems
        ]
        self.phones = {n: Phone(n, spec.phones_network) for n in spec.phones}
        self.gateway: TwilioGateway | None = None
        if spec.gateway is not None:
            g = spec.gateway
            self.gateway = TwilioGateway(
                g.host, g.port, g.account_sid, g.auth_token, g.numbers, self.carrier
            )
            for number in g.numbers:
                self.phones[number] = Phone(number, TWILIO_NETWORK)
        self.control = ControlServer(spec.control_socket, self.dispatch)
        self._started: list[Any] = []
        self._since = 0.0

    def start(self) -> None:
        """Start every part; on any failure stop what started and re-raise."""
        self._since = time.time()
        # A second instance must fail before it takes over the links of the first one.
        self.control.check_free()
        try:
            endpoints: list[Endpoint] = [*self.modems, *self.phones.values()]
            for endpoint in endpoints:
                self.carrier.attach(endpoint)
            self.carrier.start()
            self._started.append(self.carrier)
            if self.gateway is not None:
                self.gateway.start()
                self._started.append(self.gateway)
            self.serial.start()
            self._started.append(self.serial)
            for modem in self.modems:
                modem.start()
                self._started.append(modem)
            self.control.start()
            self._started.append(self.control)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        while self._started:
            part = self._started.pop()
            try:
                part.stop() if isinstance(part, Carrier) else part.close()
            except Exception as exc:  # noqa: BLE001 (keep stopping the others)
                log.warning("stopping %s: %s", type(part).__name__, exc)

    # ----- control channel ------------------------------------------------------------------

    def dispatch(self, op: Op, args: dict[str, Any]) -> Any:
        handler = getattr(self, f"_op_{op.value}")
        return handler(**args)

    def _op_ping(self) -> dict[str, Any]:
        return {"pong": True, "pid": os.getpid()}

    def _op_status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime": round(time.time() - self._since, 1),
            "control_socket": str(self.spec.control_socket),
            "serial": self.serial.status(),
            "modems": [m.status() for m in self.modems],
            "carrier": {"networks": self.carrier.settings(), "counters": self.carrier.counters()},
            "phones": {n: p.count() for n, p in sorted(self.phones.items())},
            "twilio_gateway": self.gateway.status() if self.gateway else None,
        }

    def _op_fault(
        self,
        kind: str,
        direction: str = "both",
        count: int = 0,
        window: int = 0,
        seconds: float = 0.0,
    ) -> dict[str, Any]:
        fault = Fault(_enum(FaultKind, kind), int(count), int(window), float(seconds))
        self.serial.inject(fault, _enum(Direction, direction))
        return self.serial.status()

    def _op_clear_faults(self, direction: str = "both") -> dict[str, Any]:
        self.serial.clear(_enum(Direction, direction))
        return self.serial.status()

    def _op_set_baud(self, baud: int) -> dict[str, Any]:
        self.serial.set_baud(baud)
        return self.serial.status()

    def _op_carrier(self) -> dict[str, Any]:
        return self.carrier.settings()

    def _op_set_carrier(self, network: str | None = None, **changes: Any) -> dict[str, Any]:
        return self.carrier.configure(network, **changes)

    def _op_inbox(self, number: str, clear: bool = False) -> list[dict[str, Any]]:
        phone = self.phones.get(number)
        if phone is None:
            raise BadRequest(f"{number} is not a plain phone (known: {', '.join(self.phones)})")
        return phone.inbox(clear=bool(clear))

    def _op_inject_sms(self, to: str, text: str, sender: str) -> dict[str, Any]:
        check_number(sender)
        self.carrier.endpoint(to)
        if not isinstance(text, str) or not text:
            raise BadRequest("text must be a non-empty string")
        return {"id": self.carrier.submit(sender, to, text)}

    def _op_sms_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self.carrier.recent(int(limit) if limit else None)


def _enum(kind: type[Any], value: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise BadRequest(f"{value!r} is not one of {allowed}") from None


__all__ = ["FirmwareSimError", "Hardware", "HardwareSpec"]
