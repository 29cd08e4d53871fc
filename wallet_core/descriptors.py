"""Output descriptors (BIP380 checksum, BIP381 key expressions, BIP382 `wpkh`, BIP383
`wsh(sortedmulti)`) for our two wallet shapes, so operators can import them into Bitcoin
Core as watch-only (`importdescriptors`). We parse exactly what we produce, strictly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .bip32 import HARDENED, ExtendedKey, format_path, parse_path
from .errors import DescriptorChecksumError, DescriptorError, WalletError
from .hashes import hash160, sha256
from .networks import Network
from .script import multisig_script, p2wpkh_script, p2wsh_script

INPUT_CHARSET = (
    "0123456789()[],'/*abcdefgh@:$%{}"
    "IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~"
    'ijklmnopqrstuvwxyzABCDEFGH`#"\\ '
)
CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def _polymod(symbols: list[int]) -> int:
    chk = 1
    for value in symbols:
        top = chk >> 35
        chk = (chk & 0x7FFFFFFFF) << 5 ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _expand(s: str) -> list[int]:
    groups: list[int] = []
    symbols: list[int] = []
    for c in s:
        v = INPUT_CHARSET.find(c)
        if v < 0:
            raise DescriptorError(f"character {c!r} not allowed in a descriptor")
        symbols.append(v & 31)
        groups.append(v >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    return symbols


def descriptor_checksum(desc: str) -> str:
    """The 8-character BIP380 checksum of a descriptor without `#...`."""
    c = _polymod(_expand(desc) + [0] * 8) ^ 1
    return "".join(CHECKSUM_CHARSET[(c >> (5 * (7 - i))) & 31] for i in range(8))


def add_checksum(desc: str) -> str:
    return f"{desc}#{descriptor_checksum(desc)}"


def split_checksum(text: str, *, require: bool = False) -> str:
    """Verify and strip the checksum; return the bare descriptor."""
    body, sep, check = text.partition("#")
    if not sep:
        if require:
            raise DescriptorChecksumError("descriptor has no checksum")
        return body
    if len(check) != 8 or descriptor_checksum(body) != check:
        raise DescriptorChecksumError(f"descriptor checksum {check!r} does not match")
    return body


@dataclass(frozen=True)
class DescriptorKey:
    """`[fingerprint/origin/path]xpub/0/*`: a ranged key expression (BIP381)."""

    fingerprint: bytes
    origin_path: tuple[int, ...]
    xpub: ExtendedKey
    path: tuple[int, ...]  # after the xpub, before `/*`
    wildcard: bool = True

    def to_string(self) -> str:
        origin = format_path(self.origin_path, prefix=self.fingerprint.hex())
        tail = "".join(f"/{i}" for i in self.path) + ("/*" if self.wildcard else "")
        return f"[{origin}]{self.xpub.serialize()}{tail}"

    def pubkey(self, index: int | None = None) -> bytes:
        node = self.xpub.derive(self.path)
        if self.wildcard:
            if index is None:
                raise DescriptorError("ranged descriptor needs an index")
            node = node.child(index)
        return node.public_key


@dataclass(frozen=True)
class PlainKey:
    """A plain hex public key in a descriptor (our fixed hot HSM key): the same at any index."""

    public_key: bytes

    def to_string(self) -> str:
        return self.public_key.hex()

    def pubkey(self, index: int | None = None) -> bytes:
        del index
        return self.public_key


AnyKey = DescriptorKey | PlainKey

_PLAIN_RE = re.compile(r"^0[23][0-9a-fA-F]{64}$")

_KEY_RE = re.compile(
    r"^\[([0-9a-fA-F]{8})((?:/\d+['h]?)*)\]([1-9A-HJ-NP-Za-km-z]+)((?:/\d+)*)(/\*)?$"
)


def parse_key(text: str) -> AnyKey:
    if _PLAIN_RE.match(text):
        return PlainKey(bytes.fromhex(text))
    m = _KEY_RE.match(text)
    if not m:
        raise DescriptorError(f"unsupported key expression {text[:40]!r}")
    fpr, origin, xpub_s, path, star = m.groups()
    try:
        xpub = ExtendedKey.parse(xpub_s)
        origin_path = parse_path(origin.lstrip("/")) if origin else ()
        deriv = parse_path(path.lstrip("/")) if path else ()
    except WalletError as exc:
        raise DescriptorError(f"bad key expression: {exc.message}") from None
    if xpub.is_private:
        raise DescriptorError("descriptor contains a private key")
    if any(i >= HARDENED for i in deriv):
        raise DescriptorError("hardened steps after an xpub are impossible")
    return DescriptorKey(bytes.fromhex(fpr), origin_path, xpub, deriv, bool(star))


def _plain_xpub(key: ExtendedKey) -> ExtendedKey:
    """Descriptors carry xpub/tpub, never zpub/Vpub (Core refuses SLIP-132 versions)."""
    net = key.network
    return key.with_version(net.params.xkey.public)


@dataclass(frozen=True)
class Descriptor:
    """`wpkh(KEY)` (threshold None) or `wsh(sortedmulti(m,KEY,...))`."""

    keys: tuple[AnyKey, ...]
    threshold: int | None = None

    @property
    def is_multisig(self) -> bool:
        return self.threshold is not None

    def to_string(self, checksum: bool = True) -> str:
        if self.threshold is None:
            body = f"wpkh({self.keys[0].to_string()})"
        else:
            inner = ",".join(k.to_string() for k in self.keys)
            body = f"wsh(sortedmulti({self.threshold},{inner}))"
        return add_checksum(body) if checksum else body

    def __str__(self) -> str:
        return self.to_string()

    def script_pubkey(self, index: int) -> bytes:
        if self.threshold is None:
            return p2wpkh_script(hash160(self.keys[0].pubkey(index)))
        ws = multisig_script(self.threshold, [k.pubkey(index) for k in self.keys])
        return p2wsh_script(sha256(ws))


def wpkh_descriptor(
    xpub: ExtendedKey, fingerprint: bytes, origin_path: tuple[int, ...], change: int
) -> Descriptor:
    return Descriptor((DescriptorKey(fingerprint, origin_path, _plain_xpub(xpub), (change,)),))


def sortedmulti_descriptor(
    threshold: int,
    cosigners: list[tuple[ExtendedKey, bytes, tuple[int, ...]] | bytes],
    change: int,
) -> Descriptor:
    """Cosigners: (xpub, fingerprint, origin path), or a plain public key that does not derive."""
    keys = tuple(
        PlainKey(c)
        if isinstance(c, bytes)
        else DescriptorKey(c[1], c[2], _plain_xpub(c[0]), (change,))
        for c in cosigners
    )
    return Descriptor(keys, threshold)


def parse_descriptor(text: str, *, require_checksum: bool = False) -> Descriptor:
    """Parse `wpkh(KEY)` or `wsh(sortedmulti(m,KEY,...))` with checksum verification."""
    body = split_checksum(text.strip(), require=require_checksum)
    if body.startswith("wpkh(") and body.endswith(")"):
        return Descriptor((parse_key(body[5:-1]),))
    if body.startswith("wsh(sortedmulti(") and body.endswith("))"):
        parts = body[len("wsh(sortedmulti(") : -2].split(",")
        if len(parts) < 2 or not parts[0].isdigit():
            raise DescriptorError("sortedmulti needs a threshold and keys")
        m = int(parts[0])
        keys = tuple(parse_key(p) for p in parts[1:])
        if not 1 <= m <= len(keys) <= 15:
            raise DescriptorError(f"bad threshold {m} of {len(keys)}")
        return Descriptor(keys, m)
    raise DescriptorError("only wpkh(...) and wsh(sortedmulti(...)) are supported")


def descriptor_network(desc: Descriptor) -> Network:
    for key in desc.keys:
        if isinstance(key, DescriptorKey):
            return key.xpub.network
    raise DescriptorError("descriptor has no extended key to tell its network")


def settlement_problem(desc: Descriptor, network: Network | None = None) -> str | None:
    """Why `desc` cannot be a settlement descriptor for `network`, or None if it can.

    Sweeps pay the next index of the customer's descriptor, so it must be ranged (`/*`: a
    fixed address would be reused), every key must carry its origin (so the customer's wallet
    recognises it) and be for the account's network.
    """
    for n, key in enumerate(desc.keys):
        if not isinstance(key, DescriptorKey):
            return f"key {n} is a plain public key (no origin, not ranged)"
        if not key.wildcard:
            return f"key {n} is not ranged (it must end with /*)"
        if network is not None and key.xpub.network.params.xkey != network.params.xkey:
            return f"key {n} is for {key.xpub.network.value}, not {network.value}"
    return None
