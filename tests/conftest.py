"""Generic fixtures: per-test deployments, `--keep-data`, log tails of failed tests.

Kept small and generic: helpers of each area live in `tests/<area>_fixtures.py` (firmware,
node, tokens, ...). Fixture modules are registered for every test by `pytest_plugins`, so tests
ask for their fixtures by name and never import them: the API's (`app`, `client`, `account`,
databases on SQLite and PostgreSQL, ...), the cold HSM's (`cold`, `link`), the cold HSM on SMS
(`world`), the firmware simulator's (`start_sim`, `firmware_sim`, `at_port`) and the
V-device's (`sim`, `make_rig`). A module may define a fixture of the same name for itself.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.harness import Deployment

pytest_plugins = (
    "tests.api_fixtures",
    "tests.cold_rig",
    "tests.cold_sms_rig",
    "tests.firmware_fixtures",
    "tests.history_fixtures",
    "tests.vdevice_rig",
)

# Property tests check what is computed, never how fast: on a 2-core machine running the suite
# in two processes beside servers, a case can take longer than hypothesis's 200 ms default
# deadline without anything being wrong.
settings.register_profile("custody", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("custody")

DEPLOYMENTS = pytest.StashKey[list[Deployment]]()
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
KEPT = pytest.StashKey[list[tuple[str, Path]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--keep-data",
        action="store_true",
        default=False,
        help="keep every test's deployment data directory (kept anyway when a test fails)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[KEPT] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report; attach deployment log tails to a failure."""
    report: pytest.TestReport = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    if report.failed and report.when in ("setup", "call"):
        for deployment in item.stash.get(DEPLOYMENTS, []):
            report.sections.append(
                (f"deployment logs ({deployment.data_dir})", deployment.log_tails())
            )
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    kept = config.stash.get(KEPT, [])
    if kept:
        terminalreporter.section("kept data directories")
        for nodeid, path in kept:
            terminalreporter.write_line(f"{nodeid}: {path}  (logs in {path / 'logs'})")


@pytest.fixture
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Deployment]]:
    """Factory: `deployment(name="data", config={...}, env={...})` -> a fresh `Deployment`.

    At teardown every process is stopped and leftovers fail the test. The data directory is
    removed unless the test failed or `--keep-data` was given; kept ones are listed at the end.
    """
    created: list[Deployment] = []
    request.node.stash[DEPLOYMENTS] = created

    def make(name: str = "data", **kwargs: Any) -> Deployment:
        d = Deployment(tmp_path, name, **kwargs)
        created.append(d)
        return d

    yield make

    problems: list[str] = []
    for d in reversed(created):
        problems += d.stop()
    reports = request.node.stash.get(REPORTS, {})
    test_failed = any(r.failed for r in reports.values())
    for d in created:
        if test_failed or problems or request.config.getoption("--keep-data"):
            request.config.stash[KEPT].append((request.node.nodeid, d.data_dir))
        else:
            shutil.rmtree(d.data_dir, ignore_errors=True)
    # A test that already failed is not failed again for what its failure left behind.
    if problems and not test_failed:
        pytest.fail("after the test:\n  " + "\n  ".join(problems), pytrace=False)
