"""layers: imports between our packages run one way, bottom to top.

    cc_errors  <  wallet_core  <  cc_common  <  each process package  <  cc_demo

The process packages (custody, hsm_hot, hsm_cold, vdevice, firmware_sim, the example merchant
site) talk to each other only over their links, never by import; nothing imports the demo,
so a production install does not need it. Inside a Flask service, blueprints reach the app
through `extensions`, never through the app factory. Every `import` is read from the source
(also those inside functions), so a lazy import cannot hide a wrong-way edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROCESS_PACKAGES = ("firmware_sim", "hsm_cold", "hsm_hot", "vdevice", "custody", "examples")
# What each package may import of ours (besides itself).
ALLOWED: dict[str, frozenset[str]] = {
    "cc_errors": frozenset(),
    "wallet_core": frozenset({"cc_errors"}),
    "cc_common": frozenset({"cc_errors", "wallet_core"}),
    **{p: frozenset({"cc_errors", "wallet_core", "cc_common"}) for p in PROCESS_PACKAGES},
    "cc_demo": frozenset({"cc_errors", "wallet_core", "cc_common", *PROCESS_PACKAGES}),
}
OURS = frozenset(ALLOWED) | {"tests", "benchmarks"}
# Modules that must not import the app factory of their own service.
APP_FACTORIES = {
    "custody/api": "custody.app",
    "examples/merchant_site/api.py": "examples.merchant_site.app",
    "examples/merchant_site/merchant.py": "examples.merchant_site.app",
    "examples/merchant_site/extensions.py": "examples.merchant_site.app",
    "custody/extensions.py": "custody.app",
}


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import in `path`, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from custody import app` imports custody.app
                yield node.lineno, f"{node.module}.{alias.name}"


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_lower_layers(package: str) -> None:
    allowed = ALLOWED[package] | {package}
    problems = []
    files = sources(package)
    assert files, f"no sources under {package}/"
    for path in files:
        for line, name in imports(path):
            top = name.split(".")[0]
            if top in OURS and top not in allowed:
                rel = path.relative_to(ROOT)
                problems.append(f"{rel}:{line}: {package} must not import {name}")
    assert not problems, "\n".join(sorted(set(problems)))


@pytest.mark.parametrize("where", sorted(APP_FACTORIES))
def test_views_reach_the_app_through_extensions(where: str) -> None:
    factory = APP_FACTORIES[where]
    target = ROOT / where
    files = sources(where) if target.is_dir() else [target]
    problems = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}; use the accessors in extensions"
        for path in files
        for line, name in imports(path)
        if name == factory
    ]
    assert not problems, "\n".join(problems)


def test_the_checker_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from custody import app\n    import hsm_cold.cli\n")
    assert set(imports(probe)) == {(2, "custody"), (2, "custody.app"), (3, "hsm_cold.cli")}
