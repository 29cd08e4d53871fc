"""Fuzz harnesses: one per parser that takes bytes from another process.

Each harness turns the fuzzer's bytes into what the parser receives on its boundary (raw
bytes, text, a JSON body, a form, a link message) and calls the same functions the process
calls. `allowed` lists the package's own errors: any other exception is a crash. Harnesses
load lazily (`load()`), so that the runner imports the code under test inside atheris's
instrumentation, and one harness's imports do not slow another's run.

`seeds` are valid inputs, the corpus the fuzzer starts from: most parsers refuse random
bytes at the first check, and mutating a valid message reaches the deeper ones.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Run = Callable[[bytes], None]


@dataclass(frozen=True)
class Harness:
    run: Run
    allowed: tuple[type[BaseException], ...]
    seeds: list[bytes]

    def check(self, data: bytes) -> None:
        """Run one input; the allowed (domain) errors are a normal outcome."""
        with contextlib.suppress(self.allowed):
            self.run(data)


HARNESSES: dict[str, Callable[[], Harness]] = {}
# Per harness, the packages atheris instruments for coverage: only those the parser runs
# through (instrumenting is slow at import, and the suite starts one process per harness).
INSTRUMENTED: dict[str, tuple[str, ...]] = {}


def harness(
    name: str, *instrument: str
) -> Callable[[Callable[[], Harness]], Callable[[], Harness]]:
    def register(load: Callable[[], Harness]) -> Callable[[], Harness]:
        HARNESSES[name] = load
        INSTRUMENTED[name] = instrument
        return load

    return register


def text(data: bytes) -> str:
    """What a UTF-8 reader (werkzeug, requests, the modem's line reader) makes of the bytes."""
    return data.decode("utf-8", "replace")


def form(data: bytes, names: tuple[str, ...]) -> dict[str, str]:
    """A form: NUL-separated values for `names` in order; a value of "\\x01" leaves it out."""
    values = text(data).split("\x00")
    return {n: v for n, v in zip(names, values, strict=False) if v != "\x01"}


def form_seed(values: dict[str, str], names: tuple[str, ...]) -> bytes:
    return "\x00".join(values.get(n, "\x01") for n in names).encode()


class HttpAnswer:
    """A `requests` transport adapter answering every request with the fuzzer's bytes as the
    body (a leading "!" makes it HTTP 500, "#" HTTP 400): the client's own HTTP stack and JSON
    reading run as in production, only the socket is replaced."""

    def __init__(self) -> None:
        self.body = b""

    def answer(self, data: bytes) -> None:
        self.body = data

    def send(self, request: Any, **kwargs: Any) -> Any:
        import requests

        response = requests.Response()
        status = {b"!": 500, b"#": 400}.get(self.body[:1], 200)
        response.status_code = status
        response._content = self.body[1:] if status != 200 else self.body
        response.request = request
        response.url = request.url
        response.reason = "fuzz"
        return response

    def close(self) -> None:
        pass


class HttpClientAnswer:
    """An `http.client` connection type (`connection_class`) answering every request with the
    fuzzer's bytes as the body (a leading "!" makes it HTTP 500, "#" HTTP 400): the client's
    own HTTP parsing and JSON reading run as in production, only the socket is replaced."""

    def __init__(self) -> None:
        self.body = b""
        answer = self

        class Connection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = _ScriptedSocket(answer.response())

        self.connection_class = Connection

    def answer(self, data: bytes) -> None:
        self.body = data

    def response(self) -> bytes:
        status = {b"!": 500, b"#": 400}.get(self.body[:1], 200)
        body = self.body[1:] if status != 200 else self.body
        head = f"HTTP/1.1 {status} fuzz\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        return head.encode() + body


class _ScriptedSocket:
    """A socket that swallows what is sent and reads back one scripted HTTP response."""

    def __init__(self, response: bytes) -> None:
        self._response = response

    def sendall(self, data: bytes) -> None:
        pass

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BytesIO:
        return io.BytesIO(self._response)

    def settimeout(self, timeout: float | None) -> None:
        pass

    def close(self) -> None:
        pass


# -- the serial link between the HSMs ------------------------------------------------------------


class _Sink:
    """The line as a `ByteStream`: reads nothing (the fuzzer feeds), discards what is written."""

    def read(self) -> bytes:
        return b""

    def write(self, data: bytes) -> bool:
        return True

    def close(self) -> None:
        pass


@harness("link_frames", "cc_common.link")
def _link_frames() -> Harness:
    """Bytes off the serial line into the frame layer: COBS, CRC, ACK/NAK lists. Never raises."""
    from cc_common.link.framing import Frame, FrameLink, FrameType
    from cc_common.link.settings import LinkConfig

    def run(data: bytes) -> None:
        link = FrameLink(_Sink(), lambda payload: None, config=LinkConfig(max_frame=512))
        cut = data[0] % len(data) if data else 0
        link._receive(data[:cut])
        link._receive(data[cut:])

    seeds = [
        Frame(FrameType.DATA, 7, b"payload").encode(),
        Frame(FrameType.ACK, 7, bytes([0, 8, 0, 9])).encode(),
        Frame(FrameType.NAK, 3).encode() + Frame(FrameType.DATA, 65535, bytes(300)).encode(),
    ]
    return Harness(run, (), seeds)


@harness("link_codec", "cc_common.link")
def _link_codec() -> Harness:
    """The link's value codec, as both HSMs decode every message body."""
    from cc_common.link import codec
    from cc_common.link.errors import LinkEncodingError

    def run(data: bytes) -> None:
        value = codec.decode(data)
        assert codec.decode(codec.encode(value)) == value

    values: list[Any] = [
        ["cosign", {"account": 3, "tx": bytes(80), "inputs": [[100_000, 0, 1]], "c_id": "c1"}],
        [0, {"signatures": [bytes(64)] * 20, "txid": "ab" * 32}],
        [1, [904, "missing field 'tx'"]],
        [-5, 2**70, None, True, False, "é" * 70, {"": []}],
    ]
    return Harness(run, (LinkEncodingError,), [codec.encode(v) for v in values])


@harness("link_messages", "cc_common.link")
def _link_messages() -> Harness:
    """Authentic link messages (a compromised peer holds the link key): the session layer, then
    the command layer's request, answer and refusal bodies, on both sides."""
    from cc_common.link import codec, rpc
    from cc_common.link.auth import MacKey, Refusal
    from cc_common.link.counters import MemoryCounterStore
    from cc_common.link.errors import LinkError
    from cc_common.link.session import (
        HEAD,
        Kind,
        Role,
        Session,
        group_body,
        short_head,
        split_group,
    )

    key = bytes(range(32))
    mac = {role: MacKey(key, role.value) for role in Role}

    def run(data: bytes) -> None:
        for role in Role:
            session = Session(key, role, MemoryCounterStore())
            msg = session.open(
                data + mac[Role.CLIENT if role is Role.SERVER else role.SERVER].tag(data)
            )
            if isinstance(msg, rpc.Refused):
                if msg.body is not None:
                    rpc._stale_hint(msg.body)
                continue
            if msg.kind == Kind.ANSWERS:
                split_group(msg.body, msg.request_id)
            for decode in (rpc.decode_request, rpc.decode_answer, rpc.decode_refusal):
                with contextlib.suppress(LinkError):
                    decode(msg.body)

    bodies = [
        codec.encode(["cosign", {"account": 1, "tx": bytes(60)}]),
        codec.encode([0, {"ok": True}]),
        codec.encode([1, [701, "refused"]]),
        codec.encode([Refusal.STALE.value, 12]),
        codec.encode({"s": bytes(64)}),
        group_body([(9, codec.encode({"s": bytes(64)})), (10, codec.encode([1, [701, "x"]]))]),
    ]
    seeds = [
        head(direction.value, kind, 5, 9) + body
        for head in (short_head, lambda d, k, c, r: HEAD.pack(d.value, k, c, r))
        for direction in Role
        for kind in Kind
        for body in bodies
    ]
    return Harness(run, (), seeds)


# -- transactions and PSBTs ----------------------------------------------------------------------


def _roots() -> list[Any]:
    """The hot, cosigner and recovery roots of the fuzzing account (fixed seeds)."""
    from wallet_core.bip32 import ExtendedKey
    from wallet_core.networks import Network

    return [ExtendedKey.from_seed(bytes([n]) * 32, Network.REGTEST) for n in (1, 2, 3)]


def _send_psbt() -> tuple[Any, Any]:
    """A hot send PSBT as custody builds it (`tests.hsm_fixtures.build_send_psbt`, without its
    process-harness imports), and the hot wallet it spends."""
    from wallet_core.addresses import address_to_script
    from wallet_core.networks import Network
    from wallet_core.psbt import Psbt, PsbtInput, PsbtOutput
    from wallet_core.wallets import (
        CHANGE,
        RECEIVE,
        AccountKey,
        FixedKey,
        HotWallet,
        bip48_account_path,
    )

    net = Network.REGTEST
    path = bip48_account_path(net, 0)
    roots = _roots()
    keys = [AccountKey(r.derive(path).to_public(), r.fingerprint, path) for r in roots[1:]]
    wallet = HotWallet((FixedKey(roots[0].public_key), *keys), net)
    coins = [("ab" * 32, 1, 400_000, RECEIVE, 3), ("cd" * 32, 0, 250_000, CHANGE, 0)]
    inputs = [
        PsbtInput(
            txid,
            vout,
            value,
            wallet.script_pubkey(index, chain),
            wallet.witness_script(index, chain),
            wallet.origins(index, chain),
        )
        for txid, vout, value, chain, index in coins
    ]
    payee = address_to_script("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", net)
    change = PsbtOutput(
        wallet.script_pubkey(2, CHANGE),
        349_000,
        wallet.origins(2, CHANGE),
        wallet.witness_script(2, CHANGE),
    )
    return Psbt.create(inputs, [PsbtOutput(payee, 300_000), change]), wallet


@harness("psbt", "wallet_core", "embit")
def _psbt() -> Harness:
    """A PSBT as the hot HSM receives it from custody: parse, then every reading of it."""
    from wallet_core.errors import WalletError
    from wallet_core.psbt import Psbt

    def run(data: bytes) -> None:
        psbt = Psbt.from_bytes(data)
        psbt.txid, psbt.unsigned_tx_bytes(), psbt.outputs, psbt.xpubs()
        for i in range(psbt.input_count):
            psbt.input_value(i)
            psbt.input_origins(i)
            psbt.partial_signatures(i)
            psbt.sighash(i)
        psbt.fee()
        psbt.signing_requests(b"\x00\x00\x00\x00")
        Psbt.from_base64(psbt.to_base64())

    psbt, _ = _send_psbt()
    seeds = [psbt.to_bytes(), psbt.to_bytes()[:200]]
    return Harness(run, (WalletError,), seeds)


@harness("hot_cosign_plan", "hsm_hot.compact", "wallet_core", "embit")
def _hot_cosign_plan() -> Harness:
    """The hot HSM's reading of custody's PSBT against the account's wallet (`plan_cosign`)."""
    from hsm_hot.compact import plan_cosign
    from hsm_hot.errors import BadRequest
    from wallet_core.errors import WalletError
    from wallet_core.psbt import Psbt

    psbt, wallet = _send_psbt()

    def run(data: bytes) -> None:
        plan_cosign(Psbt.from_bytes(data), wallet)

    return Harness(run, (BadRequest, WalletError), [psbt.to_bytes()])


@harness("rawtx", "wallet_core.rawtx", "wallet_core.prevtx")
def _rawtx() -> Harness:
    """Raw transactions: the HSMs' strict unsigned reading and custody's signed reading."""
    from wallet_core.errors import TxParseError
    from wallet_core.prevtx import parse_prev_tx
    from wallet_core.rawtx import parse_signed_tx, parse_unsigned_tx

    def run(data: bytes) -> None:
        for parse in (parse_unsigned_tx, parse_signed_tx, parse_prev_tx):
            with contextlib.suppress(TxParseError):
                parse(data)

    psbt, _ = _send_psbt()
    unsigned = psbt.unsigned_tx_bytes()
    signed = (
        unsigned[:4] + b"\x00\x01" + unsigned[4:-4] + b"\x02\x01\xaa\x01\xbb" * 2 + unsigned[-4:]
    )
    return Harness(run, (), [unsigned, signed])


@harness("packed_tx", "wallet_core.packedtx")
def _packed_tx() -> Harness:
    """The short co-sign request's transaction body (the cold HSM reads it from the hot side):
    refused only with `TxParseError`, and what it reads packs back to the same bytes."""
    from wallet_core.errors import TxParseError
    from wallet_core.packedtx import pack_tx, unpack_tx
    from wallet_core.rawtx import TxIn, TxOut

    def run(data: bytes) -> None:
        vin, vout = unpack_tx(data)
        short = frozenset(n for n, i in enumerate(vin) if i.short)
        again = pack_tx([TxIn(i.txid, i.vout, i.sequence) for i in vin], vout, short)
        assert unpack_tx(again) == (vin, vout) and len(again) <= len(data)

    psbt, _ = _send_psbt()
    tx = parse_unsigned_tx_for_seed(psbt.unsigned_tx_bytes())
    outs = [TxOut(o.value, b"" if n else o.script_pubkey) for n, o in enumerate(tx.vout)]
    return Harness(
        run,
        (TxParseError,),
        [pack_tx(tx.vin, outs, frozenset({0})), pack_tx(tx.vin, tx.vout, frozenset())],
    )


def parse_unsigned_tx_for_seed(raw: bytes) -> Any:
    from wallet_core.rawtx import parse_unsigned_tx

    return parse_unsigned_tx(raw)


@harness("rawblock", "custody.chain.rawblock")
def _rawblock() -> Harness:
    """A raw block (`getblock` verbosity 0) as the watcher reads it: the C scan, with and
    without filters, must agree with the Python reader (the same block, or both refuse it)."""
    from bitcointx.core import COutPoint, CTransaction, CTxIn, CTxInWitness, CTxOut, CTxWitness
    from bitcointx.core.script import CScript, CScriptWitness

    from custody.chain.errors import ChainUnavailable
    from custody.chain.rawblock import parse_block, scan_block
    from firmware_sim.node.blocks import assemble_block, genesis_block

    everything = bytearray(b"\xff" * 64)  # every bit set: a filter that keeps everything

    def run(data: bytes) -> None:
        try:
            expected = parse_block(data)
        except ChainUnavailable:
            expected = None
        for filters in ((None, None, None), (everything, everything, set())):
            try:
                got = scan_block(data, *filters)
            except ChainUnavailable:
                got = None
            if got != expected:
                raise AssertionError(f"the C scan read {got!r}, the Python reader {expected!r}")

    witness = CTxWitness([CTxInWitness(CScriptWitness([b"\x51"]))])
    outs = [CTxOut(1000, CScript(b"\x00\x14" + b"\x01" * 20))]
    txs = [
        CTransaction([CTxIn(COutPoint(b"\x01" * 32, 1), CScript(b"\x01" * 5))], outs),
        CTransaction([CTxIn(COutPoint(b"\x02" * 32, 0))], outs, nVersion=2, witness=witness),
    ]
    block = assemble_block(genesis_block().hash(), 1, 1, b"\x51", txs, 0)
    return Harness(run, (), [block.serialize(), genesis_block().serialize()])


# -- the cold HSM's co-sign request --------------------------------------------------------------


@harness(
    "cold_cosign_request",
    "cc_common.link.codec",
    "cc_common.fields",
    "hsm_cold.cosign",
    "wallet_core",
)
def _cold_cosign_request() -> Harness:
    """The compact co-sign request as the cold HSM decodes it off the link, then the checks
    that read its fields (request string, vc_code, outs)."""
    from cc_common.link import codec
    from cc_common.link.errors import LinkEncodingError
    from hsm_cold import cosign
    from hsm_cold.errors import ColdHsmError
    from hsm_hot.compact import compact_request, plan_cosign
    from wallet_core.networks import Network

    psbt, wallet = _send_psbt()
    channel_pubkey = bytes.fromhex(
        "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    )

    def run(data: bytes) -> None:
        payload = codec.decode(data)
        if not isinstance(payload, dict):
            return
        req = cosign.decode_request(payload)
        req.request_string()
        cosign.vc_code_valid(req, channel_pubkey)
        cosign.signed_payments(req, Network.REGTEST)

    request = {
        "user_tx_no": "order-1",
        "is_dynamic_fee": 1,
        "coin_code": "BTC",
        "outs": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080,300000",
    }
    vc_code = base64.b64encode(bytes([31]) + bytes(range(64))).decode()
    payload = compact_request(7, plan_cosign(psbt, wallet), request, vc_code, "c1")
    return Harness(run, (LinkEncodingError, ColdHsmError), [codec.encode(payload)])


@harness("cold_fields", "cc_common.link.codec", "cc_common.fields", "hsm_cold", "wallet_core")
def _cold_fields() -> Harness:
    """The cold HSM's other commands' fields as it decodes them off the link (provisioning,
    channel registration, sweep): accounts, phones, public keys, signed messages, the
    settlement descriptor, sweep UTXOs and fee rate."""
    from cc_common.link import codec
    from cc_common.link.errors import LinkEncodingError
    from hsm_cold import cosign, service, sweep
    from hsm_cold.errors import ColdHsmError

    policy = cosign.FeePolicy(max_fee_sat=100_000, max_fee_rate=200.0)
    readers: list[Callable[[dict[str, Any]], Any]] = [
        service.account_field,
        lambda p: service.phone_field(p, "vdevice_phone"),
        lambda p: service.pubkey_field(p, "channel_pubkey"),
        lambda p: cosign.signed_message_text(p.get("identity_sig"), "identity_sig"),
        lambda p: sweep.settlement(cosign.text_field(p, "settlement_descriptor")),
        sweep.decode_utxos,
        lambda p: sweep.decode_fee_rate(p, policy),
    ]

    def run(data: bytes) -> None:
        payload = codec.decode(data[1:]) if data else None
        if isinstance(payload, dict):  # the first byte picks the field reader
            readers[data[0] % len(readers)](payload)

    from wallet_core.bip32 import ExtendedKey
    from wallet_core.networks import Network

    xpub = ExtendedKey.from_seed(bytes(32), Network.REGTEST).to_public().serialize()
    payload = {
        "account": 7,
        "vdevice_phone": "+15550000100",
        "channel_pubkey": bytes.fromhex(
            "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
        ),
        "identity_sig": bytes(65),
        "settlement_descriptor": f"wpkh({xpub}/0/*)",
        "utxos": [{"txid": "ab" * 32, "vout": 1, "amount": 50_000, "chain": 0, "index": 4}],
        "fee_rate": 5,
    }
    encoded = codec.encode(payload)
    return Harness(
        run, (LinkEncodingError, ColdHsmError), [bytes([n]) + encoded for n in range(len(readers))]
    )


# -- custody's API: the HTTP its gunicorn worker reads ---------------------------------------------


@harness("api_http_head", "custody.http_worker")
def _api_http_head() -> Harness:
    """A request head as custody's API worker reads it off an internet-facing socket (the
    bytes before the blank line): refused with a status, or WSGI keys within the limits."""
    from custody.http_worker import Limits, Refused, read_head

    limits = Limits()

    def run(data: bytes) -> None:
        head = read_head(data, limits)
        assert 0 <= head.length <= limits.body
        assert head.env["PATH_INFO"] is not None and "HTTP_CONTENT_LENGTH" not in head.env

    seeds = [
        b"GET /api/v1/open/tx?after=ab&limit=20 HTTP/1.1\r\nHost: x\r\ntoken: t",
        b"POST /api/v1/open/tx/request HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue",
        b"GET http://x/a%20b HTTP/1.0\r\nConnection: keep-alive",
    ]
    return Harness(run, (Refused,), seeds)


# -- the hot HSM's RPC ---------------------------------------------------------------------------


@harness("hot_rpc_request", "hsm_hot", "cc_common.fields", "wallet_core", "embit")
def _hot_rpc_request() -> Harness:
    """A `POST /rpc` body as the hot HSM reads it, then `sign_send`'s parameters and PSBT."""
    from hsm_hot import service
    from hsm_hot.compact import plan_cosign
    from hsm_hot.errors import HotHsmError
    from hsm_hot.rpc_server import parse_call
    from wallet_core.errors import WalletError
    from wallet_core.psbt import Psbt

    psbt, wallet = _send_psbt()

    def run(data: bytes) -> None:
        method, params = parse_call(data)
        service._account(params)
        request = service._param(params, "request", dict)
        for name, most in (("coin_code", 10), ("outs", 100_000), ("user_tx_no", 128)):
            service._text(request, name, most)
        service._param(request, "is_dynamic_fee", int)
        service._text(params, "vc_code", 256)
        plan_cosign(Psbt.from_base64(service._text(params, "psbt", 1_000_000)), wallet)

    body = {
        "method": "sign_send",
        "params": {
            "account": 7,
            "psbt": psbt.to_base64(),
            "request": {"coin_code": "BTC", "is_dynamic_fee": 1, "outs": "a,1", "user_tx_no": "u"},
            "vc_code": "x",
            "c_id": "c1",
        },
    }
    seeds = [json.dumps(body).encode(), b'{"method": "health", "params": {}}']
    return Harness(run, (HotHsmError, WalletError), seeds)


@harness("custody_hot_answer", "custody.hsm_client")
def _custody_hot_answer() -> Harness:
    """The hot HSM's answers as custody reads them (`HotHsmClient`): results, refusals and the
    typed helpers (provisioned account, batch proof, signed PSBT, alerts)."""
    from custody.errors import HsmUnavailableError
    from custody.hsm_client import HotHsmClient, HsmError

    adapter = HttpClientAnswer()
    client = HotHsmClient("http://127.0.0.1:1", "secret", timeout=1.0)
    client.connection_class = adapter.connection_class
    calls: list[Callable[[], Any]] = [
        lambda: client.provision_account(
            1, "regtest", "02", "wpkh()", vdevice_phone="+1", owner_phone="+2"
        ),
        lambda: client.prove_batch(1, "hot", 0),
        lambda: client.sign_send(1, "cHNidP8=", {}, "vc", "c1"),
        client.take_alerts,
        lambda: client.register_channel(1, "c1", "02", 5, "sig"),
    ]

    def run(data: bytes) -> None:
        if data:
            adapter.answer(data[1:])
            calls[data[0] % len(calls)]()

    provisioned = {
        "receiving_xpub": "tpub",
        "cosigner_xpub": "tpub",
        "cosigner_fingerprint": "00112233",
        "recovery_xpub": "tpub",
        "recovery_fingerprint": "44556677",
        "hot_pubkey": "02" * 33,
        "cold_identity": "03" * 33,
        "proof": "H" * 88,
        "receiving_fingerprint": "8899aabb",
    }
    answers = [
        {"result": provisioned},
        {"result": {"signature": "H" * 88}},
        {"result": {"psbt": "cHNidP8="}},
        {"result": {"alerts": [{"kind": "frozen"}]}},
        {"error": {"code": 904, "message": "missing parameter"}},
    ]
    seeds = [bytes([n]) + json.dumps(a).encode() for n, a in enumerate(answers)]
    return Harness(run, (HsmError, HsmUnavailableError), seeds)


@harness("hot_cold_answers", "cc_common.link.codec", "hsm_hot", "wallet_core")
def _hot_cold_answers() -> Harness:
    """The cold HSM's answers as the hot HSM checks them: the provisioning answer (xpubs,
    fingerprints, proof) and the co-signatures. Both checks read nothing of the service but
    the pinned cold identity, so they run here on the real functions without a token."""
    from types import SimpleNamespace

    from cc_common.link import codec
    from cc_common.link.errors import LinkEncodingError
    from hsm_hot.compact import plan_cosign
    from hsm_hot.errors import HotHsmError
    from hsm_hot.service import HotService, provision_statement
    from wallet_core import messages, secp, signatures
    from wallet_core.bip32 import ExtendedKey
    from wallet_core.networks import Network
    from wallet_core.wallets import bip48_account_path

    psbt, wallet = _send_psbt()
    plan = plan_cosign(psbt, wallet)
    identity_key = (1).to_bytes(32, "big")
    service = SimpleNamespace(cold_identity=secp.pubkey_from_privkey(identity_key))
    params = {
        "vdevice_identity": "02" * 33,
        "settlement_descriptor": "wpkh()",
        "vdevice_phone": "+1",
        "owner_phone": "+2",
    }
    hot_pub = secp.pubkey_from_privkey((2).to_bytes(32, "big"))

    def run(data: bytes) -> None:
        answer = codec.decode(data[1:]) if data else None
        if not isinstance(answer, dict):
            return
        if data[0] % 2:
            HotService._check_cold_signatures(service, plan, answer)  # type: ignore[arg-type]
        else:
            HotService._check_provisioned(  # type: ignore[arg-type]
                service, 7, "regtest", "hot/7", hot_pub, answer, params
            )

    xpubs = [
        ExtendedKey.from_seed(bytes([n]) * 32, Network.REGTEST).to_public().serialize()
        for n in (4, 5, 6)
    ]
    statement = provision_statement(7, "regtest", *xpubs, hot_pub.hex())
    provisioned = {
        "receiving_xpub": xpubs[0],
        "cosigner_xpub": xpubs[1],
        "recovery_xpub": xpubs[2],
        "cosigner_fingerprint": bytes(4),
        "recovery_fingerprint": "00112233",
        "receiving_fingerprint": "44556677",
        "proof": messages.sign_message(identity_key, statement),
    }
    cosigner = _roots()[1].derive(bip48_account_path(Network.REGTEST, 0))
    sigs = []
    for (_, chain, index), digest in zip(plan.inputs, plan.digests, strict=True):
        der = signatures.sign_digest(cosigner.derive([chain, index]).private_key, digest)
        r, s = signatures.der_decode(der)
        sigs.append(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    seeds = [
        b"\x01" + codec.encode({"signatures": sigs}),
        b"\x00" + codec.encode(provisioned),
    ]
    return Harness(run, (LinkEncodingError, HotHsmError), seeds)


# -- SMS -----------------------------------------------------------------------------------------


@harness("sms_text", "cc_common.sms", "wallet_core.messages")
def _sms_text() -> Harness:
    """An SMS as the cold HSM and the V-device read it: the channel message codec and the
    signatures each message carries."""
    from cc_common.sms import channel_messages as cm
    from cc_common.sms.errors import SmsError
    from wallet_core.errors import WalletError

    pub = bytes.fromhex("02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5")

    def run(data: bytes) -> None:
        msg = cm.parse(text(data))
        assert cm.parse(cm.format(msg)) == msg
        if isinstance(msg, cm.OpenRequest | cm.ChannelOk | cm.VerifyAddresses) and msg.sig:
            msg.recover_signer()
        elif isinstance(msg, cm.OpenReply) and msg.sig:
            msg.recover_signer(pub)
        elif isinstance(msg, cm.AddressesProof):
            msg.recover_signer(["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"] * 3)

    sig = "IH+WjCmXK1DwvkkTysJiUgnVlDeuS0GfOnvgdnj+0JrJEPQNG2tg+0f49Z+4rNsjK5EapgXZh9q8Qfeq9NgougA="
    seeds = [
        f"CC:QH:{pub.hex()}:H_ID:17:T:1470142294:SIG:{sig}:",
        f"CC:QC:{pub.hex()}:C_ID:9001:H_ID:17:EXP:1470228694:SIG:{sig}",
        f"CC:CHANNEL_OK:9001:SIG:{sig}:",
        f"CC:VERIFY_COLD_ADDRESSES:0:BTC:C_ID:9001:N:5f3a9c0e12ab34cd:SIG:{sig}:",
        f"CC:HOT_ADDRESSES:3:{sig}:9001:BTC:N:5f3a9c0e12ab34cd",
        "CC:START_LOOP",
        "CC:V:2016-08-02T12:51:34",
    ]
    return Harness(run, (SmsError, WalletError), [s.encode() for s in seeds])


@harness("modem_at", "cc_common.sms.modem")
def _modem_at() -> Harness:
    """A modem's answers as `GsmModem` reads them: lines cut from the serial bytes, then the
    `+CMGL` listing, `+CSQ`, `+CREG`, `+CNUM` and `+CMGS` parsers."""
    from cc_common.sms import modem
    from cc_common.sms.errors import SmsError

    def run(data: bytes) -> None:
        cutter = modem.LineCutter()
        items = cutter.feed(data[: len(data) // 2]) + cutter.feed(data[len(data) // 2 :])
        lines = [i.text for i in items if i.kind is modem._Kind.LINE]
        modem.parse_listing(items, "fuzz")
        for line in lines:
            args = modem.split_args(line)
            modem.parse_scts(line)
            modem.parse_creg(args)
            modem.parse_cnum(args)
            modem.parse_cmgs(line)
            with contextlib.suppress(SmsError):
                modem.parse_csq(args, "fuzz")

    seeds = [
        b'AT+CMGL="REC UNREAD"\r\r\n+CMGL: 1,"REC UNREAD","+15550001",,"24/05/01,12:00:00+08"\r\n'
        b'CC:QH:02ab:H_ID:17:\r\n+CMGL: 2,"REC READ","+1555",,"24/13/01,12:00:00-04"\r\n'
        b"hello, world\r\n\r\nOK\r\n",
        b'+CSQ: 17,99\r\nOK\r\n+CREG: 0,5\r\n+CNUM: "","+15550002",145\r\n+CMGS: 42\r\nOK\r\n',
        b'+CMTI: "SM",3\r\n> ',
        b"+CMS ERROR: 321\r\nERROR\r\n",
    ]
    return Harness(run, (SmsError,), seeds)


# -- vtest and the V-device ----------------------------------------------------------------------


@harness("vtest", "cc_common.vtest", "wallet_core.chaincloud", "wallet_core.addresses")
def _vtest() -> Harness:
    """`vtest_info` as the V-device reads it from the merchant site: the blob's fields, the
    decrypted plaintext, then the send request it signs (outs, request string)."""
    from cc_common.vtest import VtestDecryptError, _split_blob, parse_vtest_plaintext
    from wallet_core.chaincloud import parse_outs, send_request_string
    from wallet_core.errors import WalletError
    from wallet_core.networks import Network

    def run(data: bytes) -> None:
        with contextlib.suppress(VtestDecryptError):
            _split_blob(text(data))
        req = parse_vtest_plaintext(text(data))
        parse_outs(req.outs, Network.REGTEST, allow_zero=True)
        send_request_string(req.outs, "vt-1", coin_code="BTC", is_dynamic_fee=req.dynamic)

    seeds = [
        b'{"outs":"bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080,1000","dynamic":1}',
        b'{"outs":"bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080,0;'
        b'bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080,5","dynamic":0}',
        ("AB" * 16 + "/" + "CD" * 16 + "/" + "EF" * 8).encode(),
    ]
    return Harness(run, (VtestDecryptError, WalletError), seeds)


@harness("vdevice_remote", "vdevice.remote", "vdevice.batches", "cc_common.vtest")
def _vdevice_remote() -> Harness:
    """The merchant site's and custody's HTTP answers as the V-device reads them: the pending
    batch (its shape), the pending vtest (id and blob), custody's user and send state."""
    from cc_common.vtest import VtestDecryptError, _split_blob
    from vdevice.batches import BATCH_SIZE, check_shape
    from vdevice.errors import VDeviceError
    from vdevice.remote import CustodyClient, SiteClient

    adapter = HttpAnswer()
    site = SiteClient("http://127.0.0.1:1", "token", 1.0)
    custody = CustodyClient("http://127.0.0.1:1", "token", 1.0)
    for client in (site, custody):
        client.http.mount("http://", adapter)

    def batch() -> None:
        body = site.pending_batch()
        # check_shape's contract: ValueError names what is malformed; the V-device reports
        # the batch as failed with it (BatchVerifier._malformed).
        with contextlib.suppress(ValueError):
            check_shape(body)

    def vtest() -> None:
        body = site.pending_vtest()
        blob = body.get("vtest_info")
        if isinstance(blob, str):
            with contextlib.suppress(VtestDecryptError):
                _split_blob(blob)

    calls: list[Callable[[], Any]] = [
        batch,
        vtest,
        custody.user,
        lambda: custody.send_state("vt-1"),
        lambda: custody.request_send({"user_tx_no": "vt-1"}),
        lambda: site.report_vtest("vt-1", "ab" * 32),
    ]

    def run(data: bytes) -> None:
        if data:
            adapter.answer(data[1:])
            calls[data[0] % len(calls)]()

    batch = {
        "batch_no": 1,
        "address_type": 2,
        "address_list": [
            {"index": BATCH_SIZE + n, "address": f"bcrt1q{n}"} for n in range(BATCH_SIZE)
        ],
    }
    answers = [
        json.dumps(batch).encode(),
        b'{"vtest_id": "vt-1", "vtest_info": "'
        + ("AB" * 16 + "/" + "CD" * 16 + "/" + "EF" * 8).encode()
        + b'"}',
        b'{"balance": 5, "address": "bcrt1q"}',
        b'#{"code": 3, "message": "already accepted"}',
    ]
    seeds = [bytes([n]) + a for n, a in enumerate(answers)]
    return Harness(run, (VDeviceError,), seeds)


# -- HTTP forms ----------------------------------------------------------------------------------

SEND_FIELDS = ("coin_code", "user_tx_no", "is_dynamic_fee", "outs", "vc_code", "c_id")


@harness("custody_forms", "custody.api.schemas", "wallet_core")
def _custody_forms() -> Harness:
    """Custody's API forms: `POST /tx/request`, the batch status report, txids and paths."""
    from custody.api import schemas
    from custody.errors import BadRequest
    from wallet_core.networks import Network

    def run(data: bytes) -> None:
        fields = form(data, SEND_FIELDS)
        for parse in (
            lambda: schemas.parse_send_request(fields, Network.REGTEST),
            lambda: schemas.parse_batch_status(form(data, ("status", "type"))),
            lambda: schemas.parse_txid(text(data)),
            lambda: schemas.parse_path(text(data)),
        ):
            with contextlib.suppress(BadRequest):
                parse()

    vc_code = base64.b64encode(bytes([31]) + bytes(range(64))).decode()
    send = {
        "coin_code": "BTC",
        "user_tx_no": "order-1",
        "is_dynamic_fee": "1",
        "outs": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080,300000",
        "vc_code": vc_code,
        "c_id": "9001",
    }
    seeds = [form_seed(send, SEND_FIELDS), b"2\x001", ("ab" * 32).encode()]
    return Harness(run, (), seeds)


@harness("merchant_forms", "examples.merchant_site.forms")
def _merchant_forms() -> Harness:
    """The merchant site's form fields (the V-device and custody post them)."""
    from examples.merchant_site import forms
    from examples.merchant_site.errors import BadRequest

    names = ("type", "status", "dynamic", "tx_hash", "batch_no", "vtest_id")

    def run(data: bytes) -> None:
        fields: dict[str, Any] = form(data, names)
        for parse in (
            lambda: forms.address_type(fields),
            lambda: forms.batch_verdict(fields),
            lambda: forms.dynamic(fields),
            lambda: forms.tx_hash(fields),
            lambda: forms.integer(fields, "batch_no"),
            lambda: forms.text(fields, "vtest_id"),
        ):
            with contextlib.suppress(BadRequest):
                parse()

    seeds = [
        form_seed({"type": "cold", "status": "2", "dynamic": "0", "batch_no": "12"}, names),
        form_seed({"type": "1", "tx_hash": "AB" * 32, "vtest_id": "vt-9"}, names),
    ]
    return Harness(run, (), seeds)


@harness("merchant_custody_answer", "examples.merchant_site.custody_client")
def _merchant_custody_answer() -> Harness:
    """Custody's API answers as the merchant site reads them: an address batch, the next
    address."""
    import requests

    from examples.merchant_site.custody_client import BATCH_SIZE, CustodyClient
    from examples.merchant_site.errors import CustodyUnavailable

    adapter = HttpAnswer()
    http = requests.Session()
    http.mount("http://", adapter)
    client = CustodyClient("http://127.0.0.1:1", 1.0, http=http)
    calls: list[Callable[[], Any]] = [
        lambda: client.fetch_batch("token", 1),
        lambda: client.next_address("token"),
    ]

    def run(data: bytes) -> None:
        if data:
            adapter.answer(data[1:])
            calls[data[0] % len(calls)]()

    address = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    batch = [{"index": BATCH_SIZE + n, "address": address} for n in range(BATCH_SIZE)]
    seeds = [
        b"\x00" + json.dumps(batch).encode(),
        b"\x01" + json.dumps({"index": 7, "address": address}).encode(),
        b'\x01#{"code": 2, "message": "no such token"}',
    ]
    return Harness(run, (CustodyUnavailable,), seeds)


# -- the node ------------------------------------------------------------------------------------


@harness("node_rpc_json", "custody.chain.rpc", "wallet_core.fees")
def _node_rpc_json() -> Harness:
    """Bitcoin Core's JSON-RPC answers as custody's `BitcoinRPC` reads them (over `requests`,
    the fuzzer's bytes being the HTTP body), through every typed helper custody uses."""
    from custody.chain.errors import ChainError
    from custody.chain.rpc import BitcoinRPC, FeeEstimate
    from wallet_core.errors import FeeEstimateError
    from wallet_core.fees import feerate_from_estimate

    def fee_rate(est: FeeEstimate) -> None:
        """What the send worker does with an estimate (`SendWorker._fee_rate`)."""
        result = {"feerate": est.feerate, "errors": list(est.errors)}
        with contextlib.suppress(FeeEstimateError):
            feerate_from_estimate(result, floor=1.0, ceiling=500.0, fallback=2.0)

    adapter = HttpAnswer()
    rpc = BitcoinRPC("http://127.0.0.1:1/", "user", "pass", retries=0)
    rpc._session.mount("http://", adapter)
    calls = [
        rpc.get_block_count,
        rpc.get_best_block_hash,
        lambda: rpc.get_block_hash(1),
        lambda: rpc.get_block_header("00" * 32),
        rpc.get_blockchain_info,
        lambda: rpc.decode_raw_transaction("00"),
        lambda: rpc.send_raw_transaction("00"),
        lambda: rpc.test_mempool_accept(["00"]),
        lambda: rpc.get_mempool_entry("00" * 32),
        lambda: rpc.get_tx_out("00" * 32, 0),
        lambda: fee_rate(rpc.estimate_smart_fee(6)),
        lambda: rpc.generate_to_address(1, "x"),
        lambda: rpc.get_block("00" * 32, 2),
        lambda: rpc.get_raw_transaction("00" * 32, True),
        rpc.get_raw_mempool,
        lambda: rpc.get_raw_transaction("00" * 32, False),
    ]

    def run(data: bytes) -> None:
        if not data:
            return
        adapter.answer(data[1:])  # the first byte picks the call: one HTTP exchange per input
        calls[data[0] % len(calls)]()

    tx = {
        "txid": "cd" * 32,
        "vin": [{"txid": "ab" * 32, "vout": 1, "prevout": {"value": 0.5, "scriptPubKey": {}}}],
        "vout": [
            {"n": 0, "value": 0.00012, "scriptPubKey": {"hex": "0014" + "11" * 20}},
            {"n": 1, "value": 1, "scriptPubKey": {"hex": "51", "address": "bcrt1q"}},
        ],
        "confirmations": 3,
    }
    tx["vin"][0]["prevout"]["scriptPubKey"] = {"hex": "0014" + "22" * 20, "address": "bcrt1q"}
    coinbase = {"txid": "ef" * 32, "vin": [{"coinbase": "03"}], "vout": tx["vout"][:1]}
    block = {
        "hash": "00" * 32,
        "height": 812,
        "time": 1_700_000_000,
        "previousblockhash": "11" * 32,
        "tx": [coinbase, tx],
    }
    answers = [
        b'{"result": 812345, "error": null, "id": 1}',
        b'{"result": {"feerate": 0.00012, "blocks": 2, "errors": []}, "error": null, "id": 1}',
        b'{"result": [{"txid": "ab", "wtxid": "cd", "allowed": true, "vsize": 141, '
        b'"fees": {"base": 0.00001}}], "error": null, "id": 1}',
        b'!{"result": null, "error": {"code": -26, "message": "bad-txns"}, "id": 1}',
        b'{"result": {"hash": "00", "height": 5, "confirmations": 1}, "error": null, "id": 1}',
        b'{"result": ["00", "11"], "error": null, "id": 1}',
        b'{"result": "' + b"ab" * 32 + b'", "error": null, "id": 1}',
        b'{"result": ' + json.dumps(block).encode() + b', "error": null, "id": 1}',
        b'{"result": ' + json.dumps(block["tx"][1]).encode() + b', "error": null, "id": 1}',
    ]
    seeds = [bytes([n]) + answer for n in range(len(calls)) for answer in answers]
    return Harness(run, (ChainError,), seeds)


if os.environ.get("CC_FUZZ_SELFTEST"):  # tests/fuzz/test_fuzz.py: proves a crash is caught

    @harness("selftest")
    def _selftest() -> Harness:
        def run(data: bytes) -> None:
            if data == b"crash":
                raise IndexError("a crash the runner must report")
            raise KeyError("the harness's allowed error")

        return Harness(run, (KeyError,), [b"fine", b"crash"])


# -- disaster recovery: files carried to the cold console ----------------------------------------


@harness("cold_backup_file", "hsm_cold.backup")
def _cold_backup_file() -> Harness:
    """A backup file from storage media, as `hsm-cold backup verify` and `restore` read it."""
    import os

    import coincurve

    from hsm_cold.backup import BackupFile, BackupKey, canonical
    from hsm_cold.errors import ColdHsmError

    key = BackupKey(bytes(range(32)))

    def run(data: bytes) -> None:
        bf = BackupFile.from_text(text(data), "fuzz")
        bf.check_signature("fuzz")
        bf.open(key, "fuzz")

    identity = coincurve.PrivateKey(bytes([7]) * 32)
    header = {
        "kind": "account",
        "account": 1,
        "network": "regtest",
        "identity_pubkey": identity.public_key.format().hex(),
        "backup_key_id": key.key_id,
    }
    nonce = os.urandom(12)
    unsigned = BackupFile(header, nonce, key.seal(canonical(header), b"{}", nonce), b"")
    sig = identity.sign_recoverable(unsigned.digest(), hasher=None)
    good = BackupFile(header, nonce, unsigned.ciphertext, bytes([31 + sig[64]]) + sig[:64])
    return Harness(run, (ColdHsmError,), [good.to_text().encode(), b"{}"])


@harness("recovery_psbt", "wallet_core", "embit")
def _recovery_psbt() -> Harness:
    """A recovery PSBT from `cc-recover`, as `sign-recovery` checks it on either HSM."""
    from wallet_core.addresses import address_to_script
    from wallet_core.errors import WalletError
    from wallet_core.prevtx import parse_prev_tx
    from wallet_core.psbt import Psbt, PsbtInput, PsbtOutput
    from wallet_core.recovery import RecoveryCheckError, hot_wallet_inputs, summary
    from wallet_core.wallets import RECEIVE

    _, wallet = _send_psbt()

    def funding(script: bytes, value: int) -> bytes:
        body = b"\x01" + bytes(32) + b"\x00" * 5 + b"\xff" * 4 + b"\x01"
        body += value.to_bytes(8, "little") + bytes([len(script)]) + script
        return (2).to_bytes(4, "little") + body + b"\x00" * 4

    raw = funding(wallet.script_pubkey(4, RECEIVE), 500_000)
    coin = PsbtInput(
        parse_prev_tx(raw).txid,
        0,
        500_000,
        wallet.script_pubkey(4, RECEIVE),
        wallet.witness_script(4, RECEIVE),
        wallet.origins(4, RECEIVE),
    )
    payee = address_to_script("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", wallet.network)
    psbt = Psbt.create([coin], [PsbtOutput(payee, 499_000)])
    psbt.set_prev_tx(0, raw)

    def run(data: bytes) -> None:
        p = Psbt.from_bytes(data)
        summary(p, hot_wallet_inputs(p, wallet), wallet.network)

    return Harness(run, (WalletError, RecoveryCheckError), [psbt.to_bytes()])
