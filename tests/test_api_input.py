"""API input: POST bodies as JSON or form, one validation of batch_no, strict query strings.

Runs on SQLite and PostgreSQL (see tests/api_fixtures.py)."""

from __future__ import annotations

import pytest

from custody.batches import MAX_BATCH_NO
from custody.errors import api_codes
from tests.test_api_contract import API, send_form


def test_post_endpoints_take_json_like_the_form(client, account):
    body = {**send_form(user_tx_no="json-1"), "is_dynamic_fee": 1}
    r = client.post(f"{API}/tx/request", headers=account.hot, json=body)
    assert r.status_code == 200 and r.json == {"result": True}
    assert client.get(f"{API}/tx/json-1", headers=account.hot).json["send_request"] == {
        "coin_code": "BTC",
        "user_tx_no": "json-1",
        "is_dynamic_fee": 1,
        "outs": body["outs"],
    }
    # the same answers as the form for the same input
    r = client.post(f"{API}/tx/request", headers=account.hot, json=body)
    assert r.status_code == 400 and r.json["code"] == 3
    r = client.post(f"{API}/tx/request", headers=account.hot, json={"outs": body["outs"]})
    assert r.status_code == 400 and r.json["message"] == "user_tx_no is required"
    for bad in ([body], {"user_tx_no": {"x": 1}}, {"user_tx_no": True}):
        r = client.post(f"{API}/tx/request", headers=account.hot, json=bad)
        assert r.status_code == 400 and r.json["code"] == 2, r.json
    r = client.post(
        f"{API}/tx/request",
        headers={**account.hot, "Content-Type": "application/json"},
        data="{not json",
    )
    assert r.status_code == 400 and "JSON body" in r.json["message"]

    client.get(f"{API}/address/batch/0", headers=account.cold)
    r = client.post(
        f"{API}/address/batch/0/status", headers=account.hot, json={"status": 2, "type": 2}
    )
    assert r.status_code == 200 and r.json == {"result": True}


@pytest.mark.parametrize("batch_no", ["-1", "abc", str(10**20), str(MAX_BATCH_NO + 1), "1e3"])
def test_batch_no_is_validated_alike(client, account, batch_no):
    expected = f"batch_no must be an integer from 0 to {MAX_BATCH_NO}"
    for method, path, headers in (
        (client.get, f"{API}/address/batch/{batch_no}", account.cold),
        (client.post, f"{API}/address/batch/{batch_no}/status", account.hot),
    ):
        r = method(path, headers=headers, data={"status": "2", "type": "2"})
        assert (r.status_code, r.json) == (400, {"code": 2, "message": expected}), path


def test_unknown_or_repeated_query_parameters_are_refused(client, account):
    r = client.get(f"{API}/tx?tx_hsah=00", headers=account.cold)
    assert r.status_code == 400
    assert r.json["message"] == "unknown query parameter tx_hsah (this endpoint takes tx_hash)"
    r = client.get(f"{API}/user?verbose=1", headers=account.cold)
    assert r.status_code == 400 and "takes no query parameters" in r.json["message"]
    r = client.get(f"{API}/tx?tx_hash={'0' * 64}&tx_hash={'1' * 64}", headers=account.cold)
    assert r.status_code == 400 and "more than once" in r.json["message"]
    r = client.get(f"{API}/tx?tx_hash=xyz", headers=account.cold)
    assert r.status_code == 400 and "tx_hash must be 64" in r.json["message"]
    assert client.get(f"{API}/tx", headers=account.cold).status_code == 200


def test_openapi_describes_every_field_and_lists_every_error_code(client):

    spec = client.get("/api/v1/openapi.json").json
    missing = []

    def walk(where: str, schema: dict) -> None:
        for name, field in schema.get("properties", {}).items():
            if not field.get("description"):
                missing.append(f"{where}.{name}: description")
            if field.get("type") not in ("object", "array") and "example" not in field:
                missing.append(f"{where}.{name}: example")
            walk(f"{where}.{name}", field)

    for name, schema in spec["components"]["schemas"].items():
        walk(name, schema)
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                if not param.get("description") or param.get("example") is None:
                    missing.append(f"{method} {path} {param['name']}")
            if "requestBody" in op:
                assert set(op["requestBody"]["content"]) == {
                    "application/x-www-form-urlencoded",
                    "application/json",
                }
    assert missing == []
    amounts = [
        spec["components"]["schemas"]["User"]["properties"]["balance"],
        spec["components"]["schemas"]["Tx"]["properties"]["value"],
        spec["components"]["schemas"]["TxInput"]["properties"]["value"],
        spec["components"]["schemas"]["TxOutput"]["properties"]["value"],
    ]
    assert all(a["x-unit"] == "satoshi" and a["format"] == "int64" for a in amounts)
    listed = {c["code"]: c for c in spec["x-error-codes"]}
    assert set(listed) == {code for code, *_ in api_codes()}
    assert all(c["meaning"] and c["status"] >= 400 for c in listed.values())
    assert spec["components"]["schemas"]["Error"]["properties"]["code"]["enum"] == sorted(listed)
    page = client.get("/api/v1/docs").text
    assert "x-error-codes" in page and "x-unit" in page and "example" in page
