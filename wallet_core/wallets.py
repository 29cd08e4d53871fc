"""The two wallets of the design, described by public keys only.

- `ColdWallet`: BIP84 P2WPKH account `m/84'/coin'/account'`; receive chain 0, change chain 1.
- `HotWallet`: 2-of-3 P2WSH `sortedmulti` of (hot HSM, cold HSM, offline recovery) keys,
  each at the BIP48 account path `m/48'/coin'/account'/2'`; receive 0, change 1.

Everything here derives from xpubs, so the custody API can hold a wallet without any
private key; the cold HSM uses the same code to re-derive change ("by derivation, never by
trust"). Batches use the fast `ChainDeriver`, split over two processes by `derive_helper`;
the chain-level keys are derived once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar

from coincurve import PublicKey

from .bech32 import SegwitV0Encoder
from .bip32 import HARDENED, ChainDeriver, ExtendedKey, parse_path
from .chaincloud import BATCH_SIZE
from .derive_helper import derive_columns, split_keys
from .descriptors import Descriptor, sortedmulti_descriptor, wpkh_descriptor
from .errors import (
    DerivationError,
    DerivationPathError,
    InvalidExtendedKeyError,
    InvalidKeyError,
    WalletError,
)
from .hashes import hash160, sha256
from .networks import Network
from .script import multisig_script, p2wpkh_script, p2wsh_script

RECEIVE = 0
CHANGE = 1
_ENCODERS: dict[tuple[str, int], SegwitV0Encoder] = {}


def _encoder(network: Network, program_len: int) -> SegwitV0Encoder:
    key = (network.hrp, program_len)
    enc = _ENCODERS.get(key)
    if enc is None:
        enc = _ENCODERS[key] = SegwitV0Encoder(network.hrp, program_len)
    return enc


def bip84_account_path(network: Network, account: int) -> tuple[int, ...]:
    return (84 + HARDENED, network.coin_type + HARDENED, account + HARDENED)


def bip48_account_path(network: Network, account: int) -> tuple[int, ...]:
    """BIP48 P2WSH multisig: m/48'/coin'/account'/2'."""
    return (48 + HARDENED, network.coin_type + HARDENED, account + HARDENED, 2 + HARDENED)


def _check_chain(change: int) -> None:
    if change not in (RECEIVE, CHANGE):
        raise DerivationPathError(f"chain must be 0 (receive) or 1 (change), got {change}")


def _check_index(index: int) -> None:
    if not 0 <= index < HARDENED:
        raise DerivationPathError(f"address index {index} out of range")


@dataclass(frozen=True, slots=True)
class DerivedAddress:
    """One derived address with its scripts, so a batch is stored without decoding addresses.
    (Slots: a thousand are made per batch, and a frozen dataclass without them costs ~1.6 us
    each, half a P2WPKH address's hashing and encoding.)"""

    index: int
    address: str
    script_pubkey: bytes
    witness_script: bytes | None = None  # P2WSH (hot) addresses only


@dataclass(frozen=True)
class KeyOrigin:
    """Where a public key comes from: master fingerprint and full path (PSBT, descriptors)."""

    fingerprint: bytes
    path: tuple[int, ...]


@dataclass(frozen=True)
class AccountKey:
    """An account-level xpub with its origin (master fingerprint and path)."""

    xpub: ExtendedKey
    fingerprint: bytes
    path: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.xpub.is_private:
            raise InvalidExtendedKeyError("wallets hold public keys only")
        if len(self.fingerprint) != 4:
            raise WalletError("master fingerprint must be 4 bytes")

    @classmethod
    def from_root(cls, root: ExtendedKey, path: str | tuple[int, ...]) -> AccountKey:
        """Derive the account xpub from a private root (what an HSM exports at setup)."""
        p = parse_path(path)
        return cls(root.derive(p).to_public(), root.fingerprint, p)

    def origin(self, change: int, index: int) -> KeyOrigin:
        return KeyOrigin(self.fingerprint, (*self.path, change, index))


@dataclass(frozen=True)
class FixedKey:
    """A key that does not derive: the hot HSM's key in its PKCS#11 token.

    A token cannot do BIP32 derivation of a non-extractable key, so the hot wallet uses the
    same hot public key at every index (the other two cosigners still derive, so every address
    differs). Its origin is its own fingerprint with an empty path, as for a master key.
    """

    public_key: bytes

    def __post_init__(self) -> None:
        if len(self.public_key) != 33 or self.public_key[0] not in (2, 3):
            raise InvalidKeyError("a fixed cosigner key must be a 33-byte compressed public key")
        try:
            PublicKey(self.public_key)
        except ValueError:
            raise InvalidKeyError("the fixed cosigner key is not a point on secp256k1") from None

    @property
    def fingerprint(self) -> bytes:
        return hash160(self.public_key)[:4]

    @property
    def path(self) -> tuple[int, ...]:
        return ()

    def origin(self, change: int, index: int) -> KeyOrigin:
        del change, index
        return KeyOrigin(self.fingerprint, ())


Cosigner = AccountKey | FixedKey


def _cosigner_pubkey(c: Cosigner) -> bytes:
    return c.public_key if isinstance(c, FixedKey) else c.xpub.public_key


@dataclass(frozen=True)
class ColdWallet:
    """BIP84 single-key P2WPKH account (cold receiving)."""

    account: AccountKey
    network: Network
    _chains: dict[int, ExtendedKey] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_root(cls, root: ExtendedKey, network: Network, account: int = 0) -> ColdWallet:
        return cls(AccountKey.from_root(root, bip84_account_path(network, account)), network)

    def chain_key(self, change: int) -> ExtendedKey:
        """Chain-level xpub (…/0 or …/1), derived once and cached."""
        _check_chain(change)
        key = self._chains.get(change)
        if key is None:
            key = self._chains[change] = self.account.xpub.child(change)
        return key

    def pubkey(self, index: int, change: int = RECEIVE) -> bytes:
        _check_index(index)
        return ChainDeriver(self.chain_key(change)).pubkey(index)

    def script_pubkey(self, index: int, change: int = RECEIVE) -> bytes:
        return p2wpkh_script(hash160(self.pubkey(index, change)))

    def address(self, index: int, change: int = RECEIVE) -> str:
        return _encoder(self.network, 20).encode(hash160(self.pubkey(index, change)))

    def addresses(self, start: int, count: int, change: int = RECEIVE) -> list[str]:
        return _encoder(self.network, 20).encode_many(self._key_hashes(start, count, change))

    def derive_range(self, start: int, count: int, change: int = RECEIVE) -> list[DerivedAddress]:
        """Like `addresses`, with each scriptPubKey (what a batch stores): same fast path."""
        hashes = self._key_hashes(start, count, change)
        addrs = _encoder(self.network, 20).encode_many(hashes)
        return [
            DerivedAddress(i, a, b"\x00\x14" + h)  # p2wpkh_script(h), inlined
            for i, a, h in zip(range(start, start + count), addrs, hashes, strict=True)
        ]

    def _key_hashes(self, start: int, count: int, change: int) -> list[bytes]:
        """hash160 of the child keys of a range (on two cores when the range is large)."""
        _check_index(start)
        if count < 0 or start + count > HARDENED:
            raise DerivationPathError("non-hardened index range out of bounds")
        packed = derive_columns([self.chain_key(change)], start, count)[0]
        return list(map(hash160, split_keys(packed)))

    def origins(self, index: int, change: int = RECEIVE) -> dict[bytes, KeyOrigin]:
        """pubkey -> origin for the key(s) of one address (PSBT bip32_derivations)."""
        return {self.pubkey(index, change): self.account.origin(change, index)}

    def descriptor(self, change: int = RECEIVE) -> Descriptor:
        _check_chain(change)
        a = self.account
        return wpkh_descriptor(a.xpub, a.fingerprint, a.path, change)


@dataclass(frozen=True)
class HotWallet:
    """2-of-3 P2WSH sortedmulti (hot sending). Cosigner order: hot, cold, recovery.

    The hot cosigner may be a `FixedKey` (the PKCS#11 hot key) or an `AccountKey`.
    """

    cosigners: tuple[Cosigner, Cosigner, Cosigner]
    network: Network
    threshold: int = 2
    _chains: dict[tuple[int, int], ExtendedKey] = field(
        default_factory=dict, compare=False, repr=False
    )
    # one deriver per chain key: building one costs two HMAC key setups, deriving one key less
    _derivers: dict[tuple[int, int], ChainDeriver] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if len(self.cosigners) != 3 or self.threshold != 2:
            raise WalletError("the hot wallet is 2-of-3")
        pubs = {_cosigner_pubkey(c) for c in self.cosigners}
        if len(pubs) != 3:
            raise WalletError("the three cosigner keys must differ")

    @property
    def hot(self) -> Cosigner:
        return self.cosigners[0]

    @property
    def cold(self) -> Cosigner:
        return self.cosigners[1]

    @property
    def recovery(self) -> Cosigner:
        return self.cosigners[2]

    def chain_key(self, cosigner: int, change: int) -> ExtendedKey:
        _check_chain(change)
        key = self._chains.get((cosigner, change))
        if key is None:
            c = self.cosigners[cosigner]
            if isinstance(c, FixedKey):
                raise DerivationError("a fixed cosigner key has no chain key")
            key = self._chains[(cosigner, change)] = c.xpub.child(change)
        return key

    def _column(self, cosigner: int, change: int, start: int, count: int) -> list[bytes]:
        c = self.cosigners[cosigner]
        if isinstance(c, FixedKey):
            return [c.public_key] * count
        deriver = self._derivers.get((cosigner, change))
        if deriver is None:
            deriver = ChainDeriver(self.chain_key(cosigner, change))
            self._derivers[(cosigner, change)] = deriver
        return deriver.pubkeys(start, count)

    def pubkeys(self, index: int, change: int = RECEIVE) -> list[bytes]:
        """The three cosigner keys for one address, in cosigner order (hot, cold, recovery)."""
        _check_index(index)
        _check_chain(change)
        return [self._column(c, change, index, 1)[0] for c in range(3)]

    def witness_script(self, index: int, change: int = RECEIVE) -> bytes:
        return multisig_script(self.threshold, self.pubkeys(index, change), sort=True)

    def script_pubkey(self, index: int, change: int = RECEIVE) -> bytes:
        return p2wsh_script(sha256(self.witness_script(index, change)))

    def address(self, index: int, change: int = RECEIVE) -> str:
        return _encoder(self.network, 32).encode(sha256(self.witness_script(index, change)))

    def addresses(self, start: int, count: int, change: int = RECEIVE) -> list[str]:
        _check_index(start)
        _check_chain(change)
        scripts = self._witness_scripts(change, start, count)
        return _encoder(self.network, 32).encode_many([sha256(ws) for ws in scripts])

    def derive_range(self, start: int, count: int, change: int = RECEIVE) -> list[DerivedAddress]:
        """Like `addresses`, with each scriptPubKey and witness script (batches, PSBTs)."""
        _check_index(start)
        _check_chain(change)
        scripts = self._witness_scripts(change, start, count)
        hashes = [sha256(ws) for ws in scripts]
        addrs = _encoder(self.network, 32).encode_many(hashes)
        return [
            DerivedAddress(i, a, b"\x00\x20" + h, ws)  # p2wsh_script(h), inlined
            for i, a, h, ws in zip(range(start, start + count), addrs, hashes, scripts, strict=True)
        ]

    def _witness_scripts(self, change: int, start: int, count: int) -> list[bytes]:
        """`multisig_script(2, keys)` for a range, built without its per-call checks: the keys
        come from our own derivation (each one a serialised point, 33 bytes)."""
        if count < 0 or start + count > HARDENED:
            raise DerivationPathError("non-hardened index range out of bounds")
        derived = [c for c in range(3) if not isinstance(self.cosigners[c], FixedKey)]
        packed = derive_columns([self.chain_key(c, change) for c in derived], start, count)
        cols: list[list[bytes]] = []
        for c in range(3):
            cosigner = self.cosigners[c]
            if isinstance(cosigner, FixedKey):
                cols.append([cosigner.public_key] * count)
            else:
                cols.append(split_keys(packed[derived.index(c)]))
        join = b"".join
        return [
            join((b"\x52\x21", a, b"\x21", b, b"\x21", c, b"\x53\xae"))  # OP_2 .. OP_3 OP_CMS
            for a, b, c in map(sorted, zip(*cols, strict=True))
        ]

    def origins(self, index: int, change: int = RECEIVE) -> dict[bytes, KeyOrigin]:
        pubs = self.pubkeys(index, change)
        return {p: c.origin(change, index) for p, c in zip(pubs, self.cosigners, strict=True)}

    def descriptor(self, change: int = RECEIVE) -> Descriptor:
        _check_chain(change)
        return sortedmulti_descriptor(
            self.threshold,
            [
                c.public_key if isinstance(c, FixedKey) else (c.xpub, c.fingerprint, c.path)
                for c in self.cosigners
            ],
            change,
        )


PUBKEY_CACHE_SIZE = 4096  # addresses per account whose keys are remembered


@dataclass(frozen=True)
class CachedHotWallet(HotWallet):
    """The hot wallet with the public keys of recently used addresses remembered.

    Public data only (the three cosigner public keys per address): deriving them is most of
    the CPU a co-sign costs an HSM (the cold side's checks, the hot side's plan), and a send's
    input and change addresses are derived several times. Bounded (least recently used go
    first, `cache_size` addresses); safe to share between threads.
    """

    cache_size: ClassVar[int] = PUBKEY_CACHE_SIZE
    _pubkeys: OrderedDict[tuple[int, int], tuple[bytes, ...]] = field(
        default_factory=OrderedDict, compare=False, repr=False
    )
    _cache_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def pubkeys(self, index: int, change: int = RECEIVE) -> list[bytes]:
        key = (index, change)
        with self._cache_lock:
            hit = self._pubkeys.get(key)
            if hit is not None:
                self._pubkeys.move_to_end(key)
                return list(hit)
        pubs = super().pubkeys(index, change)  # checks the index and chain
        with self._cache_lock:
            self._pubkeys[key] = tuple(pubs)
            if len(self._pubkeys) > self.cache_size:
                self._pubkeys.popitem(last=False)
        return pubs


Wallet = ColdWallet | HotWallet


def batch_addresses(wallet: Wallet, batch_no: int, change: int = RECEIVE) -> list[tuple[int, str]]:
    """Batch n: [(index, address)] for indices n*1000 .. n*1000+999 (ChainCloud section 1)."""
    if batch_no < 0 or (batch_no + 1) * BATCH_SIZE > HARDENED:
        raise DerivationPathError(f"batch number {batch_no} out of range")
    start = batch_no * BATCH_SIZE
    addrs = wallet.addresses(start, BATCH_SIZE, change)
    return list(enumerate(addrs, start))


def is_own_script(wallet: Wallet, script_pubkey: bytes, change: int, index: int) -> bool:
    """True if `script_pubkey` is exactly the wallet's script at (change, index).

    The caller takes (change, index) from the PSBT output's claimed derivation; we re-derive
    and compare, so a forged derivation cannot make a stranger's output look like change.
    """
    try:
        return wallet.script_pubkey(index, change) == script_pubkey
    except WalletError:
        return False


def own_index_from_origins(
    wallet: Wallet, origins: dict[bytes, KeyOrigin]
) -> tuple[int, int] | None:
    """(change, index) claimed by PSBT derivations that match this wallet's accounts, if any."""
    accounts = [wallet.account] if isinstance(wallet, ColdWallet) else list(wallet.cosigners)
    for origin in origins.values():
        for acct in accounts:
            if isinstance(acct, FixedKey):
                continue
            n = len(acct.path)
            if (
                origin.fingerprint == acct.fingerprint
                and origin.path[:n] == acct.path
                and len(origin.path) == n + 2
            ):
                return origin.path[n], origin.path[n + 1]
    return None
