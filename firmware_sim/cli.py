"""`firmware-sim`: the simulated hardware and outside world.

`firmware-sim serve` runs the serial line, the GSM modems, the carrier and the Twilio
gateway; `firmware-sim node` runs the regtest Bitcoin node. Each part registers its own
sub-commands here.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cc_common.cli import run, set_role
from firmware_sim import hardware_cli
from firmware_sim.node import cli as node_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="firmware-sim", description=__doc__)
    set_role(parser, "firmware-sim")
    sub = parser.add_subparsers(dest="command")

    hardware_cli.register(sub)
    node_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
