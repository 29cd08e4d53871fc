"""The process table: what `custody up` runs, in which order, with which timings.

Every process of a local deployment is one `ProcessSpec` in `DEFAULT_SPECS`, in dependency
order (simulated hardware first). Each is started whether or not its program works: a process
that cannot start fails `custody up` at once, with its output, instead of being left out.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cc_common.config import Config
from cc_common.errors import ConfigError


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised process.

    `argv` may contain `{python}` (this interpreter) and `{dir}` (the data directory).
    `ready_name` is the name of its `run/<name>.ready` file. `after` names the processes that
    must be ready first; names not in the plan (left out by `only`) are ignored.
    """

    name: str
    argv: tuple[str, ...]
    ready_name: str
    after: tuple[str, ...] = ()
    ready_timeout: float | None = None
    # One-shot, idempotent setup run before the first start (e.g. `hsm-cold init`); same
    # placeholders as `argv`. A non-zero exit fails the startup with its output shown.
    prepare: tuple[str, ...] = ()

    def resolve_argv(self, data_dir: Path) -> list[str]:
        return _resolve(self.argv, data_dir)

    def resolve_prepare(self, data_dir: Path) -> list[str]:
        return _resolve(self.prepare, data_dir)


def _resolve(argv: Sequence[str], data_dir: Path) -> list[str]:
    return [a.replace("{python}", sys.executable).replace("{dir}", str(data_dir)) for a in argv]


def cli_spec(
    name: str,
    module: str,
    command: str,
    *,
    after: Sequence[str] = (),
    ready_name: str | None = None,
    prepare: Sequence[str] = (),
) -> ProcessSpec:
    """A process run as `python -m <module> <command> --dir <data dir>`.

    `prepare` names a sub-command of the same module run once before the first start
    (`python -m <module> <prepare...> --dir <data dir>`), e.g. `("init",)`.
    """
    return ProcessSpec(
        name=name,
        argv=("{python}", "-m", module, command, "--dir", "{dir}"),
        ready_name=ready_name or name,
        after=tuple(after),
        prepare=("{python}", "-m", module, *prepare, "--dir", "{dir}") if prepare else (),
    )


PREPARE_TIMEOUT = 180.0

# The local deployment, in dependency order. Add a process with one line here.
DEFAULT_SPECS: tuple[ProcessSpec, ...] = (
    cli_spec("firmware-sim", "firmware_sim.cli", "serve"),
    cli_spec("node", "firmware_sim.cli", "node"),
    cli_spec("hsm-cold", "hsm_cold.cli", "serve", after=["firmware-sim"], prepare=["init"]),
    cli_spec(
        "hsm-hot", "hsm_hot.cli", "serve", after=["firmware-sim", "hsm-cold"], prepare=["init"]
    ),
    cli_spec(
        "custody-api", "custody.cli", "serve", after=["node", "hsm-hot"], prepare=["db", "upgrade"]
    ),
    cli_spec("custody-worker", "custody.cli", "worker", after=["custody-api"]),
    cli_spec("custody-operator", "custody.cli", "dashboard", after=["custody-api"]),
    cli_spec("merchant-site", "examples.merchant_site.cli", "serve", after=["custody-api"]),
    cli_spec("vdevice", "vdevice.cli", "run", after=["firmware-sim", "merchant-site"]),
)


@dataclass(frozen=True)
class Settings:
    """Timings of the supervisor; `[supervisor]` in the configuration overrides them."""

    ready_timeout: float = 60.0
    stop_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_quick_failures: int = 5
    quick_failure_window: float = 30.0

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        if not config.has_section("supervisor"):
            return cls()
        s = config.section("supervisor")
        d = cls()
        return cls(
            ready_timeout=s.float("ready_timeout", d.ready_timeout),
            stop_timeout=s.float("stop_timeout", d.stop_timeout),
            backoff_initial=s.float("backoff_initial", d.backoff_initial),
            backoff_max=s.float("backoff_max", d.backoff_max),
            max_quick_failures=s.int("max_quick_failures", d.max_quick_failures),
            quick_failure_window=s.float("quick_failure_window", d.quick_failure_window),
        )


def _extra_specs(config: Config) -> list[ProcessSpec]:
    """Processes added by `[[supervisor.extra]]` tables (tests, local tools)."""
    if not config.has_section("supervisor") or not config.section("supervisor").has("extra"):
        return []
    specs = []
    for i, item in enumerate(config.section("supervisor").list("extra")):
        if not isinstance(item, Mapping) or "name" not in item or "argv" not in item:
            raise ConfigError(f"config: [[supervisor.extra]] #{i + 1} needs `name` and `argv`")
        argv = item["argv"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError(f"config: [[supervisor.extra]] {item['name']}: argv must be strings")
        timeout = item.get("ready_timeout")
        specs.append(
            ProcessSpec(
                name=str(item["name"]),
                argv=tuple(argv),
                ready_name=str(item.get("ready_name", item["name"])),
                after=tuple(str(a) for a in item.get("after", ())),
                ready_timeout=float(timeout) if timeout is not None else None,
            )
        )
    return specs


def order_specs(specs: Iterable[ProcessSpec]) -> list[ProcessSpec]:
    """Topological order that keeps the given order where dependencies allow it."""
    pending = list(specs)
    names = {s.name for s in pending}
    done: list[ProcessSpec] = []
    placed: set[str] = set()
    while pending:
        for spec in pending:
            if all(dep in placed or dep not in names for dep in spec.after):
                done.append(spec)
                placed.add(spec.name)
                pending.remove(spec)
                break
        else:
            cycle = ", ".join(s.name for s in pending)
            raise ConfigError(f"supervisor: dependency cycle among {cycle}")
    return done


def plan(config: Config, base: Sequence[ProcessSpec] = DEFAULT_SPECS) -> list[ProcessSpec]:
    """What `custody up` runs: `base` plus configured extras, filtered by `only`, in order."""
    specs = list(base) + _extra_specs(config)
    only: list[str] = []
    if config.has_section("supervisor") and config.section("supervisor").has("only"):
        only = [str(n) for n in config.section("supervisor").list("only")]
    if only:
        unknown = set(only) - {s.name for s in specs}
        if unknown:
            raise ConfigError(f"config: [supervisor] only names unknown processes: {unknown}")
        specs = [s for s in specs if s.name in only]
    return order_specs(specs)
