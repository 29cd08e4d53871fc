"""Helpers shared by every command-line entry point.

Handlers return a plain value (printed by `run`) or raise a `CustodyError`, which becomes a
one-line `error: ...` on stderr and exit status 2. No traceback reaches the operator for an
error we raised on purpose.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cc_common.config import Config, default_data_dir, load_config
from cc_common.errors import CustodyError
from cc_common.text import UnsafeText, check_text


def add_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="deployment data directory (default: $CC_DATA_DIR or ./data)",
    )


def int_at_least(minimum: int, name: str) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`; its errors say what `name` is."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} is at least {minimum}, not {value}")
        return value

    return parse


def set_role(parser: argparse.ArgumentParser, role: str | None) -> None:
    """The machine role whose file alone this program reads (`cc_common.config.ROLES`);
    None: the supervisor's map of the whole local deployment."""
    parser.set_defaults(config_role=role)


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(
        args.dir if getattr(args, "dir", None) else default_data_dir(),
        role=getattr(args, "config_role", None),
    )


def print_result(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, str):
        print(value)
    else:
        print(json.dumps(value, indent=2, sort_keys=True, default=str))


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print only JSON (for scripts), no table"
    )


@dataclass(frozen=True)
class Table:
    """A handler's tabular result: rendered as a table, or as a JSON list with `--json`."""

    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    title: str = ""

    def records(self) -> list[dict[str, Any]]:
        keys = [h.lower().replace(" ", "_") for h in self.headers]
        return [dict(zip(keys, row, strict=True)) for row in self.rows]

    def render(self) -> str:
        table = render_table(self.headers, self.rows)
        return f"{self.title}\n{table}" if self.title else table


EXIT_BROKEN_PIPE = 141  # as a shell reports a writer killed by SIGPIPE


def _silence_stdout() -> None:
    """After the reader went away (`| head`): later writes and the final flush go nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse `argv`, call the chosen sub-command's `handler(args)`, print its result. Output
    into a closed pipe ends quietly (no traceback). An argument holding a control or bidi
    character is refused before anything runs."""
    os.umask(0o077)  # every file a process writes (state, logs, exports) private from the start
    try:
        for n, arg in enumerate(sys.argv[1:] if argv is None else argv, start=1):
            check_text(arg, f"argument {n}")
    except UnsafeText as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        return _run(parser, argv)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], Any] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        result = handler(args)
    except CustodyError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    if isinstance(result, Table):
        result = result.records() if getattr(args, "json", False) else result.render()
    print_result(result)
    sys.stdout.flush()  # a closed pipe shows here, inside `run`
    return 0


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table for operator output."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
