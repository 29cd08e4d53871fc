"""The `vtest_info` encryption (reference section 2): the published vector, wrong passwords,
tampering and malformed blobs all end as one clean `VtestDecryptError`."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cc_common import vtest
from cc_common.vtest import (
    VtestDecryptError,
    VtestRequest,
    decrypt_vtest,
    encrypt_vtest,
    open_vtest,
    parse_vtest_plaintext,
    vtest_plaintext,
)
from wallet_core.chaincloud import parse_outs
from wallet_core.errors import WalletError
from wallet_core.networks import Network

# The example published with ChainCloud's docs (reference section 2).
VECTOR_PASSWORD = "20160721"
VECTOR_BLOB = (
    "B23A7DDF7AF953D4344ED8B190E9424C2A8D85CAA00B4358D58C5341E36A194097EA21F7D457E770E2C95128"
    "34D206DE9EB766ED154F7ECEABB61056E97D200F174EAD69CF62E5A7EDDF823AB8293EAEDFA47AA1FF66D1FD"
    "F2D4D2B6FFC0DF5E1D62DB84C7A3C6E432CDE0CDEABB9C79/166EAB021AFB6244191EEE75340F8109/"
    "D267F338A21B487D"
)
VECTOR_PLAINTEXT = (
    '{"outs":"1NbbvxBYxGGCBhaM8mow1HFWA7dB5yukmY,10000;1MCs9SZwLg9JvLo6pzvVBWtmSV1dakwyM1,10000",'
    '"dynamic":0}'
)


def test_published_vector_decrypts_exactly() -> None:
    assert decrypt_vtest(VECTOR_BLOB, VECTOR_PASSWORD) == VECTOR_PLAINTEXT
    req = open_vtest(VECTOR_BLOB, VECTOR_PASSWORD)
    assert req == VtestRequest(
        outs="1NbbvxBYxGGCBhaM8mow1HFWA7dB5yukmY,10000;1MCs9SZwLg9JvLo6pzvVBWtmSV1dakwyM1,10000",
        dynamic=0,
    )


def test_lower_case_hex_is_accepted() -> None:
    assert decrypt_vtest(VECTOR_BLOB.lower(), VECTOR_PASSWORD) == VECTOR_PLAINTEXT


def test_utf8_password_does_not_decrypt_the_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proves the key is derived from UTF-16BE: the same scrypt over UTF-8 bytes fails."""

    def derive_utf8(password: str, salt: bytes) -> bytes:
        return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=16384, r=8, p=1, dklen=32)

    monkeypatch.setattr(vtest, "derive_key", derive_utf8)
    with pytest.raises(VtestDecryptError):
        decrypt_vtest(VECTOR_BLOB, VECTOR_PASSWORD)


@pytest.mark.parametrize(
    "password", ["20160722", "2016072", "", "20160721 ", "ＭＹ密码", "x" * 200, "201607210"]
)
def test_wrong_password_is_a_clean_decrypt_failed(password: str) -> None:
    with pytest.raises(VtestDecryptError) as info:
        decrypt_vtest(VECTOR_BLOB, password)
    assert info.value.message == "decrypt failed"
    assert str(info.value) == "decrypt failed"
    assert info.value.code == 850


def test_many_wrong_passwords_never_yield_a_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """About 1 wrong key in 256 gives valid padding; the UTF-8 and JSON checks must catch it.

    scrypt is swapped for a fast hash here so that thousands of wrong keys can be tried (the
    real scrypt path is covered above); the decryption and checks after it are the real ones.
    """

    monkeypatch.setattr(
        vtest, "derive_key", lambda pw, salt: hashlib.sha256(pw.encode() + salt).digest()
    )
    blob = encrypt_vtest(vtest_plaintext("bcrt1qexample000000000,1", 1), "right password")
    reasons: dict[str, int] = {}
    for n in range(5000):
        try:
            decrypt_vtest(blob, f"wrong {n}")
        except VtestDecryptError as exc:
            assert exc.message == "decrypt failed"
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
        else:
            pytest.fail(f"wrong password {n} decrypted to a valid request")
    assert decrypt_vtest(blob, "right password")
    # Some wrong keys did get past the padding and were caught only by the later checks.
    assert sum(v for k, v in reasons.items() if k != "bad padding") > 0, reasons


@pytest.mark.parametrize("dynamic", [0, 1])
def test_round_trip(dynamic: int) -> None:
    text = vtest_plaintext(
        "bcrt1qabc0000000000000,5000;2N8hwP1WmJrFF5QWABn38y63uYLhnJYJYTF,7", dynamic
    )
    blob = encrypt_vtest(text, "shared secret ünïcode")
    ct, iv, salt = blob.split("/")
    assert blob == blob.upper()
    assert len(iv) == 32 and len(salt) == 16 and len(ct) % 32 == 0
    assert decrypt_vtest(blob, "shared secret ünïcode") == text
    assert json.loads(text) == {"outs": json.loads(text)["outs"], "dynamic": dynamic}


def test_each_encryption_uses_fresh_iv_and_salt() -> None:
    text = vtest_plaintext("a" * 20 + ",1", 0)
    a, b = encrypt_vtest(text, "pw-123456"), encrypt_vtest(text, "pw-123456")
    assert a.split("/")[1] != b.split("/")[1] and a.split("/")[2] != b.split("/")[2]


def _flip(hex_text: str, pos: int) -> str:
    digit = "0" if hex_text[pos] != "0" else "1"
    return hex_text[:pos] + digit + hex_text[pos + 1 :]


@pytest.mark.parametrize("field,pos", [(0, 0), (0, -1), (0, 100), (1, 0), (2, 0), (2, 15)])
def test_tampered_blob_fails(field: int, pos: int) -> None:
    parts = VECTOR_BLOB.split("/")
    parts[field] = _flip(parts[field], pos % len(parts[field]))
    with pytest.raises(VtestDecryptError):
        decrypt_vtest("/".join(parts), VECTOR_PASSWORD)


def test_iv_tampering_is_malleable_and_left_to_the_address_checks() -> None:
    """No MAC: flipping IV bits flips the same bits of the first plaintext block.

    Here the first address changes one character and still "decrypts". That is why the
    V-device must validate every output address (checksums) after decrypting: the checksum
    is what refuses it ("tx out invalid").
    """

    ct, iv, salt = VECTOR_BLOB.split("/")
    raw = bytearray(bytes.fromhex(iv))
    raw[15] ^= ord("B") ^ ord("C")  # plaintext byte 15 is the B of "1NbbvxB..."
    tampered = decrypt_vtest(f"{ct}/{raw.hex().upper()}/{salt}", VECTOR_PASSWORD)
    assert tampered == VECTOR_PLAINTEXT.replace("1NbbvxB", "1NbbvxC")
    with pytest.raises(WalletError):
        parse_outs(json.loads(tampered)["outs"], Network.MAINNET)
    assert parse_outs(json.loads(VECTOR_PLAINTEXT)["outs"], Network.MAINNET)


CT, IV, SALT = VECTOR_BLOB.split("/")


@pytest.mark.parametrize(
    "blob",
    [
        "",
        "/",
        "//",
        CT,
        f"{CT}/{IV}",
        f"{CT}/{IV}/{SALT}/00",
        f"{CT}/{IV}/{SALT}/",
        f"{CT}/{SALT}/{IV}",  # IV and salt swapped
        f"{CT[:-2]}/{IV}/{SALT}",  # not a whole number of blocks
        f"{CT[:-1]}/{IV}/{SALT}",  # odd number of hex digits
        f"{CT[:-32]}/{IV}/{SALT}",  # a block missing
        f"/{IV}/{SALT}",  # empty ciphertext
        f"{CT}/{IV[:-2]}/{SALT}",
        f"{CT}/{IV}/{SALT}00",
        f"{CT[:-2]}ZZ/{IV}/{SALT}",  # not hex
        f"{CT[:10]} {CT[11:]}/{IV}/{SALT}",  # whitespace inside (bytes.fromhex would allow it)
        f"{CT}/{IV}/{SALT}".replace("/", ":"),
        "00" * 70_000 + f"/{IV}/{SALT}",  # absurdly long
    ],
)
def test_malformed_blob_fails(blob: str) -> None:
    with pytest.raises(VtestDecryptError) as info:
        decrypt_vtest(blob, VECTOR_PASSWORD)
    assert info.value.message == "decrypt failed"


def test_not_a_string_fails() -> None:
    with pytest.raises(VtestDecryptError):
        decrypt_vtest(None, VECTOR_PASSWORD)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "plaintext",
    [
        "not json",
        "[]",
        '"outs"',
        '{"outs":"a,1"}',
        '{"dynamic":0}',
        '{"outs":"a,1","dynamic":2}',
        '{"outs":"a,1","dynamic":true}',
        '{"outs":"a,1","dynamic":"0"}',
        '{"outs":"a,1","dynamic":0.0}',
        '{"outs":1,"dynamic":0}',
        '{"outs":null,"dynamic":0}',
        '{"outs":"a,1","dynamic":0,"extra":1}',
        '{"outs":"a,1","outs":"b,2","dynamic":0}',
    ],
)
def test_wrong_shape_plaintext_is_decrypt_failed(plaintext: str) -> None:
    with pytest.raises(VtestDecryptError):
        parse_vtest_plaintext(plaintext)
    blob = encrypt_vtest(plaintext, "pw-123456")
    with pytest.raises(VtestDecryptError):
        decrypt_vtest(blob, "pw-123456")


def test_non_utf8_plaintext_is_decrypt_failed() -> None:

    salt, iv = b"\x01" * 8, b"\x02" * 16
    padder = padding.PKCS7(128).padder()
    data = padder.update(b'{"outs":"\xff\xfe","dynamic":0}') + padder.finalize()
    enc = Cipher(algorithms.AES(vtest.derive_key("pw", salt)), modes.CBC(iv)).encryptor()
    blob = "/".join(x.hex().upper() for x in (enc.update(data) + enc.finalize(), iv, salt))
    with pytest.raises(VtestDecryptError) as info:
        decrypt_vtest(blob, "pw")
    assert info.value.reason == "plaintext is not UTF-8"


def test_plaintext_form_matches_the_reference() -> None:
    outs = "1NbbvxBYxGGCBhaM8mow1HFWA7dB5yukmY,10000;1MCs9SZwLg9JvLo6pzvVBWtmSV1dakwyM1,10000"
    assert vtest_plaintext(outs, 0) == VECTOR_PLAINTEXT


def test_empty_password_is_refused_for_encryption() -> None:
    with pytest.raises(ValueError):
        encrypt_vtest(VECTOR_PLAINTEXT, "")
