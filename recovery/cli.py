"""`cc-recover`: scan, build, sign, finalize (docs/recovery.md, "Hot HSM lost").

cc-recover scan     --export F | --descriptor D... | --backup-file F   --rpc URL
cc-recover build    (the same) --to ADDRESS --fee-rate R --out PSBT
cc-recover sign     --export F PSBT --out PSBT      (the recovery key, offline)
cc-recover finalize PSBT [PSBT...]                 (prints the transaction hex)

The second signature comes from `hsm-cold sign-recovery` or `hsm-hot sign-recovery`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from recovery.chain import CoreRpc, FoundUtxo, scan
from recovery.spend import build_psbt, combine, destination_script, finalize, read_psbt, sign
from recovery.wallet import (
    RecoveryError,
    WalletBranch,
    branches_from_backup_header,
    change_pair,
    network_params,
    read_paper_export,
)

DEFAULT_GAP = 1000


def _branches(args: argparse.Namespace) -> tuple[list[WalletBranch], str]:
    branches: list[WalletBranch] = []
    network = args.network
    if args.export:
        export = read_paper_export(args.export)
        branches += export.branches
        network = network or export.network
    for path in args.backup_file or []:
        branches += branches_from_backup_header(path)
    for n, text in enumerate(args.descriptor or [], 1):
        branches += change_pair(f"descriptor {n}", text)
    if not branches:
        raise RecoveryError("no wallet given: --export, --descriptor or --backup-file")
    if not network:
        raise RecoveryError("--network is needed with --descriptor/--backup-file")
    return branches, network


def _scan(args: argparse.Namespace) -> tuple[list[FoundUtxo], str]:
    if args.highest < 0 or not 0 < args.gap <= 100_000:
        raise RecoveryError("--highest must be >= 0 and --gap between 1 and 100000")
    rpc = CoreRpc(args.rpc, args.rpc_user or "", os.environ.get("CC_RECOVER_RPC_PASSWORD", ""))
    branches, network = _branches(args)
    network_params(network)
    return scan(rpc, branches, args.highest + args.gap), network


def cmd_scan(args: argparse.Namespace) -> str:
    found, _ = _scan(args)
    rows = [
        {
            "txid": u.txid,
            "vout": u.vout,
            "sat": u.amount_sat,
            "height": u.height,
            "wallet": u.branch.name,
            "index": u.index,
        }
        for u in found
    ]
    total = sum(u.amount_sat for u in found)
    return json.dumps({"utxos": rows, "count": len(rows), "total_sat": total}, indent=1)


def cmd_build(args: argparse.Namespace) -> str:
    found, network = _scan(args)
    destination = destination_script(args.to, network_params(network))
    psbt, fee = build_psbt(found, destination, args.fee_rate)
    _write(args.out, psbt.to_string())
    total = sum(u.amount_sat for u in found)
    return json.dumps(
        {
            "psbt": str(args.out),
            "inputs": len(found),
            "total_sat": total,
            "fee_sat": fee,
            "to": args.to,
            "value_sat": total - fee,
        },
        indent=1,
    )


def cmd_sign(args: argparse.Namespace) -> str:
    export = read_paper_export(args.export)
    psbt = read_psbt(args.psbt)
    count = sign(psbt, export.root)
    _write(args.out, psbt.to_string())
    return f"{count} input(s) signed with the recovery key; PSBT written to {args.out}"


def cmd_finalize(args: argparse.Namespace) -> str:
    tx = finalize(combine([read_psbt(p) for p in args.psbts]))
    text = tx.serialize().hex()
    if args.out:
        _write(args.out, text)
        return f"transaction {tx.txid().hex()} written to {args.out}"
    return text


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text + "\n")


def _wallet_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--export", type=Path, help="the paper recovery export (account-N-recovery.txt)")
    p.add_argument(
        "--descriptor", action="append", help="a receive descriptor (/0/*), e.g. from custody"
    )
    p.add_argument(
        "--backup-file", type=Path, action="append", help="a cold backup file (public header)"
    )
    p.add_argument("--network", help="mainnet, testnet or regtest (default: the export's)")
    p.add_argument("--rpc", required=True, help="the node's JSON-RPC URL, http://host:port")
    p.add_argument(
        "--rpc-user", help="RPC user (the password from $CC_RECOVER_RPC_PASSWORD, never argv)"
    )
    p.add_argument("--highest", type=int, default=0, help="highest index ever issued")
    p.add_argument("--gap", type=int, default=DEFAULT_GAP, help="indexes scanned past --highest")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cc-recover", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("scan", help="list the wallet's coins through any Core-RPC node")
    _wallet_args(p)
    p.set_defaults(handler=cmd_scan)

    p = sub.add_parser("build", help="a PSBT paying every coin found to one address")
    _wallet_args(p)
    p.add_argument("--to", required=True, help="the destination address")
    p.add_argument("--fee-rate", type=float, required=True, help="fee rate in sat/vB")
    p.add_argument("--out", type=Path, required=True, help="where to write the PSBT (base64)")
    p.set_defaults(handler=cmd_build)

    p = sub.add_parser("sign", help="sign a PSBT with the recovery key of the paper export")
    p.add_argument("--export", type=Path, required=True, help="the paper recovery export")
    p.add_argument("psbt", type=Path, help="the PSBT to sign")
    p.add_argument("--out", type=Path, required=True, help="where to write the signed PSBT")
    p.set_defaults(handler=cmd_sign)

    p = sub.add_parser("finalize", help="combine signed PSBTs and print the transaction")
    p.add_argument("psbts", type=Path, nargs="+", help="signed PSBTs of one transaction")
    p.add_argument("--out", type=Path, help="write the transaction hex here instead")
    p.set_defaults(handler=cmd_finalize)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        print(args.handler(args))
    except RecoveryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
