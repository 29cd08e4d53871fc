"""The `vtest_info` encryption shared by the merchant site (encrypts) and the V-device (decrypts).

Reference section 2, kept bit-for-bit compatible with the original chaincloud-v app:

- key = scrypt(password encoded as **UTF-16BE** (what Java's bitcoinj does; UTF-8 gives a
  different key), salt 8 bytes, N=16384, r=8, p=1, 32 bytes);
- AES-256-CBC with PKCS#7 padding, random 16-byte IV;
- written `HEX(ciphertext)/HEX(iv)/HEX(salt)`, upper-case hex;
- plaintext JSON `{"outs":"addr,value;addr,value","dynamic":0}`.

There is no MAC, so a wrong password or a tampered blob shows only as bad padding or as text
that is not the expected JSON. Every such case raises the one `VtestDecryptError` ("decrypt
failed"), whose message never says which check failed, so the V-device's answer cannot serve as
a padding oracle. Decryption costs ~70 ms (scrypt dominates), which also slows guessing.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cc_common.errors import CustodyError

SCRYPT_N = 16384
SCRYPT_R = 8
SCRYPT_P = 1
KEY_LEN = 32
IV_LEN = 16
SALT_LEN = 8
BLOCK_BITS = 128
# A send request is a few hundred bytes; refuse absurd blobs before spending scrypt on them.
MAX_CIPHERTEXT_LEN = 64 * 1024
_HEX = re.compile(r"[0-9A-Fa-f]+")


class VtestDecryptError(CustodyError):
    """`vtest_info` did not decrypt to a send request: wrong password, tampered or malformed.

    The message is always "decrypt failed"; `reason` says why, for logs and tests only.
    """

    code = 850

    def __init__(self, reason: str) -> None:
        super().__init__("decrypt failed")
        self.reason = reason


@dataclass(frozen=True)
class VtestRequest:
    """A decrypted send request: the outputs string as sent, and the dynamic-fee flag."""

    outs: str
    dynamic: int


def derive_key(password: str, salt: bytes) -> bytes:
    """The AES key: scrypt over the password as UTF-16BE, as the original app does."""
    return hashlib.scrypt(
        password.encode("utf-16-be"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=KEY_LEN,
        maxmem=64 * 1024 * 1024,
    )


def vtest_plaintext(outs: str, dynamic: int) -> str:
    """The plaintext in the reference's exact form: compact JSON, `outs` before `dynamic`."""
    return json.dumps({"outs": outs, "dynamic": dynamic}, separators=(",", ":"))


def encrypt_vtest(plaintext: str, password: str) -> str:
    """Encrypt `plaintext` with a fresh IV and salt; returns `HEX(ct)/HEX(iv)/HEX(salt)`."""
    if not password:
        raise ValueError("the vtest password must not be empty")
    iv = secrets.token_bytes(IV_LEN)
    salt = secrets.token_bytes(SALT_LEN)
    padder = padding.PKCS7(BLOCK_BITS).padder()
    data = padder.update(plaintext.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(derive_key(password, salt)), modes.CBC(iv)).encryptor()
    ct = encryptor.update(data) + encryptor.finalize()
    return "/".join(part.hex().upper() for part in (ct, iv, salt))


def _split_blob(blob: str) -> tuple[bytes, bytes, bytes]:
    if not isinstance(blob, str):
        raise VtestDecryptError("not a string")
    parts = blob.strip().split("/")
    if len(parts) != 3:
        raise VtestDecryptError(f"{len(parts)} fields, expected 3")
    if not all(_HEX.fullmatch(p) for p in parts):
        raise VtestDecryptError("a field is not hex")
    if any(len(p) % 2 for p in parts):
        raise VtestDecryptError("a field has an odd number of hex digits")
    ct, iv, salt = (bytes.fromhex(p) for p in parts)
    if len(iv) != IV_LEN or len(salt) != SALT_LEN:
        raise VtestDecryptError("bad IV or salt length")
    if not ct or len(ct) % (BLOCK_BITS // 8) or len(ct) > MAX_CIPHERTEXT_LEN:
        raise VtestDecryptError("bad ciphertext length")
    return ct, iv, salt


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def parse_vtest_plaintext(text: str) -> VtestRequest:
    """Check the plaintext is exactly `{"outs": str, "dynamic": 0|1}`; else decrypt failed.

    Without a MAC this check is what tells a right password from a lucky padding, so it is
    strict: no other keys, no duplicate keys, `dynamic` an integer 0 or 1 (not a boolean).
    Whether the outputs themselves are valid is the V-device's next check ("tx out invalid").
    """
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicates)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise VtestDecryptError("plaintext is not JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"outs", "dynamic"}:
        raise VtestDecryptError("plaintext is not a send request")
    outs, dynamic = obj["outs"], obj["dynamic"]
    if not isinstance(outs, str) or type(dynamic) is not int or dynamic not in (0, 1):
        raise VtestDecryptError("plaintext fields have the wrong types")
    return VtestRequest(outs=outs, dynamic=dynamic)


def decrypt_vtest(blob: str, password: str) -> str:
    """Decrypt `vtest_info`; returns the plaintext, checked to be a send request.

    Raises `VtestDecryptError` for a malformed blob, bad padding, non-UTF-8 text or JSON of
    the wrong shape: all of them mean the password is wrong or the site was tampered with.
    """
    ct, iv, salt = _split_blob(blob)
    decryptor = Cipher(algorithms.AES(derive_key(password, salt)), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ct) + decryptor.finalize()
    unpadder = padding.PKCS7(BLOCK_BITS).unpadder()
    try:
        data = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise VtestDecryptError("bad padding") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VtestDecryptError("plaintext is not UTF-8") from None
    parse_vtest_plaintext(text)
    return text


def open_vtest(blob: str, password: str) -> VtestRequest:
    """Decrypt and parse in one step (what the V-device wants)."""
    return parse_vtest_plaintext(decrypt_vtest(blob, password))
