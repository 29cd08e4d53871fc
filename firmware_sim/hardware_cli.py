"""Sub-commands of `firmware-sim` for the simulated hardware.

`serve` runs it; every other command talks to the running process through the control
socket named in the configuration (`[firmware_sim] control_socket`).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from cc_common.cli import add_dir_argument, config_from_args
from cc_common.config import Config
from cc_common.logs import setup_logging
from cc_common.process import clear_ready, install_stop_handlers, mark_ready
from firmware_sim.control import ControlClient
from firmware_sim.gsm.carrier import NetworkState
from firmware_sim.hardware import Hardware, HardwareSpec
from firmware_sim.serial_relay import Direction

PROCESS = "firmware-sim"
log = logging.getLogger("firmware_sim")


def client_for(config: Config) -> ControlClient:
    """A control client for the deployment described by `config`."""
    return ControlClient(config.section("firmware_sim").path("control_socket"))


def _client(args: argparse.Namespace) -> ControlClient:
    return client_for(config_from_args(args))


def serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    setup_logging(
        PROCESS, config.log_dir, level="DEBUG" if args.debug else "INFO", fmt=config.log_format
    )
    hardware = Hardware(HardwareSpec.from_config(config))
    stop = install_stop_handlers()
    hardware.start()
    try:
        gateway = hardware.gateway.url if hardware.gateway else None
        mark_ready(
            config.run_dir,
            PROCESS,
            control_socket=str(hardware.spec.control_socket),
            twilio_gateway=gateway,
        )
        log.info("firmware-sim ready")
        while not stop.wait(0.5):
            pass
        log.info("stopping")
    finally:
        clear_ready(config.run_dir, PROCESS)
        hardware.stop()
    log.info("stopped")
    return 0


def status(args: argparse.Namespace) -> Any:
    return _client(args).status()


def fault(args: argparse.Namespace) -> Any:
    client = _client(args)
    if args.kind == "clear":
        return client.clear_faults(args.direction)
    if args.kind == "cut":
        return client.cut(args.seconds, args.direction)
    if args.kind == "flip":
        return client.flip_bits(args.count, args.direction, window=args.window)
    return client.fault(args.kind, args.direction, count=args.count)


def baud(args: argparse.Namespace) -> Any:
    return _client(args).set_baud(args.baud)


def carrier(args: argparse.Namespace) -> Any:
    client = _client(args)
    changes = {
        "delay_ms": args.delay_ms,
        "loss": args.loss,
        "duplicate": args.duplicate,
        "state": args.state,
    }
    if all(v is None for v in changes.values()):
        return client.carrier()
    return client.set_carrier(args.network, **changes)


def inbox(args: argparse.Namespace) -> Any:
    return _client(args).inbox(args.number, clear=args.clear)


def inject(args: argparse.Namespace) -> Any:
    return _client(args).inject_sms(args.to, args.text, args.sender)


def sms_log(args: argparse.Namespace) -> Any:
    return _client(args).sms_log(args.limit)


def register(sub: Any) -> None:
    """Add this part's sub-commands to the `firmware-sim` parser."""
    p = sub.add_parser("serve", help="run the serial line, modems, carrier and Twilio gateway")
    add_dir_argument(p)
    p.add_argument("--debug", action="store_true", help="log at DEBUG (includes SMS bodies)")
    p.set_defaults(handler=serve)

    p = sub.add_parser("status", help="what the running simulated hardware is doing")
    add_dir_argument(p)
    p.set_defaults(handler=status)

    directions = [d.value for d in Direction]
    p = sub.add_parser("fault", help="inject a fault on the serial line")
    add_dir_argument(p)
    kinds = p.add_subparsers(dest="kind", required=True)
    for name, text in (
        (
            "flip",
            "flip one bit in each of the next COUNT bytes (or COUNT bits within --window bytes)",
        ),
        ("drop", "drop the next COUNT bytes"),
        ("garbage", "put COUNT random bytes on the line"),
    ):
        k = kinds.add_parser(name, help=text)
        k.add_argument("count", type=int, help="how many bytes (bits for flip --window)")
        if name == "flip":
            k.add_argument(
                "--window",
                type=int,
                default=0,
                help="spread the bits over this many bytes (default: one bit per byte)",
            )
        k.add_argument(
            "--direction", choices=directions, default="both", help="which way (default: both)"
        )
    k = kinds.add_parser("cut", help="cut the line for SECONDS")
    k.add_argument("seconds", type=float, help="how long the line stays cut")
    k.add_argument(
        "--direction", choices=directions, default="both", help="which way (default: both)"
    )
    k = kinds.add_parser("clear", help="forget pending faults")
    k.add_argument(
        "--direction", choices=directions, default="both", help="which way (default: both)"
    )
    p.set_defaults(handler=fault)

    p = sub.add_parser("baud", help="change the serial line rate")
    add_dir_argument(p)
    p.add_argument("baud", type=int, help="the new line rate in bits per second")
    p.set_defaults(handler=baud)

    p = sub.add_parser("carrier", help="show or change carrier settings")
    add_dir_argument(p)
    p.add_argument("--network", help="one network (carrier name); default: all")
    p.add_argument("--delay-ms", type=int, help="delivery delay of each segment (ms)")
    p.add_argument("--loss", type=float, help="probability a segment is lost")
    p.add_argument("--duplicate", type=float, help="probability a segment comes twice")
    p.add_argument("--state", choices=[s.value for s in NetworkState], help="the network's state")
    p.set_defaults(handler=carrier)

    p = sub.add_parser("inbox", help="messages received by a plain phone number")
    add_dir_argument(p)
    p.add_argument("number", help="the phone number (E.164)")
    p.add_argument("--clear", action="store_true", help="empty the inbox after reading")
    p.set_defaults(handler=inbox)

    p = sub.add_parser("inject", help="deliver an SMS to a number from any (even spoofed) sender")
    add_dir_argument(p)
    p.add_argument("--to", required=True, help="recipient number (E.164)")
    p.add_argument(
        "--from", dest="sender", required=True, help="sender number shown (may be spoofed)"
    )
    p.add_argument("text", help="the message text")
    p.set_defaults(handler=inject)

    p = sub.add_parser("sms-log", help="the carrier's recent message log")
    add_dir_argument(p)
    p.add_argument("--limit", type=int, default=None, help="only the last LIMIT messages")
    p.set_defaults(handler=sms_log)
