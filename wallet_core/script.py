"""Output scripts and their recognition (the script side of every address type)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .errors import InvalidKeyError, UnsupportedScriptError

OP_0 = 0x00
OP_PUSHDATA1 = 0x4C
OP_1 = 0x51
OP_16 = 0x60
OP_DUP = 0x76
OP_EQUAL = 0x87
OP_EQUALVERIFY = 0x88
OP_HASH160 = 0xA9
OP_CHECKSIG = 0xAC
OP_CHECKMULTISIG = 0xAE
OP_RETURN = 0x6A


class ScriptType(Enum):
    P2PKH = "p2pkh"
    P2SH = "p2sh"
    P2WPKH = "p2wpkh"
    P2WSH = "p2wsh"
    P2TR = "p2tr"
    WITNESS_UNKNOWN = "witness_unknown"  # future witness versions: valid to pay to


@dataclass(frozen=True)
class ScriptInfo:
    """What an output script is: its type, witness version (or None) and hash/program."""

    type: ScriptType
    program: bytes
    witness_version: int | None = None


def push(data: bytes) -> bytes:
    """Minimal push of `data` (<= 520 bytes, as any standard script needs)."""
    n = len(data)
    if n < OP_PUSHDATA1:
        return bytes([n]) + data
    if n <= 0xFF:
        return bytes([OP_PUSHDATA1, n]) + data
    if n <= 520:
        return bytes([0x4D]) + n.to_bytes(2, "little") + data
    raise ValueError("push larger than 520 bytes")


def p2pkh_script(pubkey_hash: bytes) -> bytes:
    return bytes([OP_DUP, OP_HASH160, 20]) + pubkey_hash + bytes([OP_EQUALVERIFY, OP_CHECKSIG])


def p2sh_script(script_hash: bytes) -> bytes:
    return bytes([OP_HASH160, 20]) + script_hash + bytes([OP_EQUAL])


def p2wpkh_script(pubkey_hash: bytes) -> bytes:
    return b"\x00\x14" + pubkey_hash


def p2wsh_script(script_sha256: bytes) -> bytes:
    return b"\x00\x20" + script_sha256


def witness_script(version: int, program: bytes) -> bytes:
    """scriptPubKey for any witness version: OP_n <program>."""
    op = OP_0 if version == 0 else OP_1 + version - 1
    return bytes([op, len(program)]) + program


def multisig_script(m: int, pubkeys: list[bytes], *, sort: bool = True) -> bytes:
    """`m <keys> n OP_CHECKMULTISIG`; sorted lexicographically by default (BIP67/sortedmulti)."""
    n = len(pubkeys)
    if not 1 <= m <= n <= 16:
        raise ValueError(f"bad multisig threshold {m}-of-{n}")
    for pk in pubkeys:
        if len(pk) != 33 or pk[0] not in (2, 3):
            raise InvalidKeyError("multisig keys must be 33-byte compressed public keys")
    keys = sorted(pubkeys) if sort else list(pubkeys)
    body = b"".join(push(k) for k in keys)
    return bytes([OP_1 + m - 1]) + body + bytes([OP_1 + n - 1, OP_CHECKMULTISIG])


def parse_multisig(script: bytes) -> tuple[int, list[bytes]]:
    """(m, pubkeys in script order) of a `m <33-byte keys> n CHECKMULTISIG` script."""
    if len(script) < 3 or script[-1] != OP_CHECKMULTISIG:
        raise UnsupportedScriptError("not a multisig script")
    m, n = script[0] - OP_1 + 1, script[-2] - OP_1 + 1
    if not (1 <= m <= n <= 16) or len(script) != 3 + 34 * n:
        raise UnsupportedScriptError("not a compressed-key multisig script")
    keys = []
    for i in range(n):
        off = 1 + 34 * i
        if script[off] != 33:
            raise UnsupportedScriptError("multisig key push is not 33 bytes")
        keys.append(script[off + 1 : off + 34])
    return m, keys


def classify(script: bytes) -> ScriptInfo:
    """Recognise a standard output script; raise `UnsupportedScriptError` otherwise."""
    s = script
    if len(s) == 25 and s[:3] == b"\x76\xa9\x14" and s[23:] == b"\x88\xac":
        return ScriptInfo(ScriptType.P2PKH, s[3:23])
    if len(s) == 23 and s[:2] == b"\xa9\x14" and s[22] == OP_EQUAL:
        return ScriptInfo(ScriptType.P2SH, s[2:22])
    if 4 <= len(s) <= 42 and (s[0] == OP_0 or OP_1 <= s[0] <= OP_16) and s[1] == len(s) - 2:
        version = 0 if s[0] == OP_0 else s[0] - OP_1 + 1
        prog = s[2:]
        if version == 0 and len(prog) == 20:
            return ScriptInfo(ScriptType.P2WPKH, prog, 0)
        if version == 0 and len(prog) == 32:
            return ScriptInfo(ScriptType.P2WSH, prog, 0)
        if version == 0:
            raise UnsupportedScriptError("witness v0 program must be 20 or 32 bytes")
        if version == 1 and len(prog) == 32:
            return ScriptInfo(ScriptType.P2TR, prog, 1)
        return ScriptInfo(ScriptType.WITNESS_UNKNOWN, prog, version)
    raise UnsupportedScriptError(f"script {s[:8].hex()}... has no address form")
