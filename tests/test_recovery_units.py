"""The pieces of disaster recovery that need no process: shares, the backup file format, the
share display at the cold console, and `cc-recover`'s input checks (docs/recovery.md)."""

from __future__ import annotations

import ast
import io
import os
import sys
from pathlib import Path

import coincurve
import pytest

from hsm_cold.backup import (
    BackupFile,
    BackupKey,
    ShareScheme,
    canonical,
    combine_shares,
)
from hsm_cold.console import Console, show_shares
from hsm_cold.errors import (
    BackupFileAltered,
    BackupFileInvalid,
    ForeignBackupKey,
    NotConfirmed,
    TooFewShares,
    WrongShare,
)
from recovery.cli import main as cc_recover
from recovery.wallet import RecoveryError, read_paper_export

KEY = BackupKey(bytes(range(32)))
SHARES = KEY.split(ShareScheme(2, 3))


def test_any_two_of_three_shares_rebuild_the_key() -> None:
    for pair in ((0, 1), (1, 2), (2, 0)):
        got = combine_shares([SHARES[pair[0]], "  " + SHARES[pair[1]].upper() + " "])
        assert got.key_id == KEY.key_id


@pytest.mark.parametrize(
    ("typed", "error", "code"),
    [
        ([], TooFewShares, 781),
        ([SHARES[0]], TooFewShares, 781),
        ([SHARES[0], SHARES[0]], TooFewShares, 781),
        ([SHARES[0], " ".join(SHARES[1].split()[:-1] + ["academic"])], WrongShare, 780),
        ([SHARES[0], "not a share at all"], WrongShare, 780),
        ([SHARES[0], BackupKey(os.urandom(32)).split(ShareScheme())[1]], WrongShare, 780),
    ],
)
def test_bad_shares_are_refused(typed: list[str], error: type, code: int) -> None:
    with pytest.raises(error) as info:
        combine_shares(typed)
    assert info.value.code == code


def _signed_file(key: BackupKey, identity: coincurve.PrivateKey) -> BackupFile:
    header = {
        "kind": "account",
        "account": 1,
        "network": "regtest",
        "identity_pubkey": identity.public_key.format().hex(),
        "backup_key_id": key.key_id,
    }
    nonce = os.urandom(12)
    ct = key.seal(canonical(header), b'{"receiving_seed": "00"}', nonce)
    unsigned = BackupFile(header, nonce, ct, b"")
    sig = identity.sign_recoverable(unsigned.digest(), hasher=None)
    return BackupFile(header, nonce, ct, bytes([31 + sig[64]]) + sig[:64])


def test_backup_file_round_trip_and_tampering() -> None:
    identity = coincurve.PrivateKey()
    bf = BackupFile.from_text(_signed_file(KEY, identity).to_text(), "f")
    bf.check_signature("f")
    assert bf.open(KEY, "f") == {"receiving_seed": "00"}
    with pytest.raises(ForeignBackupKey):
        bf.open(BackupKey(os.urandom(32)), "f")
    moved = BackupFile({**bf.header, "account": 2}, bf.nonce, bf.ciphertext, bf.signature)
    with pytest.raises(BackupFileAltered):
        moved.check_signature("f")
    flipped = bytes([bf.ciphertext[0] ^ 1]) + bf.ciphertext[1:]
    with pytest.raises(BackupFileAltered):
        BackupFile(bf.header, bf.nonce, flipped, bf.signature).check_signature("f")
    with pytest.raises(BackupFileAltered):  # re-signed by someone else: the AEAD still fails
        BackupFile(bf.header, bf.nonce, flipped, bf.signature).open(KEY, "f")
    with pytest.raises(BackupFileInvalid):
        BackupFile.from_text('{"format": "something else"}', "f")


def _console(answers: str) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(io.StringIO(answers), out), out


def test_each_share_is_retyped_before_the_next_is_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    positions = iter([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    monkeypatch.setattr("secrets.SystemRandom.sample", lambda self, pop, k: next(positions))
    answers = ""
    for share, pos in zip(SHARES, ([1, 2, 3], [4, 5, 6], [7, 8, 9]), strict=True):
        words = share.split()
        answers += "\n" + "".join(words[p - 1] + "\n" for p in pos)
    console, out = _console(answers)
    show_shares(console, SHARES, ShareScheme(2, 3))
    text = out.getvalue()
    assert all(s.split()[10] in text for s in SHARES)
    assert text.index("share 1, word #3") < text.index("Backup share 2 of 3")


def test_wrong_retyped_words_stop_init() -> None:
    console, _ = _console("\nwrong\n" * 10)
    with pytest.raises(NotConfirmed):
        show_shares(console, SHARES, ShareScheme(2, 3))


def test_scheme_bounds() -> None:
    for m, n in ((1, 3), (3, 2), (2, 17)):
        with pytest.raises(ValueError):
            ShareScheme(m, n)


def test_cc_recover_refuses_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "export.txt"
    bad.write_text("account: 1\nnetwork: regtest\n")
    with pytest.raises(RecoveryError, match="no 'master_xprv' line"):
        read_paper_export(bad)
    assert cc_recover(["scan", "--export", str(bad), "--rpc", "http://127.0.0.1:1"]) == 2
    assert "not a recovery export" in capsys.readouterr().err
    args = ["scan", "--descriptor", "wpkh(nonsense/0/*)", "--network", "regtest"]
    assert cc_recover([*args, "--rpc", "file:///etc/passwd"]) == 2
    assert "http://" in capsys.readouterr().err
    assert cc_recover([*args, "--rpc", "http://127.0.0.1:1"]) == 2
    assert "not a descriptor" in capsys.readouterr().err


def test_cc_recover_imports_nothing_of_this_project() -> None:
    """The tool must run from a copy of `recovery/` with only embit installed."""
    root = Path(__file__).resolve().parent.parent / "recovery"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in ("embit", "recovery"), (
                    f"{path.name} imports {name}"
                )
