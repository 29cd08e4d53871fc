"""`custody config set`: change one setting in every configuration file that holds it.

Each process reads only its own role's file (`<role>.toml`), so a port or a limit edited in
`chaincloud.toml` alone would reach the supervisor and no process. This writes the value into
the map and into every role file whose process reads that key (a secret into the role files
only), each rewritten 0600. A host or port that a full URL is built from (`[custody] port` in
`[merchant_site] custody_url`) moves that URL with it (`cc_common.config_urls`). Processes read
their file when they start: restart them after.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from cc_common.cli import add_dir_argument
from cc_common.config import ALL_ROLES, convert_text, default_data_dir, load_config
from cc_common.config_urls import follow_urls
from cc_common.config_write import write_settings
from cc_common.errors import ConfigError

KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def _current(raw: Any, parts: list[str]) -> Any:
    node = raw
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def parse_value(text: str, like: Any, name: str) -> Any:
    """`text` as the type of the value it replaces; a new key: a TOML literal, else a string."""
    if like is not None:
        return convert_text(text, like, name)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    return value if isinstance(value, str | int | float | bool) else text


def cmd_set(args: argparse.Namespace) -> str:
    data_dir = Path(args.dir if args.dir else default_data_dir()).resolve()
    if not KEY_PATTERN.match(args.key):
        raise ConfigError(
            f"config set: {args.key!r} must look like section.key (e.g. hsm_hot.max_send_sat)"
        )
    parts = args.key.split(".")
    text = sys.stdin.readline().rstrip("\r\n") if args.value == "-" else args.value
    raw = load_config(data_dir, environ={}, role=ALL_ROLES).raw
    value = parse_value(text, _current(raw, parts), f"config set: {args.key}")
    changes: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        changes = {part: changes}
    section, key = ".".join(parts[:-1]), parts[-1]
    urls, notes = follow_urls(raw, section, key, value)
    for table, moved in urls.items():
        changes.setdefault(table, {}).update(moved)
    written = write_settings(data_dir, changes)
    files = ", ".join(p.name for p in written)
    lines = [f"[{section}] {key} written to {files}"]
    lines += [f"[{t}] {k} follows: {url}" for t, moved in urls.items() for k, url in moved.items()]
    lines += notes
    lines.append("restart the processes that read them")
    return "\n".join(lines)


def register(sub: Any) -> None:
    """Add `config set` to the `custody` parser."""
    p = sub.add_parser("config", help="change the deployment's configuration files")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    s = config_sub.add_parser(
        "set",
        help="set SECTION.KEY to VALUE in every file that holds it (map and role files)",
    )
    s.add_argument("key", help="the setting, as section.key (e.g. custody.port)")
    s.add_argument(
        "value",
        help="the new value, converted to the type of the old one; '-' reads it from stdin "
        "(for a secret, which then appears in no process list)",
    )
    add_dir_argument(s)
    s.set_defaults(handler=cmd_set)
