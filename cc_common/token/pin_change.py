"""Change an HSM token's PINs inside the token, then in its configuration file.

The only way to give an initialized token new PINs: regenerating the configuration alone
(what an `init --force` used to do) leaves the token with the old PINs, and every later
login burns one of the few tries. The token is changed first; the file is written only once
the token accepted the new PINs, and the old ones stay valid if anything fails before.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from cc_common.cli import add_dir_argument, config_from_args
from cc_common.config import Config, config_path_for, role_path_for
from cc_common.token.session import (
    closed_token,
    translate_errors,
)
from cc_common.token.settings import TokenSettings
from cc_common.token.types import PinRole

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewPins:
    user_pin: str | None
    so_pin: str | None


def new_pin() -> str:
    return secrets.token_hex(8)


def change_token_pins(settings: TokenSettings, pins: NewPins) -> None:
    """C_SetPIN for the user PIN (user login) and the SO PIN (SO login), under the retry
    guard: a refused old PIN counts as a failed try, like any login."""
    with closed_token(settings, "changing its PINs") as (token, guard):
        for role, name, old, new in (
            (PinRole.USER, "user", settings.user_pin, pins.user_pin),
            (PinRole.SO, "SO", settings.so_pin, pins.so_pin),
        ):
            if new is None:
                continue
            with guard.attempt(role), translate_errors(f"change the {name} PIN"):
                if role is PinRole.USER:
                    session = token.open(rw=True, user_pin=old)
                else:
                    session = token.open(rw=True, so_pin=old)
                try:
                    session.set_pin(old, new)
                finally:
                    session.close()
    log.warning("PINs of token %r changed", settings.label)


def write_pins(config_file: Path, section: str, pins: NewPins) -> None:
    """Replace `[section] user_pin/so_pin` in the file that holds them (0600, atomic)."""
    text = config_file.read_text(encoding="utf-8")
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    raw: dict[str, Any] = tomllib.loads(text)
    table = raw
    for part in section.split("."):
        table = table.setdefault(part, {})
    if pins.user_pin is not None:
        table["user_pin"] = pins.user_pin
    if pins.so_pin is not None:
        table["so_pin"] = pins.so_pin
    tmp = config_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # private from the start
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(header + tomli_w.dumps(raw))
    tmp.replace(config_file)


def pin_files(config: Config, section: str) -> list[Path]:
    """The files that hold `[section]`'s PINs: the HSM's role file (`hsm-cold.toml`), and the
    map too if a PIN was written there by hand (the demo and the tests read it first)."""
    role_file = role_path_for(config.data_dir, section.replace("_", "-"))
    files = [role_file] if role_file.is_file() else []
    map_file = config_path_for(config.data_dir)
    if map_file.is_file():
        table: Any = tomllib.loads(map_file.read_text(encoding="utf-8"))
        for part in section.split("."):
            table = table.get(part, {}) if isinstance(table, dict) else {}
        if "user_pin" in table or "so_pin" in table or not files:
            files.append(map_file)
    return files


def change_pins(config: Config, section: str, *, user: bool = True, so: bool = True) -> NewPins:
    """New random PINs for `section`'s token: in the token, then in the configuration."""
    settings = TokenSettings.from_section(config.section(section))
    pins = NewPins(new_pin() if user else None, new_pin() if so else None)
    change_token_pins(settings, pins)
    for path in pin_files(config, section):
        write_pins(path, section, pins)
    return pins


def add_change_pin_command(sub: Any, section: str, process: str) -> None:
    """`<process> change-pin`: the explicit, per-HSM way to replace an initialized token's
    PINs (stop the HSM process first; it holds a logged-in session)."""

    def handler(args: argparse.Namespace) -> str:
        config = config_from_args(args)
        change_pins(config, section, user=not args.so_only, so=not args.user_only)
        which = "user PIN" if args.user_only else "SO PIN" if args.so_only else "user and SO PINs"
        return (
            f"{process}: {which} of token {config.section(section).str('token_label')} changed "
            f"inside the token and written to its configuration files in {config.data_dir}"
        )

    p = sub.add_parser(
        "change-pin",
        help="replace the token's PINs with new random ones, in the token and the config",
    )
    add_dir_argument(p)
    only = p.add_mutually_exclusive_group()
    only.add_argument("--user-only", action="store_true", help="change only the user PIN")
    only.add_argument("--so-only", action="store_true", help="change only the SO PIN")
    p.set_defaults(handler=handler)
