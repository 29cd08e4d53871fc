"""One configuration for a deployment: a TOML file plus environment overrides.

Read once, in `load_config`, and passed down explicitly. Nothing deep in the code reads
`os.environ`. An environment variable `CC__SECTION__KEY=value` overrides `[section] key`
(nested sections with more `__`); its text is converted to the type of the value it replaces.

One file per machine role (`ROLES`: `<data>/<role>.toml`, mode 0600), each holding everything
that role's process needs and nothing else (`cc_common.roles`): a process started as a role
reads its own file alone, so the hot HSM never sees the cold HSM's PIN nor the site's vtest
password, and a machine carries only its own file. `chaincloud.toml` is the supervisor's map
of the local deployment (every process's addresses, ports, paths, limits; no secret): `custody
up/status/down` read it; the demo and the tests, which play every officer, read it filled in
with every role's secrets (`ALL_ROLES`). `cc_common.config_write.write_settings` changes a
setting in every file that holds it. The environment wins over any file.

Relative paths in the file are relative to the data directory, so a deployment directory can
be moved as a whole.
"""

from __future__ import annotations

import builtins
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cc_common.errors import ConfigError

CONFIG_FILENAME = "chaincloud.toml"
ROLES = ("custody", "hsm-hot", "hsm-cold", "vdevice", "merchant-site", "firmware-sim")
ALL_ROLES = "*"  # the demo and the tests play every officer: they read every role's file
ENV_PREFIX = "CC__"
DEFAULT_DATA_DIR = "data"
PLACEHOLDERS = {"", "change-me", "changeme", "placeholder", "secret", "password", "1234", "0000"}


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The data directory when none is given: `$CC_DATA_DIR`, else `./data`."""
    env = os.environ if environ is None else environ
    return Path(env.get("CC_DATA_DIR") or DEFAULT_DATA_DIR).resolve()


@dataclass(frozen=True)
class Section:
    """A table of the configuration, with typed accessors that name the key on error."""

    name: builtins.str
    values: Mapping[str, Any]
    data_dir: Path

    def _get(self, key: builtins.str) -> Any:
        if key not in self.values:
            raise ConfigError(f"config: [{self.name}] {key} is missing")
        return self.values[key]

    def has(self, key: builtins.str) -> builtins.bool:
        return key in self.values

    def str(self, key: builtins.str, default: builtins.str | None = None) -> builtins.str:
        if default is not None and key not in self.values:
            return default
        value = self._get(key)
        if not isinstance(value, builtins.str):
            raise ConfigError(f"config: [{self.name}] {key} must be a string, got {value!r}")
        return value

    def int(self, key: builtins.str, default: builtins.int | None = None) -> builtins.int:
        if default is not None and key not in self.values:
            return default
        value = self._get(key)
        if isinstance(value, builtins.bool) or not isinstance(value, builtins.int):
            raise ConfigError(f"config: [{self.name}] {key} must be an integer, got {value!r}")
        return value

    def float(self, key: builtins.str, default: builtins.float | None = None) -> builtins.float:
        if default is not None and key not in self.values:
            return default
        value = self._get(key)
        if isinstance(value, builtins.bool) or not isinstance(value, builtins.int | builtins.float):
            raise ConfigError(f"config: [{self.name}] {key} must be a number, got {value!r}")
        return float(value)

    def bool(self, key: builtins.str, default: builtins.bool | None = None) -> builtins.bool:
        if default is not None and key not in self.values:
            return default
        value = self._get(key)
        if not isinstance(value, builtins.bool):
            raise ConfigError(f"config: [{self.name}] {key} must be true or false, got {value!r}")
        return value

    def list(self, key: builtins.str) -> builtins.list[Any]:
        value = self._get(key)
        if not isinstance(value, builtins.list):
            raise ConfigError(f"config: [{self.name}] {key} must be a list, got {value!r}")
        return value

    def path(self, key: builtins.str) -> Path:
        """A filesystem path; relative paths are taken from the data directory."""
        p = Path(self.str(key)).expanduser()
        return p if p.is_absolute() else (self.data_dir / p)

    def port_url(self, key: builtins.str) -> builtins.str:
        """A serial port: a pyserial URL (`socket://`, `loop://`) as is, else a device path."""
        value = self.str(key)
        return value if "://" in value else str(self.path(key))

    def secret(self, key: builtins.str) -> builtins.str:
        """A secret that must have been generated: refuses empty or placeholder values."""
        value = self.str(key)
        if value.strip().lower() in PLACEHOLDERS or len(value) < 8:
            raise ConfigError(
                f"config: [{self.name}] {key} is missing or a placeholder; "
                "run `custody init` to generate secrets"
            )
        return value

    def section(self, key: builtins.str) -> Section:
        value = self._get(key)
        if not isinstance(value, Mapping):
            raise ConfigError(f"config: [{self.name}] {key} must be a table")
        return Section(f"{self.name}.{key}", value, self.data_dir)


@dataclass(frozen=True)
class Config:
    """The whole configuration of a deployment."""

    data_dir: Path
    path: Path
    raw: Mapping[str, Any]

    def section(self, name: str) -> Section:
        node: Any = self.raw
        for part in name.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ConfigError(f"config: section [{name}] is missing from {self.path}")
            node = node[part]
        if not isinstance(node, Mapping):
            raise ConfigError(f"config: [{name}] must be a table")
        return Section(name, node, self.data_dir)

    def has_section(self, name: str) -> bool:
        try:
            self.section(name)
        except ConfigError:
            return False
        return True

    # Well-known locations inside the data directory.
    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def log_format(self) -> str:
        """`[logging] format`: "text" (default) or "json" (one object per line, for shippers)."""
        if not self.has_section("logging"):
            return "text"
        value = self.section("logging").str("format", "text")
        if value not in ("text", "json"):
            raise ConfigError(f'config: [logging] format must be "text" or "json", not {value!r}')
        return value

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def dev_dir(self) -> Path:
        return self.data_dir / "dev"


def convert_text(text: str, like: Any, name: str) -> Any:
    """`text` (from the environment or a command line) as the type of the value `like`;
    `name` says where it came from in an error."""
    if isinstance(like, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {text!r}")
    if isinstance(like, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {text!r}") from None
    if isinstance(like, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {text!r}") from None
    if isinstance(like, list | dict):
        raise ConfigError(f"{name} overrides a table or list, which is not allowed")
    return text


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Apply every `CC__SECTION__KEY` variable to `raw` (in place) and return it."""
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"environment: {name} must look like CC__SECTION__KEY")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment: {name}: {part} is not a table")
            node = child
        key = parts[-1]
        node[key] = convert_text(text, node[key], f"environment: {name}") if key in node else text
    return raw


def config_path_for(data_dir: Path) -> Path:
    return data_dir / CONFIG_FILENAME


def role_path_for(data_dir: Path, role: str) -> Path:
    if role not in ROLES:
        raise ConfigError(f"config: unknown machine role {role!r}")
    return data_dir / f"{role}.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None


def _fill(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Add the keys of `extra` that `into` lacks (tables merged key by key)."""
    for key, value in extra.items():
        have = into.get(key)
        if isinstance(have, dict) and isinstance(value, Mapping):
            _fill(have, value)
        elif key not in into:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def load_config(
    data_dir: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    role: str | None = None,
) -> Config:
    """Read `role`'s own file `<data_dir>/<role>.toml` alone; without a role, the map
    `chaincloud.toml`; with `ALL_ROLES`, the map filled in with every role's file. Then apply
    environment overrides."""
    env = os.environ if environ is None else environ
    ddir = Path(data_dir).resolve() if data_dir is not None else default_data_dir(env)
    path = config_path_for(ddir) if role in (None, ALL_ROLES) else role_path_for(ddir, role)
    if not path.is_file():
        whose = "" if role in (None, ALL_ROLES) else f" (the {role} machine's own file)"
        raise ConfigError(
            f"config: {path}{whose} does not exist; run `custody init --dir {ddir}` first"
        )
    raw = _read_toml(path)
    if role == ALL_ROLES:
        for name in ROLES:
            role_path = role_path_for(ddir, name)
            if role_path.is_file():
                _fill(raw, _read_toml(role_path))
    apply_env_overrides(raw, env)
    return Config(data_dir=ddir, path=path, raw=raw)
