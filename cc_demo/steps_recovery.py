"""The recovery drill: the hot HSM is taken away and the hot funds come back without it.

Runs last (it leaves the hot wallet empty). The hot HSM process is stopped (SIGSTOP) and its
token directory moved out of reach; `cc-recover` (the standalone tool, embit only) scans the
chain through the node's `scantxoutset`, builds a PSBT paying every hot UTXO to an outside
address, signs with the recovery key of the paper export; `hsm-cold sign-recovery` adds the
cold HSM's signature at the cold console (PIN, summary, `yes`); `cc-recover finalize` prints
the transaction, which the node mines. Afterwards the token is put back and the process
resumed, so that the demo shuts down as usual (a drill does not burn real hardware).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from cc_demo.scenario import Context
from cc_demo.support import CLI_TIMEOUT, StepFailed, btc, mine, process_pid, random_address

FEE_RATE = "2"
DRILL_FUNDING_SAT = 10_000_000  # only when earlier steps left the hot wallet empty


@contextmanager
def hot_hsm_gone(ctx: Context) -> Iterator[None]:
    pid = process_pid(ctx.config, "hsm-hot")
    if pid is None:
        raise StepFailed("hsm-hot does not run (custody status shows no pid)")
    tokens = ctx.config.section("hsm_hot").path("token_dir")
    away = tokens.with_name(tokens.name + ".taken-away")
    os.kill(pid, signal.SIGSTOP)
    try:
        shutil.move(tokens, away)
        try:
            yield
        finally:
            shutil.move(away, tokens)
    finally:
        os.kill(pid, signal.SIGCONT)


def _run(ctx: Context, argv: list[str], stdin: str = "") -> str:
    node = ctx.config.section("node")
    env = {**(ctx.env or os.environ), "CC_RECOVER_RPC_PASSWORD": node.str("rpc_password")}
    done = subprocess.run(
        [sys.executable, "-m", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        error = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise StepFailed(f"`{' '.join(argv[:2])}` exited {done.returncode}: {error}")
    return done.stdout


def step_recovery_drill(ctx: Context) -> str:
    account = int(ctx.need("account_id"))
    cold = ctx.config.section("hsm_cold")
    paper = cold.path("export_dir") / f"account-{account}-recovery.txt"
    if not paper.is_file():
        raise StepFailed(f"no paper recovery export at {paper}")
    node = ctx.config.section("node")
    chain = ["--rpc", node.str("rpc_url"), "--rpc-user", node.str("rpc_user")]
    work = ctx.config.data_dir / "recovery-drill"
    work.mkdir(exist_ok=True)
    psbt, mine_psbt, cold_psbt = (work / n for n in ("drill.psbt", "rk.psbt", "cold.psbt"))
    outside = random_address(ctx.network)
    _something_to_recover(ctx, paper, chain)
    with hot_hsm_gone(ctx):
        found = json.loads(_run(ctx, ["recovery", "scan", "--export", str(paper), *chain]))
        if not found["count"]:
            raise StepFailed("cc-recover found no hot UTXO to recover")
        built = json.loads(
            _run(
                ctx,
                ["recovery", "build", "--export", str(paper), *chain, "--to", outside,
                 "--fee-rate", FEE_RATE, "--out", str(psbt)],
            )
        )  # fmt: skip
        _run(ctx, ["recovery", "sign", "--export", str(paper), str(psbt), "--out", str(mine_psbt)])
        _run(
            ctx,
            ["hsm_cold.cli", "sign-recovery", str(account), str(psbt), "--pin-stdin",
             "--out", str(cold_psbt), "--dir", str(ctx.config.data_dir)],
            stdin=f"{cold.str('user_pin')}\nyes\n",
        )  # fmt: skip
        tx_hex = _run(ctx, ["recovery", "finalize", str(mine_psbt), str(cold_psbt)]).strip()
        txid = ctx.rpc.send_raw_transaction(tx_hex)
        [block] = mine(ctx.rpc, ctx.network, 1)
        confirmations = 1 if txid in ctx.rpc.get_block(block, 1)["tx"] else 0
        left = json.loads(_run(ctx, ["recovery", "scan", "--export", str(paper), *chain]))
    if confirmations < 1 or left["count"]:
        raise StepFailed(f"recovery tx {txid} not mined, or {left['count']} hot UTXO(s) left")
    got = _paid(ctx, txid, block, outside)
    if got != built["value_sat"]:
        raise StepFailed(f"the outside address got {got} sat, not {built['value_sat']}")
    return (
        f"hot HSM stopped and its token taken away; cc-recover (embit only) found "
        f"{found['count']} hot UTXO(s), {btc(found['total_sat'])}, signed with the paper "
        f"recovery key, the cold HSM co-signed at its console; tx {txid} mined: "
        f"{btc(got)} at an outside address (fee {btc(built['fee_sat'])})"
    )


def _something_to_recover(ctx: Context, paper: Path, chain: list[str]) -> None:
    """Pending change confirmed (the scan reads the UTXO set); an empty hot wallet funded."""
    mine(ctx.rpc, ctx.network, 1)
    found = json.loads(_run(ctx, ["recovery", "scan", "--export", str(paper), *chain]))
    if not found["count"]:
        address = ctx.custody("hot").get("/address/next")["address"]
        ctx.faucet.pay([(address, DRILL_FUNDING_SAT)])
        mine(ctx.rpc, ctx.network, 1)


def _paid(ctx: Context, txid: str, block: str, address: str) -> int:
    tx = ctx.rpc.get_raw_transaction(txid, True, block)  # by block: no transaction index
    return sum(
        int(Decimal(str(o["value"])) * 100_000_000)
        for o in tx["vout"]
        if o["scriptPubKey"].get("address") == address
    )
