"""`custody webhook add/list/remove/deliveries/redeliver` on a migrated database: the secret
printed once, the delivery log after an event, redelivery, removal, and clear refusals."""

from __future__ import annotations

import json

from tests.api_fixtures import SoftwareHsmStandIn
from tests.test_api_cli import cli_with_account, run_cli


def test_webhook_commands(tmp_path, sms, capsys, monkeypatch) -> None:
    hsm = SoftwareHsmStandIn()
    d, created = cli_with_account(tmp_path, sms.url, capsys, monkeypatch, hsm)
    aid = str(created["account_id"])

    code, out, err = run_cli(
        capsys, "webhook", "add", "--account", aid, "--url", "http://127.0.0.1:9/h", "--dir", d
    )
    assert code == 0, err
    added = json.loads(out)
    assert added["secret"].startswith("whsec_") and added["side"] == "both"
    code, out, _ = run_cli(capsys, "webhook", "list", "--dir", d)
    assert "http://127.0.0.1:9/h" in out and "active" in out and added["secret"] not in out

    assert run_cli(capsys, "account", "freeze", aid, "--reason", "lost", "--dir", d)[0] == 0
    code, out, _ = run_cli(capsys, "webhook", "deliveries", "--status", "pending", "--dir", d)
    assert code == 0 and "account.frozen" in out and "pending" in out
    endpoint = str(added["id"])
    code, out, _ = run_cli(capsys, "webhook", "redeliver", "--endpoint", endpoint, "--dir", d)
    assert code == 0 and "0 delivery(ies) queued again" in out

    code, _, err = run_cli(capsys, "webhook", "redeliver", "--delivery", "999", "--dir", d)
    assert code == 2 and "no webhook delivery 999" in err
    code, _, err = run_cli(
        capsys, "webhook", "add", "--account", aid, "--url", "ftp://x/y", "--dir", d
    )
    assert code == 2 and "must be an absolute http(s) URL, got 'ftp://x/y'" in err
    code, _, err = run_cli(
        capsys, "webhook", "add", "--account", "77", "--url", "http://x/y", "--dir", d
    )
    assert code == 2 and "no account 77" in err
    assert run_cli(capsys, "webhook", "remove", str(added["id"]), "--dir", d)[0] == 0
    code, out, _ = run_cli(capsys, "webhook", "list", "--dir", d)
    assert "removed" in out
    code, _, err = run_cli(capsys, "webhook", "remove", str(added["id"]), "--dir", d)
    assert code == 2 and f"no webhook endpoint {added['id']}" in err
