"""Bech32 and bech32m (BIP173, BIP350), plus a table-driven encoder for P2WPKH batches.

The generic functions follow the BIPs' reference code. `P2wpkhEncoder` exists for speed:
the checksum is GF(2)-linear in the data, so for a fixed-length 20-byte program it is a
per-network constant XOR one table entry per program byte, and the base32 conversion is
`base64.b32encode` plus `str.translate`. Tests check it against the generic encoder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import Enum
from functools import reduce
from operator import xor

from .errors import AddressChecksumError, AddressError, MixedCaseError, WitnessProgramError

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHAR_INDEX = {c: i for i, c in enumerate(CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
BECH32_CONST = 1
BECH32M_CONST = 0x2BC830A3


class Encoding(Enum):
    BECH32 = "bech32"
    BECH32M = "bech32m"


_getitem = tuple.__getitem__

# The BIPs' generator XOR for each value of the 5 bits shifted out, so that a step of the
# checksum is one table lookup, not a loop over the bits (addresses are checked on every send).
_GEN_BY_TOP = tuple(
    reduce(xor, (g for i, g in enumerate(_GEN) if (top >> i) & 1), 0) for top in range(32)
)


def _polymod(values: list[int], chk: int = 1) -> int:
    for v in values:
        chk = ((chk & 0x1FFFFFF) << 5 ^ v) ^ _GEN_BY_TOP[chk >> 25]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _create_checksum(hrp: str, data: list[int], spec: Encoding) -> list[int]:
    const = BECH32M_CONST if spec is Encoding.BECH32M else BECH32_CONST
    polymod = _polymod(_hrp_expand(hrp) + data + [0] * 6) ^ const
    return [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]


def bech32_encode(hrp: str, data: list[int], spec: Encoding) -> str:
    return hrp + "1" + "".join(CHARSET[d] for d in data + _create_checksum(hrp, data, spec))


# Decoding, in a few C-level operations per address (every send decodes its payees):
# - the checksum is linear: a run of the polymod over L values from 1 is K[L] XOR, for the
#   value v at distance d from the end, ROWS[d][v] (v run through d zero steps), so it is a
#   `reduce(xor, map(...))` over table rows instead of a Python loop over the values;
# - the 5-bit groups become bytes as one integer: `int(_, 32)` after `str.translate` to its
#   digits.
_MAX_VALUES = 2 * 90  # hrp expansion + data: at most 83 + 90 (the hrp counts twice)


def _zero_step(chk: int) -> int:
    return (chk & 0x1FFFFFF) << 5 ^ _GEN_BY_TOP[chk >> 25]


def _tables() -> tuple[list[tuple[int, ...]], list[int]]:
    rows = [tuple(range(32))]
    consts = [1]
    for _ in range(_MAX_VALUES):
        rows.append(tuple(_zero_step(c) for c in rows[-1]))
        consts.append(_zero_step(consts[-1]))
    rows.reverse()  # rows[_MAX_VALUES - d]: distance d from the end
    return rows, consts


_ROWS, _CONST_BY_LEN = _tables()
_OUTSIDE_33_126 = re.compile(r"[^!-~]")
_TO_BASE32_DIGITS = str.maketrans(CHARSET, "0123456789abcdefghijklmnopqrstuv")  # `int(_, 32)`


def _decode(text: str) -> tuple[str, str, list[int], Encoding]:
    """`bech32_decode`, with the data part's characters (lower case, checksum included)."""
    if _OUTSIDE_33_126.search(text):
        raise AddressError("bech32 string has a character outside US-ASCII 33-126")
    lower = text.lower()
    if lower != text and text.upper() != text:
        raise MixedCaseError("bech32 string mixes upper and lower case")
    pos = lower.rfind("1")
    if pos < 1:
        raise AddressError("bech32 string has an empty or missing human-readable part")
    if pos + 7 > len(lower):
        raise AddressError("bech32 data part is too short")
    if len(lower) > 90:
        raise AddressError("bech32 string longer than 90 characters")
    hrp, chars = lower[:pos], lower[pos + 1 :]
    try:
        data = [_CHAR_INDEX[c] for c in chars]
    except KeyError as exc:
        raise AddressError(f"invalid bech32 character {exc.args[0]!r}") from None
    values = _hrp_expand(hrp) + data
    n = len(values)
    check = reduce(xor, map(_getitem, _ROWS[_MAX_VALUES + 1 - n :], values), _CONST_BY_LEN[n])
    if check == BECH32_CONST:
        spec = Encoding.BECH32
    elif check == BECH32M_CONST:
        spec = Encoding.BECH32M
    else:
        raise AddressChecksumError("bad bech32/bech32m checksum")
    return hrp, chars, data[:-6], spec


def bech32_decode(text: str) -> tuple[str, list[int], Encoding]:
    """Decode any bech32/bech32m string; return (hrp, data without checksum, encoding)."""
    hrp, _, data, spec = _decode(text)
    return hrp, data, spec


def _groups_to_bytes(chars: str) -> bytes:
    """`convertbits(groups, 5, 8, False)` of bech32 characters (already checked)."""
    nbytes, bits = divmod(len(chars) * 5, 8)
    if bits >= 5:
        raise WitnessProgramError("witness program has more than 4 bits of padding")
    if not chars:
        return b""
    value = int(chars.translate(_TO_BASE32_DIGITS), 32)
    if value & ((1 << bits) - 1):
        raise WitnessProgramError("witness program has non-zero padding")
    return (value >> bits).to_bytes(nbytes, "big")


def convertbits(data: bytes | list[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    """Regroup bits; without `pad`, refuse more than frombits-1 bits or non-zero padding."""
    acc = 0
    bits = 0
    ret: list[int] = []
    maxv = (1 << tobits) - 1
    max_acc = (1 << (frombits + tobits - 1)) - 1
    for value in data:
        if value < 0 or (value >> frombits):
            raise WitnessProgramError("invalid value in bit conversion")
        acc = ((acc << frombits) | value) & max_acc
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            ret.append((acc >> bits) & maxv)
    if pad:
        if bits:
            ret.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits:
        raise WitnessProgramError("witness program has more than 4 bits of padding")
    elif (acc << (tobits - bits)) & maxv:
        raise WitnessProgramError("witness program has non-zero padding")
    return ret


def check_witness_program(version: int, program: bytes) -> None:
    """BIP141/BIP341 program rules that an address must satisfy."""
    if not 0 <= version <= 16:
        raise WitnessProgramError(f"invalid witness version {version}")
    if not 2 <= len(program) <= 40:
        raise WitnessProgramError(f"invalid witness program length {len(program)}")
    if version == 0 and len(program) not in (20, 32):
        raise WitnessProgramError(f"witness v0 program must be 20 or 32 bytes, got {len(program)}")


def encode_segwit(hrp: str, version: int, program: bytes) -> str:
    """Encode a segwit address: bech32 for v0, bech32m for v1+ (BIP350)."""
    check_witness_program(version, program)
    spec = Encoding.BECH32 if version == 0 else Encoding.BECH32M
    return bech32_encode(hrp, [version] + convertbits(program, 8, 5, True), spec)


def decode_segwit(address: str) -> tuple[str, int, bytes]:
    """Decode a segwit address into (hrp, witness version, program), enforcing BIP350."""
    hrp, chars, data, spec = _decode(address)
    if not data:
        raise WitnessProgramError("segwit address has an empty data part")
    version = data[0]
    if version > 16:
        raise WitnessProgramError(f"invalid witness version {version}")
    program = _groups_to_bytes(chars[1:-6])
    check_witness_program(version, program)
    # BIP350 counts the wrong variant as an invalid checksum
    if version == 0 and spec is not Encoding.BECH32:
        raise AddressChecksumError("bad checksum: witness v0 needs bech32, found bech32m")
    if version != 0 and spec is not Encoding.BECH32M:
        raise AddressChecksumError(f"bad checksum: witness v{version} needs bech32m, found bech32")
    return hrp, version, program


_SYMBOL_TO_CHAR = bytes.maketrans(bytes(range(32)), CHARSET.encode())


class SegwitV0Encoder:
    """Fast encoder for witness v0 addresses of one program length (20: P2WPKH, 32: P2WSH).

    Checksum: the BCH checksum is affine in the data bits, so checksum(hrp, program) =
    K(hrp) XOR T[0][program[0]] XOR ... XOR T[n-1][program[n-1]]; the tables come from one
    polymod run per program bit. Base32: the program, read as one integer, is "spread" so
    that each 5-bit group lands in its own byte (log2(groups) mask-and-shift steps on a
    big int), then `bytes.translate` maps bytes to characters. Both run mostly in C.
    """

    def __init__(self, hrp: str, program_len: int = 20) -> None:
        self.hrp = hrp
        self.program_len = program_len
        self._prefix = hrp + "1q"  # "q" is witness version 0
        nsym = (program_len * 8 + 4) // 5
        self._nsym = nsym
        self._pad = nsym * 5 - program_len * 8
        head = _hrp_expand(hrp) + [0]
        zero = [0] * nsym
        base = _polymod(head + zero + [0] * 6)
        self._const = base ^ BECH32_CONST
        # The contribution of a data symbol value v at position p is linear in v.
        tail = [0] * 6
        sym_basis: list[list[int]] = []
        for p in range(nsym):
            row = []
            for bit in range(5):
                data = [0] * nsym
                data[p] = 1 << bit
                row.append(_polymod(head + data + tail) ^ base)
            sym_basis.append(row)
        tables: list[tuple[int, ...]] = []
        for j in range(program_len):
            bit_contrib = []
            for k in range(8):  # bit k of byte j (MSB first) is data bit 8j+k
                pos, off = divmod(8 * j + k, 5)
                bit_contrib.append(sym_basis[pos][4 - off])
            table = []
            for byte in range(256):
                acc = 0
                for k in range(8):
                    if (byte >> (7 - k)) & 1:
                        acc ^= bit_contrib[k]
                table.append(acc)
            tables.append(tuple(table))
        self._tables = tuple(tables)
        self._chk_chars = [CHARSET[i >> 5] + CHARSET[i & 31] for i in range(1024)]
        # spread steps for 2^k >= nsym groups
        groups = 1
        while groups < nsym:
            groups *= 2
        self._groups = groups
        steps = []
        block = groups
        while block > 1:
            half = block // 2
            unit = (1 << (5 * half)) - 1
            mask = 0
            for slot in range(groups // block):
                mask |= unit << (8 * block * slot)
            steps.append((5 * half, mask, 8 * half))
            block = half
        self._steps = tuple(steps)
        self._batch_cache: dict[int, tuple[tuple[int, int, int], ...]] = {}
        # per checksum symbol: per program position, byte value -> that symbol's share; and
        # the symbol's value (with the constant term) -> its character
        self._checksum_tables = tuple(
            (
                tuple(
                    bytes((t[b] >> (25 - 5 * sym)) & 31 for b in range(256)) for t in self._tables
                ),
                bytes.maketrans(
                    bytes(range(32)),
                    bytes(
                        ord(CHARSET[v ^ ((self._const >> (25 - 5 * sym)) & 31)]) for v in range(32)
                    ),
                ),
            )
            for sym in range(6)
        )

    def encode(self, program: bytes) -> str:
        """Address for one program; `len(program)` must equal `program_len`."""
        if len(program) != self.program_len:
            raise WitnessProgramError(f"expected a {self.program_len}-byte program")
        chk = reduce(xor, map(_getitem, self._tables, program), self._const)
        x = int.from_bytes(program, "big") << self._pad
        for rshift, mask, lshift in self._steps:
            x = (x & mask) | ((x >> rshift) & mask) << lshift
        # the spread value fits in nsym bytes: one symbol per byte, the padding groups zero
        data = x.to_bytes(self._nsym, "big").translate(_SYMBOL_TO_CHAR).decode("ascii")
        cc = self._chk_chars
        return f"{self._prefix}{data}{cc[chk >> 20]}{cc[(chk >> 10) & 1023]}{cc[chk & 1023]}"

    def encode_many(self, programs: Sequence[bytes]) -> list[str]:
        """`encode` for a whole batch, in a few C-level operations per batch, not per address.

        The addresses are laid out in one byte string with a fixed stride and cut apart at the
        end. Base32: every program gets a slot of `groups` bytes in one big integer, and the
        spreading steps run on all slots at once, their masks repeated per slot. Checksum:
        each checksum symbol is the XOR over program positions j of a function of byte j, so
        it is computed for all addresses at once: the column of byte j (a strided slice) is
        mapped by `bytes.translate` and the columns are XORed as big integers.
        """
        n = len(programs)
        if n == 0:
            return []
        plen, groups, nsym = self.program_len, self._groups, self._nsym
        if any(len(p) != plen for p in programs):
            raise WitnessProgramError(f"expected {plen}-byte programs")
        blob = b"".join(programs)
        head = bytes(groups - plen)
        x = int.from_bytes(head + head.join(programs), "big") << self._pad
        for rshift, mask, lshift in self._batch_steps(n):
            x = (x & mask) | ((x >> rshift) & mask) << lshift
        data = x.to_bytes(groups * n, "big").translate(_SYMBOL_TO_CHAR)
        prefix = self._prefix.encode("ascii")
        stride = len(prefix) + nsym + 6
        out = bytearray(stride * n)
        for i, c in enumerate(prefix):
            out[i::stride] = bytes([c]) * n
        skip, base = groups - nsym, len(prefix)
        for i in range(nsym):
            out[base + i :: stride] = data[skip + i :: groups]
        columns = [blob[j::plen] for j in range(plen)]
        base += nsym
        for sym, (col_tables, to_char) in enumerate(self._checksum_tables):
            acc = 0
            for col, table in zip(columns, col_tables, strict=True):
                acc ^= int.from_bytes(col.translate(table), "little")
            out[base + sym :: stride] = acc.to_bytes(n, "little").translate(to_char)
        text = out.decode("ascii")
        return [text[k : k + stride] for k in range(0, stride * n, stride)]

    def _batch_steps(self, n: int) -> tuple[tuple[int, int, int], ...]:
        """The spreading steps with each mask repeated over `n` slots (cached per `n`)."""
        steps = self._batch_cache.get(n)
        if steps is None:
            size = self._groups
            steps = tuple(
                (r, int.from_bytes(mask.to_bytes(size, "big") * n, "big"), lshift)
                for r, mask, lshift in self._steps
            )
            if len(self._batch_cache) > 8:
                self._batch_cache.clear()
            self._batch_cache[n] = steps
        return steps
