"""The operator console: the dashboard in a real browser, `/health`, `/metrics`, JSON logs.

The slow class runs one deployment under `custody up` with `[logging] format = "json"`, walks
the demo's first steps (account, channel, verified batches) and opens the dashboard in Debian's
chromium through Playwright: the page loads with every part, a deposit appears in the account's
row without a reload, and a freeze turns the row into an alarm. The same deployment answers
`/health` and `/metrics` and `GET /api/v1/health`; afterwards every log line is JSON and no log
holds a secret of the deployment.

The quick tests build the console and the API against dependencies that are really absent (a
closed port for the hot HSM and the node), so the 503s and the failing checks they name are the
ones an operator would see.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cc_common.config import load_config
from cc_common.deployment import init_deployment
from cc_demo import run as demo_run
from cc_demo import scenario as demo
from cc_demo.support import DEMO_CONFIG, StepFailed, StepSkipped
from custody.app import create_app
from custody.chain.rpc import BitcoinRPC
from custody.db import make_engine, make_session_factory
from custody.hsm_client import HotHsmClient
from custody.models import Base
from custody.operator.app import create_console_app
from custody.operator.snapshot import Snapshotter
from tests.conftest import DEPLOYMENTS
from tests.harness import Deployment, SupervisorProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
READY_TIMEOUT = 120.0
PAGE_TIMEOUT_MS = 30_000


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket is: nobody listens


# --------------------------------------------------------------------------- quick


@pytest.fixture
def offline_console(tmp_path: Path) -> Iterator[Any]:
    """The console over a real SQLite database, with the hot HSM and the node absent."""
    config = init_deployment(tmp_path / "data")
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    Base.metadata.create_all(engine)
    port = _closed_port()
    snapshotter = Snapshotter(
        config,
        make_session_factory(engine),
        read_processes=lambda: [
            {"name": "custody-api", "state": "ready", "pid": 1, "uptime": 5.0, "restarts": 0},
            {
                "name": "custody-worker",
                "state": "failed",
                "pid": None,
                "uptime": None,
                "restarts": 5,
            },
        ],
        hot_hsm=HotHsmClient(f"http://127.0.0.1:{port}", "s" * 64, timeout=2),
        node=BitcoinRPC(f"http://127.0.0.1:{port}", "u", "p", timeout=2, retries=0),
    )
    app = create_console_app(config, snapshotter)
    token = config.section("operator").str("token")
    yield app.test_client(), {"Authorization": f"Bearer {token}"}
    engine.dispose()


def test_console_wants_the_operator_token(offline_console: Any) -> None:
    client, auth = offline_console
    for path in ("/", "/parts", "/health", "/metrics"):
        resp = client.get(path)
        assert resp.status_code == 401, path
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/ready").status_code == 200  # the readiness probe says nothing


def test_health_names_the_failed_dependencies(offline_console: Any) -> None:
    client, auth = offline_console
    resp = client.get("/health", headers=auth)
    assert resp.status_code == 503
    checks = resp.get_json()["checks"]
    assert checks["database"]["ok"] is True
    assert checks["node"]["ok"] is False and "node" in checks["node"]["detail"]
    assert checks["hot_hsm"]["ok"] is False and "unreachable" in checks["hot_hsm"]["detail"]
    assert checks["serial_link"]["ok"] is False
    assert checks["cold_hsm"]["ok"] is False


def test_dashboard_flags_problems_and_metrics_render(offline_console: Any) -> None:
    client, auth = offline_console
    page = client.get("/", headers=auth)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'id="process-custody-worker" class="alarm"' in html
    assert "process custody-worker is failed" in html
    assert "cannot read: hot HSM" in html
    parts = client.get("/parts", headers=auth).get_json()
    assert set(parts["parts"]) >= {"processes", "accounts", "chain", "journal"}
    assert any("custody-worker" in p for p in parts["problems"])
    metrics = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'cc_process_ready{process="custody-worker"} 0.0' in metrics
    assert 'cc_part_readable{part="hsms"} 0.0' in metrics
    assert "cc_journal_verified 1.0" in metrics


def test_api_health_is_503_without_the_hot_hsm(tmp_path: Path) -> None:

    config = init_deployment(tmp_path / "data")
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    Base.metadata.create_all(engine)
    hsm = HotHsmClient(f"http://127.0.0.1:{_closed_port()}", "s" * 64, timeout=2)
    app = create_app(config, hsm=hsm, session_factory=make_session_factory(engine))
    resp = app.test_client().get("/api/v1/health")
    assert resp.status_code == 503
    assert resp.get_json() == {"status": "unavailable"}  # no detail without a token
    engine.dispose()


def test_log_format_json_is_validated(tmp_path: Path) -> None:
    config = init_deployment(tmp_path / "data")
    assert config.log_format == "text"
    bad = load_config(config.data_dir, environ={"CC__LOGGING__FORMAT": "xml"})
    with pytest.raises(Exception, match=r"\[logging\] format"):
        _ = bad.log_format


# --------------------------------------------------------------------------- in a browser


class Console:
    """One deployment under `custody up`, the demo's context, and the console's address."""

    def __init__(self, base: Path) -> None:
        self.deployment = Deployment(base)
        self.deployment.configure(DEMO_CONFIG)
        self.deployment.configure(
            {"logging": {"format": "json"}, "operator": {"refresh_seconds": 0.5}}
        )
        self.ctx = demo.Context(config=self.deployment.config, env=self.deployment.env)
        s = self.deployment.config.section("operator")
        self.url = f"http://127.0.0.1:{s.int('port')}"
        self.token = s.str("token")
        self.supervisor: SupervisorProcess | None = None

    def step(self, name: str) -> str:
        step = next(s for s in demo_run.STEPS if s.name == name)
        try:
            return step.run(self.ctx)
        except (StepFailed, StepSkipped) as exc:
            pytest.fail(f"demo step {name}: {exc}", pytrace=False)

    def get(self, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return requests.get(self.url + path, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    rig = Console(tmp_path_factory.mktemp("console"))
    try:
        rig.supervisor = rig.deployment.start_supervisor(timeout=READY_TIMEOUT)
        for name in ("status", "account", "channel", "batches"):
            rig.step(name)
        yield rig
    finally:
        problems = rig.deployment.stop()
        assert not problems, "after the tests:\n  " + "\n  ".join(problems)


@pytest.fixture(autouse=True)
def _log_tails_on_failure(request: pytest.FixtureRequest) -> None:
    if "console" in request.fixturenames:
        request.node.stash[DEPLOYMENTS] = [request.getfixturevalue("console").deployment]


@pytest.fixture(scope="module")
def browser_page(console: Console) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (optional: the browser test only)

    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium is not installed at {CHROMIUM} (scripts/_setup.sh installs it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        # bypass_csp: the page forbids eval, which Playwright's wait_for_function uses to poll
        context = browser.new_context(
            http_credentials={"username": "operator", "password": console.token},
            bypass_csp=True,
        )
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        try:
            yield page
        finally:
            browser.close()


@pytest.mark.slow
class TestDashboardInBrowser:
    def test_page_loads_with_every_part(self, console: Console, browser_page: Any) -> None:
        page = browser_page
        page.goto(console.url + "/")
        assert "ChainCloud operator" in page.title()
        for name in ("processes", "hsms", "link", "sms", "accounts", "alerts", "journal", "chain"):
            assert page.locator(f"#part-{name} h2").count() == 1, name
        page.wait_for_selector("#process-custody-api")
        page.wait_for_selector("#hsm-cold")
        assert page.locator("#account-1").count() == 1
        assert "chain intact" in page.inner_text("#journal-state")
        # the refresh script swaps parts in: it has run at least once
        page.wait_for_function("Number(document.body.dataset.refreshed || 0) >= 1")

    def test_deposit_appears_without_reload(self, console: Console, browser_page: Any) -> None:
        page = browser_page
        page.evaluate("window.__sameDocument = true")
        before = int(page.get_attribute("#account-1", "data-deposits") or "0")
        console.step("deposit")
        page.wait_for_function(
            f"Number(document.querySelector('#account-1').dataset.deposits) > {before}"
        )
        page.wait_for_function(
            "document.querySelector('#account-1').innerText.includes('50,000,000 sat')"
        )  # the confirmed cold balance, once the watcher saw the blocks
        assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"

    def test_health_metrics_and_api_health(self, console: Console) -> None:
        health = console.get("/health")
        assert health.status_code == 200, health.text
        checks = health.json()["checks"]
        assert all(c["ok"] for c in checks.values()), checks
        assert requests.get(console.url + "/health", timeout=10).status_code == 401
        metrics = console.get("/metrics").text
        for expected in (
            'cc_process_ready{process="custody-api"} 1.0',
            'cc_process_ready{process="hsm-cold"} 1.0',
            "cc_watcher_height ",
            "cc_watcher_lag_blocks ",
            'cc_account_frozen{account="1"} 0.0',
            'cc_deposits_total{account="1"}',
            "cc_cosign_seconds_count",
            'cc_sms_messages_total{modem="cold-a",result="received"}',
            "cc_link_events_total",
        ):
            assert expected in metrics, expected
        api = console.deployment.config.section("custody")
        resp = requests.get(f"http://127.0.0.1:{api.int('port')}/api/v1/health", timeout=10)
        assert resp.status_code == 200 and resp.json() == {"status": "ok"}

    def test_freeze_turns_the_row_into_an_alarm(self, console: Console, browser_page: Any) -> None:
        page = browser_page
        assert page.get_attribute("#account-1", "data-frozen") == "no"
        console.ctx.cli.run("custody.cli", "account", "freeze", "1", "--reason", "console test")
        page.wait_for_selector("#account-1.alarm[data-frozen='yes']")
        row = page.inner_text("#account-1")
        assert "FROZEN" in row and "console test" in row
        assert "account 1 is frozen" in page.inner_text("#problems")
        assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
        metrics = console.get("/metrics").text
        assert 'cc_account_frozen{account="1"} 1.0' in metrics

    def test_logs_are_json_without_secrets(self, console: Console) -> None:
        config = console.deployment.config
        secrets = [
            config.section("hsm_hot").str("user_pin"),
            config.section("hsm_hot").str("so_pin"),
            config.section("hsm_cold").str("user_pin"),
            config.section("hsm_hot").str("rpc_secret"),
            config.section("custody").str("secret_key"),
            config.section("operator").str("token"),
        ]
        checked = 0
        for path in sorted(console.deployment.log_dir.glob("*.log")):
            if path.name in ("supervisor.log",):
                continue
            assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"
            text = path.read_text(encoding="utf-8", errors="replace")
            for secret in secrets:
                assert secret not in text, f"a secret appears in {path.name}"
            for line in text.splitlines():
                if not line.startswith("{"):
                    continue  # a child's raw stderr (a traceback) is not a log record
                record = json.loads(line)
                assert {"time", "level", "process", "logger", "message"} <= set(record)
                checked += 1
        assert checked > 20, "the processes wrote almost no JSON log records"


def test_systemd_units_name_existing_commands() -> None:
    root = Path(__file__).resolve().parent.parent
    units = sorted((root / "deploy" / "systemd").glob("*.service"))
    assert len(units) >= 5, "deploy/systemd ships a unit per role"
    for unit in units:
        execs = [
            line.split("=", 1)[1].split()
            for line in unit.read_text().splitlines()
            if line.startswith("ExecStart=")
        ]
        assert execs, f"{unit.name} has no ExecStart"
        for argv in execs:
            command = Path(argv[0]).name
            # the console scripts sit beside this interpreter (the venv's bin/)
            found = shutil.which(command, path=f"{Path(sys.executable).parent}:{os.defpath}")
            assert found, f"{unit.name}: {command} is not an installed command"
            help_run = subprocess.run(
                [found, *argv[1:2], "--help"],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert help_run.returncode == 0, f"{unit.name}: `{command} {argv[1]}` does not exist"
