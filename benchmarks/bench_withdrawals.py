"""Benchmark: withdrawals per minute end to end (site -> V-device -> custody -> both HSMs ->
node), without and with batched payouts, at each baud rate; and the HSM pair alone co-signing
the same withdrawals one by one and in batches.

Each run is a whole deployment under `custody up` (every process real, the serial line
emulated at the given baud), set up by the demo's own first steps (account, V-device channel,
verified batches, a funded hot wallet). Then N withdrawals of one output each are enqueued at
the merchant site at once, and the clock runs until the site shows every one sent (its txid
reported by the V-device). A miner thread mines a block every `--block-seconds` (a short block
interval: the wallet chains unconfirmed change up to Core's 25-transaction limit and waits for
a block beyond it). Reported: withdrawals per minute, serial-line bytes per withdrawal (both
directions, firmware-sim's lane counters), the longest unconfirmed chain seen, and how many
transactions carried them. "With batching" sets `[custody] batch_sends = true` and
`batch_window_seconds` (`--batch-window`, default 0: no waiting). Both runs let the V-device
keep `--max-in-flight` withdrawals in flight (default 10; 1: one at a time).

The pair part (`--pair-batch B`, default 10) runs `firmware-sim`, `hsm-cold` and `hsm-hot`
alone and co-signs the same number of one-output withdrawals through custody's client: one
`sign_send` each, then `sign_batch` of B withdrawals per transaction (each V-device-signed);
withdrawals per minute and serial bytes per withdrawal, what batching buys at the HSM link.

    .venv/bin/python benchmarks/bench_withdrawals.py [--withdrawals 40] [--baud 115200]
        [--batch-window 1.0] [--max-in-flight 10] [--pair-batch 10] [--skip-end-to-end]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cc_demo import run as demo_run  # noqa: E402
from cc_demo import scenario as demo  # noqa: E402
from cc_demo.support import DEMO_CONFIG, mine, random_address  # noqa: E402
from firmware_sim.control import ControlClient  # noqa: E402
from tests.harness import Deployment  # noqa: E402
from tests.hsm_fixtures import (  # noqa: E402
    HsmPair,
    VDevice,
    build_send_psbt,
    confirm_account,
    funded_coin,
    hot_wallet,
    send_request,
    settlement_descriptor,
)
from tests.hsm_fixtures import random_address as any_address  # noqa: E402
from wallet_core.wallets import RECEIVE  # noqa: E402

SETUP = ("status", "account", "channel", "batches", "hot-funding")
AMOUNT = 20_000


def wire_bytes(control: ControlClient) -> int:
    lanes = control.status()["serial"]["lanes"]
    return sum(int(lane["counters"]["bytes_out"]) for lane in lanes.values())


def bench(
    baud: int, n: int, block_seconds: float, window: float | None, in_flight: int
) -> dict[str, Any]:
    """End to end; `window` None: no batching, else batching with that window; `in_flight`:
    the V-device's max_in_flight."""
    with tempfile.TemporaryDirectory(prefix="bench-withdrawals-") as tmp:
        env = {"CC__FIRMWARE_SIM__SERIAL__BAUD": str(baud), "CC__SERIAL__BAUD": str(baud)}
        d = Deployment(Path(tmp), env=env)
        d.configure(DEMO_CONFIG)
        d.configure({"hsm_hot": {"max_requests_per_minute": 1_000_000}})
        batching = {"batch_sends": window is not None, "batch_window_seconds": window or 0.0}
        d.configure({"custody": batching, "vdevice": {"max_in_flight": in_flight}})
        d.start_supervisor(timeout=180.0)
        try:
            ctx = demo.Context(config=d.config, env=d.env)
            for name in SETUP:
                step = next(s for s in demo_run.STEPS if s.name == name)
                step.run(ctx)
            control = ControlClient(d.config.section("firmware_sim").path("control_socket"))
            wire_before = wire_bytes(control)
            stop = threading.Event()
            chain = [0]

            def miner() -> None:
                while not stop.wait(block_seconds):
                    for txid in ctx.rpc.get_raw_mempool():
                        try:
                            entry = ctx.rpc.get_mempool_entry(txid)
                        except Exception:  # noqa: BLE001 - mined meanwhile
                            continue
                        chain[0] = max(chain[0], int(entry["ancestorcount"]))
                    mine(ctx.rpc, ctx.network, 1)

            started = time.monotonic()
            ids = [
                demo.merchant_withdrawal(ctx, [(random_address(ctx.network), AMOUNT + i)])
                for i in range(n)
            ]
            thread = threading.Thread(target=miner, daemon=True)
            thread.start()
            try:
                results = [demo.wait_site_finished(ctx, v, timeout=600.0) for v in ids]
            finally:
                stop.set()
                thread.join()
            elapsed = time.monotonic() - started
            sent = sum(1 for w in results if w["status"] == "sent")
            txs = len({w["tx_hash"] for w in results if w["status"] == "sent"})
            wire = wire_bytes(control) - wire_before
        finally:
            d.stop(check=False)
    return {
        "baud": baud,
        "withdrawals": n,
        "sent": sent,
        "seconds": round(elapsed, 1),
        "withdrawals/min": round(60 * sent / elapsed, 1) if elapsed else 0.0,
        "serial bytes/withdrawal": round(wire / sent) if sent else 0,
        "longest unconfirmed chain": chain[0],
        "transactions": txs,
        "load average (1 min)": round(os.getloadavg()[0], 2),
    }


def bench_pair(baud: int, n: int, size: int) -> dict[str, Any]:
    """The HSM pair alone: `n` withdrawals co-signed one by one, then `n` in batches of `size`."""
    with tempfile.TemporaryDirectory(prefix="bench-withdrawals-pair-") as tmp:
        env = {"CC__FIRMWARE_SIM__SERIAL__BAUD": str(baud), "CC__SERIAL__BAUD": str(baud)}
        limits = {"max_requests_per_minute": 1_000_000, "max_daily_sat": 10**15}
        d = Deployment(
            Path(tmp),
            env=env,
            config={
                "hsm_hot": {**limits, "link_timeout": 60.0, "max_fee_per_day_sat": 10**15},
                "hsm_cold": {
                    "max_fee_per_day_sat": 10**15,
                    "policy": {"max_sends_per_hour": 10**6},
                },
            },
        )
        pair = HsmPair(d)
        try:
            pair.start()
            client, wallet, vdev = pair_account(pair)
            singles = [pair_call(wallet, vdev, [f"s{baud}-{i}"]) for i in range(n)]
            batches = [
                pair_call(wallet, vdev, [f"b{baud}-{i}-{k}" for k in range(size)])
                for i in range(n // size)
            ]
            out: dict[str, Any] = {"baud": baud}
            for label, calls in (("one by one", singles), (f"batches of {size}", batches)):
                wire_before, started = pair.wire_bytes(), time.monotonic()
                done = 0
                for psbt, members in calls:
                    if len(members) == 1:
                        client.sign_send(ACCOUNT, psbt, **members[0])
                    else:
                        client.sign_batch(ACCOUNT, psbt, members)
                    done += len(members)
                elapsed = time.monotonic() - started
                wire = pair.wire_bytes() - wire_before
                out[f"{label}: withdrawals/min"] = round(60 * done / elapsed, 1)
                out[f"{label}: serial bytes/withdrawal"] = round(wire / done)
            out["load average (1 min)"] = round(os.getloadavg()[0], 2)
            return out
        finally:
            d.stop(check=False)


ACCOUNT = 1


def pair_account(pair: HsmPair) -> tuple[Any, Any, VDevice]:
    client = pair.client()
    vdev = VDevice("bench-batch")
    prov = client.provision_account(
        ACCOUNT,
        "regtest",
        vdev.identity_hex,
        settlement_descriptor(ACCOUNT),
        vdevice_phone="+15550000100",
        owner_phone="+15550000200",
    )
    confirm_account(pair.d, ACCOUNT, vdev.identity_hex)
    client.register_channel(**vdev.channel_registration(ACCOUNT, "bench"))
    return client, hot_wallet(prov), vdev


_coins = iter(range(10**6))


def pair_call(wallet: Any, vdev: VDevice, numbers: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """One transaction (1 new input, a payment per number, change) and its signed members."""
    i = next(_coins)
    coin = funded_coin(wallet, 5_000_000, RECEIVE, i % 1000, 0, f"pair/{i}", witness=True)
    pays = [(any_address(), AMOUNT + k) for k in range(len(numbers))]
    change = coin.value - sum(v for _, v in pays) - 2_000 - 500 * len(pays)
    psbt = build_send_psbt(wallet, [coin], pays, change=(i % 1000, change))
    members = []
    for pay, no in zip(pays, numbers, strict=True):
        request = send_request([pay], no)
        members.append({"request": request, "vc_code": vdev.vc_code(request), "c_id": "bench"})
    return psbt.to_base64(), members


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--withdrawals", type=int, default=40, help="withdrawals per baud rate")
    parser.add_argument("--baud", type=int, action="append", help="baud rate (repeatable)")
    parser.add_argument(
        "--block-seconds", type=float, default=10.0, help="seconds between mined blocks"
    )
    parser.add_argument(
        "--batch-window",
        type=float,
        default=0.0,
        help="batch_window_seconds of the run with batching (0: no waiting)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=10,
        help="[vdevice] max_in_flight: withdrawals the V-device has in flight at once",
    )
    parser.add_argument(
        "--pair-batch", type=int, default=10, help="withdrawals per batch in the pair part"
    )
    parser.add_argument("--skip-end-to-end", action="store_true", help="only the HSM pair part")
    args = parser.parse_args()
    bauds = args.baud or [115200, 921600]
    print(
        f"workload: {args.withdrawals} one-output withdrawals enqueued at once per baud rate, "
        f"a block every {args.block_seconds:g} s, without batching and with batching (window"
        f" {args.batch_window:g} s), V-device max_in_flight {args.max_in_flight}; then the"
        " pair alone, one by one and in"
        f" batches of {args.pair_batch}; {os.cpu_count()} CPUs"
    )
    for baud in bauds:
        runs: list[float | None] = [] if args.skip_end_to_end else [None, args.batch_window]
        for window in runs:
            r = bench(baud, args.withdrawals, args.block_seconds, window, args.max_in_flight)
            what = "no batching" if window is None else f"batching, window {window:g} s"
            print(f"\n{baud} baud, end to end, {what}")
            for key, value in r.items():
                if key != "baud":
                    print(f"  {key:34} {value}")
        r = bench_pair(baud, args.withdrawals, args.pair_batch)
        print(f"\n{baud} baud, the HSM pair alone")
        for key, value in r.items():
            if key != "baud":
                print(f"  {key:34} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
