"""The two wallets: BIP84 vectors for the cold wallet, 2-of-3 sortedmulti for the hot wallet,
batches of 1000, change recognition by derivation, and descriptors, cross-checked against
embit's descriptor engine (an independent implementation of the same BIPs)."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest
from coincurve import PrivateKey
from embit.descriptor import Descriptor as EmbitDescriptor
from embit.descriptor.checksum import add_checksum as embit_add_checksum

from wallet_core.addresses import p2wpkh_address, p2wsh_address, script_to_address
from wallet_core.bip32 import ExtendedKey, parse_path
from wallet_core.descriptors import (
    add_checksum,
    descriptor_checksum,
    parse_descriptor,
    split_checksum,
)
from wallet_core.errors import (
    DerivationPathError,
    DescriptorChecksumError,
    DescriptorError,
    InvalidKeyError,
    MnemonicError,
    WalletError,
)
from wallet_core.hashes import hash160
from wallet_core.keys import mnemonic_to_seed, wif_decode, wif_encode
from wallet_core.networks import Network
from wallet_core.script import multisig_script, p2wpkh_script
from wallet_core.wallets import (
    CHANGE,
    PUBKEY_CACHE_SIZE,
    RECEIVE,
    AccountKey,
    CachedHotWallet,
    ColdWallet,
    FixedKey,
    HotWallet,
    KeyOrigin,
    batch_addresses,
    bip48_account_path,
    is_own_script,
    own_index_from_origins,
)

VEC = Path(__file__).parent / "vectors"
BIP84 = json.loads((VEC / "bip84.json").read_text())
BIP380 = json.loads((VEC / "bip380_descriptors.json").read_text())


@pytest.fixture(scope="module")
def bip84_root() -> ExtendedKey:
    seed = mnemonic_to_seed(BIP84["mnemonic"], BIP84["passphrase"])
    return ExtendedKey.from_seed(seed, Network.MAINNET)


def test_bip84_root_and_account(bip84_root: ExtendedKey) -> None:
    zprv = Network.MAINNET.params.zkey.private
    assert bip84_root.with_version(zprv).serialize() == BIP84["rootpriv"]
    assert bip84_root.with_version(zprv).to_public().serialize() == BIP84["rootpub"]
    account = bip84_root.derive(BIP84["account_path"]).with_version(zprv)
    assert account.serialize() == BIP84["xprv"]
    assert account.to_public().serialize() == BIP84["xpub"]


@pytest.mark.parametrize("entry", BIP84["addresses"], ids=lambda e: e["path"])
def test_bip84_addresses(bip84_root: ExtendedKey, entry: dict) -> None:
    wallet = ColdWallet.from_root(bip84_root, Network.MAINNET, 0)
    assert wallet.address(entry["index"], entry["change"]) == entry["address"]
    assert wallet.pubkey(entry["index"], entry["change"]).hex() == entry["pubkey"]
    node = bip84_root.derive(entry["path"])
    priv, net, compressed = wif_decode(entry["privkey"])
    assert (priv, net, compressed) == (node.private_key, Network.MAINNET, True)
    assert wif_encode(priv, Network.MAINNET) == entry["privkey"]
    # the same wallet built from the published zpub alone gives the same address
    xpub_only = ColdWallet(
        AccountKey(
            ExtendedKey.parse(BIP84["xpub"]), bip84_root.fingerprint, parse_path("m/84h/0h/0h")
        ),
        Network.MAINNET,
    )
    assert xpub_only.address(entry["index"], entry["change"]) == entry["address"]


def test_mnemonic_checksum_is_enforced() -> None:

    with pytest.raises(MnemonicError):
        mnemonic_to_seed(BIP84["mnemonic"].replace("about", "abandon"))


def _hot_wallet(network: Network, seed: int = 1) -> tuple[HotWallet, list[ExtendedKey]]:
    roots = [ExtendedKey.from_seed(bytes([seed + n]) * 32, network) for n in range(3)]
    path = bip48_account_path(network, 0)
    accounts = tuple(AccountKey.from_root(r, path) for r in roots)
    return HotWallet(accounts, network), roots  # type: ignore[arg-type]


@pytest.mark.parametrize("network", list(Network), ids=lambda n: n.value)
def test_batches_match_single_derivation_and_embit(network: Network) -> None:
    cold = ColdWallet.from_root(ExtendedKey.from_seed(os.urandom(32), network), network, 3)
    hot, _ = _hot_wallet(network)
    for wallet in (cold, hot):
        batch = batch_addresses(wallet, 2)
        assert len(batch) == 1000
        assert [i for i, _ in batch] == list(range(2000, 3000))
        desc = EmbitDescriptor.from_string(str(wallet.descriptor(0)))
        for idx, addr in batch[::97] + [batch[-1]]:
            assert addr == wallet.address(idx)
            embit_spk = desc.derive(idx).script_pubkey().data
            assert script_to_address(embit_spk, network) == addr
        change = wallet.addresses(5, 3, change=1)
        change_desc = EmbitDescriptor.from_string(str(wallet.descriptor(1)))
        for k, addr in enumerate(change):
            assert (
                script_to_address(change_desc.derive(5 + k).script_pubkey().data, network) == addr
            )


def test_regtest_prefixes() -> None:
    hot, _ = _hot_wallet(Network.REGTEST)
    cold = ColdWallet.from_root(ExtendedKey.from_seed(bytes(32), Network.REGTEST), Network.REGTEST)
    assert hot.address(0).startswith("bcrt1q") and len(hot.address(0)) == 64
    assert cold.address(0).startswith("bcrt1q") and len(cold.address(0)) == 44
    assert cold.account.path == parse_path("m/84h/1h/0h")
    assert hot.hot.path == parse_path("m/48h/1h/0h/2h")


def test_hot_witness_script_is_sorted_2_of_3() -> None:
    hot, _ = _hot_wallet(Network.REGTEST)
    ws = hot.witness_script(9)
    keys = hot.pubkeys(9)
    assert ws[0] == 0x52 and ws[-2:] == b"\x53\xae" and len(ws) == 105
    assert [ws[2 + 34 * i : 35 + 34 * i] for i in range(3)] == sorted(keys)


def test_change_is_recognised_by_derivation_only() -> None:
    hot, _ = _hot_wallet(Network.REGTEST)
    origins = hot.origins(42, 1)
    assert own_index_from_origins(hot, origins) == (1, 42)
    assert is_own_script(hot, hot.script_pubkey(42, 1), 1, 42)
    # a stranger's script with our claimed derivation is not ours
    other, _ = _hot_wallet(Network.REGTEST, seed=10)
    assert not is_own_script(hot, other.script_pubkey(42, 1), 1, 42)
    # our script at another index does not match the claim
    assert not is_own_script(hot, hot.script_pubkey(43, 1), 1, 42)
    forged = {b"\x02" * 33: KeyOrigin(b"\0\0\0\0", parse_path("m/48h/1h/0h/2h/1/42"))}
    assert own_index_from_origins(hot, forged) is None


def test_batch_number_bounds() -> None:
    hot, _ = _hot_wallet(Network.REGTEST)
    with pytest.raises(DerivationPathError):
        batch_addresses(hot, -1)
    with pytest.raises(DerivationPathError):
        hot.address(0, change=2)


# -- descriptors
@pytest.mark.parametrize("entry", BIP380["valid"], ids=lambda e: e["descriptor"])
def test_bip380_valid_checksums(entry: dict) -> None:
    body, _, check = entry["descriptor"].partition("#")
    assert descriptor_checksum(body) == check
    assert split_checksum(entry["descriptor"], require=True) == body


@pytest.mark.parametrize("entry", BIP380["invalid"], ids=lambda e: e["reason"])
def test_bip380_invalid_checksums(entry: dict) -> None:
    with pytest.raises(DescriptorError):
        split_checksum(entry["descriptor"], require=True)


def test_checksum_agrees_with_embit() -> None:
    hot, _ = _hot_wallet(Network.MAINNET)
    for text in [str(hot.descriptor(0).to_string(False)), "raw(00)", "addr(bc1qxyz)", "pk(02aa)"]:
        assert add_checksum(text) == embit_add_checksum(text)


def test_descriptor_round_trip_and_checks(bip84_root: ExtendedKey) -> None:
    cold = ColdWallet.from_root(bip84_root, Network.MAINNET)
    d = cold.descriptor(0)
    text = str(d)
    assert text.startswith("wpkh([73c5da0a/84h/0h/0h]xpub") and text.endswith("/0/*)" + text[-9:])
    assert parse_descriptor(text, require_checksum=True) == d
    assert d.script_pubkey(0) == cold.script_pubkey(0)
    hot, _ = _hot_wallet(Network.REGTEST)
    hd = hot.descriptor(1)
    parsed = parse_descriptor(str(hd))
    assert parsed == hd and parsed.threshold == 2 and len(parsed.keys) == 3
    assert parsed.script_pubkey(17) == hot.script_pubkey(17, 1)
    assert "tpub" in str(hd)  # never SLIP-132 versions in descriptors
    with pytest.raises(DescriptorChecksumError):
        parse_descriptor(text[:-1] + ("q" if text[-1] != "q" else "p"))
    with pytest.raises(DescriptorError, match="private"):
        parse_descriptor(f"wpkh([73c5da0a/84h/0h/0h]{bip84_root.serialize()}/0/*)")


def _fixed_hot_wallet(network: Network) -> HotWallet:
    """The deployed shape: the hot HSM's PKCS#11 key does not derive (docs/hsm-pair.md)."""

    hot_key = FixedKey(PrivateKey(b"\x07" * 32).public_key.format())
    roots = [ExtendedKey.from_seed(bytes([20 + n]) * 32, network) for n in range(2)]
    path = bip48_account_path(network, 0)
    cold, recovery = (AccountKey.from_root(r, path) for r in roots)
    return HotWallet((hot_key, cold, recovery), network)


@pytest.mark.parametrize("network", [Network.REGTEST, Network.MAINNET], ids=lambda n: n.value)
def test_fixed_hot_key_wallet_matches_embit_descriptor(network: Network) -> None:
    hot = _fixed_hot_wallet(network)
    text = str(hot.descriptor(0))
    assert hot.hot.public_key.hex() in text  # type: ignore[union-attr]
    assert parse_descriptor(text).to_string() == text
    desc = EmbitDescriptor.from_string(text)
    batch = batch_addresses(hot, 1)
    for idx, addr in batch[::111] + [batch[-1]]:
        assert addr == hot.address(idx)
        assert script_to_address(desc.derive(idx).script_pubkey().data, network) == addr
        assert hot.pubkeys(idx)[0] == hot.hot.public_key  # type: ignore[union-attr]
    assert len({a for _, a in batch}) == 1000  # the derived cosigners make every address differ


def test_fixed_hot_key_change_is_recognised_and_validated() -> None:

    hot = _fixed_hot_wallet(Network.REGTEST)
    origins = hot.origins(7, 1)
    assert own_index_from_origins(hot, origins) == (1, 7)
    assert is_own_script(hot, hot.script_pubkey(7, 1), 1, 7)
    with pytest.raises(InvalidKeyError, match="33-byte compressed"):
        FixedKey(b"\x04" + b"\x01" * 64)
    with pytest.raises(InvalidKeyError, match="not a point"):
        FixedKey(b"\x02" + b"\xff" * 32)


@pytest.mark.parametrize("network", [Network.REGTEST, Network.MAINNET], ids=lambda n: n.value)
def test_derive_range_matches_single_derivation(network: Network) -> None:
    """`derive_range` (what custody stores for a batch) agrees with the per-index methods."""
    cold = ColdWallet.from_root(ExtendedKey.from_seed(bytes([9]) * 32, network), network)
    for wallet in (cold, _fixed_hot_wallet(network)):
        for change in (0, 1):
            derived = wallet.derive_range(995, 10, change)
            assert [d.address for d in derived] == wallet.addresses(995, 10, change)
            for d in derived[::3]:
                assert d.script_pubkey == wallet.script_pubkey(d.index, change)
                assert script_to_address(d.script_pubkey, network) == d.address
                if isinstance(wallet, HotWallet):
                    assert d.witness_script == wallet.witness_script(d.index, change)
                else:
                    assert d.witness_script is None
    with pytest.raises(DerivationPathError):
        cold.derive_range(2**31, 1)


def test_fast_batch_path_matches_reference_derivation_at_random_indexes() -> None:
    """The batch path (window-table combines, batch hash and bech32) against the plain BIP32
    path (`ExtendedKey.child`: libsecp256k1's tweak-add) and the reference encoder."""
    net = Network.REGTEST
    cold = ColdWallet.from_root(ExtendedKey.from_seed(os.urandom(32), net), net, 1)
    hot, _ = _hot_wallet(net)
    rng = random.Random(os.urandom(8))
    for _ in range(6):
        start, change, count = rng.randrange(2**31 - 40), rng.choice((0, 1)), rng.randrange(1, 40)
        for d in cold.derive_range(start, count, change):
            pub = cold.account.xpub.child(change).child(d.index).public_key
            assert d.address == p2wpkh_address(pub, net)
            assert d.script_pubkey == p2wpkh_script(hash160(pub))
        for d in hot.derive_range(start, count, change):
            keys = [c.xpub.child(change).child(d.index).public_key for c in hot.cosigners]  # type: ignore[union-attr]
            ws = multisig_script(2, keys, sort=True)
            assert d.witness_script == ws
            assert d.address == p2wsh_address(ws, net)


def test_cached_hot_wallet_derives_what_the_plain_wallet_derives() -> None:
    plain = _fixed_hot_wallet(Network.REGTEST)
    cached = CachedHotWallet(plain.cosigners, plain.network)
    for _ in range(2):  # misses, then hits
        for chain in (RECEIVE, CHANGE):
            for index in (0, 1, 7, 999):
                assert cached.pubkeys(index, chain) == plain.pubkeys(index, chain)
                assert cached.witness_script(index, chain) == plain.witness_script(index, chain)
    assert cached.cache_size == PUBKEY_CACHE_SIZE
    for index in range(PUBKEY_CACHE_SIZE + 10):
        cached.pubkeys(index, CHANGE)
    assert len(cached._pubkeys) == PUBKEY_CACHE_SIZE
    assert cached.pubkeys(3, RECEIVE) == plain.pubkeys(3, RECEIVE)
    with pytest.raises(WalletError):
        cached.pubkeys(-1, RECEIVE)
    with pytest.raises(DerivationPathError):
        cached.pubkeys(0, 2)


def test_cached_hot_wallet_evicts_least_recently_used_and_is_thread_safe() -> None:
    class Small(CachedHotWallet):
        cache_size = 4

    plain = _fixed_hot_wallet(Network.REGTEST)
    cached = Small(plain.cosigners, plain.network)
    for index in range(4):
        cached.pubkeys(index)
    cached.pubkeys(0)  # now the most recently used
    cached.pubkeys(4)  # evicts 1, the least recently used
    assert list(cached._pubkeys) == [(2, RECEIVE), (3, RECEIVE), (0, RECEIVE), (4, RECEIVE)]
    # a hit hands out a fresh list: callers cannot change what is cached
    cached.pubkeys(0).clear()
    assert cached.pubkeys(0) == plain.pubkeys(0)

    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for index in range(offset, offset + 40):
                assert cached.pubkeys(index % 9, index % 2) == plain.pubkeys(index % 9, index % 2)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cached._pubkeys) <= 4
