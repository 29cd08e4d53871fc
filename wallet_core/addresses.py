"""Addresses for every output type a merchant may pay to, on every network.

`address_to_script(addr, network)` is the gate every outgoing payment passes: it accepts
P2PKH, P2SH, P2WPKH, P2WSH, P2TR (and future witness versions, which are valid to pay to)
and raises a specific `AddressError` subclass naming the problem: bad checksum, wrong
network (saying which network the address belongs to), bad witness version/length/encoding,
mixed case, unknown prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from . import secp
from .base58 import b58check_decode, b58check_encode
from .bech32 import bech32_decode, decode_segwit, encode_segwit
from .errors import (
    AddressError,
    InvalidKeyError,
    UnknownPrefixError,
    UnsupportedScriptError,
    WitnessProgramError,
    WrongNetworkError,
)
from .hashes import hash160, sha256, tagged_hash
from .networks import Network, describe_networks, networks_for_base58_version, networks_for_hrp
from .script import (
    ScriptInfo,
    ScriptType,
    classify,
    p2pkh_script,
    p2sh_script,
    p2wpkh_script,
    p2wsh_script,
    witness_script,
)

_BECH32_PREFIXES = ("bcrt1", "bc1", "tb1")


@dataclass(frozen=True)
class AddressInfo:
    """A decoded address: its type, the networks it is valid on, program and scriptPubKey."""

    address: str
    type: ScriptType
    networks: tuple[Network, ...]
    program: bytes
    script_pubkey: bytes
    witness_version: int | None = None


def decode_address(address: str) -> AddressInfo:
    """Decode an address without a network in mind (the networks it belongs to are returned)."""
    if not isinstance(address, str) or not address:
        raise AddressError("address is empty")
    if address != address.strip():
        raise AddressError("address has surrounding whitespace")
    if address.lower().startswith(_BECH32_PREFIXES):
        return _decode_bech32(address)
    try:
        payload = b58check_decode(address)
    except AddressError as b58_error:
        # maybe a well-formed bech32 string with a foreign human-readable part
        try:
            hrp, _, _ = bech32_decode(address)
        except AddressError:
            raise b58_error from None
        raise UnknownPrefixError(f"unknown address prefix {hrp!r} (not bc, tb or bcrt)") from None
    if len(payload) != 21:
        raise AddressError(f"base58 address payload must be 21 bytes, got {len(payload)}")
    matches = networks_for_base58_version(payload[0])
    if not matches:
        raise UnknownPrefixError(f"unknown base58 address version {payload[0]:#04x}")
    kind = matches[0][1]
    nets = tuple(n for n, _ in matches)
    h = payload[1:]
    if kind == "p2pkh":
        return AddressInfo(address, ScriptType.P2PKH, nets, h, p2pkh_script(h))
    return AddressInfo(address, ScriptType.P2SH, nets, h, p2sh_script(h))


@lru_cache(maxsize=16)  # a few prefixes in use; bounded, since any prefix can be sent
def _networks_for_hrp(hrp: str) -> tuple[Network, ...]:
    return tuple(networks_for_hrp(hrp))


def _decode_bech32(address: str) -> AddressInfo:
    hrp, version, program = decode_segwit(address)
    nets = _networks_for_hrp(hrp)
    if not nets:
        raise UnknownPrefixError(f"unknown address prefix {hrp!r}")
    script = witness_script(version, program)
    return AddressInfo(address, classify(script).type, nets, program, script, version)


def validate_address(address: str, network: Network) -> AddressInfo:
    """Decode and check the address belongs to `network`; raise `WrongNetworkError` if not."""
    info = decode_address(address)
    if network not in info.networks:
        raise WrongNetworkError(
            f"address {address} is for {describe_networks(list(info.networks))}, "
            f"not {network.value}"
        )
    return info


def is_valid_address(address: str, network: Network) -> bool:
    try:
        validate_address(address, network)
    except AddressError:
        return False
    return True


def address_to_script(address: str, network: Network) -> bytes:
    """scriptPubKey paying to `address`, after full validation for `network`."""
    return validate_address(address, network).script_pubkey


def script_to_address(script: bytes, network: Network) -> str:
    """Address of a standard output script on `network`."""
    info: ScriptInfo = classify(script)
    p = network.params
    if info.type is ScriptType.P2PKH:
        return b58check_encode(bytes([p.p2pkh_version]) + info.program)
    if info.type is ScriptType.P2SH:
        return b58check_encode(bytes([p.p2sh_version]) + info.program)
    if info.witness_version is None:  # pragma: no cover - classify covers all cases
        raise UnsupportedScriptError("script has no address form")
    return encode_segwit(p.hrp, info.witness_version, info.program)


# -- constructors from keys and scripts
def p2pkh_address(pubkey: bytes, network: Network) -> str:
    return script_to_address(p2pkh_script(hash160(pubkey)), network)


def p2sh_address(redeem_script: bytes, network: Network) -> str:
    return script_to_address(p2sh_script(hash160(redeem_script)), network)


def p2wpkh_address(pubkey: bytes, network: Network) -> str:
    if len(pubkey) != 33:
        raise InvalidKeyError("P2WPKH needs a 33-byte compressed public key")
    return encode_segwit(network.hrp, 0, hash160(pubkey))


def p2wsh_address(witness_script_bytes: bytes, network: Network) -> str:
    return encode_segwit(network.hrp, 0, sha256(witness_script_bytes))


def p2tr_address(output_key: bytes, network: Network) -> str:
    """P2TR address of a 32-byte x-only output key (already tweaked)."""
    if len(output_key) != 32:
        raise WitnessProgramError("P2TR output key must be 32 bytes")
    return encode_segwit(network.hrp, 1, output_key)


def taproot_output_key(internal_key: bytes, merkle_root: bytes = b"") -> bytes:
    """BIP341 output key Q = P + H_TapTweak(P || root)*G for an x-only internal key P."""
    from coincurve._libsecp256k1 import ffi, lib  # noqa: PLC0415 (private C binding, taproot only)

    if len(internal_key) != 32:
        raise InvalidKeyError("internal key must be 32 bytes (x-only)")
    xonly = ffi.new("secp256k1_xonly_pubkey *")
    if not lib.secp256k1_xonly_pubkey_parse(secp.CTX, xonly, internal_key):
        raise InvalidKeyError("internal key is not on the curve")
    tweak = tagged_hash("TapTweak", internal_key + merkle_root)
    full = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_xonly_pubkey_tweak_add(secp.CTX, full, xonly, tweak):
        raise InvalidKeyError("taproot tweak failed")
    out_x = ffi.new("secp256k1_xonly_pubkey *")
    parity = ffi.new("int *")
    lib.secp256k1_xonly_pubkey_from_pubkey(secp.CTX, out_x, parity, full)
    buf = ffi.new("unsigned char[32]")
    lib.secp256k1_xonly_pubkey_serialize(secp.CTX, buf, out_x)
    return bytes(ffi.buffer(buf, 32))


def p2tr_address_from_internal_key(internal_key: bytes, network: Network) -> str:
    """BIP86 key-path-only P2TR address (no script tree)."""
    return p2tr_address(taproot_output_key(internal_key), network)


__all__ = [
    "AddressInfo",
    "address_to_script",
    "decode_address",
    "is_valid_address",
    "p2pkh_address",
    "p2sh_address",
    "p2tr_address",
    "p2tr_address_from_internal_key",
    "p2wpkh_address",
    "p2wsh_address",
    "script_to_address",
    "taproot_output_key",
    "validate_address",
    "p2wsh_script",
    "p2wpkh_script",
]
