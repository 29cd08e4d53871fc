"""Disaster recovery drills, with real processes (docs/recovery.md).

One deployment for the module: firmware-sim, the simulated node, `hsm-cold serve` and
`hsm-hot serve`, each its own OS process; custody's `HotHsmClient` plays custody. The drills:

- the cold HSM's token and state are deleted; a fresh token is restored from two of the three
  shares (typed on the console's stdin) and the backup files; the next batch's proof is signed
  by the same identity over the same addresses as before the loss; the V-device re-opens its
  channel and a hot send co-signed by the restored key is accepted; pre-loss deposits are swept
  through the restored cold HSM and mined;
- custody is gone: `cc-recover` + `hsm-cold sweep` move the cold receiving coins, mined;
- the hot HSM's token is deleted: `cc-recover` with the paper recovery key and
  `hsm-cold sign-recovery` move every hot UTXO to an outside address, mined.

Refusals (wrong/too few/foreign shares, altered files, busy target, drill mode off) run
`hsm-cold restore` against a second, empty deployment and check that nothing was written.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from embit.descriptor import Descriptor
from embit.networks import NETWORKS
from embit.psbt import PSBT

from custody.chain import BitcoinRPC
from custody.hsm_client import ProvisionedAccount
from tests.harness import Deployment, wait_until
from tests.hsm_fixtures import (
    PHONES,
    Coin,
    HsmPair,
    VDevice,
    build_send_psbt,
    confirm_account,
    hot_wallet,
    random_address,
    send_request,
    settlement_descriptor,
)
from wallet_core import messages
from wallet_core.bip32 import parse_xpub
from wallet_core.chaincloud import batch_statement
from wallet_core.networks import Network
from wallet_core.psbt import Psbt
from wallet_core.wallets import (
    CHANGE,
    RECEIVE,
    AccountKey,
    ColdWallet,
    batch_addresses,
    bip84_account_path,
)

pytestmark = pytest.mark.slow

COIN = 100_000_000
ACCOUNT = 7
WRONG_SHARE, TOO_FEW, FOREIGN_KEY, ALTERED, INVALID = 780, 781, 782, 783, 784
TARGET_IN_USE, PSBT_REFUSED, NOT_CONFIRMED, DRILL_OFF = 786, 787, 788, 789


def run(d: Deployment, module: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return d.cli(*args, module=module, stdin=stdin, timeout=180, check=False)


def cold(d: Deployment, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return run(d, "hsm_cold.cli", *args, "--dir", str(d.data_dir), stdin=stdin)


def recover(d: Deployment, *args: str) -> subprocess.CompletedProcess:
    return run(d, "recovery", *args)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert f"[{code}]" in result.stderr, result.stderr
    return result.stderr


def shares_of(d: Deployment) -> list[str]:
    drill = d.config.section("hsm_cold").path("backup_drill_dir")
    files = sorted(drill.glob("DRILL-share-*.txt"))
    assert len(files) == 3
    return [" ".join(x for x in f.read_text().splitlines() if not x.startswith("#")) for f in files]


def backup_files(d: Deployment) -> Path:
    return d.config.section("hsm_cold").path("export_dir") / "backup"


def rpc_args(d: Deployment) -> list[str]:
    node = d.config.section("node")
    d.env["CC_RECOVER_RPC_PASSWORD"] = node.str("rpc_password")
    return ["--rpc", node.str("rpc_url"), "--rpc-user", node.str("rpc_user")]


BLOCK_OF: dict[str, str] = {}  # txid -> block hash (the node keeps no transaction index)


def coinbase_to(node: BitcoinRPC, address: str) -> tuple[str, int]:
    [block] = node.generate_to_address(1, address)
    tx = node.get_block(block, 2)["tx"][0]
    BLOCK_OF[tx["txid"]] = block
    return tx["txid"], int(Decimal(str(tx["vout"][0]["value"])) * COIN)


def mined(node: BitcoinRPC, txid: str) -> bool:
    """Mine one block; whether it holds `txid`."""
    [block] = node.generate_to_address(1, random_address())
    return txid in node.get_block(block, 1)["tx"]


def raw_tx(node: BitcoinRPC, txid: str) -> str:
    return str(node.get_raw_transaction(txid, False, BLOCK_OF[txid]))


def received(node: BitcoinRPC, address: str) -> int:
    found = node.call("scantxoutset", "start", [f"addr({address})"])
    return int(Decimal(str(found["total_amount"])) * COIN)


# -- the deployment ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HsmPair]:
    d = Deployment(tmp_path_factory.mktemp("recovery"))
    with d.serving():
        p = HsmPair(d).start()
        d.start_cli("node", "firmware_sim.cli", "node", timeout=60)
        yield p


@pytest.fixture(scope="module")
def node(pair: HsmPair) -> BitcoinRPC:
    return BitcoinRPC.from_config(pair.d.config)


@pytest.fixture(scope="module")
def prov(pair: HsmPair) -> ProvisionedAccount:
    vdev = VDevice("recovery-drill")
    p = pair.client().provision_account(
        ACCOUNT, "regtest", vdev.identity_hex, settlement_descriptor(ACCOUNT), **PHONES
    )
    confirm_account(pair.d, ACCOUNT, vdev.identity_hex)  # the officer, at the cold console
    # the printed paper export, kept away from the cold HSM (which a drill destroys)
    export = pair.d.config.section("hsm_cold").path("export_dir")
    shutil.copy(export / f"account-{ACCOUNT}-recovery.txt", paper(pair.d))
    return p


def paper(d: Deployment) -> Path:
    return d.data_dir / "paper-recovery.txt"


@pytest.fixture(scope="module")
def cold_descriptor(pair: HsmPair, prov: ProvisionedAccount) -> str:
    path = backup_files(pair.d) / f"account-{ACCOUNT}.ccbak"
    return json.loads(path.read_text())["header"]["cold_receive_descriptor"]


def cold_address(descriptor: str, index: int, chain: int = RECEIVE) -> str:
    d = Descriptor.from_string(descriptor.split("#")[0].replace("/0/*", f"/{chain}/*"))
    return d.derive(index).address(NETWORKS["regtest"])


# -- backups ----------------------------------------------------------------------------------


def test_init_writes_drill_shares_and_backups_verify(
    pair: HsmPair, prov: ProvisionedAccount
) -> None:
    d = pair.d
    for share in (d.config.section("hsm_cold").path("backup_drill_dir")).glob("*"):
        assert share.read_text().startswith("# DRILL / TEST SHARE")
        assert share.stat().st_mode & 0o777 == 0o600
    identity = backup_files(d) / "hsm-identity.ccbak"
    account = backup_files(d) / f"account-{ACCOUNT}.ccbak"
    lines = ok(cold(d, "backup", "verify", str(identity), str(account))).splitlines()
    info = [json.loads(x) for x in lines]
    assert [i["kind"] for i in info] == ["identity", "account"]
    assert info[1]["account"] == ACCOUNT and info[1]["cosigner_xpub"] == prov.cosigner_xpub
    assert info[0]["hsm_identity"] == info[1]["hsm_identity"]
    # nothing secret in the clear: no seed, no xprv
    text = account.read_text()
    assert "seed" not in text and "prv" not in text
    # a missing account file (an account older than the backup key, a deleted copy) is
    # written again by the next `hsm-cold init`
    account.unlink()
    assert json.loads(ok(cold(d, "init")))["account_backups_written"] == str(ACCOUNT)
    again = json.loads(ok(cold(d, "backup", "verify", str(account))))
    assert again["cosigner_xpub"] == prov.cosigner_xpub


def test_backup_verify_refuses_an_altered_file(pair: HsmPair, prov: ProvisionedAccount) -> None:
    src = backup_files(pair.d) / f"account-{ACCOUNT}.ccbak"
    doc = json.loads(src.read_text())
    doc["header"]["account"] = ACCOUNT + 1  # the same file, claiming another account
    altered = pair.d.data_dir / "altered.ccbak"
    altered.write_text(json.dumps(doc))
    err = refused(cold(pair.d, "backup", "verify", str(altered)), ALTERED)
    assert "altered" in err


# -- cold HSM lost -----------------------------------------------------------------------------


def test_cold_hsm_restored_from_two_shares(
    pair: HsmPair, node: BitcoinRPC, prov: ProvisionedAccount, cold_descriptor: str
) -> None:
    d, client = pair.d, pair.client()
    deposits = [coinbase_to(node, cold_address(cold_descriptor, i)) for i in (0, 3)]
    hot_coin = coinbase_to(node, hot_wallet(prov).address(7, RECEIVE))
    node.generate_to_address(100, random_address())
    proof_before = client.prove_batch(ACCOUNT, "cold", 1)
    hot_proof_before = client.prove_batch(ACCOUNT, "hot", 1)
    shelf = d.data_dir / "shelf"  # the backup files, as stored off-site
    shutil.copytree(backup_files(d), shelf)
    shares = shares_of(d)

    # the cold HSM is lost: its token and its state
    assert pair.cold is not None
    pair.cold.stop()
    section = d.config.section("hsm_cold")
    shutil.rmtree(section.path("token_dir"))
    shutil.rmtree(section.path("state_dir"))
    shutil.rmtree(section.path("export_dir"))

    out = ok(cold(d, "restore", "--from", str(shelf), stdin=f"{shares[2]}\n{shares[0]}\n"))
    result = json.loads(out.strip().splitlines()[-1])
    assert result["accounts"] == [ACCOUNT]
    assert bytes.fromhex(result["identity_pubkey"]) == messages.recover_pubkey(
        batch_statement("cold", ACCOUNT, 1, _batch(prov, 1)), proof_before
    )

    # the officer confirms the restored account again (its spending policy is not in the
    # backup: it is set anew at the console)
    confirm_account(d, ACCOUNT, VDevice("recovery-drill").identity_hex)
    # the documented pairing procedure: the hot HSM takes the new pairing file
    pair.stop_hot()
    ok(run(d, "hsm_hot.cli", "init", "--re-pair", "--dir", str(d.data_dir)))
    pair.start_cold()
    pair.start_hot()
    client = pair.client()
    wait_until(lambda: client.health()["cold_reachable"], 30.0, "the restored cold HSM")

    # same xpubs, same proofs (same identity over the same addresses)
    again = client.call(
        "provision_account",
        account=ACCOUNT,
        network="regtest",
        vdevice_identity=VDevice("recovery-drill").identity_hex,
        settlement_descriptor=settlement_descriptor(ACCOUNT),
        **PHONES,
    )
    for k in ("receiving_xpub", "cosigner_xpub", "recovery_xpub"):
        assert again[k] == getattr(prov, k)
    proof_after = client.prove_batch(ACCOUNT, "cold", 1)
    content = batch_statement("cold", ACCOUNT, 1, _batch(prov, 1))
    assert messages.recover_pubkey(content, proof_after) == messages.recover_pubkey(
        content, proof_before
    )
    hot_addresses = [a for _, a in batch_addresses(hot_wallet(prov), 1, RECEIVE)]
    hot_content = batch_statement("hot", ACCOUNT, 1, hot_addresses)
    assert messages.recover_pubkey(
        hot_content, client.prove_batch(ACCOUNT, "hot", 1)
    ) == messages.recover_pubkey(hot_content, hot_proof_before)

    # the V-device re-opens its channel (as after an expiry); a hot send is co-signed by the
    # restored cosigner key and mined
    vdev = VDevice("recovery-drill")
    client.register_channel(**vdev.channel_registration(ACCOUNT, "after-restore"))
    prev_tx = bytes.fromhex(raw_tx(node, hot_coin[0]))
    coin = Coin(hot_coin[0], 0, hot_coin[1], RECEIVE, 7, prev_tx)
    payments = [(random_address(), COIN)]
    change = (8, hot_coin[1] - COIN - 20_000)
    psbt = build_send_psbt(hot_wallet(prov), [coin], payments, change=change)
    request = send_request(payments, "after-restore-1")
    signed = Psbt.from_base64(
        client.sign_send(ACCOUNT, psbt.to_base64(), request, vdev.vc_code(request), "after-restore")
    )
    signed.finalize()
    assert node.send_raw_transaction(signed.extract_hex()) == psbt.txid

    # the pre-loss deposits, swept by the restored cold HSM, mined
    utxos = [
        {"txid": txid, "vout": 0, "amount": value, "chain": RECEIVE, "index": index}
        for (txid, value), index in zip(deposits, (0, 3), strict=True)
    ]
    prev_txs = [raw_tx(node, txid) for txid, _ in deposits]
    sweep = client.call("sweep", account=ACCOUNT, utxos=utxos, fee_rate=2, prev_txs=prev_txs)
    assert node.send_raw_transaction(sweep["tx"]) == sweep["txid"]
    assert mined(node, sweep["txid"])
    assert received(node, sweep["address"]) == sum(v for _, v in deposits) - sweep["fee"]


def _batch(prov: ProvisionedAccount, batch_no: int) -> list[str]:
    net = Network.REGTEST
    key = AccountKey(
        parse_xpub(prov.receiving_xpub),
        bytes.fromhex(prov.receiving_fingerprint),
        bip84_account_path(net, 0),
    )
    return [a for _, a in batch_addresses(ColdWallet(key, net), batch_no, RECEIVE)]


# -- custody lost: cold receiving funds through the console sweep -------------------------------


def test_cold_receiving_swept_at_the_console_without_custody(
    pair: HsmPair, node: BitcoinRPC, prov: ProvisionedAccount, cold_descriptor: str
) -> None:
    d = pair.d
    deposits = [coinbase_to(node, cold_address(cold_descriptor, i, c)) for i, c in ((5, 0), (2, 1))]
    node.generate_to_address(100, random_address())
    backup = str(backup_files(d) / f"account-{ACCOUNT}.ccbak")
    found = json.loads(
        ok(recover(d, "scan", "--backup-file", backup, "--network", "regtest", *rpc_args(d)))
    )
    assert {(u["txid"], u["index"]) for u in found["utxos"]} == {
        (deposits[0][0], 5),
        (deposits[1][0], 2),
    }
    # the same coins found from the descriptor custody shows (`custody account show`)
    again = recover(
        d, "scan", "--descriptor", cold_descriptor, "--network", "regtest", *rpc_args(d)
    )
    assert [(u["txid"], u["index"]) for u in json.loads(ok(again))["utxos"]] == [
        (u["txid"], u["index"]) for u in found["utxos"]
    ]
    outside = random_address()
    psbt = d.data_dir / "cold-sweep.psbt"
    ok(
        recover(
            d, "build", "--backup-file", backup, "--network", "regtest", *rpc_args(d),
            "--to", outside, "--fee-rate", "3", "--out", str(psbt),
        )
    )  # fmt: skip
    pin = d.config.section("hsm_cold").str("user_pin")
    # the officer types another address than the PSBT's: nothing is signed
    args = ("sweep", str(ACCOUNT), str(psbt), "--pin-stdin", "--out", str(psbt) + ".tx")
    refused(cold(d, *args, stdin=f"{pin}\n{random_address()}\nyes\n"), NOT_CONFIRMED)
    ok(cold(d, *args, stdin=f"{pin}\n{outside}\nyes\n"))
    txid = node.send_raw_transaction(Path(str(psbt) + ".tx").read_text().strip())
    assert mined(node, txid)
    assert 0 < sum(v for _, v in deposits) - received(node, outside) < 10_000


# -- cold HSM lost and not restored: the hot key and the recovery key ---------------------------


def test_hot_sign_recovery_with_the_recovery_key(
    pair: HsmPair, node: BitcoinRPC, prov: ProvisionedAccount
) -> None:
    d = pair.d
    wallet = hot_wallet(prov)
    coins = [coinbase_to(node, wallet.address(i, RECEIVE)) for i in (1, 2)]
    node.generate_to_address(100, random_address())
    psbt, mine, hot = (d.data_dir / n for n in ("h.psbt", "h.rk.psbt", "h.hot.psbt"))
    outside = random_address()
    built = json.loads(
        ok(
            recover(
                d, "build", "--export", str(paper(d)), *rpc_args(d), "--to", outside,
                "--fee-rate", "2", "--out", str(psbt),
            )
        )
    )  # fmt: skip
    found = json.loads(ok(recover(d, "scan", "--export", str(paper(d)), *rpc_args(d))))
    assert {t for t, _ in coins} <= {u["txid"] for u in found["utxos"]}  # and the change
    assert built["total_sat"] == found["total_sat"] and built["inputs"] == found["count"]
    ok(recover(d, "sign", "--export", str(paper(d)), str(psbt), "--out", str(mine)))
    pin = d.config.section("hsm_hot").str("user_pin")
    hot_args = (
        "sign-recovery",
        str(ACCOUNT),
        str(psbt),
        "--out",
        str(hot),
        "--dir",
        str(d.data_dir),
    )
    no = run(d, "hsm_hot.cli", *hot_args, stdin=f"{pin}\nno\n")
    assert no.returncode == 2 and "[981]" in no.stderr and not hot.exists()
    ok(run(d, "hsm_hot.cli", *hot_args, stdin=f"{pin}\nyes\n"))
    assert any(e.get("event") == "sign_recovery" for e in pair.audit())
    txid = node.send_raw_transaction(ok(recover(d, "finalize", str(hot), str(mine))).strip())
    assert mined(node, txid)
    assert received(node, outside) == built["value_sat"]


# -- hot HSM lost ------------------------------------------------------------------------------


def test_hot_hsm_lost_recovered_with_recovery_key_and_cold_hsm(
    pair: HsmPair, node: BitcoinRPC, prov: ProvisionedAccount
) -> None:
    d = pair.d
    wallet = hot_wallet(prov)
    coins = [coinbase_to(node, wallet.address(i, c)) for i, c in ((0, RECEIVE), (4, CHANGE))]
    node.generate_to_address(100, random_address())
    pair.stop_hot()
    shutil.rmtree(d.config.section("hsm_hot").path("token_dir"))  # the hot HSM is gone

    shelf = paper(d)
    psbt, mine, theirs = (d.data_dir / n for n in ("hot.psbt", "hot.rk.psbt", "hot.cold.psbt"))
    outside = random_address()
    built = json.loads(
        ok(
            recover(
                d, "build", "--export", str(shelf), *rpc_args(d), "--to", outside,
                "--fee-rate", "2", "--out", str(psbt),
            )
        )
    )  # fmt: skip
    assert built["inputs"] == 2 and built["total_sat"] == sum(v for _, v in coins)
    ok(recover(d, "sign", "--export", str(shelf), str(psbt), "--out", str(mine)))
    pin = d.config.section("hsm_cold").str("user_pin")
    # amounts are verified from the previous transactions (invariant 8): a PSBT without them,
    # or stating a larger amount than the chain, is refused before anything is shown
    for how, alter in (("no previous transaction", _strip_prev_tx), ("differs", _inflate)):
        bad = d.data_dir / "bad.psbt"
        bad.write_text(alter(PSBT.from_string(psbt.read_text().strip())).to_string())
        err = refused(
            cold(d, "sign-recovery", str(ACCOUNT), str(bad), "--pin-stdin", "--out", "z",
                 stdin=f"{pin}\nyes\n"),
            PSBT_REFUSED,
        )  # fmt: skip
        assert how in err
    args = ("sign-recovery", str(ACCOUNT), str(psbt), "--pin-stdin", "--out", str(theirs))
    refused(cold(d, *args, stdin=f"{pin}\nno\n"), NOT_CONFIRMED)
    assert not theirs.exists()
    refused(
        cold(d, "sign-recovery", str(ACCOUNT + 1), str(psbt), "--pin-stdin", "--out", "x",
             stdin=f"{pin}\nyes\n"),
        702,
    )  # fmt: skip
    ok(cold(d, *args, stdin=f"{pin}\nyes\n"))
    tx_hex = ok(recover(d, "finalize", str(mine), str(theirs))).strip()
    txid = node.send_raw_transaction(tx_hex)
    assert mined(node, txid)
    assert received(node, outside) == built["value_sat"]
    left = json.loads(ok(recover(d, "scan", "--export", str(shelf), *rpc_args(d))))
    assert left["count"] == 0


def _strip_prev_tx(p: PSBT) -> PSBT:
    p.inputs[0].non_witness_utxo = None
    return p


def _inflate(p: PSBT) -> PSBT:
    p.inputs[0].witness_utxo.value += 1_000_000
    return p


def test_sign_recovery_refuses_a_foreign_input(
    pair: HsmPair, node: BitcoinRPC, prov: ProvisionedAccount, cold_descriptor: str
) -> None:
    """A PSBT over the cold receiving wallet handed to `sign-recovery` (hot wallet): refused."""
    d = pair.d
    coinbase_to(node, cold_address(cold_descriptor, 9))
    node.generate_to_address(100, random_address())
    backup = str(backup_files(d) / f"account-{ACCOUNT}.ccbak")
    psbt = d.data_dir / "foreign.psbt"
    ok(
        recover(
            d, "build", "--backup-file", backup, "--network", "regtest", *rpc_args(d),
            "--to", random_address(), "--fee-rate", "2", "--out", str(psbt),
        )
    )  # fmt: skip
    pin = d.config.section("hsm_cold").str("user_pin")
    err = refused(
        cold(d, "sign-recovery", str(ACCOUNT), str(psbt), "--pin-stdin", "--out", "y",
             stdin=f"{pin}\nyes\n"),
        PSBT_REFUSED,
    )  # fmt: skip
    assert "no key origin" in err


# -- restore refusals: nothing written -------------------------------------------------------


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Another cold HSM's backup (its own backup key), made by `hsm-cold init` alone."""
    d = Deployment(tmp_path_factory.mktemp("other-cold"))
    ok(cold(d, "init"))
    return d


@pytest.fixture
def target(tmp_path: Path) -> Deployment:
    """A fresh machine for the cold HSM: nothing initialised."""
    return Deployment(tmp_path, "target")


def _nothing_written(t: Deployment) -> None:
    s = t.config.section("hsm_cold")
    assert not (s.path("state_dir") / "cold.db").exists()
    assert not s.path("pairing_file").exists()
    assert not list(s.path("token_dir").rglob("*.object"))


def _restore(t: Deployment, files: Path, shares: list[str]) -> subprocess.CompletedProcess:
    return cold(t, "restore", "--from", str(files), stdin="".join(s + "\n" for s in shares))


def test_restore_refusals_write_nothing(
    pair: HsmPair, prov: ProvisionedAccount, other: Deployment, target: Deployment
) -> None:
    files = backup_files(pair.d)
    shares = shares_of(pair.d)
    words = shares[0].split()
    words[5] = "academic" if words[5] != "academic" else "acid"
    cases = [
        ([" ".join(words), shares[1]], WRONG_SHARE),
        ([shares[1]], TOO_FEW),
        ([shares[1], shares_of(other)[0]], WRONG_SHARE),  # two different sets
        (shares_of(other)[:2], FOREIGN_KEY),  # a whole other backup key
    ]
    for typed, code in cases:
        refused(_restore(target, files, typed), code)
        _nothing_written(target)

    altered = target.data_dir / "altered"
    shutil.copytree(files, altered)
    f = altered / f"account-{ACCOUNT}.ccbak"
    doc = json.loads(f.read_text())
    first = doc["ciphertext"][0]
    doc["ciphertext"] = ("B" if first == "A" else "A") + doc["ciphertext"][1:]  # always altered
    f.write_text(json.dumps(doc))
    refused(_restore(target, altered, shares[:2]), ALTERED)
    (altered / "hsm-identity.ccbak").unlink()
    (altered / f"account-{ACCOUNT}.ccbak").unlink()
    shutil.copy(backup_files(other) / "hsm-identity.ccbak", altered)
    shutil.copy(files / f"account-{ACCOUNT}.ccbak", altered)
    refused(_restore(target, altered, shares[:2]), INVALID)  # two HSMs' files mixed
    _nothing_written(target)

    drill = target.data_dir / "elsewhere"
    drill.mkdir()
    share_file = drill / "s1.txt"
    share_file.write_text(shares[0])
    refused(cold(target, "restore", "--from", str(files), "--drill-shares", str(share_file)),
            DRILL_OFF)  # fmt: skip
    _nothing_written(target)


def test_restore_onto_a_used_state_is_refused(pair: HsmPair, other: Deployment) -> None:
    refused(_restore(other, backup_files(pair.d), shares_of(pair.d)[:2]), TARGET_IN_USE)


def test_drill_restore_from_share_files(pair: HsmPair, target: Deployment) -> None:
    """Drill mode: shares from files in the configured drill directory; same accounts back."""
    drill = target.config.section("hsm_cold").path("backup_drill_dir")
    drill.mkdir(parents=True)
    src = pair.d.config.section("hsm_cold").path("backup_drill_dir")
    for name in ("DRILL-share-1-of-3.txt", "DRILL-share-3-of-3.txt"):
        shutil.copy(src / name, drill / name)
    out = ok(
        cold(
            target, "restore", "--from", str(backup_files(pair.d)),
            "--drill-shares", *(str(p) for p in sorted(drill.glob("*.txt"))),
        )
    )  # fmt: skip
    assert "DRILL MODE" in out
    assert json.loads(out.strip().splitlines()[-1])["accounts"] == [ACCOUNT]
    assert target.config.section("hsm_cold").path("pairing_file").exists()


# -- init at a real terminal ------------------------------------------------------------------


class Terminal:
    """A pseudo-terminal on which a console command runs, read and typed into by the test."""

    def __init__(self, d: Deployment, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hsm_cold.cli", *args, "--dir", str(d.data_dir)],
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
            env=d.env,
            cwd=d.data_dir,
        )
        os.close(slave)
        self.seen = ""
        self.transcript = ""

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (m := re.search(pattern, self.seen)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} on the terminal; saw:\n{self.seen[-2000:]}"
            ready, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if ready:
                try:
                    got = os.read(self.master, 4096).decode(errors="replace")
                    self.seen += got
                    self.transcript += got
                except OSError:  # the command exited and closed the terminal
                    assert self.proc.poll() is not None
        self.seen = self.seen[m.end() :]
        return m

    def type(self, text: str) -> None:
        os.write(self.master, (text + "\n").encode())

    def close(self) -> int:
        code = self.proc.wait(timeout=60)
        os.close(self.master)
        return code


def test_init_shows_each_share_once_on_the_terminal_and_checks_words(target: Deployment) -> None:
    target.configure({"hsm_cold": {"backup_drill_dir": ""}})
    piped = cold(target, "init", stdin="")  # no terminal, no drill mode: no shares into a pipe
    assert piped.returncode == 2 and "on a terminal" in piped.stderr
    term = Terminal(target, "init")
    typed_wrong = False
    for n in (1, 2, 3):
        shown = term.expect(rf"(?s)=== Backup share {n} of 3 .*?Press Enter when written down\. ")
        words = dict(re.findall(r"(\d+)\. ([a-z]+)", shown.group(0)))
        assert len(words) == 33
        term.type("")
        for _ in range(3):
            p = term.expect(rf"share {n}, word #(\d+): ").group(1)
            if not typed_wrong:  # the first officer mistypes once: the share is shown again
                typed_wrong = True
                term.type("wrongword")
                break
            term.type(words[p])
        else:
            continue
        term.expect(rf"(?s)=== Backup share {n} of 3 .*?Press Enter when written down\. ")
        term.type("")
        for _ in range(3):
            term.type(words[term.expect(rf"share {n}, word #(\d+): ").group(1)])
    term.expect("All 3 shares shown and checked")
    assert term.close() == 0
    out = cold(target, "init")
    assert json.loads(ok(out))["shares"] == "already shown"
    assert not (target.data_dir / "hsm-cold" / "DRILL-shares").exists()  # nothing on disk


def test_restore_at_the_terminal_reads_shares_without_echo(
    pair: HsmPair, prov: ProvisionedAccount, target: Deployment
) -> None:
    shares = shares_of(pair.d)
    term = Terminal(target, "restore", "--from", str(backup_files(pair.d)))
    term.expect("share 1: ")
    term.type(shares[1])
    term.expect("share 2: ")
    term.type(shares[2])
    term.expect(r'"accounts": \[7\]')
    assert term.close() == 0
    for share in shares[1:]:
        assert " ".join(share.split()[3:6]) not in term.transcript  # never echoed
