"""Regressions: each input that once made a parser raise something other than its package's
own errors, run through the same harness, now refused with the domain error named here.

Inputs found by the fuzzer are kept byte for byte (hex), with a minimal hand-made equivalent
where the fuzzer's is long.
"""

from __future__ import annotations

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

# (harness, input, the domain error it must raise now)
CRASHES: list[tuple[str, bytes, type[BaseException]]] = [
    # OverflowError: BytesIO.read() of a compact-size length of 2**64 - 1 (the unsigned tx's).
    (
        "psbt",
        bytes.fromhex(
            "70736274ff0100ff"
            + "ff" * 68
            + "a60200000002"
            + "ab" * 18
            + "5b54"
            + "ab" * 12
            + "0100000000fdffffff"
            + "cd" * 32
            + "0000000063fdffffff02e09304000000000016"
            "0014751e76e8199196d45402" + "ab" * 16 + "5b54" + "ab" * 12 + "0100002500fdffffff"
            "1a3d12a80bc3338e1fe283cdcdcd0000000000fdffffff02e093040000000000584b41cc56beea385574"
        ),
        PsbtError,
    ),
    ("psbt", b"psbt\xff\x01\x00\xff" + b"\xff" * 8, PsbtError),
    # OverflowError: the same for the first key's length, through the hot HSM's co-sign plan.
    (
        "hot_cosign_plan",
        bytes.fromhex("70736274ffff52000000" + "96" * 103 + "0100000001bfe7"),
        PsbtError,
    ),
    ("hot_cosign_plan", b"psbt\xff\xff" + b"\xff" * 8, PsbtError),
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
            with pytest.raises(LinkEncodingError):
                decode(raw)
    for body in ([], [True], ["x"], [99], {"a": 1}):
        with pytest.raises(LinkEncodingError):
            decode_refusal(codec.encode(body))
