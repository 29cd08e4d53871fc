"""BIP32: the BIP's vectors 1-3, strict parsing, and the fast chain deriver checked against
the plain derivation and an independent library (`bip32`, coincurve-based)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from bip32 import BIP32
from embit.util.py_ripemd160 import ripemd160 as py

from wallet_core import hashes
from wallet_core.base58 import b58check_decode, b58check_encode
from wallet_core.bip32 import (
    HARDENED,
    ChainDeriver,
    ExtendedKey,
    format_path,
    parse_path,
    parse_xpub,
)
from wallet_core.errors import (
    DerivationPathError,
    InvalidExtendedKeyError,
)
from wallet_core.networks import Network

VECTORS = json.loads((Path(__file__).parent / "vectors" / "bip32.json").read_text())["vectors"]
STEPS = [(v["seed"], step) for v in VECTORS for step in v["chain"]]


@pytest.mark.parametrize(("seed", "step"), STEPS, ids=[s["path"] for _, s in STEPS])
def test_bip32_vectors(seed: str, step: dict) -> None:
    master = ExtendedKey.from_seed(bytes.fromhex(seed), Network.MAINNET)
    node = master.derive(step["path"])
    assert node.serialize() == step["xprv"]
    assert node.to_public().serialize() == step["xpub"]
    # round trip through the parser
    assert ExtendedKey.parse(step["xprv"]) == node
    assert ExtendedKey.parse(step["xpub"]) == node.to_public()


@pytest.mark.parametrize(("seed", "step"), STEPS, ids=[s["path"] for _, s in STEPS])
def test_public_derivation_matches_private(seed: str, step: dict) -> None:
    """Non-hardened children of the xpub equal the neutered children of the xprv."""
    xprv = ExtendedKey.parse(step["xprv"])
    xpub = ExtendedKey.parse(step["xpub"])
    for i in (0, 1, 7, 2**31 - 1):
        assert xpub.child(i) == xprv.child(i).to_public()


def test_hardened_from_public_is_refused() -> None:
    xpub = ExtendedKey.parse(VECTORS[0]["chain"][0]["xpub"])
    with pytest.raises(DerivationPathError) as exc:
        xpub.child(HARDENED)
    assert exc.value.code == 503


def _mutate(xkey: str, offset: int, new: bytes) -> str:
    raw = bytearray(b58check_decode(xkey))
    raw[offset : offset + len(new)] = new
    return b58check_encode(bytes(raw))


MASTER_XPUB = VECTORS[0]["chain"][0]["xpub"]
MASTER_XPRV = VECTORS[0]["chain"][0]["xprv"]
CHILD_XPUB = VECTORS[0]["chain"][1]["xpub"]

INVALID = [
    ("unknown version", _mutate(MASTER_XPUB, 0, b"\x04\x88\xb2\x1f")),
    ("pubkey prefix 04", _mutate(MASTER_XPUB, 45, b"\x04")),
    ("pubkey not on curve", _mutate(MASTER_XPUB, 46, b"\xff" * 32)),
    ("private key zero", _mutate(MASTER_XPRV, 46, bytes(32))),
    ("private key >= n", _mutate(MASTER_XPRV, 46, b"\xff" * 32)),
    ("private key without 0x00 prefix", _mutate(MASTER_XPRV, 45, b"\x01")),
    ("depth 0 with parent fingerprint", _mutate(MASTER_XPUB, 5, b"\x01\x02\x03\x04")),
    ("depth 0 with child index", _mutate(MASTER_XPUB, 9, b"\x00\x00\x00\x01")),
    ("xpub version on a private key", _mutate(MASTER_XPRV, 0, bytes.fromhex("0488b21e"))),
    ("bad checksum", MASTER_XPUB[:-1] + ("9" if MASTER_XPUB[-1] != "9" else "8")),
    ("truncated", b58check_encode(b58check_decode(CHILD_XPUB)[:77])),
]


@pytest.mark.parametrize(("reason", "text"), INVALID, ids=[r for r, _ in INVALID])
def test_invalid_extended_keys(reason: str, text: str) -> None:
    with pytest.raises(InvalidExtendedKeyError) as exc:
        ExtendedKey.parse(text)
    assert exc.value.code == 502


def test_parse_xpub_refuses_private() -> None:
    with pytest.raises(InvalidExtendedKeyError, match="private"):
        parse_xpub(MASTER_XPRV)


def test_versions_follow_the_network_and_family() -> None:
    seed = bytes(range(32))
    m = ExtendedKey.from_seed(seed, Network.REGTEST)
    assert m.serialize().startswith("tprv")
    assert m.to_public().serialize().startswith("tpub")
    zprv = m.with_version(Network.TESTNET.params.zkey.private)
    assert zprv.serialize().startswith("vprv")
    assert zprv.to_public().serialize().startswith("vpub")
    assert Network.REGTEST in m.networks and Network.TESTNET in m.networks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("m/84'/0'/0'", (84 + HARDENED, HARDENED, HARDENED)),
        ("m/48h/1h/0h/2h/0/5", (48 + HARDENED, 1 + HARDENED, HARDENED, 2 + HARDENED, 0, 5)),
        ("0/1", (0, 1)),
        ("m", ()),
    ],
)
def test_parse_path(text: str, expected: tuple[int, ...]) -> None:
    assert parse_path(text) == expected
    assert parse_path(format_path(expected)) == expected


@pytest.mark.parametrize("bad", ["m/x", "m//1", "m/2147483648", "m/1'/-2", "m/1''"])
def test_bad_paths(bad: str) -> None:
    with pytest.raises(DerivationPathError):
        parse_path(bad)


def test_fingerprints_match_the_vectors_parent_fields() -> None:
    chain = [ExtendedKey.parse(s["xprv"]) for s in VECTORS[0]["chain"]]
    for parent, child in zip(chain, chain[1:], strict=False):
        assert child.parent_fingerprint == parent.fingerprint
    assert chain[0].fingerprint.hex() == "3442193e"  # BIP32 vector 1 master fingerprint


def test_chain_deriver_matches_plain_derivation_and_bip32_library() -> None:
    seed = os.urandom(32)
    master = ExtendedKey.from_seed(seed, Network.MAINNET)
    chain = master.derive("m/84h/0h/0h/0").to_public()
    other = BIP32.from_seed(seed)
    fast = ChainDeriver(chain).pubkeys(0, 300)
    for i in range(0, 300, 37):
        assert fast[i] == chain.child(i).public_key
    for i in (0, 1, 150, 299):
        assert fast[i] == other.get_pubkey_from_path(f"m/84h/0h/0h/0/{i}")
    # the window tables also cover indices far from 0
    far = ChainDeriver(chain).pubkeys(2**31 - 3, 3)
    assert far == [chain.child(i).public_key for i in range(2**31 - 3, 2**31)]


def test_chain_deriver_range_checks() -> None:
    chain = ExtendedKey.from_seed(bytes(32), Network.MAINNET).to_public()
    with pytest.raises(DerivationPathError):
        ChainDeriver(chain).pubkeys(2**31 - 1, 2)


def test_hash160_backend_is_reported_and_correct() -> None:
    assert hashes.RIPEMD160_BACKEND in ("hashlib (OpenSSL)", "pure-python (embit)")
    # RIPEMD-160("abc"), from the RIPEMD-160 paper
    assert hashes.ripemd160(b"abc").hex() == "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"

    assert py(b"abc") == hashes.ripemd160(b"abc")
