"""An account's keys on the cold HSM: seeds made by the token, sealed at rest, opened briefly.

Each account has its own seeds (so every wallet uses BIP32 account 0 of its own seed):
- receiving: BIP84 P2WPKH `m/84'/c'/0'` (cold receiving);
- cosigner: the cold key of the hot wallet, `m/48'/c'/0'/2'`;
- recovery: the third key of the hot wallet, exported once to the paper backup and forgotten.

A sealed seed's AAD names the account, the purpose and every public fact the seed is used with
(network, hot key, recovery xpub, V-device identity, settlement descriptor): a state file edited
to change one of them no longer opens, instead of making the cold HSM sign for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cc_common.config_write import write_private
from cc_common.token import DecryptionFailed
from hsm_cold.errors import StateDamaged
from hsm_cold.keystore import ColdKeystore
from hsm_cold.store import AccountRecord
from wallet_core.bip32 import ExtendedKey, PrivateNode, format_path, parse_xpub
from wallet_core.keys import master_key
from wallet_core.networks import Network
from wallet_core.wallets import (
    CHANGE,
    RECEIVE,
    AccountKey,
    CachedHotWallet,
    ColdWallet,
    FixedKey,
    HotWallet,
    bip48_account_path,
    bip84_account_path,
)

SEED_SIZE = 32
WALLET_ACCOUNT = 0  # per-account seeds: BIP32 account 0 of each


class SeedPurpose(Enum):
    RECEIVING = "receiving"
    COSIGNER = "cosigner"


@dataclass(frozen=True)
class AccountFacts:
    """The public facts of an account, pinned at provisioning and bound into the seeds' AAD."""

    account: int
    network: Network
    hot_pubkey: bytes
    vdevice_identity: bytes
    settlement_descriptor: str
    recovery_xpub: str
    recovery_fingerprint: bytes

    @classmethod
    def of(cls, rec: AccountRecord) -> AccountFacts:
        return cls(
            account=rec.account,
            network=Network.from_name(rec.network),
            hot_pubkey=rec.hot_pubkey,
            vdevice_identity=rec.vdevice_identity,
            settlement_descriptor=rec.settlement_descriptor,
            recovery_xpub=rec.recovery_xpub,
            recovery_fingerprint=rec.recovery_fingerprint,
        )

    def aad(self, purpose: SeedPurpose) -> str:
        return ":".join(
            (
                "cc-cold-seed",
                str(self.account),
                purpose.value,
                self.network.value,
                self.hot_pubkey.hex(),
                self.vdevice_identity.hex(),
                self.settlement_descriptor,
                self.recovery_xpub,
                self.recovery_fingerprint.hex(),
            )
        )

    @property
    def recovery_key(self) -> AccountKey:
        path = bip48_account_path(self.network, WALLET_ACCOUNT)
        return AccountKey(parse_xpub(self.recovery_xpub), self.recovery_fingerprint, path)


def new_seed(keystore: ColdKeystore) -> bytes:
    """32 bytes from the token's generator."""
    return keystore.random(SEED_SIZE)


def seal_seed(keystore: ColdKeystore, seed: bytes, facts: AccountFacts, p: SeedPurpose) -> bytes:
    return keystore.seal(seed, facts.aad(p))


@contextmanager
def opened_root(
    keystore: ColdKeystore, rec: AccountRecord, purpose: SeedPurpose
) -> Iterator[ExtendedKey]:
    """The private BIP32 root of one of the account's seeds, for the length of one operation."""
    facts = AccountFacts.of(rec)
    blob = rec.receiving_seed if purpose is SeedPurpose.RECEIVING else rec.cosigner_seed
    try:
        seed = keystore.unseal(blob, facts.aad(purpose))
    except DecryptionFailed:
        raise StateDamaged(
            f"account {rec.account}: the {purpose.value} seed does not open with the account's"
            " recorded facts; the cold state was altered"
        ) from None
    root = master_key(seed, facts.network)
    del seed
    yield root


def receiving_wallet(root: ExtendedKey, network: Network) -> ColdWallet:
    return ColdWallet.from_root(root, network, WALLET_ACCOUNT)


def receiving_account_node(root: ExtendedKey, network: Network) -> ExtendedKey:
    """The private account node m/84'/c'/0' (its children sign sweeps)."""
    return root.derive(bip84_account_path(network, WALLET_ACCOUNT))


def cosigner_node(root: ExtendedKey, network: Network) -> ExtendedKey:
    """The private account node m/48'/c'/0'/2' alone (its children co-sign hot spends)."""
    return root.derive(bip48_account_path(network, WALLET_ACCOUNT))


def cosigner_signing_node(root: ExtendedKey, network: Network) -> PrivateNode:
    """The private account node m/48'/c'/0'/2' as a `PrivateNode` (the same key and chain
    code as `cosigner_node`, without the public keys along the path, all hardened). Below it
    `cosign.sign_inputs` takes the public keys of non-hardened steps from the account's
    wallet (derived from this same seed); a wallet that is not this seed's gives a child whose
    signature does not verify against the wallet's key, and is withheld."""
    node = PrivateNode(root.private_key, root.chain_code)
    for index in bip48_account_path(network, WALLET_ACCOUNT):
        node = node.child(index)
    return node


def cosigner_key(root: ExtendedKey, network: Network) -> AccountKey:
    return AccountKey.from_root(root, bip48_account_path(network, WALLET_ACCOUNT))


def hot_wallet(facts: AccountFacts, cosigner: AccountKey) -> HotWallet:
    """The account's 2-of-3: (fixed hot key, cold cosigner, recovery), derived, never trusted."""
    return CachedHotWallet(
        (FixedKey(facts.hot_pubkey), cosigner, facts.recovery_key), facts.network
    )


def recovery_export_path(export_dir: Path, account: int) -> Path:
    return export_dir / f"account-{account}-recovery.txt"


def write_recovery_export(
    export_dir: Path, facts: AccountFacts, recovery_root: ExtendedKey, wallet: HotWallet
) -> Path:
    """The paper backup: the only place the recovery private key ever appears (mode 0600).

    Written atomically and fsynced before the account exists, so an account is never usable
    without its recovery key on paper.
    """
    path = recovery_export_path(export_dir, facts.account)
    export_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = (
        f"# ChainCloud hot wallet recovery key, account {facts.account} ({facts.network.value})\n"
        "# Written once by the cold HSM at provisioning. This is the only copy: print it, store\n"
        "# it offline, then delete this file. With any one other key of the hot wallet it\n"
        "# spends every hot address of the account.\n"
        f"account: {facts.account}\n"
        f"network: {facts.network.value}\n"
        f"master_fingerprint: {recovery_root.fingerprint.hex()}\n"
        f"master_xprv: {recovery_root.serialize()}\n"
        f"account_path: {format_path(facts.recovery_key.path)}\n"
        f"account_xpub: {facts.recovery_xpub}\n"
        f"hot_wallet_receive: {wallet.descriptor(RECEIVE)}\n"
        f"hot_wallet_change: {wallet.descriptor(CHANGE)}\n"
    )
    write_private(path, text)
    return path
