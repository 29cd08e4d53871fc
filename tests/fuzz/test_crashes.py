"""Regressions: each input that once made a parser raise something other than its package's
own errors, run through the same harness, now refused with the domain error named here.

Inputs found by the fuzzer are kept byte for byte in `crashes/` (named by harness and the
start of their SHA-1), each with a minimal hand-made equivalent beside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cc_common.link.errors import LinkEncodingError
from cc_common.sms.errors import ModemError
from cc_common.vtest import VtestDecryptError
from custody.chain.errors import ChainUnavailable
from custody.hsm_client import HsmUnavailableError
from examples.merchant_site.errors import CustodyUnavailable
from hsm_hot.errors import BadRequest as HotBadRequest
from tests.fuzz.harnesses import HARNESSES
from vdevice.errors import RemoteError
from wallet_core.errors import PsbtError

DEEP_JSON = b"[" * 100_000
FOUND = Path(__file__).parent / "crashes"


def found(name: str) -> bytes:
    """An input exactly as the fuzzer wrote it (`crash-<sha1>`), kept in `crashes/`."""
    return (FOUND / name).read_bytes()


# (harness, input, the domain error it must raise now)
CRASHES: list[tuple[str, bytes, type[BaseException]]] = [
    # OverflowError: BytesIO.read() of a compact-size length of 2**64 - 1 (the unsigned tx's).
    ("psbt", found("psbt-72c97f3b"), PsbtError),
    ("psbt", b"psbt\xff\x01\x00\xff" + b"\xff" * 8, PsbtError),
    # OverflowError: the same for the first key's length, through the hot HSM's co-sign plan.
    ("hot_cosign_plan", found("hot_cosign_plan-94dd8392"), PsbtError),
    ("hot_cosign_plan", b"psbt\xff\xff" + b"\xff" * 8, PsbtError),
    # OverflowError: a PSBTv2 global field (0x02, the tx version) set above 4 bytes; found
    # by the fuzzer, the serialization of the unsigned tx failed in the hot HSM's plan.
    (
        "hot_cosign_plan",
        bytes.fromhex(
            "70736274ff01027b0200000002abababababababababababababababababababababababababababababababab0100000000fdffffffcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdfc00000000000000cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd0000000000fdffffff02e093040000000000160014751e76e8199196d454941c45d1b3a323f1433bd648530500000000002200209a1df923af97f29a8d9b07f0c6957966c8274c6f1a3d12a80bc3368e1f2a88a4b7bdcfe440ea1c5f15e336d63356dee1310000000082e462b2f0d3c0ef3dbc182103918c914a35be2bee99a124e0b7bdcfe440ea1c5f15e336d63356dee13182e462b2f0d3c0ef3dbc181c8dfc9b34300000800100008000000080020000800100000002000000220203918c914a35be2bee99a124e0fa879e19b976dc693b95571b9cc60b44931f60011c56c4fac3300000800100008000000080b852e7353b95571b9cc60b44931f60011c56c4fac330000080010000800000008002000080010000000200000000"
        ),
        PsbtError,
    ),
    # OverflowError: embit applied a PSBT v2 global tx version (key 0x02, 200+ bytes) to this v0
    # PSBT's transaction, which then could not be serialized (found after 47k runs).
    ("hot_cosign_plan", found("hot_cosign_plan-92f7ea4f"), PsbtError),
    ("psbt", b"psbt\xff\x01\x02\x09" + b"\xff" * 9 + b"\x00", PsbtError),
    # TypeError: dict(812345), a number where `getblockheader` documents an object.
    ("node_rpc_json", b'\x03{"result": 812345, "error": null, "id": 1}', ChainUnavailable),
    # AttributeError / ValueError: an `error` that is not an object, a code that is no integer.
    ("node_rpc_json", b'\x00{"result": null, "error": "x", "id": 1}', ChainUnavailable),
    ("node_rpc_json", b'\x00{"result": null, "error": {"code": "abc"}}', ChainUnavailable),
    # KeyError / TypeError: a testmempoolaccept entry without txid, a list instead of a dict.
    ("node_rpc_json", b'\x07{"result": [{"allowed": true}], "error": null}', ChainUnavailable),
    ("node_rpc_json", b'\x07{"result": [[1]], "error": null}', ChainUnavailable),
    # decimal.InvalidOperation: a fee rate that is a string.
    ("node_rpc_json", b'\x0a{"result": {"feerate": "x"}, "error": null}', ChainUnavailable),
    # KeyError / TypeError / ValueError / OverflowError in the watcher, which read these by
    # name: a block without height, a transaction without txid, an output without scriptPubKey,
    # a value with 9 decimals, a block time beyond datetime, a mempool of numbers.
    ("node_rpc_json", b'\x0c{"result": {"hash": "00", "tx": []}}', ChainUnavailable),
    ("node_rpc_json", b'\x0c{"result": {"height": 1, "hash": "00", "tx": [{}]}}', ChainUnavailable),
    (
        "node_rpc_json",
        b'\x0d{"result": {"txid": "ab", "vout": [{"n": 0, "value": 1}]}}',
        ChainUnavailable,
    ),
    (
        "node_rpc_json",
        b'\x0d{"result": {"txid": "ab", "vout": [{"n": 0, "value": 0.000000001, '
        b'"scriptPubKey": {"hex": "51"}}]}}',
        ChainUnavailable,
    ),
    (
        "node_rpc_json",
        b'\x0c{"result": {"height": 1, "hash": "00", "time": 1e20, "tx": []}}',
        ChainUnavailable,
    ),
    ("node_rpc_json", b'\x0e{"result": [1, 2]}', ChainUnavailable),
    # RecursionError: JSON nested deeper than the interpreter's recursion limit.
    ("node_rpc_json", b"\x00" + DEEP_JSON, ChainUnavailable),
    ("hot_rpc_request", DEEP_JSON, HotBadRequest),
    ("vtest", DEEP_JSON, VtestDecryptError),
    ("vdevice_remote", b"\x00" + DEEP_JSON, RemoteError),
    ("custody_hot_answer", b"\x01" + DEEP_JSON, HsmUnavailableError),
    ("merchant_custody_answer", b"\x00" + DEEP_JSON, CustodyUnavailable),
    # KeyError / TypeError / AttributeError: an answer without the documented field, a result
    # that is not an object, an error that is not an object (custody reading the hot HSM).
    ("custody_hot_answer", b'\x02{"result": {}}', HsmUnavailableError),
    ("custody_hot_answer", b'\x00{"result": 5}', HsmUnavailableError),
    ("custody_hot_answer", b'\x04{"error": "refused"}', HsmUnavailableError),
    ("custody_hot_answer", b"\x04[1]", HsmUnavailableError),
    # ValueError: "²".isdigit() is true, int("²") raises (a +CMGL index); so do 5000 digits.
    ("modem_at", b'+CMGL: \xc2\xb2,"REC READ","+15550001",,""\r\nhello\r\n', ModemError),
    ("modem_at", b"+CMGL: " + b"9" * 5000 + b',"REC READ","+1",,""\r\nhello\r\n', ModemError),
]


@pytest.mark.parametrize(
    ("name", "data", "error"),
    CRASHES,
    ids=[f"{name}-{n}" for n, (name, _, _) in enumerate(CRASHES)],
)
def test_crash_input_is_refused_with_a_domain_error(
    name: str, data: bytes, error: type[BaseException]
) -> None:
    harness = HARNESSES[name]()
    assert issubclass(error, harness.allowed)
    with pytest.raises(error):
        harness.run(data)


def test_link_bodies_of_the_wrong_shape_are_encoding_errors() -> None:
    """The command layer's body readers (both HSMs) refuse every other shape the same way."""
    from cc_common.link import codec
    from cc_common.link.rpc import decode_answer, decode_refusal, decode_request

    for body in ([], [1], ["x", []], [True, {}], [1, [True, "m"]], {"a": 1}, 5, [7, 1]):
        raw = codec.encode(body)
        for decode in (decode_request, decode_answer):
            if decode is decode_answer and body == {"a": 1}:
                continue  # an answer that is a map is its result
            with pytest.raises(LinkEncodingError):
                decode(raw)
    for body in ([], [True], ["x"], [99], {"a": 1}):
        with pytest.raises(LinkEncodingError):
            decode_refusal(codec.encode(body))


@pytest.mark.parametrize(
    ("scope", "key", "value"),
    [
        ("inputs", b"\x0e", bytes(32)),  # previous txid
        ("inputs", b"\x0f", (9).to_bytes(4, "little")),  # previous output index
        ("inputs", b"\x10", (0).to_bytes(4, "little")),  # sequence
        ("outputs", b"\x03", (1).to_bytes(8, "little")),  # amount
        ("outputs", b"\x04", b"\x51"),  # script
    ],
)
def test_v2_fields_cannot_change_a_v0_psbts_transaction(scope: str, key: bytes, value: bytes):
    """embit applies PSBT v2 per-input/output fields to a v0 PSBT, so the transaction read (and
    signed) differed from the global unsigned transaction; such a PSBT is now refused."""
    from embit.psbt import PSBT

    from tests.fuzz.harnesses import _send_psbt
    from wallet_core.psbt import Psbt

    psbt, _ = _send_psbt()
    p = PSBT.parse(psbt.to_bytes())
    getattr(p, scope)[0].unknown[key] = value
    with pytest.raises(PsbtError, match="contradict its unsigned transaction"):
        Psbt.from_bytes(p.serialize())


@pytest.mark.parametrize("code", ["1" * 5000, "\u0663\u0660\u0664"])
def test_a_final_result_code_is_short_ascii_digits(code: str) -> None:
    """`int()` of a +CMS/+CME code: 5000 digits raised ValueError (the interpreter's digit
    limit), and `\\d` matched other scripts' digits; such a line is not a final result code."""
    from cc_common.sms import modem

    assert modem._FINAL.match(f"+CMS ERROR: {code}") is None
    assert modem._FINAL.match(f"+CME ERROR: {code}") is None
    assert modem._FINAL.match("+CMS ERROR: 304").group(2) == "304"
