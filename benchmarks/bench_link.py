"""Benchmark of the HSM link: round trips per second, bytes on the wire, latency.

A request carrying ~300 bytes of payload and a ~150-byte answer (the size of a co-sign
exchange) over an emulated line rate-limited to 115200 and 921600 baud, with several requests
in flight (pipelining) and with one at a time for comparison.

    .venv/bin/python benchmarks/bench_link.py [--seconds 5] [--inflight 8] [--baud 115200]

The line is firmware_sim's `SerialLine`, the relay `firmware-sim serve` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _common import run_threads

from cc_common.link import LinkClient, LinkConfig, LinkServer, MemoryCounterStore
from firmware_sim.serial_relay import SerialLine

KEY = os.urandom(32)


def handler(payload: dict) -> dict:
    return {"signatures": [payload["tx"][:64], payload["tx"][64:128]], "n": 1}


@contextmanager
def line(baud: int) -> Iterator[tuple[str, str]]:
    """The hot and cold port paths of an emulated line at `baud`."""
    with tempfile.TemporaryDirectory() as tmp:
        relay = SerialLine(Path(tmp) / "hot", Path(tmp) / "cold", baud)
        relay.start()
        try:
            yield str(Path(tmp) / "hot"), str(Path(tmp) / "cold")
        finally:
            relay.close()


def run(baud: int, seconds: float, inflight: int) -> None:
    config = LinkConfig(baudrate=baud)
    with line(baud) as (hot, cold):
        server = LinkServer.open(cold, KEY, {"cosign": handler}, MemoryCounterStore(), config)
        server.start()
        client = LinkClient.open(hot, KEY, MemoryCounterStore(), config)
        try:
            for depth in (inflight, 1):
                measure(client, baud, seconds, depth)
        finally:
            client.close()
            server.stop()


def carried(client: LinkClient) -> int:
    """Bytes on the wire both ways: what the hot side wrote plus what it read."""
    stats = client.stats()
    return stats.get("bytes out", 0) + stats.get("bytes in", 0)


def measure(client: LinkClient, baud: int, seconds: float, depth: int) -> None:
    payload = {
        "account": "acct-0001",
        "tx": os.urandom(240),
        "inputs": [[150_000, 0, 17], [2_500_000, 1, 3]],
        "user_tx_no": 123456,
        "vc_code": os.urandom(20),
    }
    client.call("cosign", payload, timeout=10)  # warm up
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    before = carried(client)
    start = time.monotonic()

    def worker() -> None:
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            client.call("cosign", payload, timeout=30)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)

    run_threads(worker, depth)
    elapsed = time.monotonic() - start
    n = len(latencies)
    wire = (carried(client) - before) / n
    latencies.sort()
    p99 = latencies[min(n - 1, int(n * 0.99))]
    print(
        f"{baud:>7} baud  in flight {depth:>2}: {n / elapsed:7.1f} round trips/s, "
        f"{wire:6.0f} bytes on the wire per round trip, "
        f"p50 {statistics.median(latencies) * 1000:6.1f} ms, p99 {p99 * 1000:6.1f} ms  (n={n})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--inflight", type=int, default=8, help="requests in flight at once")
    parser.add_argument(
        "--baud", type=int, action="append", help="line rate (repeatable; 115200 and 921600)"
    )
    args = parser.parse_args()
    print("payload: ~300 B request, ~150 B answer; relay: firmware_sim SerialLine")
    for baud in args.baud or [115200, 921600]:
        run(baud, args.seconds, args.inflight)


if __name__ == "__main__":
    main()
