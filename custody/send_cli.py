"""`custody send bump USER_TX_NO [--fee-rate N]` (the operator's fee bump of a stuck send) and
`custody wallet consolidate --account N [--max-inputs K] [--fee-rate R]`."""

from __future__ import annotations

import argparse
from typing import Any

from cc_common.cli import add_dir_argument, config_from_args
from custody import consolidation, fee_bump
from custody.chain.rpc import BitcoinRPC
from custody.db import database_url, make_engine, make_session_factory
from custody.hsm_client import HotHsmClient
from custody.sends import SendSettings, SendWorker
from custody.watcher import default_owner


def cmd_bump(args: argparse.Namespace) -> dict[str, Any]:
    config = config_from_args(args)
    if args.fee_rate is not None and not 1 <= args.fee_rate <= 10_000:
        raise fee_bump.BumpRefused(f"--fee-rate must be 1-10000 sat/vB, got {args.fee_rate:g}")
    worker = SendWorker(
        make_session_factory(make_engine(database_url(config))),
        BitcoinRPC.from_config(config),
        HotHsmClient.from_config(config),
        SendSettings.from_config(config),
        config,
        owner=default_owner("bump"),
    )
    r = fee_bump.bump(worker, args.user_tx_no, account_id=args.account, fee_rate=args.fee_rate)
    return {
        "user_tx_no": r.user_tx_no,
        "replaced_txid": r.replaced_txid,
        "txid": r.txid,
        "fee": r.fee,
        "fee_rate_sat_vb": round(r.fee_rate, 2),
    }


def cmd_consolidate(args: argparse.Namespace) -> dict[str, Any]:
    config = config_from_args(args)
    r = consolidation.consolidate(
        make_session_factory(make_engine(database_url(config))),
        BitcoinRPC.from_config(config),
        HotHsmClient.from_config(config),
        args.account,
        max_inputs=args.max_inputs,
        fee_rate=args.fee_rate,
        min_conf=SendSettings.from_config(config).min_conf,
    )
    return {
        "account_id": args.account,
        "txid": r.txid,
        "inputs": r.inputs,
        "value": r.value,
        "fee": r.fee,
        "change_index": r.change_index,
    }


def register(sub: argparse._SubParsersAction) -> None:
    """Add `custody send ...` and `custody wallet ...` to the `custody` parser."""
    p = sub.add_parser("send", help="hot sends")
    ssub = p.add_subparsers(dest="send_command", required=True)
    q = ssub.add_parser(
        "bump", help="replace a broadcast, unconfirmed send by one with a higher fee (BIP125)"
    )
    add_dir_argument(q)
    q.add_argument("user_tx_no", help="the send's user_tx_no")
    q.add_argument("--fee-rate", type=float, help="sat/vB (default: twice its current rate)")
    q.add_argument("--account", type=int, help="account id, if the number exists in several")
    q.set_defaults(handler=cmd_bump)

    p = sub.add_parser("wallet", help="the hot wallet's coins")
    wsub = p.add_subparsers(dest="wallet_command", required=True)
    q = wsub.add_parser(
        "consolidate", help="merge small hot coins into one at the account's next change address"
    )
    add_dir_argument(q)
    q.add_argument("--account", type=int, required=True, help="account id")
    q.add_argument(
        "--max-inputs", type=int, default=50, help="at most this many coins, smallest first (2-200)"
    )
    q.add_argument(
        "--fee-rate", type=float, default=2.0, help="sat/vB, 1-10 (the cold HSM's policy)"
    )
    q.set_defaults(handler=cmd_consolidate)
