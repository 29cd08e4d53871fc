"""The hot HSM's logic in one process, with a software token and a software cold HSM.

What this covers fast: the compact request built from a PSBT, the checks of the cold answer
(a bad cold signature means no hot signature), the hot policy refusing before any link
traffic, idempotent retries, the provisioning proof, link errors mapped to RPC codes, and the
RPC server's authentication. The real token and the real cold HSM are in tests/hsm_pair/.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import coincurve
import pytest
import requests

from cc_common.link import LinkRemoteError, LinkTimeout, codec
from cc_common.token.ec_keys import raw_to_low_s
from custody.hsm_client import HotHsmClient, HsmRefused, ProvisionedAccount
from hsm_cold.cosign import decode_request, expand_short, unpack
from hsm_cold.errors import PrevTxRequired
from hsm_hot.audit import AuditLog
from hsm_hot.compact import compact_request, packed_request, plan_cosign
from hsm_hot.errors import (
    BadRequest,
    ColdRefused,
    ColdSignatureInvalid,
    ColdUnreachable,
    HotHsmError,
    PolicyRefused,
    ProofInvalid,
    UnknownAccount,
)
from hsm_hot.policy import HotPolicy, PolicyLedger
from hsm_hot.relay import ColdRelay
from hsm_hot.rpc_server import RpcServer
from hsm_hot.service import HotService, provision_statement
from hsm_hot.state import HotState
from tests.hsm_fixtures import (
    PHONES,
    Coin,
    VDevice,
    build_send_psbt,
    hot_wallet,
    random_address,
    send_request,
)
from wallet_core import messages, signatures
from wallet_core.bip32 import ExtendedKey
from wallet_core.networks import Network
from wallet_core.psbt import Psbt
from wallet_core.rawtx import parse_unsigned_tx
from wallet_core.sighash import bip143_sighash
from wallet_core.wallets import CHANGE, RECEIVE, AccountKey, FixedKey, HotWallet, bip48_account_path

NET = Network.REGTEST
ACCOUNT = 7


def _key(tag: str) -> coincurve.PrivateKey:
    return coincurve.PrivateKey(hashlib.sha256(tag.encode()).digest())


class SoftKeys:
    """Stands in for `HsmToken.keys` (same method names; software keys)."""

    def __init__(self) -> None:
        self.keys: dict[str, coincurve.PrivateKey] = {}
        self.signed = 0

    def has_key(self, label: str) -> bool:
        return label in self.keys

    def public_key(self, label: str) -> bytes:
        return self.keys[label].public_key.format(compressed=True)

    def generate_signing_key(self, label: str) -> bytes:
        self.keys[label] = _key(label)
        return self.public_key(label)

    def sign_digest(self, label: str, digest: bytes) -> bytes:
        self.signed += 1
        return self.keys[label].sign(digest, hasher=None)


class SoftToken:
    def __init__(self) -> None:
        self.keys = SoftKeys()


class SoftCold:
    """A cold HSM in software: answers `provision_account` and `cosign` like the real one."""

    def __init__(self) -> None:
        path = bip48_account_path(NET, 0)
        self.identity = _key("identity")
        self.cosigner_root = ExtendedKey.from_seed(b"c" * 32, NET)
        self.recovery_root = ExtendedKey.from_seed(b"r" * 32, NET)
        self.cosigner = AccountKey.from_root(self.cosigner_root, path)
        self.recovery = AccountKey.from_root(self.recovery_root, path)
        self.path = path
        self.calls: list[str] = []
        self.fail: Exception | None = None
        self.tamper = False
        self.high_s = False
        # outputs it verified, for short requests: (txid hex, vout) -> amount
        self.known: dict[tuple[str, int], int] = {}
        self.short_refused = 0

    @property
    def identity_pub(self) -> bytes:
        return self.identity.public_key.format(compressed=True)

    def call(self, command: str, payload: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        codec.encode(dict(payload))  # what cannot cross the link fails here too
        self.calls.append(command)
        if self.fail is not None:
            raise self.fail
        return getattr(self, command)(payload)

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass

    def hello(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return {"version": 1, "identity_pubkey": self.identity_pub.hex()}

    def provision_account(self, p: Mapping[str, Any]) -> dict[str, Any]:
        self.provisioned = dict(p)
        receiving = "tpubD6NzVbkrYhZ4WaWSyoBvQwbpLkojyoTZPRsgXELWz3Popb3qkjcJyJUGLnL4qHHoQvao8ESaAstxYSnhyswJ76uZPStJRJCTKvosUCJZL5B"  # noqa: E501
        fields = {
            "receiving_xpub": receiving,
            "cosigner_xpub": self.cosigner.xpub.serialize(),
            "recovery_xpub": self.recovery.xpub.serialize(),
        }
        statement = provision_statement(
            p["account"],
            p["network"],
            fields["receiving_xpub"],
            fields["cosigner_xpub"],
            fields["recovery_xpub"],
            p["hot_pubkey"],
        )
        return {
            **fields,
            "cosigner_fingerprint": self.cosigner.fingerprint,  # raw bytes: accepted too
            "recovery_fingerprint": self.recovery.fingerprint.hex(),
            "receiving_fingerprint": bytes.fromhex("0a1b2c3d"),  # raw bytes: accepted too
            "proof": messages.sign_message(self.identity.secret, statement),
        }

    def _outputs_like(self, prefix: str, vout: int) -> list[tuple[str, int, bytes]]:
        return [
            (txid, amount, b"")
            for (txid, n), amount in self.known.items()
            if txid.startswith(prefix) and n == vout
        ]

    def cosign(self, p: Mapping[str, Any]) -> dict[str, Any]:
        if "q" in p:  # the short form: expanded with what it verified, answered short
            try:
                packed = expand_short(p, self._outputs_like)
            except PrevTxRequired as exc:
                self.short_refused += 1
                raise LinkRemoteError(int(exc.code), exc.message) from None
            return {"s": b"".join(self.cosign(packed)["signatures"])}
        if "p" in p:  # the packed form, rebuilt as the cold HSM does
            p = unpack(p, self._wallet)
        tx = parse_unsigned_tx(p["tx"])
        sigs = []
        for i, (amount, chain, index) in enumerate(p["inputs"]):
            node = self.cosigner_root.derive((*self.path, chain, index))
            script = self._wallet.witness_script(index, chain)
            digest = bip143_sighash(tx, i, script, amount)
            r, s = raw_to_low_s(_raw(signatures.sign_digest(node.private_key, digest)))
            if self.high_s:
                s = signatures.N - s
            if self.tamper:
                r ^= 1
            sigs.append(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return {"signatures": sigs}


def _raw(der: bytes) -> bytes:
    r, s = signatures.der_decode(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@pytest.fixture
def env(tmp_path: Path):
    cold = SoftCold()
    token = SoftToken()
    state = HotState(tmp_path / "state")
    ledger = PolicyLedger(tmp_path / "policy.db", HotPolicy(max_send_sat=5_000_000))
    audit = AuditLog(tmp_path / "audit.jsonl")
    service = HotService(token, state, ColdRelay(cold, 5.0), ledger, audit, NET, cold.identity_pub)
    vdev = VDevice("unit")
    result = service.provision_account(
        {
            "account": ACCOUNT,
            "network": "regtest",
            "vdevice_identity": vdev.identity_hex,
            "settlement_descriptor": "wpkh(02aa)",
            **PHONES,
        }
    )

    prov = ProvisionedAccount(**result)
    cold._wallet = hot_wallet(prov)
    cold.known = {("11" * 32, 0): 600_000, ("22" * 32, 1): 400_000}  # the coins of `_send`
    yield {
        "service": service,
        "cold": cold,
        "token": token,
        "wallet": cold._wallet,
        "audit": audit,
        "vdev": vdev,
        "prov": prov,
    }
    state.close()
    ledger.close()


def _send(env: dict, *, pay: int = 100_000, user_tx_no: str = "tx-1", change: bool = True):
    wallet = env["wallet"]
    coins = [Coin("11" * 32, 0, 600_000, RECEIVE, 3), Coin("22" * 32, 1, 400_000, CHANGE, 0)]
    payments = [(random_address(), pay)]
    ch = (5, 1_000_000 - pay - 2_000) if change else None
    psbt = build_send_psbt(wallet, coins, payments, change=ch)
    request = send_request(payments, user_tx_no)
    return {
        "account": ACCOUNT,
        "psbt": psbt.to_base64(),
        "request": request,
        "vc_code": env["vdev"].vc_code(request),
        "c_id": "c1",
    }


def test_provision_returns_what_custody_needs(env):
    prov = env["prov"]
    assert prov.hot_pubkey == env["token"].keys.public_key(f"hot/{ACCOUNT}").hex()
    assert prov.cold_identity == env["cold"].identity_pub.hex()
    assert len(prov.cosigner_fingerprint) == 8
    # idempotent: the same request answers the same, without a second key
    again = env["service"].provision_account(
        {
            "account": ACCOUNT,
            "network": "regtest",
            "vdevice_identity": env["vdev"].identity_hex,
            "settlement_descriptor": "wpkh(02aa)",
            **PHONES,
        }
    )
    assert again["proof"] == prov.proof
    assert env["cold"].calls.count("provision_account") == 1
    # the phones reach the cold HSM (it routes SMS by them); its receiving fingerprint comes back
    assert {k: env["cold"].provisioned[k] for k in PHONES} == PHONES
    assert prov.receiving_fingerprint == again["receiving_fingerprint"] == "0a1b2c3d"
    other = {**PHONES, "owner_phone": "+15550000999"}
    with pytest.raises(BadRequest, match="other parameters"):
        env["service"].provision_account(
            {
                "account": ACCOUNT,
                "network": "regtest",
                "vdevice_identity": env["vdev"].identity_hex,
                "settlement_descriptor": "wpkh(02aa)",
                **other,
            }
        )


def test_provision_proof_must_verify(env):
    env["cold"].identity = _key("someone else")
    with pytest.raises(ProofInvalid):
        env["service"].provision_account(
            {
                "account": 8,
                "network": "regtest",
                "vdevice_identity": env["vdev"].identity_hex,
                "settlement_descriptor": "wpkh(02aa)",
                **PHONES,
            }
        )
    assert env["service"].state.account(8) is None


def test_compact_request_is_small_and_complete(env):
    params = _send(env)
    psbt_raw = base64.b64decode(params["psbt"])

    psbt = Psbt.from_bytes(psbt_raw)
    plan = plan_cosign(psbt, env["wallet"])
    assert plan.inputs == [(600_000, RECEIVE, 3), (400_000, CHANGE, 0)]
    assert plan.change == [(1, 5)]
    assert plan.payments == 100_000 and plan.fee == 2_000
    # the PSBT's own global unsigned transaction (key 0x00, right after the magic)
    assert plan.tx.raw == psbt.unsigned_tx_bytes()
    n = len(plan.tx.raw)
    assert n < 0xFD and psbt_raw[5:8] == bytes([1, 0, n]) and psbt_raw[8 : 8 + n] == plan.tx.raw
    assert plan.txid == psbt.txid
    env["service"].sign_send(params)
    size = len(codec.encode(["cosign", _last_payload(env)]))
    assert size < 300, size
    assert env["cold"].short_refused == 0 and env["service"].short_fallbacks == 0


def test_short_request_expands_to_the_packed_form(env) -> None:
    """The short form names verified inputs by txid prefix (amounts still stated) and writes
    the transaction short; the cold HSM's expansion is exactly the packed form (the same long
    form, the same digest), and it is smaller."""
    params = _send(env, user_tx_no="short")
    plan = plan_cosign(Psbt.from_base64(params["psbt"]), env["wallet"])
    args = (ACCOUNT, plan, params["request"], params["vc_code"], "c1", env["wallet"])
    packed = packed_request(*args)
    short = packed_request(*args, short=True)
    assert short["q"][2] == packed["p"][2] == [[600_000, RECEIVE, 3], [400_000, CHANGE, 0]]
    expanded = expand_short(short, env["cold"]._outputs_like)
    assert expanded == packed
    assert decode_request(unpack(expanded, env["wallet"])).digest() == (
        decode_request(unpack(packed, env["wallet"])).digest()
    )
    # two inputs: 2 x (24 bytes of txid + 3 of sequence), and the output values
    assert len(codec.encode(short)) <= len(codec.encode(packed)) - 54
    # an input whose funding transaction the PSBT carries goes by its full txid
    carried = dataclasses.replace(plan, carried=frozenset({1}))
    mixed = packed_request(ACCOUNT, carried, *args[2:], short=True)
    assert len(mixed["q"][1]) == len(short["q"][1]) + 24
    env["cold"].known.pop(("22" * 32, 1))
    assert expand_short(mixed, env["cold"]._outputs_like) == packed


def test_short_request_the_cold_side_cannot_resolve_is_asked_again_packed(env) -> None:
    """An outpoint the cold HSM forgot (it signed its spend: a retry after a lost answer) or
    never knew: 730 for the short form, then the packed form decides (here: signed)."""
    env["cold"].known.pop(("22" * 32, 1))
    result = env["service"].sign_send(_send(env, user_tx_no="forgotten"))
    assert result["psbt"]
    assert env["cold"].short_refused == 1 and env["service"].short_fallbacks == 1
    assert env["cold"].calls.count("cosign") == 2


def test_packed_request_unpacks_to_the_long_form(env) -> None:
    """What the cold HSM rebuilds from the packed form (change scripts, version, nLockTime,
    outs, coin_code) is exactly the long form: the same request, the same digest."""
    params = _send(env, user_tx_no="packed")
    plan = plan_cosign(Psbt.from_base64(params["psbt"]), env["wallet"])
    args = (ACCOUNT, plan, params["request"], params["vc_code"], "c1")
    packed = packed_request(*args, env["wallet"])
    long = compact_request(*args)
    assert packed["p"][8] is None  # outs: rebuilt from the payments
    assert decode_request(unpack(packed, env["wallet"])) == decode_request(long)
    assert len(codec.encode(packed)) < len(codec.encode(long)) - 100
    # outs that is not the payments written out travels as given (the cold HSM judges it)
    two = dict(params["request"], outs=";".join(reversed([params["request"]["outs"]] * 2)))
    assert packed_request(ACCOUNT, plan, two, params["vc_code"], "c1", env["wallet"])["p"][8]


def test_plan_refuses_what_the_strict_parser_refuses(env) -> None:
    """The shared strict parser's refusal comes out as the hot HSM's own BadRequest (904)."""

    psbt = Psbt.from_base64(_send(env)["psbt"])
    raw = psbt.unsigned_tx_bytes()
    for bad, why in ((raw + b"\0", "1 trailing bytes"), (raw[:-1], "truncated")):
        with (
            mock.patch.object(Psbt, "unsigned_tx_bytes", return_value=bad),
            pytest.raises(BadRequest, match=why) as refused,
        ):
            plan_cosign(psbt, env["wallet"])
        assert refused.value.code == 904
        assert refused.value.message.startswith("unsigned transaction is malformed: tx: ")


def _last_payload(env: dict) -> dict:
    # rebuild the payload the service sent, from a fresh plan (deterministic)

    params = _send(env, user_tx_no="size")
    plan = plan_cosign(Psbt.from_base64(params["psbt"]), env["wallet"])
    return packed_request(ACCOUNT, plan, params["request"], params["vc_code"], "c1", env["wallet"])


def test_sign_send_gives_both_signatures_and_finalizes(env, caplog):

    params = _send(env)
    with caplog.at_level(logging.DEBUG):
        signed = env["service"].sign_send(params)
    out = Psbt.from_base64(signed["psbt"])
    hot_pub = bytes.fromhex(env["prov"].hot_pubkey)
    for i in range(out.input_count):
        sigs = out.partial_signatures(i)
        assert hot_pub in sigs and len(sigs) == 2
    out.finalize()
    assert out.is_complete
    entries = [e for e in env["audit"].entries() if e["event"] == "sign_send"]
    assert entries[-1]["txid"] == out.txid and entries[-1]["amount"] == 100_000
    # the audit record keeps the amounts; the log never does (money is never logged)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert out.txid in logged
    assert "100000" not in logged and str(entries[-1]["fee"]) not in logged
    assert "key" not in " ".join(entries[-1])


def test_retry_of_a_signed_send_is_answered_without_the_link(env):
    params = _send(env)
    first = env["service"].sign_send(params)
    calls = len(env["cold"].calls)
    assert env["service"].sign_send(params) == first
    assert len(env["cold"].calls) == calls


def test_policy_refuses_before_any_link_traffic(env):
    params = _send(env, pay=6_000_000 - 10_000, change=False)
    calls = len(env["cold"].calls)
    with pytest.raises(PolicyRefused):
        env["service"].sign_send(_fund(env, params))
    assert len(env["cold"].calls) == calls
    assert env["token"].keys.signed == 0


def _fund(env: dict, params: dict) -> dict:
    """Same send, with inputs big enough for the payment."""
    wallet = env["wallet"]
    request = params["request"]
    addr, value = request["outs"].split(",")
    coins = [Coin("33" * 32, 0, int(value) + 5_000, RECEIVE, 1)]
    psbt = build_send_psbt(wallet, coins, [(addr, int(value))])
    return {**params, "psbt": psbt.to_base64()}


@pytest.mark.parametrize("how", ["tamper", "high_s"])
def test_bad_cold_signature_means_no_hot_signature(env, how):
    setattr(env["cold"], how, True)
    with pytest.raises(ColdSignatureInvalid):
        env["service"].sign_send(_send(env))
    assert env["token"].keys.signed == 0
    assert env["service"].ledger.spent_today(ACCOUNT) == 0


def test_link_errors_are_mapped(env):
    env["cold"].fail = LinkRemoteError(707, "user_tx_no reused")
    with pytest.raises(ColdRefused) as info:
        env["service"].sign_send(_send(env))
    assert (info.value.code, info.value.message) == (707, "user_tx_no reused")
    env["cold"].fail = LinkTimeout("no answer")
    with pytest.raises(ColdUnreachable) as info2:
        env["service"].sign_send(_send(env, user_tx_no="tx-2"))
    assert info2.value.code == 906
    assert env["token"].keys.signed == 0
    assert env["service"].ledger.spent_today(ACCOUNT) == 0


def test_foreign_input_and_unknown_account_refused(env):
    params = _send(env)
    other = SoftCold()
    other.cosigner_root = ExtendedKey.from_seed(b"x" * 32, NET)
    with pytest.raises(UnknownAccount):
        env["service"].sign_send({**params, "account": 99})
    # a PSBT of another wallet (different cosigner) is not this account's

    w = env["wallet"]
    stranger = HotWallet(
        (
            FixedKey(w.hot.public_key),
            AccountKey.from_root(other.cosigner_root, bip48_account_path(NET, 0)),
            w.recovery,
        ),
        NET,
    )
    psbt = build_send_psbt(
        stranger, [Coin("44" * 32, 0, 200_000, RECEIVE, 0)], [(random_address(), 1000)]
    )
    with pytest.raises(BadRequest):
        env["service"].sign_send({**params, "psbt": psbt.to_base64()})
    assert "cosign" not in env["cold"].calls


def test_rpc_refuses_control_and_bidi_characters_before_any_method(env):
    params = {**_send(env), "request": {**_send(env)["request"], "user_tx_no": "tx\u202e1"}}
    with pytest.raises(BadRequest, match=r"params.request.user_tx_no contains a control") as info:
        env["service"].dispatch("sign_send", params)
    assert info.value.code == 904
    assert "cosign" not in env["cold"].calls
    with pytest.raises(BadRequest, match="params.reason contains"):
        env["service"].dispatch("freeze", {"account": ACCOUNT, "reason": "x\ny"})


def test_rpc_server_auth_and_errors(env):
    server = RpcServer("127.0.0.1", 0, "s3cret-rpc-token-xyz", env["service"].dispatch)
    server.start()
    try:
        host, port = server.address
        url = f"http://{host}:{port}"
        bad = requests.post(url + "/rpc", json={"method": "health"}, timeout=5)
        assert bad.status_code == 401 and bad.json()["error"]["code"] == 908
        wrong = HotHsmClient(url, "s3cret-rpc-token-xyZ", timeout=5)
        with pytest.raises(HsmRefused) as info:
            wrong.health()
        assert info.value.code == 908
        client = HotHsmClient(url, "s3cret-rpc-token-xyz", timeout=5)
        health = client.health()
        assert {k: health[k] for k in ("paired", "cold_reachable", "accounts")} == {
            "paired": True,
            "cold_reachable": True,
            "accounts": 1,
        }
        assert health["cosign"]["count"] >= 0 and "link" in health and "audit_head" in health
        with pytest.raises(HsmRefused) as info:
            client.call("no_such_method")
        assert info.value.code == 904
        assert client.health()["refusals"].get("904") == 1  # counted for the console
        env["cold"].fail = LinkRemoteError(711, "foreign input")
        with pytest.raises(HsmRefused) as info:
            client.sign_send(**{k: v for k, v in _send(env).items()})
        assert (info.value.code, info.value.message) == (711, "foreign input")
    finally:
        server.stop()


def test_audit_records_from_many_threads_are_each_whole_and_on_disk(tmp_path) -> None:
    """Group commit: concurrent records share fsyncs, yet each returns only once written."""
    audit = AuditLog(tmp_path / "audit.jsonl")
    fsyncs = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)
        time.sleep(0.005)  # a disk's flush latency, during which other threads append

    def worker(n: int) -> None:
        for i in range(25):
            audit.record("sign_send", account=n, user_tx_no=f"{n}-{i}", note="x" * 300)

    with mock.patch("hsm_hot.audit.os.fsync", counting_fsync):
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    entries = audit.entries()
    assert sorted(e["user_tx_no"] for e in entries) == sorted(
        f"{n}-{i}" for n in range(8) for i in range(25)
    )
    records = 8 * 25
    assert 1 <= len(fsyncs) < records, "records written together share one fsync"
    assert (tmp_path / "audit.jsonl").stat().st_mode & 0o077 == 0
    audit.close()


def _among_others(service: HotService, crowded: bool) -> contextlib.AbstractContextManager:
    """As if another co-sign were in flight (`crowded`): the fsyncs are then waited for in the
    request's own thread, not handed to a helper (`InFlight`)."""
    return service._in_flight.one() if crowded else contextlib.nullcontext()


@pytest.mark.parametrize("crowded", [False, True], ids=["alone", "among-others"])
def test_reservation_is_on_disk_before_the_hot_key_signs(env, tmp_path, crowded):
    """The hot key signs only once the reservation (and the request count) is committed:
    a second connection to the ledger file, opened at the moment of signing, sees both."""
    service, keys = env["service"], env["token"].keys
    seen: list[tuple[int, int]] = []
    sign = keys.sign_digest

    def sign_and_look(label: str, digest: bytes) -> bytes:
        other = sqlite3.connect(tmp_path / "policy.db")
        try:
            (sends,) = other.execute("SELECT COUNT(*) FROM sends").fetchone()
            (requests_,) = other.execute("SELECT COUNT(*) FROM requests").fetchone()
        finally:
            other.close()
        seen.append((sends, requests_))
        return sign(label, digest)

    keys.sign_digest = sign_and_look
    with _among_others(service, crowded):
        service.sign_send(_send(env))
    assert seen and all(s == (1, 1) for s in seen)


@pytest.mark.parametrize("crowded", [False, True], ids=["alone", "among-others"])
def test_answer_waits_for_the_audit_fsync_and_the_cosigned_commit(env, tmp_path, crowded):
    """`sign_send` answers only after an fsync of the audit log that followed its line, and
    with the co-signed record readable by a new connection (a restart's retry finds it)."""
    audit = env["audit"]
    events: list[str] = []
    real_fsync, real_append = os.fsync, audit.append

    def counting_fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def noting_append(event: str, **fields: Any) -> int:
        events.append(f"append {event}")
        return real_append(event, **fields)

    audit.append = noting_append
    params = _send(env)
    with (
        mock.patch("hsm_hot.audit.os.fsync", counting_fsync),
        _among_others(env["service"], crowded),
    ):
        signed = env["service"].sign_send(params)
    assert events.index("append sign_send") < len(events) - 1 - events[::-1].index("fsync")
    other = sqlite3.connect(tmp_path / "state" / "hot-state.db")
    try:
        row = other.execute("SELECT psbt FROM cosigned").fetchone()
    finally:
        other.close()
    assert row == (signed["psbt"],)


@pytest.mark.parametrize("crowded", [False, True], ids=["alone", "among-others"])
def test_a_token_key_other_than_the_accounts_signs_nothing(env, crowded):
    """The PSBT takes the token's signatures unverified only because the token's key is the
    account's `hot_pubkey`; another key there is refused and the reservation given back."""
    keys = env["token"].keys
    keys.keys[f"hot/{ACCOUNT}"] = coincurve.PrivateKey(hashlib.sha256(b"other").digest())
    with (
        pytest.raises(HotHsmError, match="hot key on the token differs"),
        _among_others(env["service"], crowded),
    ):
        env["service"].sign_send(_send(env))
    assert keys.signed == 0
    assert env["service"].ledger.spent_today(ACCOUNT) == 0
    assert not [e for e in env["audit"].entries() if e["event"] == "sign_send"]


def test_audit_sync_covers_what_was_appended_before_it(tmp_path) -> None:
    """`append` writes without waiting; `sync(n)` returns once record n is on disk, with one
    fsync for every record appended before it started, and none for one already covered."""
    audit = AuditLog(tmp_path / "audit.jsonl")
    fsyncs: list[int] = []
    real_fsync = os.fsync
    with mock.patch("hsm_hot.audit.os.fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))):
        numbers = [audit.append("e", n=n) for n in range(3)]
        assert fsyncs == []
        audit.sync(numbers[1])
        assert len(fsyncs) == 1
        audit.sync(numbers[0])
        audit.sync(numbers[2])  # appended before the first sync started: covered
        assert len(fsyncs) == 1
        audit.record("f")
        assert len(fsyncs) == 2
    audit.close()
    assert [e["event"] for e in audit.entries()] == ["e", "e", "e", "f"]


def test_state_remembers_accounts_and_forgets_one_written_again(env, tmp_path):
    """Accounts are answered from memory once read; writing one again replaces what is
    remembered, and a fresh state (a restart) reads the same from disk."""
    state: HotState = env["service"].state
    first = state.account(ACCOUNT)
    assert first is not None and state.account(ACCOUNT) is first
    changed = dataclasses.replace(first, owner_phone="+15550000999")
    state.add_account(changed)
    assert state.account(ACCOUNT) == changed
    assert state.account(ACCOUNT + 1) is None
    again = HotState(tmp_path / "state")
    try:
        assert again.account(ACCOUNT) == changed
    finally:
        again.close()
