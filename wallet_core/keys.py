"""Seeds and single keys: BIP39 mnemonic -> seed, master/account keys, WIF.

BIP39 word-list checks come from embit (its English list); the seed itself is PBKDF2 here.
"""

from __future__ import annotations

import hashlib
import unicodedata

from embit import bip39

from . import secp
from .base58 import b58check_decode, b58check_encode
from .bip32 import ExtendedKey
from .errors import AddressError, InvalidKeyError, MnemonicError
from .networks import Network


def validate_mnemonic(mnemonic: str) -> None:
    """Raise `MnemonicError` unless every word is in the English list and the checksum holds."""
    if not bip39.mnemonic_is_valid(" ".join(mnemonic.split())):
        raise MnemonicError("mnemonic has an unknown word or a bad checksum")


def mnemonic_to_seed(mnemonic: str, passphrase: str = "", *, check: bool = True) -> bytes:
    """BIP39 seed: PBKDF2-HMAC-SHA512(NFKD(mnemonic), "mnemonic"+NFKD(passphrase), 2048)."""
    words = " ".join(unicodedata.normalize("NFKD", mnemonic).split())
    if check:
        validate_mnemonic(words)
    salt = "mnemonic" + unicodedata.normalize("NFKD", passphrase)
    return hashlib.pbkdf2_hmac("sha512", words.encode(), salt.encode(), 2048)


def master_key(seed: bytes, network: Network) -> ExtendedKey:
    return ExtendedKey.from_seed(seed, network)


def wif_encode(priv: bytes, network: Network, compressed: bool = True) -> str:
    secp.check_privkey(priv)
    payload = bytes([network.params.wif_prefix]) + priv + (b"\x01" if compressed else b"")
    return b58check_encode(payload)


def wif_decode(wif: str) -> tuple[bytes, Network, bool]:
    """Return (private key, network (MAINNET or TESTNET), compressed)."""
    try:
        raw = b58check_decode(wif.strip())
    except AddressError as exc:
        raise InvalidKeyError(f"WIF: {exc.message}") from None
    if raw[0] == 0x80:
        net = Network.MAINNET
    elif raw[0] == 0xEF:
        net = Network.TESTNET
    else:
        raise InvalidKeyError(f"unknown WIF prefix {raw[0]:#x}")
    if len(raw) == 34 and raw[33] == 1:
        compressed = True
    elif len(raw) == 33:
        compressed = False
    else:
        raise InvalidKeyError("WIF has a bad length")
    priv = raw[1:33]
    secp.check_privkey(priv)
    return priv, net, compressed
