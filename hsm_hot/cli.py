"""`hsm-hot`: command line of this process (sub-commands are added by the issues that build it)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cc_common.cli import run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsm-hot", description=__doc__)
    parser.add_subparsers(dest="command")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
