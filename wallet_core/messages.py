"""Bitcoin signed messages (Bitcoin Core's `signmessage`/`verifymessage` format).

digest = SHA256d("\\x18Bitcoin Signed Message:\\n" + varint(len(msg)) + msg); the signature
is 65 bytes, header 27 + recid (+4 for a compressed key), then r||s; base64 on the wire.
ChainCloud's batch proofs are ~49 KB messages, so the varint takes its 3-byte (0xfd) form.
"""

from __future__ import annotations

import base64
import binascii

from coincurve import PrivateKey, PublicKey

from . import secp
from .addresses import decode_address
from .errors import AddressError, MessageSignatureError
from .hashes import double_sha256, hash160
from .networks import Network
from .script import ScriptType
from .sighash import varint

MAGIC = b"\x18Bitcoin Signed Message:\n"


def message_digest(message: str | bytes) -> bytes:
    data = message.encode("utf-8") if isinstance(message, str) else message
    return double_sha256(MAGIC + varint(len(data)) + data)


def sign_message(priv: bytes, message: str | bytes, *, compressed: bool = True) -> str:
    """Base64 compact signature, as `signmessagewithprivkey` returns."""
    secp.check_privkey(priv)
    rec = PrivateKey(priv).sign_recoverable(message_digest(message), hasher=None)
    recid = rec[64]
    header = 27 + recid + (4 if compressed else 0)
    return base64.b64encode(bytes([header]) + rec[:64]).decode()


def compact_from_rs(r: int, s: int, recid: int, compressed: bool = True) -> str:
    """Build the base64 signature from raw (r, s) plus recovery id (for an HSM's raw output)."""
    header = 27 + recid + (4 if compressed else 0)
    raw = bytes([header]) + r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return base64.b64encode(raw).decode()


def _decode(signature: str) -> tuple[int, bool, bytes]:
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise MessageSignatureError("signature is not valid base64") from None
    if len(raw) != 65:
        raise MessageSignatureError(f"signature must be 65 bytes, got {len(raw)}")
    header = raw[0]
    if not 27 <= header <= 34:
        raise MessageSignatureError(f"bad signature header byte {header}")
    compressed = header >= 31
    recid = (header - 27) & 3
    return recid, compressed, raw[1:]


def recover_pubkey(message: str | bytes, signature: str) -> bytes:
    """Public key that made `signature` over `message` (compressed or not, per the header)."""
    recid, compressed, rs = _decode(signature)
    try:
        pub = PublicKey.from_signature_and_message(
            rs + bytes([recid]), message_digest(message), hasher=None
        )
    except Exception:  # noqa: BLE001 (coincurve raises bare Exception on failed recovery)
        raise MessageSignatureError("cannot recover a public key from the signature") from None
    # Core does not insist, but every signer we accept makes low-S; refusing the high-S twin
    # keeps one message from having two valid signature strings.
    s = int.from_bytes(rs[32:], "big")
    if s > secp.N // 2:
        raise MessageSignatureError("signature is not low-S")
    return bytes(pub.format(compressed=compressed))


def verify_message_pubkey(pubkey: bytes, message: str | bytes, signature: str) -> bool:
    """True if `signature` over `message` was made by `pubkey` (compressed form compared)."""
    try:
        rec = recover_pubkey(message, signature)
    except MessageSignatureError:
        return False
    return secp.compress_pubkey(rec) == secp.compress_pubkey(pubkey)


def verify_message(address: str, message: str | bytes, signature: str, network: Network) -> bool:
    """Verify against a P2PKH (Core's only kind) or a P2WPKH address (BIP137 style)."""
    try:
        info = decode_address(address)
    except AddressError:
        return False
    if network not in info.networks:
        return False
    try:
        recid, compressed, _ = _decode(signature)
        rec = recover_pubkey(message, signature)
    except MessageSignatureError:
        return False
    if info.type is ScriptType.P2PKH:
        return hash160(rec) == info.program
    if info.type is ScriptType.P2WPKH:
        return compressed and hash160(rec) == info.program
    return False
