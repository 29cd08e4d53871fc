"""Benchmark: withdrawals per minute end to end (site -> V-device -> custody -> both HSMs ->
node), without batching (batched payouts are not built yet), at each baud rate.

Each run is a whole deployment under `custody up` (every process real, the serial line
emulated at the given baud), set up by the demo's own first steps (account, V-device channel,
verified batches, a funded hot wallet). Then N withdrawals of one output each are enqueued at
the merchant site at once, and the clock runs until the site shows every one sent (its txid
reported by the V-device). A miner thread mines a block every `--block-seconds` (a short block
interval: the wallet chains unconfirmed change up to Core's 25-transaction limit and waits for
a block beyond it). Reported: withdrawals per minute, serial-line bytes per withdrawal (both
directions, firmware-sim's lane counters), and the longest unconfirmed chain seen.

    .venv/bin/python benchmarks/bench_withdrawals.py [--withdrawals 40] [--baud 115200]
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

SETUP = ("status", "account", "channel", "batches", "hot-funding")
AMOUNT = 20_000


def wire_bytes(control: ControlClient) -> int:
    lanes = control.status()["serial"]["lanes"]
    return sum(int(lane["counters"]["bytes_out"]) for lane in lanes.values())


def bench(baud: int, n: int, block_seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-withdrawals-") as tmp:
        env = {"CC__FIRMWARE_SIM__SERIAL__BAUD": str(baud), "CC__SERIAL__BAUD": str(baud)}
        d = Deployment(Path(tmp), env=env)
        d.configure(DEMO_CONFIG)
        d.configure({"hsm_hot": {"max_requests_per_minute": 1_000_000}})
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
        "load average (1 min)": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--withdrawals", type=int, default=40, help="withdrawals per baud rate")
    parser.add_argument("--baud", type=int, action="append", help="baud rate (repeatable)")
    parser.add_argument(
        "--block-seconds", type=float, default=10.0, help="seconds between mined blocks"
    )
    args = parser.parse_args()
    bauds = args.baud or [115200, 921600]
    print(
        f"workload: {args.withdrawals} one-output withdrawals enqueued at once per baud rate, "
        f"a block every {args.block_seconds:g} s, no batching; {os.cpu_count()} CPUs"
    )
    for baud in bauds:
        r = bench(baud, args.withdrawals, args.block_seconds)
        print(f"\n{baud} baud")
        for key, value in r.items():
            if key != "baud":
                print(f"  {key:28} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
