"""The PKCS#11 token layer against real SoftHSM2 tokens, each in its own worker process.

What: keys stay in the token (sensitive, non-extractable, unmodifiable); signatures are DER,
low-S and verify with three independent verifiers; compact signatures recover our key; wrong
PINs are refused without echoing them and our retry limit locks the token until an SO reset;
sealed seeds round-trip and any change is refused; 4 signing threads share one session; two
tokens in two directories see nothing of each other.
How: `tests.token_fixtures.TokenWorker` runs each token in a separate Python process (SoftHSM
reads SOFTHSM2_CONF once per process); pure helpers are tested in this process.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import coincurve
import pytest
from bitcointx.core.key import CPubKey
from bitcointx.core.scripteval import IsLowDERSignature
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from cc_common.config import Section
from cc_common.token import (
    DecryptionFailed,
    InvalidArgument,
    KeyExists,
    KeyNotFound,
    ModuleConflict,
    PinIncorrect,
    SignatureCheckFailed,
    TokenBusy,
    TokenLocked,
    TokenSettings,
)
from cc_common.token import softhsm as softhsm_mod
from cc_common.token.ec_keys import HALF_N, SECP256K1_N, low_s, raw_to_low_s
from cc_common.token.pin_guard import PinGuard
from cc_common.token.types import PinRole, Provisioned
from tests.token_fixtures import TokenWorker, hsm_section

pytestmark = pytest.mark.skipif(
    not Path(hsm_section(Path("."), "x", "x")["pkcs11_module"]).exists()
    or shutil.which("softhsm2-util") is None,
    reason="SoftHSM2 is not installed",
)


def digest_of(i: int | str) -> bytes:
    return hashlib.sha256(f"digest {i}".encode()).digest()


def start_worker(base: Path, name: str, label: str, *, limit: int = 5) -> TokenWorker:
    section = hsm_section(base, name, label, limit=limit)
    return TokenWorker(base, section, base / f"{name}-worker.log")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tokens")


def _open_worker(base: Path, name: str, label: str) -> Iterator[TokenWorker]:
    worker = start_worker(base, name, label)
    try:
        assert worker.call("init") == Provisioned.CREATED.value
        worker.call("open_token")
        yield worker
    finally:
        worker.stop()
    log = worker.log_text()
    for pin in (worker.section["so_pin"], worker.section["user_pin"]):
        assert pin not in log


@pytest.fixture(scope="module")
def hot(base: Path) -> Iterator[TokenWorker]:
    yield from _open_worker(base, "hsm-hot", "hsm-hot")


@pytest.fixture(scope="module")
def cold(base: Path) -> Iterator[TokenWorker]:
    yield from _open_worker(base, "hsm-cold", "hsm-cold")


@pytest.fixture(scope="module")
def hot_key(hot: TokenWorker) -> tuple[str, bytes]:
    label = "hot/acct-1"
    return label, hot.call("generate_signing_key", label)


# ---- keys stay in the token ------------------------------------------------------------


def test_init_is_idempotent(hot: TokenWorker) -> None:
    assert hot.call("init") == Provisioned.ALREADY_PRESENT.value


def test_generated_key_is_compressed_secp256k1(hot: TokenWorker, hot_key: tuple[str, bytes]):
    label, pub = hot_key
    assert len(pub) == 33 and pub[0] in (2, 3)
    coincurve.PublicKey(pub)  # a valid point
    assert hot.call("public_key", label) == pub
    assert hot.call("public_key_uncached", label) == pub  # found again by label


def test_private_key_cannot_be_read_or_unprotected(hot: TokenWorker, hot_key: tuple[str, bytes]):
    report = hot.call("probe_private_key", hot_key[0])
    assert report["value"] == "AttributeSensitive"
    assert report["sensitive"] and report["always_sensitive"] and report["token"]
    assert not report["extractable"] and report["never_extractable"]
    assert report["set_extractable"] != "CHANGED"
    assert report["set_sensitive"] != "CHANGED"
    assert report["still_sensitive"] and report["still_unextractable"]


def test_key_labels_are_unique_and_looked_up(hot: TokenWorker, hot_key: tuple[str, bytes]):
    with pytest.raises(KeyExists, match="already exists"):
        hot.call("generate_signing_key", hot_key[0])
    with pytest.raises(KeyNotFound, match="hot/nobody"):
        hot.call("public_key", "hot/nobody")
    with pytest.raises(KeyNotFound):
        hot.call("sign_digest", "hot/nobody", digest_of(0))
    with pytest.raises(InvalidArgument):
        hot.call("generate_signing_key", "")


# ---- signatures --------------------------------------------------------------------------


def _check_signature(pub: bytes, digest: bytes, der: bytes) -> None:
    r, s = decode_dss_signature(der)
    assert encode_dss_signature(r, s) == der  # strict, minimal DER
    assert 0 < s <= HALF_N  # low-S
    assert IsLowDERSignature(der)  # Bitcoin Core's own rule, via python-bitcointx
    assert coincurve.PublicKey(pub).verify(der, digest, hasher=None)  # libsecp256k1
    assert CPubKey(pub).verify(digest, der)  # python-bitcointx
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), pub).verify(
        der, digest, ec.ECDSA(Prehashed(hashes.SHA256()))
    )  # OpenSSL


def test_signatures_are_der_low_s_and_verify(hot: TokenWorker, hot_key: tuple[str, bytes]):
    label, pub = hot_key
    digests = [digest_of(i) for i in range(300)]
    result = hot.call("sign_many", label, digests)
    assert len(result["sigs"]) == 300
    for digest, der in zip(digests, result["sigs"], strict=True):
        _check_signature(pub, digest, der)
    other = digest_of("other")
    with pytest.raises(InvalidSignature):
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), pub).verify(
            result["sigs"][0], other, ec.ECDSA(Prehashed(hashes.SHA256()))
        )


def test_sign_refuses_a_digest_of_the_wrong_size(hot: TokenWorker, hot_key: tuple[str, bytes]):
    for bad in (b"", b"\x01" * 31, b"\x01" * 33, b"\x01" * 64):
        with pytest.raises(InvalidArgument, match="32 bytes"):
            hot.call("sign_digest", hot_key[0], bad)


def test_a_signature_that_does_not_verify_is_withheld(hot: TokenWorker, hot_key: tuple[str, bytes]):
    hot.call("generate_signing_key", "hot/acct-other")
    with pytest.raises(SignatureCheckFailed, match="withheld"):
        hot.call("sign_with_wrong_public_key", hot_key[0], "hot/acct-other", digest_of(1))
    # the real key still signs fine afterwards
    _check_signature(hot_key[1], digest_of(1), hot.call("sign_digest", hot_key[0], digest_of(1)))


def test_recoverable_signature_recovers_our_key(hot: TokenWorker, hot_key: tuple[str, bytes]):
    label, pub = hot_key
    message = b"1,bcrt1qexample:2,bcrt1qexample2"
    magic = b"\x18Bitcoin Signed Message:\n" + bytes([len(message)]) + message
    digests = [hashlib.sha256(hashlib.sha256(magic).digest()).digest()]
    digests += [digest_of(f"rec {i}") for i in range(40)]
    for digest in digests:
        sig = hot.call("sign_recoverable", label, digest)
        assert len(sig) == 65 and 31 <= sig[0] <= 34  # compressed-key header
        assert int.from_bytes(sig[33:], "big") <= HALF_N
        recovered = coincurve.PublicKey.from_signature_and_message(
            sig[1:] + bytes([sig[0] - 31]), digest, hasher=None
        )
        assert recovered.format() == pub


def test_four_threads_share_the_session(hot: TokenWorker, hot_key: tuple[str, bytes]) -> None:
    result = hot.call("sign_concurrently", hot_key[0], 4, 200)
    assert result["failures"] == []
    print(f"4 threads: {800 / result['seconds']:.0f} verified signs/s")


# ---- sealed seeds ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seal_key(cold: TokenWorker) -> str:
    label = "cold/seed-wrap"
    assert cold.call("ensure_wrapping_key", label) == Provisioned.CREATED.value
    return label


def test_wrapping_key_is_idempotent_and_protected(cold: TokenWorker, seal_key: str) -> None:
    assert cold.call("ensure_wrapping_key", seal_key) == Provisioned.ALREADY_PRESENT.value
    report = cold.call("probe_secret_key", seal_key)
    assert report["value"] == "AttributeSensitive"
    assert report["sensitive"] and not report["extractable"] and report["never_extractable"]
    assert report["still_sensitive"] and report["still_unextractable"]


def test_seed_round_trip(cold: TokenWorker, seal_key: str) -> None:
    seed = os.urandom(64)
    blob = cold.call("encrypt", seal_key, seed, b"account 7")
    assert seed not in blob and len(blob) == 1 + 12 + 64 + 16
    assert cold.call("decrypt", seal_key, blob, b"account 7") == seed
    assert cold.call("encrypt", seal_key, seed, b"account 7") != blob  # fresh nonce


def test_tampered_blob_is_refused(cold: TokenWorker, seal_key: str) -> None:
    seed = os.urandom(64)
    blob = cold.call("encrypt", seal_key, seed, b"account 7")
    for pos in (0, 1, 12, 13, 40, len(blob) - 16, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(DecryptionFailed):
            cold.call("decrypt", seal_key, bytes(bad), b"account 7")
    for bad in (blob[:-1], blob[:20], blob + b"\x00", b""):
        with pytest.raises(DecryptionFailed):
            cold.call("decrypt", seal_key, bad, b"account 7")


def test_wrong_aad_or_key_is_refused(cold: TokenWorker, seal_key: str) -> None:
    blob = cold.call("encrypt", seal_key, os.urandom(64), b"account 7")
    with pytest.raises(DecryptionFailed):
        cold.call("decrypt", seal_key, blob, b"account 8")
    cold.call("ensure_wrapping_key", "cold/other-wrap")
    with pytest.raises(DecryptionFailed):
        cold.call("decrypt", "cold/other-wrap", blob, b"account 7")
    with pytest.raises(KeyNotFound):
        cold.call("decrypt", "cold/missing", blob, b"account 7")


# ---- two tokens, two processes -------------------------------------------------------------


def test_tokens_in_two_directories_are_independent(hot: TokenWorker, cold: TokenWorker) -> None:
    hot_pub = hot.call("generate_signing_key", "shared/label")
    cold_pub = cold.call("generate_signing_key", "shared/label")
    assert hot_pub != cold_pub
    cold.call("generate_signing_key", "cold/only")
    with pytest.raises(KeyNotFound):
        hot.call("public_key", "cold/only")
    with pytest.raises(KeyNotFound):
        hot.call("sign_digest", "cold/only", digest_of(2))
    hot.call("generate_signing_key", "hot/only")
    with pytest.raises(KeyNotFound):
        cold.call("public_key", "hot/only")


def test_one_session_per_token_and_one_store_per_process(hot: TokenWorker) -> None:
    with pytest.raises(TokenBusy, match="already open"):
        hot.call("open_token")
    with pytest.raises(ModuleConflict, match="already loaded"):
        hot.call("open_other_conf")


# ---- PINs --------------------------------------------------------------------------------


@pytest.fixture()
def locker(tmp_path: Path) -> Iterator[TokenWorker]:
    """A token with a retry limit of 3, not logged in."""
    worker = start_worker(tmp_path, "hsm-lock", "hsm-lock", limit=3)
    try:
        worker.call("init")
        yield worker
    finally:
        worker.stop()


def _assert_no_pin(text: str, section: dict[str, Any], *extra: str) -> None:
    for pin in (section["so_pin"], section["user_pin"], *extra):
        assert pin not in text


def test_wrong_pin_is_refused_without_echo(locker: TokenWorker) -> None:
    wrong = "wrong-pin-5566778899"
    with pytest.raises(PinIncorrect) as info:
        locker.call("try_login", wrong)
    _assert_no_pin(str(info.value), locker.section, wrong)
    assert "2 tries left" in str(info.value)
    assert locker.call("pin_state") == {"user": 1, "so": 0}
    assert locker.call("try_login", locker.section["user_pin"])
    assert locker.call("pin_state") == {"user": 0, "so": 0}  # success forgives
    _assert_no_pin(locker.log_text(), locker.section, wrong)


def test_retry_limit_locks_until_so_reset(locker: TokenWorker, tmp_path: Path) -> None:
    wrong = "wrong-pin-1122334455"
    for _ in range(3):
        with pytest.raises(PinIncorrect):
            locker.call("try_login", wrong)
    with pytest.raises(TokenLocked, match="SO PIN") as info:
        locker.call("try_login", locker.section["user_pin"])
    _assert_no_pin(str(info.value), locker.section)

    # the lock survives a restart of the HSM process
    locker.stop()
    again = TokenWorker(tmp_path, locker.section, tmp_path / "again.log")
    try:
        with pytest.raises(TokenLocked):
            again.call("try_login", locker.section["user_pin"])
        with pytest.raises(PinIncorrect) as so_info:
            again.call("reset_pin_lock", "wrong-so-pin-998877")
        _assert_no_pin(str(so_info.value), locker.section, "wrong-so-pin-998877")
        with pytest.raises(TokenLocked):  # a failed reset unlocks nothing
            again.call("try_login", locker.section["user_pin"])
        assert again.call("reset_pin_lock", locker.section["so_pin"])
        assert again.call("pin_state") == {"user": 0, "so": 0}
        assert again.call("open_token")
        assert again.call("generate_signing_key", "hot/after-unlock")
    finally:
        again.stop()
    _assert_no_pin(again.log_text(), locker.section, wrong, "wrong-so-pin-998877")


# ---- in-process helpers (no module loaded here) ------------------------------------------


def test_low_s_normalisation() -> None:
    assert low_s(5, HALF_N) == (5, HALF_N)
    assert low_s(5, HALF_N + 1) == (5, SECP256K1_N - HALF_N - 1)
    high = SECP256K1_N - 7
    raw = (9).to_bytes(32, "big") + high.to_bytes(32, "big")
    assert raw_to_low_s(raw) == (9, 7)
    with pytest.raises(SignatureCheckFailed):
        raw_to_low_s(raw[:63])
    with pytest.raises(SignatureCheckFailed):
        raw_to_low_s(bytes(64))


def test_pin_guard_counts_first_and_fails_closed(tmp_path: Path) -> None:
    guard = PinGuard(tmp_path / "state.json", 2)
    with pytest.raises(RuntimeError), guard.attempt(PinRole.USER):
        assert guard.read().user_failures == 1  # counted before the PIN is tried
        raise RuntimeError("not a PIN failure")
    assert guard.read().user_failures == 0  # ... and forgiven when the PIN was not judged
    for _ in range(2):
        with pytest.raises(PinIncorrect), guard.attempt(PinRole.USER):
            raise PinIncorrect("x")
    assert guard.is_locked(PinRole.USER) and not guard.is_locked(PinRole.SO)
    with pytest.raises(TokenLocked), guard.attempt(PinRole.USER):
        pass
    guard.clear()
    assert not guard.is_locked()
    (tmp_path / "state.json").write_text("{garbage", encoding="utf-8")
    assert guard.is_locked(PinRole.USER) and guard.is_locked(PinRole.SO)


def test_settings_from_section_hide_pins(tmp_path: Path) -> None:
    values = hsm_section(tmp_path, "hsm-hot", "hsm-hot")
    settings = TokenSettings.from_section(Section("hsm_hot", values, tmp_path))
    assert settings.softhsm_conf == tmp_path / "hsm-hot/softhsm2.conf"
    assert settings.pin_state_path == tmp_path / "hsm-hot/hsm-hot.pin-retry.json"
    assert values["user_pin"] not in repr(settings) and values["so_pin"] not in repr(settings)


def test_init_keeps_pins_off_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """softhsm2-util is a child process; this runs it here and records every argv."""
    seen: list[list[str]] = []
    real_popen = softhsm_mod.subprocess.Popen

    def recording_popen(argv: list[str], *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        seen.append(list(argv))
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr(softhsm_mod.subprocess, "Popen", recording_popen)
    values = hsm_section(tmp_path, "t", "argv-test")
    args = (
        Path(values["pkcs11_module"]),
        tmp_path / "t/softhsm2.conf",
        tmp_path / "t/tokens",
        "argv-test",
        values["so_pin"],
        values["user_pin"],
    )
    assert softhsm_mod.init_softhsm_token(*args) is Provisioned.CREATED
    assert softhsm_mod.init_softhsm_token(*args) is Provisioned.ALREADY_PRESENT
    assert any("--init-token" in a for a in seen)
    for argv in seen:
        _assert_no_pin(" ".join(argv), values)
    conf = (tmp_path / "t/softhsm2.conf").read_text(encoding="utf-8")
    assert re.search(r"^directories\.tokendir = .*/t/tokens$", conf, re.M)
    assert (tmp_path / "t/softhsm2.conf").stat().st_mode & 0o077 == 0
