"""Addresses: BIP173/BIP350 vectors, every output type on every network, specific errors,
and agreement with python-bitcointx's address code (independent of ours)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import bitcointx
import pytest
from bitcointx.wallet import CCoinAddress

from wallet_core import bech32, errors
from wallet_core.addresses import (
    address_to_script,
    decode_address,
    is_valid_address,
    p2pkh_address,
    p2sh_address,
    p2tr_address_from_internal_key,
    p2wpkh_address,
    p2wsh_address,
    script_to_address,
    validate_address,
)
from wallet_core.bech32 import Encoding, SegwitV0Encoder, bech32_decode, encode_segwit
from wallet_core.networks import Network
from wallet_core.script import ScriptType, multisig_script
from wallet_core.secp import pubkey_from_privkey

V = json.loads((Path(__file__).parent / "vectors" / "bip173_350_addresses.json").read_text())
_BITCOINTX_CHAIN = {
    Network.MAINNET: "bitcoin/mainnet",
    Network.TESTNET: "bitcoin/testnet",
    Network.SIGNET: "bitcoin/signet",
    Network.REGTEST: "bitcoin/regtest",
}


@pytest.mark.parametrize("entry", V["valid_checksums"], ids=lambda e: e["string"][:30])
def test_valid_checksums(entry: dict) -> None:
    _, _, spec = bech32_decode(entry["string"])
    assert spec is Encoding(entry["encoding"])


@pytest.mark.parametrize("entry", V["valid_addresses"], ids=lambda e: e["address"][:20])
def test_valid_addresses(entry: dict) -> None:
    net = Network(entry["network"])
    spk = bytes.fromhex(entry["script_pubkey"])
    assert address_to_script(entry["address"], net) == spk
    base58 = entry["address"][0] in "123mn"
    # bech32 addresses are encoded lower-case; base58 is case-sensitive
    assert script_to_address(spk, net) == (entry["address"] if base58 else entry["address"].lower())


@pytest.mark.parametrize("entry", V["invalid_addresses"], ids=lambda e: e["reason"])
def test_invalid_addresses(entry: dict) -> None:
    expected = getattr(errors, entry["error"])
    with pytest.raises(errors.AddressError) as exc:
        decode_address(entry["address"])
    assert type(exc.value) is expected, exc.value.message
    assert exc.value.code == expected.code
    for net in Network:
        assert not is_valid_address(entry["address"], net)


@pytest.mark.parametrize(
    "entry", V["wrong_network"], ids=lambda e: f"{e['address'][:10]}->{e['expect']}"
)
def test_wrong_network_names_the_owner(entry: dict) -> None:
    with pytest.raises(errors.WrongNetworkError) as exc:
        validate_address(entry["address"], Network(entry["expect"]))
    assert f"is for {entry['belongs']}, not {entry['expect']}" in exc.value.message
    assert exc.value.code == 512


@pytest.mark.parametrize("network", list(Network), ids=lambda n: n.value)
def test_every_type_round_trips_and_matches_bitcointx(network: Network) -> None:
    keys = [pubkey_from_privkey(os.urandom(32)) for _ in range(3)]
    ws = multisig_script(2, keys)
    made = {
        ScriptType.P2PKH: p2pkh_address(keys[0], network),
        ScriptType.P2SH: p2sh_address(ws, network),
        ScriptType.P2WPKH: p2wpkh_address(keys[0], network),
        ScriptType.P2WSH: p2wsh_address(ws, network),
        ScriptType.P2TR: p2tr_address_from_internal_key(keys[0][1:], network),
    }
    with bitcointx.ChainParams(_BITCOINTX_CHAIN[network]):
        for kind, addr in made.items():
            info = validate_address(addr, network)
            assert info.type is kind
            assert script_to_address(info.script_pubkey, network) == addr
            theirs = CCoinAddress(addr)
            assert bytes(theirs.to_scriptPubKey()) == info.script_pubkey
            assert str(CCoinAddress.from_scriptPubKey(theirs.to_scriptPubKey())) == addr


def test_regtest_accepts_testnet_base58_but_not_tb_bech32() -> None:
    pub = pubkey_from_privkey(bytes(31) + b"\x01")
    legacy = p2pkh_address(pub, Network.TESTNET)
    assert is_valid_address(legacy, Network.REGTEST)
    assert not is_valid_address(p2wpkh_address(pub, Network.TESTNET), Network.REGTEST)
    assert is_valid_address(p2wpkh_address(pub, Network.TESTNET), Network.SIGNET)


def test_fast_encoder_matches_reference_encoder() -> None:
    for hrp in ("bc", "tb", "bcrt"):
        for length in (20, 32):
            enc = SegwitV0Encoder(hrp, length)
            for _ in range(200):
                prog = os.urandom(length)
                assert enc.encode(prog) == encode_segwit(hrp, 0, prog)
            for edge in (bytes(length), b"\xff" * length):
                assert enc.encode(edge) == encode_segwit(hrp, 0, edge)


def test_batch_encoder_matches_reference_encoder() -> None:
    """`encode_many` (checksums and base32 computed for the whole batch) is bit-identical."""
    for hrp in ("bc", "tb", "bcrt"):
        for length in (20, 32):
            enc = SegwitV0Encoder(hrp, length)
            for count in (1, 2, 33, 1000):
                progs = [os.urandom(length) for _ in range(count)]
                progs[0] = bytes(length) if count % 2 else b"\xff" * length
                assert enc.encode_many(progs) == [encode_segwit(hrp, 0, p) for p in progs]
            assert enc.encode_many([]) == []
            with pytest.raises(errors.WitnessProgramError):
                enc.encode_many([bytes(length), bytes(length + 1)])


def test_unsupported_scripts() -> None:
    with pytest.raises(errors.UnsupportedScriptError):
        script_to_address(b"\x6a\x04abcd", Network.MAINNET)  # OP_RETURN
    with pytest.raises(errors.UnsupportedScriptError):
        script_to_address(b"\x00\x15" + bytes(21), Network.MAINNET)  # v0 with 21 bytes


def test_table_polymod_matches_the_bips_bit_loop() -> None:
    """The checksum step by table lookup is the BIPs' loop over the five bits shifted out."""
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)

    def reference(values: list[int], chk: int) -> int:
        for v in values:
            b = chk >> 25
            chk = (chk & 0x1FFFFFF) << 5 ^ v
            for i in range(5):
                if (b >> i) & 1:
                    chk ^= gen[i]
        return chk

    rnd = random.Random(7)
    for _ in range(2_000):
        values = [rnd.randrange(32) for _ in range(rnd.randrange(90))]
        chk = rnd.choice((1, rnd.randrange(1 << 30)))
        assert bech32._polymod(values, chk) == reference(values, chk)


@pytest.mark.parametrize("spec", list(Encoding))
def test_decoding_checks_every_length_up_to_90_characters(spec: Encoding) -> None:
    """The decoder's checksum tables (one row per distance from the end) reach the longest
    strings, for every length of the human-readable part; one changed symbol is refused."""
    rnd = random.Random(11)
    for hrp_len in range(1, 84):
        hrp = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(hrp_len))
        longest = 90 - hrp_len - 7  # the separator and the checksum's 6 symbols
        for data_len in {min(n, longest) for n in (0, 1, 40)} | {longest}:
            data = [rnd.randrange(32) for _ in range(data_len)]
            text = bech32.bech32_encode(hrp, data, spec)
            assert bech32_decode(text) == (hrp, data, spec)
            i = rnd.randrange(hrp_len + 1, len(text))
            changed = text[:i] + bech32.CHARSET[(bech32.CHARSET.index(text[i]) + 1) % 32]
            with pytest.raises(errors.AddressChecksumError):
                bech32_decode(changed + text[i + 1 :])
