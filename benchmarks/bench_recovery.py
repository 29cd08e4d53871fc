"""Disaster-recovery benchmark: the CPU parts of a restore and of a `cc-recover` scan.

Workloads (in-process, no token, no node process):
  1. SLIP-39: split a 32-byte backup key 2-of-3, and combine two shares;
  2. a backup file: AES-256-GCM seal + open of one account's payload under the backup key;
  3. `cc-recover scan`'s local part: the scripts of a hot 2-of-3 wallet, receive and change
     chains, indexes 0..999 each (2000 scripts, embit), and the same for a cold P2WPKH wallet;
  4. the simulated node's `scantxoutset` descriptor expansion for that hot wallet (2000 scripts).
Each runs several times; best and median are printed.

Run: .venv/bin/python benchmarks/bench_recovery.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import coincurve
from _common import samples_ms

from firmware_sim.node.rpc_scan import _scripts
from hsm_cold.backup import BackupKey, ShareScheme, canonical, combine_shares
from recovery.wallet import change_pair
from wallet_core.bip32 import ExtendedKey
from wallet_core.networks import Network
from wallet_core.wallets import (
    RECEIVE,
    AccountKey,
    ColdWallet,
    FixedKey,
    HotWallet,
    bip48_account_path,
    bip84_account_path,
)

GAP = 1000


def _time(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(best wall ms, median wall ms)."""
    wall, _ = samples_ms(fn, runs)
    return min(wall), statistics.median(wall)


def _wallets() -> tuple[str, str]:
    net = Network.REGTEST
    roots = [ExtendedKey.from_seed(bytes([n]) * 32, net) for n in (1, 2, 3)]
    path = bip48_account_path(net, 0)
    hot = HotWallet(
        (
            FixedKey(coincurve.PrivateKey(b"\x07" * 32).public_key.format()),
            AccountKey.from_root(roots[0], path),
            AccountKey.from_root(roots[1], path),
        ),
        net,
    )
    cold = ColdWallet(AccountKey.from_root(roots[2], bip84_account_path(net, 0)), net)
    return str(hot.descriptor(RECEIVE)), str(cold.descriptor(RECEIVE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions of each workload")
    runs = parser.parse_args().runs
    key = BackupKey(os.urandom(32))
    shares = key.split(ShareScheme(2, 3))
    header = canonical({"kind": "account", "account": 1, "backup_key_id": key.key_id})
    payload = canonical({"receiving_seed": "00" * 32, "cosigner_seed": "11" * 32})
    nonce = os.urandom(12)
    sealed = key.seal(header, payload, nonce)
    hot, cold = _wallets()

    def scan_local(desc: str) -> Callable[[], object]:
        branches = change_pair("w", desc)
        return lambda: [b.script_at(i) for b in branches for i in range(GAP)]

    node_objects = [{"desc": b.text, "range": [0, GAP - 1]} for b in change_pair("hot", hot)]
    work = [
        ("SLIP-39 split 2-of-3 (32-byte key)", lambda: key.split(ShareScheme(2, 3))),
        ("SLIP-39 combine 2 shares", lambda: combine_shares(shares[:2])),
        ("backup file seal + open (AES-256-GCM)", lambda: (
            key.seal(header, payload, nonce), key.open(header, sealed, nonce))),
        (f"cc-recover: hot 2-of-3 scripts, 2 x {GAP}", scan_local(hot)),
        (f"cc-recover: cold P2WPKH scripts, 2 x {GAP}", scan_local(cold)),
        (f"node scantxoutset expansion, hot 2 x {GAP}",
         lambda: [_scripts(o) for o in node_objects]),
    ]  # fmt: skip
    print(f"bench_recovery: {runs} runs each (best / median, ms)")
    for name, fn in work:
        best, median = _time(fn, runs)
        print(f"  {name:<45} {best:9.2f} / {median:9.2f}")


if __name__ == "__main__":
    main()
