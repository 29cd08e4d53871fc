"""The C batch path (wallet_core._batch_ec) gives exactly the bytes of the public-API path, of
libsecp256k1's plain tweak-add and of embit, for random and edge tweaks; a sum at infinity is
reported, and bad input is refused with a clear error."""

from __future__ import annotations

import os
import random

import pytest
from embit.bip32 import HDKey

from wallet_core import _batch_ec, secp
from wallet_core.bip32 import ChainDeriver, ExtendedKey
from wallet_core.errors import DerivationError, InvalidKeyError
from wallet_core.networks import Network

N = secp.N


@pytest.fixture(scope="module")
def multiplier() -> secp.BatchPointMultiplier:
    return secp.BatchPointMultiplier.shared()


def _tweak(t: int) -> bytes:
    return t.to_bytes(32, "big")


def test_the_native_path_is_built_and_used() -> None:
    # a missing build would silently fall back to the slower public API
    assert secp.BATCH_BACKEND == "native (wallet_core._batch_ec)"


def test_random_tweaks_match_the_public_api_path(multiplier: secp.BatchPointMultiplier) -> None:
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    for _ in range(3):
        point = secp.pubkey_from_privkey(_tweak(rng.randrange(1, N)))
        tweaks = [_tweak(rng.randrange(N)) for _ in range(1000)]
        native = multiplier.add_many_packed(point, tweaks)
        assert native == multiplier.add_many_packed_reference(point, tweaks)
        assert native[1] == []


def test_random_tweaks_match_plain_tweak_add(multiplier: secp.BatchPointMultiplier) -> None:
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    point = secp.pubkey_from_privkey(_tweak(rng.randrange(1, N)))
    tweaks = [_tweak(rng.randrange(1, N)) for _ in range(300)]
    got = multiplier.add_many(point, tweaks)
    assert got == [secp.pubkey_tweak_add(point, t) for t in tweaks]


def test_edge_tweaks_and_the_point_at_infinity(multiplier: secp.BatchPointMultiplier) -> None:
    k = 0x1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF
    point = secp.pubkey_from_privkey(_tweak(k))
    edges = [0, 1, 2, 255, 256, 2**255, N - 1, N - 2, k, (N - k + 1) % N, 2**256 - 2**224 - 1]
    tweaks = [_tweak(t % N) for t in edges]
    tweaks.insert(5, _tweak(N - k))  # point + (n - k)*G = k*G - k*G: infinity
    keys, infinite = multiplier.add_many_packed(point, tweaks)
    assert (keys, infinite) == multiplier.add_many_packed_reference(point, tweaks)
    assert infinite == [5]
    assert keys[5 * 33 : 6 * 33] == bytes(33)
    expected = [secp.pubkey_from_privkey(_tweak((k + t) % N)) for t in edges]
    got = multiplier.add_many(point, tweaks)
    assert got[5] is None
    assert got[:5] + got[6:] == expected
    # a batch that is all infinity, and an empty one
    assert multiplier.add_many_packed(point, [_tweak(N - k)] * 2) == (bytes(66), [0, 1])
    assert multiplier.add_many_packed(point, []) == (b"", [])


@pytest.mark.parametrize("window", [0, 1, 7, 30, 31])
@pytest.mark.parametrize("sign", [1, -1])
def test_a_running_sum_that_meets_a_window_point(
    multiplier: secp.BatchPointMultiplier, window: int, sign: int
) -> None:
    # K is chosen so that, for tweaks starting with the bytes of t, the running sum before
    # `window` equals the window's point (a doubling) or its negation (infinity midway):
    # the C code's exceptional path, amid regular keys of the same batch
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    t = rng.randrange(N)
    entry = [(b * pow(256, 31 - j, N) + multiplier.offsets[j]) % N for j, b in enumerate(_tweak(t))]
    k = (sign * entry[window] - sum(entry[:window])) % N
    assert k != 0
    point = secp.pubkey_from_privkey(_tweak(k))
    prefix = _tweak(t)[: window + 1]
    same_start = prefix + os.urandom(31 - window)
    tweaks = [_tweak(rng.randrange(N)), _tweak(t), _tweak(rng.randrange(N)), same_start]
    tweaks += [_tweak(N - k), _tweak(rng.randrange(N))]
    keys, infinite = multiplier.add_many_packed(point, tweaks)
    assert (keys, infinite) == multiplier.add_many_packed_reference(point, tweaks)
    for i, tw in enumerate(tweaks):
        total = (k + int.from_bytes(tw, "big")) % N
        expected = bytes(33) if total == 0 else secp.pubkey_from_privkey(_tweak(total))
        assert keys[33 * i : 33 * i + 33] == expected
    assert 4 in infinite


def test_chain_deriver_reports_an_index_at_infinity(monkeypatch: pytest.MonkeyPatch) -> None:
    chain = ExtendedKey.from_seed(bytes(range(32)), Network.REGTEST).derive("m/0").to_public()
    deriver = ChainDeriver(chain)
    multiplier = secp.BatchPointMultiplier.shared()
    real = multiplier.add_many_packed
    k_neg = N - 5

    def with_infinity(point: bytes, tweaks: list[bytes]) -> tuple[bytes, list[int]]:
        # as if IL of the third index were -k: the real C path computes the infinity
        k_point = secp.pubkey_from_privkey(_tweak(5))
        tweaks = list(tweaks)
        tweaks[2] = _tweak(k_neg)
        return real(k_point, tweaks)

    monkeypatch.setattr(multiplier, "add_many_packed", with_infinity)
    with pytest.raises(DerivationError, match="index 12 gives an invalid key"):
        deriver.packed(10, 5)


def test_chain_deriver_reports_an_index_at_infinity_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A few keys go through libsecp256k1's tweak-add, one at a time: the same report."""
    chain = ExtendedKey.from_seed(bytes(range(32)), Network.REGTEST).derive("m/0").to_public()
    deriver = ChainDeriver(chain)
    real = secp.pubkey_tweak_add
    calls = []

    def with_infinity(point: bytes, tweak: bytes) -> bytes:
        calls.append(tweak)
        if len(calls) == 2:  # as if IL of the second index were -k for the point k*G
            return real(secp.pubkey_from_privkey(_tweak(5)), _tweak(N - 5))
        return real(point, tweak)

    monkeypatch.setattr(secp, "pubkey_tweak_add", with_infinity)
    with pytest.raises(DerivationError, match="index 11 gives an invalid key"):
        deriver.packed(10, 2)
    assert len(calls) == 2


def test_chain_deriver_few_keys_match_the_batch() -> None:
    chain = ExtendedKey.from_seed(bytes(range(32)), Network.REGTEST).derive("m/1").to_public()
    deriver = ChainDeriver(chain)
    many = deriver.pubkeys(0, 40)
    for start, count in ((0, 1), (3, 2), (7, 4), (36, 4)):
        assert deriver.pubkeys(start, count) == many[start : start + count]
    assert deriver.pubkey(2**31 - 1) == chain.child(2**31 - 1).key


def test_chain_derivation_matches_embit_at_edge_indexes() -> None:
    seed = os.urandom(32)
    root = HDKey.from_seed(seed)
    ours = ExtendedKey.from_seed(seed, Network.MAINNET)
    chain = ours.derive("m/48h/0h/0h/2h/0").to_public()
    theirs = root.derive("m/48h/0h/0h/2h/0")
    deriver = ChainDeriver(chain)
    for start, count in ((0, 600), (2**31 - 200, 200), (1_000_000, 300)):
        keys = deriver.pubkeys(start, count)
        for i in (0, 1, count // 2, count - 1):
            assert keys[i] == theirs.derive([start + i]).key.sec()


def test_bad_input_is_refused(multiplier: secp.BatchPointMultiplier) -> None:
    table = multiplier._native
    point = secp.pubkey_from_privkey(_tweak(3))
    xy = secp._serialize(secp._parse(point), False)[1:]
    with pytest.raises(ValueError, match="64 bytes x\\|\\|y on the curve"):
        _batch_ec.add_many(table, xy[:32] + bytes(32), bytes(32))
    with pytest.raises(ValueError, match="64 bytes x\\|\\|y on the curve"):
        _batch_ec.add_many(table, xy[:63], bytes(32))
    with pytest.raises(ValueError, match="32 bytes each"):
        _batch_ec.add_many(table, xy, bytes(33))
    with pytest.raises(TypeError, match="must come from make_table"):
        _batch_ec.add_many(object(), xy, bytes(32))
    with pytest.raises(ValueError, match="8192 points of 64 bytes"):
        _batch_ec.make_table(bytes(64))
    with pytest.raises(ValueError, match="point 0 is not on the curve"):
        _batch_ec.make_table(bytes(64 * 8192))
    with pytest.raises(InvalidKeyError, match="32 bytes"):
        multiplier.add_many_packed(point, [bytes(31)])
