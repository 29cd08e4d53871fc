"""The operator's views on the command line: `sends`, `journal show`, balances and who froze
in `account show`, `account unfreeze`; `--json` prints JSON only; alerts are shown whole;
output into a closed pipe and an unreachable database are one quiet line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from custody import journal
from custody.admin_cli import upgrade_database
from custody.db import make_engine, make_session_factory, transaction
from custody.models import Alert, Send, SendStatus, utcnow
from tests.api_fixtures import SoftwareHsmStandIn
from tests.test_api_cli import cli_with_account, run_cli, write_config
from wallet_core.account_state import AccountState, FreezeOrigin
from wallet_core.messages import sign_message


class PairStandIn(SoftwareHsmStandIn):
    """The stand-in pair, answering an unfreeze with an identity-signed state."""

    def unfreeze(self, account: int, reason: str) -> list[dict[str, Any]]:
        self.accounts[account].frozen = False
        state = AccountState(account, False, FreezeOrigin.NONE, "", int(time.time()))
        signature = sign_message(self.identity_priv, state.statement())
        return [{**state.__dict__, "origin": "none", "signature": signature}]


def _setup(tmp_path: Path, sms_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> str:
    d, _ = cli_with_account(tmp_path, sms_url, capsys, monkeypatch, PairStandIn())
    return d


def test_operator_views(tmp_path: Path, sms: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any):
    d = _setup(tmp_path, sms.url, monkeypatch, capsys)
    factory = make_session_factory(make_engine(f"sqlite:///{Path(d) / 'custody.db'}"))
    long_message = "the cold HSM refused a send: " + "x" * 150 + " END"
    with transaction(factory) as s:
        old = utcnow() - timedelta(hours=2)
        for n, status in enumerate([SendStatus.PENDING, SendStatus.BUILT, SendStatus.CONFIRMED]):
            s.add(
                Send(
                    account_id=1,
                    user_tx_no=f"u-{n}",
                    outs="bcrt1qexample,1000",
                    vc_code="v",
                    c_id="c",
                    status=status,
                    request_at=old if n == 0 else utcnow(),
                )
            )
        s.add(Alert(kind="send_failed", account_id=1, message=long_message, recipient="+1555"))

    code, out, _ = run_cli(capsys, "sends", "--dir", d)
    assert code == 0 and "u-0" in out and "u-1" in out and "u-2" not in out
    assert "STUCK: waiting for the worker" in out and "waiting for the HSMs" in out
    code, out, _ = run_cli(capsys, "sends", "--dir", d, "--stuck", "--json")
    assert [r["user_tx_no"] for r in json.loads(out)] == ["u-0"]
    code, out, _ = run_cli(capsys, "sends", "--dir", d, "--state", "confirmed", "--json")
    assert [(r["user_tx_no"], r["state"]) for r in json.loads(out)] == [("u-2", "confirmed")]
    with pytest.raises(SystemExit):
        run_cli(capsys, "sends", "--dir", d, "--state", "bogus")
    assert "unknown state 'bogus'" in capsys.readouterr().err

    code, out, _ = run_cli(capsys, "alerts", "--dir", d)
    assert long_message in out
    code, out, _ = run_cli(capsys, "alerts", "--dir", d, "--json")
    assert long_message in [a["message"] for a in json.loads(out)]
    code, out, _ = run_cli(capsys, "account", "list", "--dir", d, "--json")
    assert [(a["id"], a["name"], a["status"]) for a in json.loads(out)] == [(1, "acme", "active")]

    code, out, _ = run_cli(capsys, "journal", "verify", "--dir", d, "--json")
    assert code == 0 and json.loads(out)["ok"] is True  # JSON only, nothing before it
    code, out, _ = run_cli(capsys, "journal", "show", "--dir", d, "--json")
    entries = json.loads(out)
    assert entries[0]["kind"] == "account_created" and entries[0]["data"]["name"] == "acme"
    code, out, _ = run_cli(capsys, "journal", "show", "--dir", d, "--kind", "token_issued")
    assert out.count("token_issued") == 2 and "account_created" not in out

    code, out, _ = run_cli(capsys, "account", "show", "1", "--dir", d)
    shown = json.loads(out)
    assert shown["balances"] == {
        "cold": {"confirmed_sat": 0, "unconfirmed_sat": 0},
        "hot": {"confirmed_sat": 0, "unconfirmed_sat": 0},
    }
    assert shown["freeze"] == {"frozen": False}

    run_cli(capsys, "account", "freeze", "1", "--reason", "lost phone", "--dir", d)
    shown = json.loads(run_cli(capsys, "account", "show", "1", "--dir", d)[1])
    assert shown["freeze"]["frozen_by"] == "operator"
    assert shown["freeze"]["frozen_reason"] == "lost phone"
    code, _, err = run_cli(capsys, "account", "unfreeze", "1", "--dir", d)
    assert code == 2 and "needs a confirmation" in err
    assert json.loads(run_cli(capsys, "account", "show", "1", "--dir", d)[1])["status"] == "frozen"
    code, out, _ = run_cli(capsys, "account", "unfreeze", "1", "--yes", "--dir", d)
    assert code == 0 and "unfrozen (custody and both HSMs)" in out
    shown = json.loads(run_cli(capsys, "account", "show", "1", "--dir", d)[1])
    assert shown["status"] == "active" and shown["freeze"] == {"frozen": False}


def test_closed_pipe_ends_quietly(tmp_path: Path, sms: Any) -> None:
    d = tmp_path / "dep"
    write_config(d, sms.url)
    url = f"sqlite:///{d / 'custody.db'}"
    upgrade_database(url)
    with transaction(make_session_factory(make_engine(url))) as s:
        for i in range(2000):
            journal.append(s, journal.JournalKind.DEPOSIT_SEEN, None, {"n": i, "text": "y" * 60})
    proc = subprocess.Popen(
        [sys.executable, "-m", "custody.cli", "journal", "show", "--limit", "2000"]
        + ["--dir", str(d)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 141
    assert "Traceback" not in err and err == ""


def test_unreachable_database_is_one_line_without_the_password(tmp_path: Path, sms: Any):
    d = tmp_path / "dep"
    write_config(d, sms.url, database_url="postgresql://cc:s3cretpw@127.0.0.1:9/custody")
    out = subprocess.run(
        [sys.executable, "-m", "custody.cli", "account", "list", "--dir", str(d)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and out.stdout == ""
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("error: database unreachable at postgresql://cc:***@127.0.0.1:9/")
    assert "s3cretpw" not in out.stderr


def test_other_tables_take_json_too(deployment: Any) -> None:
    """`hsm-cold status`, `hsm-cold alerts` and `merchant-site status` print only JSON."""
    d = deployment()
    d.cli("init", "--dir", str(d.data_dir), module="hsm_cold.cli", timeout=120)
    status = json.loads(
        d.cli("status", "--json", "--dir", str(d.data_dir), module="hsm_cold.cli").stdout
    )
    assert status["accounts"] == [] and "sms_outbox" in status
    alerts = d.cli("alerts", "--json", "--dir", str(d.data_dir), module="hsm_cold.cli").stdout
    assert json.loads(alerts) == []
    site = d.cli(
        "status", "--json", "--dir", str(d.data_dir), module="examples.merchant_site.cli"
    ).stdout
    assert json.loads(site) == {"batches": [], "withdrawals": []}
