"""Schemathesis against `/api/v1/openapi.json` with the WSGI app: every operation, generated
inputs (valid by the schema and, for the forms, invalid), with a hot and a cold token. No
answer may be a server error; every answer must match the documented status codes, content
type and response schema. Bounded examples so it runs in well under a minute."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from custody.models import Wallet
from tests.test_api_contract import add_txs

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 15


def test_openapi_document_is_valid(app):
    doc = app.test_client().get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")
    paths = set(doc["paths"])
    assert paths == {
        "/time",
        "/user",
        "/address/batch/{batch_no}",
        "/address/batch/{batch_no}/status",
        "/address/history/{path}",
        "/address/next",
        "/tx",
        "/tx/detail/{tx_hash}",
        "/tx/request",
        "/tx/{user_tx_no}",
        "/events",
    }
    page = app.test_client().get("/api/v1/docs")
    assert page.status_code == 200 and b"openapi.json" in page.data
    assert b"http://" not in page.data and b"https://" not in page.data  # nothing external


def _runner(op, mode: GenerationMode, token: str):
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case) -> None:
        case.headers = {**(case.headers or {}), "token": token}
        if case.query and "wait" in case.query:  # long polling: keep the run short
            case.query["wait"] = min(float(case.query["wait"]), 0.2)
        case.call_and_validate(checks=CHECKS)

    return run


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_schemathesis(app, account, session_factory):
    add_txs(session_factory, account.id, Wallet.HOT, 3)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) == 11
    failures: list[str] = []
    for op in operations:
        modes = [GenerationMode.POSITIVE]
        if op.method.upper() == "POST":
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            for token in (account.hot_token, account.cold_token):
                try:
                    _runner(op, mode, token)()
                except Exception as exc:  # collect every operation's failure, then report
                    failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
