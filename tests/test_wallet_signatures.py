"""Signatures: strict DER, low-S normalisation, external signers (raw r||s or DER, any S),
and signed messages checked against Bitcoin Core's vector and python-bitcointx."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import bitcointx
import pytest
from bitcointx.signmessage import BitcoinMessage, VerifyMessage
from bitcointx.wallet import P2PKHCoinAddress
from coincurve import PrivateKey, PublicKey

from wallet_core.addresses import p2wpkh_address
from wallet_core.errors import MessageSignatureError, SignatureError, SignerError
from wallet_core.keys import wif_decode
from wallet_core.messages import (
    message_digest,
    recover_pubkey,
    sign_message,
    verify_message,
    verify_message_pubkey,
)
from wallet_core.networks import Network
from wallet_core.secp import N, pubkey_from_privkey, sign_der
from wallet_core.signatures import (
    SoftwareSigner,
    der_decode,
    der_encode,
    is_low_s,
    normalize_low_s,
    sign_digest,
    sign_with,
    verify_digest,
)

MSG = json.loads((Path(__file__).parent / "vectors" / "signed_messages.json").read_text())
PRIV = hashlib.sha256(b"signature tests").digest()
PUB = pubkey_from_privkey(PRIV)
DIGEST = hashlib.sha256(b"digest").digest()


@pytest.mark.parametrize("n", range(8))
def test_sign_der_is_coincurves_signature(n: int) -> None:
    """`secp.sign_der` (no public key derived) gives coincurve's own RFC6979 signature."""
    priv = hashlib.sha256(b"key %d" % n).digest()
    digest = hashlib.sha256(b"digest %d" % n).digest()
    assert sign_der(priv, digest) == PrivateKey(priv).sign(digest, hasher=None)
    assert sign_digest(priv, digest) == sign_der(priv, digest)


def test_der_round_trip_and_low_s() -> None:
    sig = sign_digest(PRIV, DIGEST)
    r, s = der_decode(sig)
    assert is_low_s(s) and der_encode(r, s) == sig
    assert verify_digest(PUB, DIGEST, sig)
    high = der_encode(r, N - s)
    assert not verify_digest(PUB, DIGEST, high)  # high-S refused by default
    assert verify_digest(PUB, DIGEST, high, require_low_s=False)
    assert normalize_low_s(r, N - s) == (r, s)
    assert not verify_digest(PUB, hashlib.sha256(b"other").digest(), sig)


@pytest.mark.parametrize(
    ("reason", "sig"),
    [
        ("empty", b""),
        ("wrong header", b"\x31\x06\x02\x01\x01\x02\x01\x01"),
        ("length mismatch", b"\x30\x07\x02\x01\x01\x02\x01\x01"),
        ("negative r", b"\x30\x06\x02\x01\x81\x02\x01\x01"),
        ("padded r", b"\x30\x07\x02\x02\x00\x01\x02\x01\x01"),
        ("zero s", b"\x30\x06\x02\x01\x01\x02\x01\x00"),
        ("trailing bytes", b"\x30\x06\x02\x01\x01\x02\x01\x01\x00"),
    ],
)
def test_non_strict_der_is_rejected(reason: str, sig: bytes) -> None:
    with pytest.raises(SignatureError):
        der_decode(sig)


@pytest.mark.parametrize("high_s", [False, True])
@pytest.mark.parametrize("raw", [False, True])
def test_external_signer_outputs_are_normalised(high_s: bool, raw: bool) -> None:
    signer = SoftwareSigner(PRIV, high_s=high_s, raw=raw)
    out = signer(DIGEST)
    assert len(out) == 64 if raw else out[0] == 0x30
    der = sign_with(signer, PUB, DIGEST)
    assert is_low_s(der_decode(der)[1]) and verify_digest(PUB, DIGEST, der)


def test_external_signer_with_wrong_key_is_caught() -> None:
    with pytest.raises(SignerError, match="does not verify"):
        sign_with(SoftwareSigner(b"\x05" * 32), PUB, DIGEST)
    with pytest.raises(SignerError, match="malformed"):
        sign_with(lambda d: b"\x00" * 63, PUB, DIGEST)


# -- signed messages
@pytest.mark.parametrize(
    "v", MSG["vectors"], ids=lambda v: v.get("message", "batch")[:20] or "empty"
)
def test_signed_message_vectors(v: dict) -> None:
    message = v.get("message")
    if message is None:
        message = "".join(
            f"{i},bcrt1q{hashlib.sha256(str(i).encode()).hexdigest()[:38]}:"
            for i in range(v["batch_message_entries"])
        )
        assert len(message.encode()) == v["message_length"] > 0xFFFF // 2  # 3-byte varint
    priv, net, _ = wif_decode(v["wif"])
    net = Network(v["network"]) if v["network"] != "testnet" else net
    # deterministic RFC6979 signatures: ours must equal the published/independent one
    assert sign_message(priv, message) == v["signature"]
    assert verify_message(v["address"], message, v["signature"], net)
    assert recover_pubkey(message, v["signature"]) == pubkey_from_privkey(priv)
    assert not verify_message(v["address"], message + ".", v["signature"], net)


def test_batch_message_uses_three_byte_varint_and_agrees_with_bitcointx() -> None:
    message = "".join(f"{i},bcrt1q{'x' * 38}:" for i in range(1000))
    data = message.encode()
    assert 0xFD <= len(data) <= 0xFFFF
    expected = hashlib.sha256(
        hashlib.sha256(
            b"\x18Bitcoin Signed Message:\n" + b"\xfd" + len(data).to_bytes(2, "little") + data
        ).digest()
    ).digest()
    assert message_digest(message) == expected
    sig = sign_message(PRIV, message)
    with bitcointx.ChainParams("bitcoin/regtest"):
        addr = P2PKHCoinAddress.from_pubkey(bitcointx.core.key.CPubKey(PUB))
        assert VerifyMessage(addr, BitcoinMessage(message), sig)
        assert verify_message(str(addr), message, sig, Network.REGTEST)


def test_message_verification_against_pubkey_and_p2wpkh() -> None:
    sig = sign_message(PRIV, "hello")
    assert verify_message_pubkey(PUB, "hello", sig)
    assert not verify_message_pubkey(pubkey_from_privkey(b"\x03" * 32), "hello", sig)
    assert verify_message(p2wpkh_address(PUB, Network.REGTEST), "hello", sig, Network.REGTEST)
    assert not verify_message(p2wpkh_address(PUB, Network.REGTEST), "hello", sig, Network.MAINNET)


def test_malformed_and_high_s_message_signatures() -> None:
    for bad in ("", "!!!", "AAAA", sign_message(PRIV, "x")[:-4]):
        with pytest.raises(MessageSignatureError):
            recover_pubkey("x", bad)

    raw = bytearray(base64.b64decode(sign_message(PRIV, "x")))
    s = int.from_bytes(raw[33:], "big")
    raw[33:] = (N - s).to_bytes(32, "big")
    flags = raw[0] - 27
    raw[0] = 27 + (flags & 4) + ((flags & 3) ^ 1)  # the high-S twin has the other recovery id
    twin = base64.b64encode(bytes(raw)).decode()
    # the twin recovers the same key (so it is a real signature), yet we refuse it
    rec = PublicKey.from_signature_and_message(
        bytes(raw[1:]) + bytes([(flags & 3) ^ 1]), message_digest("x"), hasher=None
    )
    assert rec.format() == PUB
    with pytest.raises(MessageSignatureError, match="low-S"):
        recover_pubkey("x", twin)
