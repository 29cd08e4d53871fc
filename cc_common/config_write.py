"""Write configuration files: private from their first byte, and a setting into every file
that holds it.

Each process reads only its own role's file (`cc_common.config`), so a setting changed in one
file alone would not reach it: `write_settings` is the one way the tests, the demo and
`custody config set` change a deployment's configuration.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from cc_common.config import CONFIG_FILENAME, ROLES, role_path_for
from cc_common.errors import ConfigError
from cc_common.roles import KNOWN_TABLES, SECRET_KEYS, role_part


def write_private(path: Path, text: str) -> None:
    """Create `path` 0600 from the first byte (a new file, then renamed over any old one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value
    return base


def _rewrite(path: Path, changes: Mapping[str, Any]) -> None:
    """Merge `changes` into the TOML file `path`, keeping its comment header and mode 0600."""
    text = path.read_text(encoding="utf-8")
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    write_private(path, header + tomli_w.dumps(_merge(tomllib.loads(text), changes)))


def _public(
    changes: Mapping[str, Any], held: Mapping[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """`changes` without secrets, except a secret the map already holds (set there by hand)."""
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if isinstance(value, Mapping):
            inner = held.get(key)
            held_table = inner if isinstance(inner, Mapping) else {}
            public = _public(value, held_table, f"{prefix}{key}.")
            if public or not value:
                out[key] = public
        elif (prefix.rstrip("."), key) not in SECRET_KEYS or key in held:
            out[key] = value
    return out


def write_settings(data_dir: Path, changes: Mapping[str, Any]) -> list[Path]:
    """Merge nested `changes` (`{"hsm_hot": {"max_send_sat": 1}}`) into every file of the
    deployment that holds them: each role file whose role reads that key, and the map (secrets
    only into the role files). Returns the files written."""
    unknown = sorted(set(changes) - KNOWN_TABLES)
    if unknown:
        raise ConfigError(
            f"config: no process reads [{', '.join(unknown)}]; a new table needs its roles "
            "in cc_common/roles.py"
        )
    written = []
    for role in ROLES:
        part = role_part(changes, role)
        path = role_path_for(data_dir, role)
        if part and path.is_file():
            _rewrite(path, part)
            written.append(path)
    path = data_dir / CONFIG_FILENAME
    if path.is_file():
        held = tomllib.loads(path.read_text(encoding="utf-8"))
        _rewrite(path, _public(changes, held))
        written.append(path)
    if not written:
        raise ConfigError(f"config: no configuration in {data_dir}; run `custody init` first")
    return written
