"""The reference merchant site (protocol section 2): the V-device's four calls with their status
rules, the merchant's side (withdrawals encrypted for the V-device, batches fetched from
custody), the demo attack tools, and the site as a real process under the harness.

Custody is played by a tiny in-test HTTP server that answers `GET /address/batch/<n>` and
`GET /address/next` for two known tokens, so these tests do not depend on the custody API.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from cc_common.vtest import VtestDecryptError, decrypt_vtest, open_vtest
from examples.merchant_site import cli as site_cli
from examples.merchant_site.app import create_app
from examples.merchant_site.errors import CustodyUnavailable
from examples.merchant_site.extensions import VDEVICE_TOKEN_HEADER
from tests.harness import Deployment
from wallet_core.addresses import script_to_address
from wallet_core.networks import Network

COLD_TOKEN = "cold-" + "c" * 40
HOT_TOKEN = "hot-" + "h" * 40
TX_A = "ab" * 32
TX_B = "cd" * 32
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")


def regtest_address(seed: str) -> str:
    program = hashlib.sha256(seed.encode()).digest()[:20]
    return script_to_address(bytes([0, 20]) + program, Network.REGTEST)


def batch_addresses(side: str, batch_no: int) -> list[dict[str, Any]]:
    first = batch_no * 1000
    return [
        {"index": first + i, "address": regtest_address(f"{side}-{first + i}")} for i in range(1000)
    ]


# -- custody stand-in


class CustodyStandIn:
    """Answers the two calls the site makes, for `COLD_TOKEN` and `HOT_TOKEN` only."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.substitute: dict[int, str] = {}  # position -> address (a "hacked API")
        self.short_batch = False
        self.next_index = 0
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                token = self.headers.get("token")
                stand_in.requests.append((self.path, token))
                side = {COLD_TOKEN: "cold", HOT_TOKEN: "hot"}.get(token or "")
                if side is None:
                    return self._send(401, {"code": 4, "message": "unknown token"})
                m = re.fullmatch(r"/api/v1/open/address/batch/(\d+)", self.path)
                if m:
                    batch = batch_addresses(side, int(m.group(1)))
                    for pos, address in stand_in.substitute.items():
                        batch[pos]["address"] = address
                    return self._send(200, batch[:999] if stand_in.short_batch else batch)
                if self.path == "/api/v1/open/address/next":
                    i = stand_in.next_index
                    address = stand_in.substitute.get(i, regtest_address(f"{side}-{i}"))
                    return self._send(200, {"index": i, "address": address})
                return self._send(404, {"code": 6, "message": "no such endpoint"})

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def custody() -> Iterator[CustodyStandIn]:
    stand_in = CustodyStandIn()
    yield stand_in
    stand_in.close()


@pytest.fixture
def site_deployment(deployment: Callable[..., Deployment], custody: CustodyStandIn) -> Deployment:
    return deployment(config={"merchant_site": {"custody_url": custody.url}})


class Site:
    """The Flask test client with the V-device's header, and helpers named after the calls."""

    def __init__(self, d: Deployment) -> None:
        self.d = d
        self.config = d.config
        self.settings = self.config.section("merchant_site")
        self.app = create_app(self.config)
        self.client: FlaskClient = self.app.test_client()
        self.headers = {VDEVICE_TOKEN_HEADER: self.settings.str("vdevice_token")}

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, headers=kw.pop("headers", self.headers), **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.client.post(path, headers=kw.pop("headers", self.headers), **kw)

    def enqueue(self, outs: str, dynamic: int = 1) -> dict[str, Any]:
        r = self.client.post("/merchant/withdrawals", json={"outs": outs, "dynamic": dynamic})
        assert r.status_code == 201, r.json
        return r.json

    def cli(self, *args: str) -> int:
        return site_cli.main([args[0], "--dir", str(self.d.data_dir), *args[1:]])


@pytest.fixture
def site(site_deployment: Deployment) -> Site:
    return Site(site_deployment)


def assert_error(resp: Any, status: int, code: int, *words: str) -> None:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.json
    assert set(body) == {"code", "message"} and body["code"] == code, body
    for word in words:
        assert word in body["message"], body


OUTS_2 = f"{regtest_address('dest-1')},15000;{regtest_address('dest-2')},25000"


# -- section 2: vtest


def test_empty_site_answers_empty_objects(site: Site) -> None:
    for path in ("/api/v1/open/batch", "/api/v1/open/vtest"):
        r = site.get(path)
        assert r.status_code == 200 and r.json == {}


def test_vdevice_token_is_required_when_set(site: Site) -> None:
    assert_error(site.get("/api/v1/open/vtest", headers={}), 401, 4, VDEVICE_TOKEN_HEADER)
    bad = {VDEVICE_TOKEN_HEADER: "x" * 48}
    assert_error(site.post("/api/v1/open/batch", headers=bad), 401, 4)
    assert site.get("/api/v1/open/vtest").status_code == 200


def test_no_vdevice_token_means_reference_behaviour(site_deployment: Deployment) -> None:
    site_deployment.configure({"merchant_site": {"vdevice_token": ""}})
    s = Site(site_deployment)
    assert s.get("/api/v1/open/vtest", headers={}).json == {}


def test_enqueued_withdrawal_decrypts_to_the_same_outs(site: Site) -> None:
    w = site.enqueue(OUTS_2, dynamic=0)
    assert w["status"] == "pending" and w["outs"] == OUTS_2 and w["tx_hash"] is None
    r = site.get("/api/v1/open/vtest").json
    assert set(r) == {"vtest_id", "vtest_at", "vtest_info"}
    assert r["vtest_id"] == w["vtest_id"] and ISO.match(r["vtest_at"])
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]{32}/[0-9A-F]{16}", r["vtest_info"])
    password = site.settings.str("vtest_password")
    assert decrypt_vtest(r["vtest_info"], password) == json.dumps(
        {"outs": OUTS_2, "dynamic": 0}, separators=(",", ":")
    )
    with pytest.raises(VtestDecryptError):
        decrypt_vtest(r["vtest_info"], password + "x")


def test_vtests_are_served_oldest_first_until_handled(site: Site) -> None:
    ids = [site.enqueue(f"{regtest_address(str(n))},{1000 + n}")["vtest_id"] for n in range(3)]
    assert len(set(ids)) == 3
    for n, vtest_id in enumerate(ids):
        r = site.get("/api/v1/open/vtest").json
        assert r["vtest_id"] == vtest_id  # the same one again until it is reported
        assert site.get("/api/v1/open/vtest").json["vtest_id"] == vtest_id
        pw = site.settings.str("vtest_password")
        assert open_vtest(r["vtest_info"], pw).outs.endswith(f",{1000 + n}")
        form = {"vtest_id": vtest_id, "tx_hash": TX_A if n != 1 else ""}
        assert site.post("/api/v1/open/vtest", data=form).json == {"result": True}
    assert site.get("/api/v1/open/vtest").json == {}
    states = {w["vtest_id"]: w for w in site.client.get("/merchant/withdrawals").json}
    assert [states[i]["status"] for i in ids] == ["sent", "failed", "sent"]
    assert states[ids[0]]["tx_hash"] == TX_A and states[ids[1]]["tx_hash"] is None


def test_a_finished_vtest_cannot_be_updated_again(site: Site) -> None:
    sent, failed = site.enqueue(OUTS_2)["vtest_id"], site.enqueue(OUTS_2)["vtest_id"]
    post = site.post
    assert post("/api/v1/open/vtest", data={"vtest_id": sent, "tx_hash": TX_A}).status_code == 200
    assert post("/api/v1/open/vtest", data={"vtest_id": failed}).status_code == 200  # absent
    # The very same report again is accepted and changes nothing (a V-device retry).
    assert post("/api/v1/open/vtest", data={"vtest_id": sent, "tx_hash": TX_A.upper()}).json == {
        "result": True
    }
    assert post("/api/v1/open/vtest", data={"vtest_id": failed, "tx_hash": ""}).status_code == 200
    for form in (
        {"vtest_id": sent, "tx_hash": TX_B},
        {"vtest_id": sent, "tx_hash": ""},
        {"vtest_id": failed, "tx_hash": TX_B},
    ):
        r = post("/api/v1/open/vtest", data=form)
        assert_error(r, 409, 7, "already finished", "cannot be updated again")
    states = {w["vtest_id"]: w for w in site.client.get("/merchant/withdrawals").json}
    assert (states[sent]["status"], states[sent]["tx_hash"]) == ("sent", TX_A)
    assert (states[failed]["status"], states[failed]["tx_hash"]) == ("failed", None)


@pytest.mark.parametrize(
    "form,words",
    [
        ({}, ["vtest_id is required"]),
        ({"vtest_id": "w0000000000000000", "tx_hash": TX_A}, ["unknown vtest_id"]),
        ({"vtest_id": "PLACEHOLDER", "tx_hash": "xyz"}, ["tx_hash must be 64 hex"]),
        ({"vtest_id": "PLACEHOLDER", "tx_hash": TX_A + "00"}, ["tx_hash must be 64 hex"]),
    ],
)
def test_bad_vtest_reports_are_400(site: Site, form: dict[str, str], words: list[str]) -> None:
    vtest_id = site.enqueue(OUTS_2)["vtest_id"]
    form = {k: v.replace("PLACEHOLDER", vtest_id) for k, v in form.items()}
    assert_error(site.post("/api/v1/open/vtest", data=form), 400, 2, *words)
    assert site.get("/api/v1/open/vtest").json["vtest_id"] == vtest_id  # unchanged


@pytest.mark.parametrize(
    "body,words",
    [
        ({}, ["outs is required"]),
        ({"outs": "nonsense"}, ["outs"]),
        ({"outs": f"{regtest_address('a')},-5"}, ["outs"]),
        ({"outs": f"{regtest_address('a')},0"}, ["outs"]),
        ({"outs": "1NbbvxBYxGGCBhaM8mow1HFWA7dB5yukmY,10000"}, ["outs"]),  # mainnet on regtest
        ({"outs": f"{regtest_address('a')},1000", "dynamic": 2}, ["dynamic must be 0 or 1"]),
    ],
)
def test_bad_withdrawals_are_refused(site: Site, body: dict[str, Any], words: list[str]) -> None:
    assert_error(site.client.post("/merchant/withdrawals", json=body), 400, 2, *words)
    assert site.get("/api/v1/open/vtest").json == {}


def test_withdrawal_as_form_defaults_to_dynamic_fee(site: Site) -> None:
    r = site.client.post("/merchant/withdrawals", data={"outs": OUTS_2})
    assert r.status_code == 201 and r.json["dynamic"] == 1


def test_raw_vtest_info_needs_the_demo_switch(site_deployment: Deployment) -> None:
    s = Site(site_deployment)
    r = s.client.post("/merchant/withdrawals", json={"raw_vtest_info": "ABCD/00/00"})
    assert_error(r, 403, 5, "allow_raw_vtest")
    assert s.get("/api/v1/open/vtest").json == {}

    site_deployment.configure({"merchant_site": {"allow_raw_vtest": True}})
    s = Site(site_deployment)
    forged = "00" * 48 + "/" + "11" * 16 + "/" + "22" * 8
    r = s.client.post("/merchant/withdrawals", json={"raw_vtest_info": forged})
    assert r.status_code == 201 and r.json["outs"] is None
    served = s.get("/api/v1/open/vtest").json
    assert served["vtest_info"] == forged
    with pytest.raises(VtestDecryptError):
        decrypt_vtest(served["vtest_info"], s.settings.str("vtest_password"))


# -- section 2: batches, fetched from custody


def test_batches_from_custody_are_served_until_verified(
    site: Site, custody: CustodyStandIn
) -> None:
    r = site.client.post("/merchant/batches/fetch", json={"type": "cold", "batch_no": 0})
    assert_error(r, 400, 2, "set-tokens")
    assert site.cli("set-tokens", "--cold", COLD_TOKEN, "--hot", HOT_TOKEN) == 0

    r = site.client.post("/merchant/batches/fetch", json={"type": "cold", "batch_no": 0})
    assert r.status_code == 201, r.json
    assert r.json["status"] == "unverified" and r.json["addresses"] == 1000
    assert custody.requests[-1] == ("/api/v1/open/address/batch/0", COLD_TOKEN)
    r = site.client.post("/merchant/batches/fetch", data={"type": "1", "batch_no": "2"})
    assert r.status_code == 201 and r.json["type"] == "hot"
    assert custody.requests[-1] == ("/api/v1/open/address/batch/2", HOT_TOKEN)

    batch = site.get("/api/v1/open/batch").json
    assert set(batch) == {"batch_no", "address_list", "address_type"}
    assert (batch["batch_no"], batch["address_type"]) == (0, 2)
    assert batch["address_list"] == batch_addresses("cold", 0)
    assert site.get("/api/v1/open/batch").json["batch_no"] == 0  # until reported

    form = {"batch_no": "0", "status": "2", "type": "2"}
    assert site.post("/api/v1/open/batch", data=form).json == {"result": True}
    batch = site.get("/api/v1/open/batch").json
    assert (batch["batch_no"], batch["address_type"]) == (2, 1)
    assert batch["address_list"][0] == {"index": 2000, "address": regtest_address("hot-2000")}
    form = {"batch_no": "2", "status": "3", "type": "1"}
    assert site.post("/api/v1/open/batch", data=form).json == {"result": True}
    assert site.get("/api/v1/open/batch").json == {}

    states = {
        (b["type"], b["batch_no"]): b["status"] for b in site.client.get("/merchant/batches").json
    }
    assert states == {("cold", 0): "verified", ("hot", 2): "failed"}
    # The same verdict again is a harmless retry; a different one is refused.
    assert site.post("/api/v1/open/batch", data=form).status_code == 200
    r = site.post("/api/v1/open/batch", data={"batch_no": "0", "status": "3", "type": "2"})
    assert_error(r, 409, 7, "cold batch 0 is already verified")


@pytest.mark.parametrize(
    "form,words",
    [
        ({"batch_no": "5", "status": "2", "type": "2"}, ["unknown batch"]),
        ({"batch_no": "0", "status": "2", "type": "1"}, ["unknown batch"]),  # wrong side
        ({"batch_no": "0", "status": "1", "type": "2"}, ["status must be 2"]),
        ({"batch_no": "0", "status": "", "type": "2"}, ["status is required"]),
        ({"batch_no": "0", "status": "2", "type": "3"}, ["type must be 1 (hot) or 2 (cold)"]),
        ({"batch_no": "-1", "status": "2", "type": "2"}, ["batch_no must be"]),
        ({"batch_no": "x", "status": "2", "type": "2"}, ["batch_no must be"]),
        ({"status": "2", "type": "2"}, ["batch_no is required"]),
    ],
)
def test_bad_batch_reports_are_400(site: Site, form: dict[str, str], words: list[str]) -> None:
    site.cli("set-tokens", "--cold", COLD_TOKEN)
    assert (
        site.client.post("/merchant/batches/fetch", json={"type": 2, "batch_no": 0}).status_code
        == 201
    )
    assert_error(site.post("/api/v1/open/batch", data=form), 400, 2, *words)
    assert site.get("/api/v1/open/batch").json["batch_no"] == 0  # still waiting


def test_refetch_never_replaces_a_verified_batch(site: Site, custody: CustodyStandIn) -> None:
    site.cli("set-tokens", "--cold", COLD_TOKEN)

    def fetch() -> Any:
        return site.client.post("/merchant/batches/fetch", json={"type": "cold", "batch_no": 0})

    assert fetch().status_code == 201
    site.post("/api/v1/open/batch", data={"batch_no": "0", "status": "2", "type": "2"})
    assert fetch().json["status"] == "verified"  # same addresses: nothing changes
    custody.substitute = {7: regtest_address("attacker")}
    assert_error(fetch(), 409, 7, "verified", "different addresses")
    assert site.get("/api/v1/open/batch").json == {}


def test_a_failed_batch_is_fetched_again_for_verification(site: Site) -> None:
    site.cli("set-tokens", "--cold", COLD_TOKEN)

    def fetch() -> Any:
        return site.client.post("/merchant/batches/fetch", json={"type": "cold", "batch_no": 0})

    fetch()
    site.post("/api/v1/open/batch", data={"batch_no": "0", "status": "3", "type": "2"})
    assert site.get("/api/v1/open/batch").json == {}
    assert fetch().json["status"] == "unverified"
    assert site.get("/api/v1/open/batch").json["batch_no"] == 0


def test_custody_failures_are_502(site: Site, custody: CustodyStandIn) -> None:
    site.cli("set-tokens", "--cold", "not-a-known-token", "--hot", HOT_TOKEN)
    r = site.client.post("/merchant/batches/fetch", json={"type": "cold", "batch_no": 0})
    assert_error(r, 502, CustodyUnavailable.code, "HTTP 401", "unknown token")
    custody.short_batch = True
    r = site.client.post("/merchant/batches/fetch", json={"type": "hot", "batch_no": 0})
    assert_error(r, 502, CustodyUnavailable.code, "malformed batch")
    custody.close()
    r = site.client.post("/merchant/batches/fetch", json={"type": "hot", "batch_no": 0})
    assert_error(r, 502, CustodyUnavailable.code, "unreachable")
    assert site.get("/api/v1/open/batch").json == {}


def test_tokens_are_read_from_the_config_at_request_time(
    site: Site, site_deployment: Deployment, custody: CustodyStandIn
) -> None:
    site_deployment.configure({"merchant_site": {"cold_token": COLD_TOKEN}})  # after start
    r = site.client.post("/merchant/batches/fetch", json={"type": "cold", "batch_no": 1})
    assert r.status_code == 201, r.json
    assert custody.requests[-1] == ("/api/v1/open/address/batch/1", COLD_TOKEN)


def test_tamper_batch_puts_a_substituted_batch_back_in_the_queue(site: Site) -> None:
    site.cli("set-tokens", "--cold", COLD_TOKEN)
    site.client.post("/merchant/batches/fetch", json={"type": "cold", "batch_no": 0})
    site.post("/api/v1/open/batch", data={"batch_no": "0", "status": "2", "type": "2"})
    evil = regtest_address("attacker")
    args = ("--type", "cold", "--batch", "0", "--index", "5", "--address", evil)
    assert site.cli("tamper-batch", *args) == 0
    batch = site.get("/api/v1/open/batch").json
    assert batch["address_list"][5] == {"index": 5, "address": evil}
    genuine = batch_addresses("cold", 0)
    assert [a for i, a in enumerate(batch["address_list"]) if i != 5] == genuine[:5] + genuine[6:]
    assert (
        site.cli("tamper-batch", "--type", "hot", "--batch", "0", "--index", "1", "--address", evil)
        == 2
    )


def test_deposit_address_only_from_a_verified_batch(site: Site, custody: CustodyStandIn) -> None:
    site.cli("set-tokens", "--cold", COLD_TOKEN)
    custody.next_index = 3
    assert_error(site.client.post("/merchant/deposit-address"), 409, 7, "not in a verified")
    site.client.post("/merchant/batches/fetch", json={"type": "cold", "batch_no": 0})
    assert_error(site.client.post("/merchant/deposit-address"), 409, 7)
    site.post("/api/v1/open/batch", data={"batch_no": "0", "status": "2", "type": "2"})
    r = site.client.post("/merchant/deposit-address")
    assert r.json == {"index": 3, "address": regtest_address("cold-3")}
    custody.substitute = {3: regtest_address("attacker")}  # custody hands out a foreign one
    assert_error(site.client.post("/merchant/deposit-address"), 409, 7, "not in a verified")


def test_funding_address_only_from_a_verified_hot_batch(
    site: Site, custody: CustodyStandIn
) -> None:
    """The hot wallet's top-up address is checked as deposit addresses are (attack item 7)."""
    site.cli("set-tokens", "--cold", COLD_TOKEN, "--hot", HOT_TOKEN)
    custody.next_index = 5
    assert_error(site.client.post("/merchant/funding-address"), 409, 7, "not in a verified hot")
    site.client.post("/merchant/batches/fetch", json={"type": "hot", "batch_no": 0})
    site.client.post("/merchant/batches/fetch", json={"type": "cold", "batch_no": 0})
    site.post("/api/v1/open/batch", data={"batch_no": "0", "status": "2", "type": "2"})
    # the verified cold batch does not vouch for a hot address
    assert_error(site.client.post("/merchant/funding-address"), 409, 7)
    site.post("/api/v1/open/batch", data={"batch_no": "0", "status": "2", "type": "1"})
    r = site.client.post("/merchant/funding-address")
    assert r.json == {"index": 5, "address": regtest_address("hot-5")}
    custody.substitute = {5: regtest_address("attacker")}  # a hacked custody substitutes it
    assert_error(site.client.post("/merchant/funding-address"), 409, 7, "not in a verified hot")


def test_set_tokens_reads_stdin(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(HOT_TOKEN + "\n"))
    assert site.cli("set-tokens", "--hot", "-") == 0
    r = site.client.post("/merchant/batches/fetch", json={"type": "hot", "batch_no": 0})
    assert r.status_code == 201, r.json


def test_status_page_and_cli(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.cli("set-tokens", "--cold", COLD_TOKEN)
    site.client.post("/merchant/batches/fetch", json={"type": "cold", "batch_no": 0})
    vtest_id = site.enqueue(OUTS_2)["vtest_id"]
    site.post("/api/v1/open/vtest", data={"vtest_id": vtest_id, "tx_hash": TX_A})
    html = site.client.get("/").get_data(as_text=True)
    assert vtest_id in html and TX_A in html and "unverified" in html
    capsys.readouterr()
    assert site.cli("status") == 0
    out = capsys.readouterr().out
    assert vtest_id in out and TX_A in out and "cold" in out


def test_unknown_paths_and_methods_answer_json(site: Site) -> None:
    assert_error(site.get("/api/v1/open/nothing"), 404, 6)
    r = site.client.delete("/api/v1/open/vtest", headers=site.headers)
    assert r.status_code == 405 and set(r.json) == {"code", "message"}


def test_cli_enqueue_and_errors(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    assert site.cli("enqueue", OUTS_2, "--dynamic", "0") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outs"] == OUTS_2 and out["dynamic"] == 0
    assert site.cli("enqueue", "bad,outs") == 2
    assert "error: outs" in capsys.readouterr().err
    assert site.cli("enqueue", "--raw-vtest-info", "00/00/00") == 2
    assert "allow_raw_vtest" in capsys.readouterr().err


# -- the site as a real process


def test_site_as_a_process(site_deployment: Deployment, custody: CustodyStandIn) -> None:
    d = site_deployment
    d.cli("set-tokens", "--cold", COLD_TOKEN, module="examples.merchant_site.cli")
    proc = d.start_cli("merchant-site", "examples.merchant_site.cli", "serve", timeout=30)
    base = f"http://127.0.0.1:{d.port('merchant_site')}"
    vdevice = {VDEVICE_TOKEN_HEADER: d.config.section("merchant_site").str("vdevice_token")}

    assert requests.get(f"{base}/api/v1/open/batch", headers=vdevice, timeout=10).json() == {}
    assert requests.get(f"{base}/api/v1/open/vtest", timeout=10).status_code == 401

    r = requests.post(
        f"{base}/merchant/batches/fetch", data={"type": "cold", "batch_no": "0"}, timeout=30
    )
    assert r.status_code == 201, r.text
    batch = requests.get(f"{base}/api/v1/open/batch", headers=vdevice, timeout=10).json()
    assert batch["batch_no"] == 0 and len(batch["address_list"]) == 1000
    form = {"batch_no": "0", "status": "2", "type": "2"}
    r = requests.post(f"{base}/api/v1/open/batch", data=form, headers=vdevice, timeout=10)
    assert r.json() == {"result": True}
    assert requests.get(f"{base}/api/v1/open/batch", headers=vdevice, timeout=10).json() == {}

    r = requests.post(
        f"{base}/merchant/withdrawals", json={"outs": OUTS_2, "dynamic": 1}, timeout=10
    )
    assert r.status_code == 201, r.text
    vtest = requests.get(f"{base}/api/v1/open/vtest", headers=vdevice, timeout=10).json()
    req = open_vtest(vtest["vtest_info"], d.config.section("merchant_site").str("vtest_password"))
    assert (req.outs, req.dynamic) == (OUTS_2, 1)
    form = {"vtest_id": vtest["vtest_id"], "tx_hash": TX_A}
    r = requests.post(f"{base}/api/v1/open/vtest", data=form, headers=vdevice, timeout=10)
    assert r.json() == {"result": True}
    form["tx_hash"] = TX_B
    r = requests.post(f"{base}/api/v1/open/vtest", data=form, headers=vdevice, timeout=10)
    assert r.status_code == 409 and r.json()["code"] == 7
    assert TX_A in requests.get(f"{base}/", timeout=10).text

    # A second site on the same port exits 2 with a clear message, leaving the first alone.
    second = d.cli("serve", module="examples.merchant_site.cli", check=False)
    assert second.returncode == 2 and "cannot listen on" in second.stderr
    assert proc.is_ready()

    assert proc.stop() == []
    assert not (d.run_dir / "merchant-site.ready").exists()
    log = (d.log_dir / "merchant-site.log").read_text()
    for secret in ("vtest_password", "vdevice_token"):
        assert d.config.section("merchant_site").str(secret) not in log
    assert COLD_TOKEN not in log and COLD_TOKEN not in proc.stderr()
