"""Stand-ins for the V-device's tests: the cold HSM over SMS, the merchant site and custody.

The V-device runs as a real process against a real `firmware-sim serve`; the other side is
played here through the real interfaces:

- `ColdStandIn` drives the cold HSM's simulated modems with `GsmModem` and answers the
  channel protocol of docs/sms-channel.md: it checks the `QH` against the V-device's pinned
  identity key, answers with a `QC` signed by a test cold identity key, accepts `CHANNEL_OK`
  signed by the V channel key, and answers a signed, fresh-nonce `VERIFY_..._ADDRESSES` under
  a live channel with a proof over the batch it holds itself. Forged answers on demand.
  It answers a signed policy change as the cold HSM does (`CC:POLICY_ACK`: a tightening
  applied, a loosening pending for the delay of the policy it holds, then applied when asked
  again; `cancel` plays the owner's cancel), and `say` texts any of its signed words.
- `WebStandIn` is one werkzeug server playing the merchant site (section 2, under `/site`)
  and the custody API (section 1 and the batch-status extension, under `/custody`), recording
  every call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from cc_common.deployment import VDEVICE_NUMBER
from cc_common.sms import channel_messages as cm
from cc_common.sms.modem import GsmModem
from cc_common.spending_policy import AckState, PolicyAck, SpendingPolicy
from cc_common.vtest import encrypt_vtest, vtest_plaintext
from vdevice.state import new_key
from wallet_core.addresses import script_to_address
from wallet_core.messages import sign_message, verify_message_pubkey
from wallet_core.networks import Network

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per poll otherwise

SITE_TOKEN = "site-token-" + "s" * 20
HOT_TOKEN = "hot-token-" + "h" * 30
VTEST_PASSWORD = "vtest-password-20160721"


def regtest_address(seed: str) -> str:
    program = hashlib.sha256(seed.encode()).digest()[:20]
    return script_to_address(bytes([0, 20]) + program, Network.REGTEST)


def batch_addresses(kind: cm.AddressType, batch_no: int) -> list[str]:
    first = batch_no * 1000
    return [regtest_address(f"{kind.name}-{first + i}") for i in range(1000)]


def site_batch(kind: cm.AddressType, batch_no: int, addresses: list[str]) -> dict[str, Any]:
    first = batch_no * 1000
    return {
        "batch_no": batch_no,
        "address_type": int(kind),
        "address_list": [{"index": first + i, "address": a} for i, a in enumerate(addresses)],
    }


def encrypted(outs: str, dynamic: int = 1, password: str = VTEST_PASSWORD) -> str:
    return encrypt_vtest(vtest_plaintext(outs, dynamic), password)


# -- the cold HSM over SMS ---------------------------------------------------------------------


@dataclass
class ColdChannel:
    c_id: str
    h_id: str
    v_pub: bytes
    cold_priv: bytes
    cold_pub: bytes
    expiry: int
    live: bool = False


@dataclass
class ColdStandIn:
    """The cold HSM's SMS side, on one or two simulated modems (one thread each)."""

    modems: dict[str, GsmModem]  # number -> modem
    vdevice_identity: bytes
    identity_priv: bytes
    lifetime: int = 3600
    account: int = 1  # the account its proofs are bound to (the V-device's bundle says 1)
    silent: set[str] = field(default_factory=set)  # numbers that never answer
    forge_first: bool = False  # answer the first QH with two forged QCs only
    batches: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    channels: dict[str, ColdChannel] = field(default_factory=dict)
    received: list[tuple[str, str, str]] = field(default_factory=list)  # (to, from, text)
    channel_oks: list[str] = field(default_factory=list)
    verifies: list[cm.VerifyAddresses] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    nonces: set[str] = field(default_factory=set)
    h_ids: set[str] = field(default_factory=set)
    policy: SpendingPolicy | None = None  # the policy in force (None: answer no change)
    changes: dict[int, tuple[SpendingPolicy, AckState, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._serve, args=(n, m), daemon=True)
            for n, m in self.modems.items()
        ]
        for modem in self.modems.values():
            modem.receive()  # leftovers of earlier tests
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for modem in self.modems.values():
            modem.close()

    def _serve(self, number: str, modem: GsmModem) -> None:
        while not self._stop.is_set():
            try:
                messages = modem.wait_for_messages(0.2)
            except Exception:
                if self._stop.is_set():
                    return
                continue
            for sms in messages:
                with self._lock:
                    self.received.append((number, sms.sender, sms.text))
                    if number in self.silent:
                        continue
                    self._handle(modem, sms.sender, sms.text)

    def _refuse(self, why: str) -> None:
        self.refused.append(why)

    def say(self, statement: str, key: bytes | None = None) -> None:
        """Text the V-device `statement` signed by the cold identity (or by `key`: forged)."""
        text = f"{statement}:{sign_message(key or self.identity_priv, statement)}"
        next(iter(self.modems.values())).send(VDEVICE_NUMBER, text)

    def cancel(self, seq: int) -> None:
        """The owner cancels waiting change `seq` (at the cold HSM): the phone is told."""
        with self._lock:
            policy, state, _ = self.changes[seq]
            assert state is AckState.PENDING
            self.changes[seq] = (policy, AckState.CANCELLED, int(time.time()))
            self.say(PolicyAck(self.account, seq, AckState.CANCELLED, int(time.time())).statement())

    def _on_policy(self, text: str) -> None:
        statement, sig = text.rsplit(":", 1)
        if self.policy is None or not verify_message_pubkey(self.vdevice_identity, statement, sig):
            return
        seq, body = statement.split(":", 4)[3:]
        new, now = SpendingPolicy.from_text(body), int(time.time())
        known = self.changes.get(int(seq))
        if known is None:
            if new.loosens(self.policy):
                known = (new, AckState.PENDING, now + self.policy.loosen_delay)
            else:
                known, self.policy = (new, AckState.APPLIED, now), new
        elif known[1] is AckState.PENDING and now >= known[2]:
            known, self.policy = (new, AckState.APPLIED, now), new
        self.changes[int(seq)] = known
        self.say(PolicyAck(self.account, int(seq), known[1], known[2]).statement())

    def _handle(self, modem: GsmModem, sender: str, text: str) -> None:
        if text.startswith("CC:POLICY:"):  # a policy change (recorded in `received` too)
            self._on_policy(text)
            return
        try:
            msg = cm.parse(text)
        except cm.SmsFormatError:
            modem.send(sender, cm.FORMAT_ERROR_TEXT)
            return
        if isinstance(msg, cm.OpenRequest):
            self._on_qh(modem, sender, msg)
        elif isinstance(msg, cm.ChannelOk):
            ch = self.channels.get(msg.c_id)
            if ch is None or msg.form is not cm.Form.EXTENDED or msg.recover_signer() != ch.v_pub:
                self._refuse("CHANNEL_OK")
                return
            ch.live = True
            self.channel_oks.append(msg.c_id)
        elif isinstance(msg, cm.VerifyAddresses):
            self._on_verify(modem, sender, msg)

    def _on_qh(self, modem: GsmModem, sender: str, msg: cm.OpenRequest) -> None:
        if msg.form is not cm.Form.EXTENDED or msg.recover_signer() != self.vdevice_identity:
            self._refuse("QH signature")
            return
        if msg.h_id in self.h_ids or abs(time.time() - (msg.time or 0)) > 600:
            self._refuse("QH replay")
            return
        self.h_ids.add(msg.h_id)
        expiry = int(time.time()) + self.lifetime
        if self.forge_first:
            self.forge_first = False
            wrong_priv, _ = new_key()
            cold_priv, cold_pub = new_key()
            forged = cm.OpenReply.signed(
                cold_pub, "forged-identity", msg.h_id, msg.channel_pubkey, expiry, wrong_priv
            )
            modem.send(sender, cm.format(forged))
            _, other_v = new_key()
            unbound = cm.OpenReply.signed(
                cold_pub, "forged-binding", msg.h_id, other_v, expiry, self.identity_priv
            )
            modem.send(sender, cm.format(unbound))
            return
        cold_priv, cold_pub = new_key()
        c_id = "c" + hashlib.sha256(msg.h_id.encode()).hexdigest()[:12]
        self.channels[c_id] = ColdChannel(
            c_id, msg.h_id, msg.channel_pubkey, cold_priv, cold_pub, expiry
        )
        reply = cm.OpenReply.signed(
            cold_pub, c_id, msg.h_id, msg.channel_pubkey, expiry, self.identity_priv
        )
        modem.send(sender, cm.format(reply))

    def _on_verify(self, modem: GsmModem, sender: str, msg: cm.VerifyAddresses) -> None:
        ch = self.channels.get(msg.c_id or "")
        if ch is None or not ch.live or ch.expiry <= time.time():
            self._refuse("VERIFY channel")
            return
        if msg.form is not cm.Form.EXTENDED or msg.recover_signer() != ch.v_pub:
            self._refuse("VERIFY signature")
            return
        if msg.nonce in self.nonces:
            self._refuse("VERIFY replay")
            return
        self.nonces.add(msg.nonce or "")
        self.verifies.append(msg)
        addresses = self.batches.get((int(msg.address_type), msg.batch_no))
        if addresses is None:
            self._refuse("VERIFY unknown batch")
            return
        proof = cm.AddressesProof.signed(
            msg.address_type,
            msg.batch_no,
            addresses,
            ch.c_id,
            msg.coin,
            ch.cold_priv,
            msg.nonce,
            account=self.account,
        )
        modem.send(sender, cm.format(proof))

    def live_channels(self) -> list[ColdChannel]:
        with self._lock:
            return [c for c in self.channels.values() if c.live]


# -- the merchant site and custody over HTTP ---------------------------------------------------


@dataclass
class WebStandIn:
    """Site under `/site/api/v1/open`, custody under `/custody/api/v1/open`."""

    batches: list[dict[str, Any]] = field(default_factory=list)  # queued, oldest first
    vtests: list[dict[str, Any]] = field(default_factory=list)
    batch_reports: list[dict[str, str]] = field(default_factory=list)
    vtest_reports: list[dict[str, str]] = field(default_factory=list)
    custody_batch_reports: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    tx_requests: list[dict[str, str]] = field(default_factory=list)
    tx_polls: list[str] = field(default_factory=list)
    sends: dict[str, dict[str, str]] = field(default_factory=dict)
    hold: bool = False  # GET /tx/<no> answers pending while set
    ignore_skip: bool = False  # GET /vtest without our `?skip=` extension
    send_outcome: str = "OK"
    outcomes: dict[str, str] = field(default_factory=dict)  # user_tx_no -> OK / failed
    statements: dict[str, Any] = field(default_factory=dict)  # user_tx_no -> cold_statement
    statement_posts: list[str] = field(default_factory=list)
    unknown_channel_posts: int = 0  # refuse this many posts with code 41 (channel not live)
    balance: int = 10**9
    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.app = self._build()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def site_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/site/api/v1/open"

    @property
    def custody_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/custody/api/v1/open"

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(5)

    def add_vtest(self, vtest_id: str, info: str) -> None:
        with self.lock:
            self.vtests.append(
                {
                    "vtest_id": vtest_id,
                    "vtest_at": "2016-08-02T12:51:34",
                    "vtest_info": info,
                    "done": None,
                }
            )

    def reports_for(self, vtest_id: str) -> list[dict[str, str]]:
        with self.lock:
            return [r for r in self.vtest_reports if r["vtest_id"] == vtest_id]

    def _build(self) -> Flask:
        app = Flask("vdevice-standin")
        site = "/site/api/v1/open"
        cust = "/custody/api/v1/open"

        def error(status: int, code: int, message: str) -> Any:
            resp = jsonify({"code": code, "message": message})
            resp.status_code = status
            return resp

        @app.before_request
        def auth() -> Any:
            self.calls.append(f"{request.method} {request.path}")
            if (
                request.path.startswith("/site")
                and request.headers.get("X-VDevice-Token") != SITE_TOKEN
            ):
                return error(401, 4, "bad site token")
            if request.path.startswith("/custody") and request.headers.get("token") != HOT_TOKEN:
                return error(401, 4, "bad token")
            return None

        @app.get(site + "/batch")
        def get_batch() -> Any:
            with self.lock:
                for b in self.batches:
                    if b.get("done") is None:
                        return {k: v for k, v in b.items() if k != "done"}
            return {}

        @app.post(site + "/batch")
        def post_batch() -> Any:
            form = dict(request.form)
            with self.lock:
                self.batch_reports.append(form)
                for b in self.batches:
                    if (
                        b["batch_no"] == int(form["batch_no"])
                        and b["address_type"] == int(form["type"])
                        and b.get("done") is None
                    ):
                        b["done"] = form["status"]
                        break
            return {"result": True}

        @app.get(site + "/vtest")
        def get_vtest() -> Any:
            skip = set() if self.ignore_skip else set(request.args.get("skip", "").split(","))
            with self.lock:
                for v in self.vtests:
                    if v["done"] is None and v["vtest_id"] not in skip:
                        return {k: v[k] for k in ("vtest_id", "vtest_at", "vtest_info")}
            return {}

        @app.post(site + "/vtest")
        def post_vtest() -> Any:
            form = {
                "vtest_id": request.form["vtest_id"],
                "tx_hash": request.form.get("tx_hash", ""),
            }
            with self.lock:
                self.vtest_reports.append(form)
                for v in self.vtests:
                    if v["vtest_id"] == form["vtest_id"]:
                        if v["done"] is not None and v["done"] != form["tx_hash"]:
                            return error(409, 7, "already finished")
                        v["done"] = form["tx_hash"]
                        return {"result": True}
            return error(400, 2, "unknown vtest_id")

        @app.post(cust + "/address/batch/<int:batch_no>/status")
        def custody_batch(batch_no: int) -> Any:
            with self.lock:
                self.custody_batch_reports.append((batch_no, dict(request.form)))
            return {"result": True}

        @app.get(cust + "/user")
        def user() -> Any:
            return {"user_id": 1, "balance": self.balance}

        @app.post(cust + "/tx/request")
        def tx_request() -> Any:
            form = dict(request.form)
            with self.lock:
                self.tx_requests.append(form)
                if self.unknown_channel_posts > 0:
                    self.unknown_channel_posts -= 1
                    return error(400, 41, f"c_id {form['c_id']!r} is not a live channel")
                if form["user_tx_no"] in self.sends:
                    return error(400, 3, f"user_tx_no {form['user_tx_no']} was already accepted")
                self.sends[form["user_tx_no"]] = form
            return {"result": True}

        @app.get(cust + "/tx/<user_tx_no>")
        def tx_state(user_tx_no: str) -> Any:
            with self.lock:
                self.tx_polls.append(user_tx_no)
                send = self.sends.get(user_tx_no)
                if send is None:
                    return error(404, 6, "no such send")
                status = (
                    "pending" if self.hold else self.outcomes.get(user_tx_no, self.send_outcome)
                )
                tx_hash = hashlib.sha256(user_tx_no.encode()).hexdigest() if status == "OK" else ""
                body = {
                    "tx_hash": tx_hash,
                    "c_id": send["c_id"],
                    "hot_wallet_tx_status": status,
                    "failure_reason": "insufficient funds" if status == "failed" else "",
                }
                if user_tx_no in self.statements:
                    body["cold_statement"] = self.statements[user_tx_no]
                return body

        @app.post(cust + "/tx/<user_tx_no>/statement")
        def tx_statement(user_tx_no: str) -> Any:
            with self.lock:
                self.statement_posts.append(user_tx_no)
                if user_tx_no not in self.statements:
                    return error(503, 13, "the HSMs cannot be reached")
                return {"user_tx_no": user_tx_no, "cold_statement": self.statements[user_tx_no]}

        return app


def tx_hash_for(user_tx_no: str) -> str:
    return hashlib.sha256(user_tx_no.encode()).hexdigest()


def status_file(run_dir: Any) -> Callable[[], dict[str, Any] | None]:
    def read() -> dict[str, Any] | None:
        try:
            return json.loads((run_dir / "vdevice-status.json").read_text())
        except (OSError, ValueError):
            return None

    return read
