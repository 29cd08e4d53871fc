"""Benchmark of co-signing through both HSMs over the emulated serial line.

Runs the real processes (`firmware-sim serve`, `hsm-cold serve`, `hsm-hot serve`, each on its
own SoftHSM token) at each baud rate, provisions one account with a V-device channel, and fires
`sign_send` calls from several client threads (custody's `HotHsmClient`), in two phases:

- first spends: each send spends an outpoint the cold HSM has never seen, so its request
  carries the funding transaction (a 1-input, 2-output segwit transaction, 214 bytes) for the
  cold HSM to hash-check the amount against;
- verified spends: each send spends the change of a first-phase send, which the cold HSM knows
  from its own signing, so the request carries no previous transaction.

Reports, per phase, sends per second, bytes on the wire per send (firmware-sim's lane counters,
both directions, and each direction with its share of the line rate) and p50/p99 latency, and
the extra bytes a first spend costs. Targets (issue 14 item 3): >= 45 sends/s at 115200 baud and
>= 300 at 921600, for verified spends.

    .venv/bin/python benchmarks/bench_cosign.py [--sends 300] [--concurrency 8] [--baud 115200]

(`--sends` is per phase.)
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cc_common.link import codec  # noqa: E402
from cc_common.link.counters import MemoryCounterStore  # noqa: E402
from cc_common.link.session import Kind, Role, Session  # noqa: E402
from hsm_hot.compact import compact_request, packed_request, plan_cosign  # noqa: E402
from tests.harness import Deployment  # noqa: E402
from tests.hsm_fixtures import (  # noqa: E402
    Coin,
    HsmPair,
    VDevice,
    build_send_psbt,
    confirm_account,
    funded_coin,
    hot_wallet,
    random_address,
    send_request,
    settlement_descriptor,
)
from wallet_core.psbt import Psbt  # noqa: E402
from wallet_core.wallets import CHANGE, RECEIVE  # noqa: E402

ACCOUNT = 1
TARGETS = {115200: 45.0, 921600: 300.0}  # issue 14 item 3
FUNDING = 1_000_000
FEE = 12_000
PHONES = {"vdevice_phone": "+15550000100", "owner_phone": "+15550000200"}


def prepare(
    pair: HsmPair, n: int, tag: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Provision an account, register a channel, build `n` first spends (1 input, 1 payee +
    change) and `n` verified spends of their change outputs."""
    client = pair.client()
    vdev = VDevice("bench")
    # the SMS channel's phones are pinned at provisioning (where the client asks for them)
    asked = inspect.signature(client.provision_account).parameters
    phones = {k: v for k, v in PHONES.items() if k in asked}
    prov = client.provision_account(
        ACCOUNT, "regtest", vdev.identity_hex, settlement_descriptor(ACCOUNT), **phones
    )
    confirm_account(pair.d, ACCOUNT, vdev.identity_hex)  # the officer at the cold console
    client.register_channel(**vdev.channel_registration(ACCOUNT, "bench"))
    wallet = hot_wallet(prov)

    def send(coin: Coin, i: int, phase: str) -> tuple[dict[str, Any], Psbt, int]:
        payments = [(random_address(), 10_000 + i)]
        change = coin.value - payments[0][1] - FEE
        psbt = build_send_psbt(wallet, [coin], payments, change=(i % 1000, change))
        request = send_request(payments, f"{tag}{phase}{i}")
        params = {
            "account": ACCOUNT,
            "psbt": psbt.to_base64(),
            "request": request,
            "vc_code": vdev.vc_code(request),
            "c_id": "bench",
        }
        return params, psbt, change

    first, verified = [], []
    for i in range(n):
        coin = funded_coin(wallet, FUNDING, RECEIVE, i % 1000, 0, f"{tag}/{i}", witness=True)
        params, psbt, change = send(coin, i, "f")
        first.append(params)
        verified.append(send(Coin(psbt.txid, 1, change, CHANGE, i % 1000), i, "v")[0])
    shape = {
        "inputs": 1,
        "outputs": 2,
        "funding tx bytes (first spend)": len(coin.prev_tx or b""),
        "cosign request bytes, first spend": request_bytes(first[0], wallet, "short"),
        "cosign request bytes, verified": request_bytes(verified[0], wallet, "short"),
        "packed-form request bytes, verified": request_bytes(verified[0], wallet, "packed"),
        "long-form request bytes, verified": request_bytes(verified[0], wallet, "long"),
        "cosign answer bytes (codec)": len(codec.encode({"s": bytes(64)})),
        "session header + MAC bytes (a month in)": len(SESSION.seal(Kind.ANSWER, 1 << 31, b"")),
    }
    shape["extra bytes for a first spend"] = (
        shape["cosign request bytes, first spend"] - shape["cosign request bytes, verified"]
    )
    return first, verified, shape


def request_bytes(params: dict[str, Any], wallet: Any, form: str) -> int:
    """The co-sign request of `params` as the link codec encodes it, in `form`: "short" (what
    the hot HSM sends first), "packed" (what it sends after a 730) or "long"."""
    plan = plan_cosign(Psbt.from_base64(params["psbt"]), wallet)
    args = (ACCOUNT, plan, params["request"], params["vc_code"], "bench")
    if form == "long":
        payload = compact_request(*args)
    else:
        payload = packed_request(*args, wallet, short=form == "short")
    return len(codec.encode(["cosign", payload]))


# A session at the counter of a month at 300 messages/s, to size the header it writes then.
_COUNTERS = MemoryCounterStore()
_COUNTERS.save("cold_to_hot.send", 300 * 86_400 * 30)
SESSION = Session(bytes(32), Role.SERVER, _COUNTERS, name="size")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lane_bytes(pair: HsmPair) -> dict[str, int]:
    """Bytes the serial line carried so far, per direction (firmware-sim's lane counters)."""
    lanes = pair.control.status()["serial"]["lanes"]
    return {name: int(lane["counters"]["bytes_out"]) for name, lane in lanes.items()}


# The hot side's link counters shown per send (`health`'s "link"): where the frames go.
LINK_COUNTS = {
    "frames out (requests)": "data out",
    "ACK frames out": "ack out",
    "acks carried out": "acks carried",
    "frames in (answers)": "data in",
    "answers in bundles": "bundled payloads in",
    "ACK frames in": "ack in",
    "acks carried in": "acks in data",
    "retransmitted frames": "retransmits",
}


def hot_link(pair: HsmPair) -> dict[str, int]:
    """The hot HSM's link counters (frames, acknowledgements), from its `health`."""
    link = pair.client().health().get("link", {})
    return {k: int(v) for k, v in link.items() if isinstance(v, int)}


def run_load(
    pair: HsmPair, sends: list[dict[str, Any]], concurrency: int, baud: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    queue = list(reversed(sends))

    def worker() -> None:
        client = pair.client()
        while True:
            with lock:
                if not queue:
                    return
                params = queue.pop()
            start = time.perf_counter()
            try:
                client.sign_send(**params)
            except Exception as exc:  # noqa: BLE001 (a benchmark counts every failure)
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    link_before = hot_link(pair)
    wire_before = pair.wire_bytes()
    lanes_before = lane_bytes(pair)
    procs = {"hsm-hot": pair.hot, "hsm-cold": pair.cold, "firmware-sim": pair.sim}
    cpu_before = {name: cpu_seconds(p.pid) for name, p in procs.items() if p is not None}
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    client_cpu = time.process_time()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    client_cpu = time.process_time() - client_cpu
    wire = pair.wire_bytes() - wire_before
    lanes = {k: v - lanes_before.get(k, 0) for k, v in lane_bytes(pair).items()}
    ok = len(latencies)
    link = {k: v - link_before.get(k, 0) for k, v in hot_link(pair).items()}
    frames = {
        f"hot link per send: {name}": link.get(key, 0) / max(ok, 1)
        for name, key in LINK_COUNTS.items()
    }
    # the co-sign's round trip (the line both ways, the cold side's queue, work and commit)
    frames["hot link: mean round trip ms"] = (
        link.get("answered calls us", 0) / 1000 / max(link.get("answered calls", 0), 1)
    )
    per_lane: dict[str, float] = {}
    for name, sent in sorted(lanes.items()):
        per_lane[f"wire bytes/send {name}"] = sent / ok if ok else 0.0
        # 10 bits a byte on the line (start, 8 data, stop)
        per_lane[f"line share {name} %"] = 100 * sent / elapsed / (baud / 10) if elapsed else 0.0
    ok = len(latencies)
    latencies.sort()
    cpu = {
        f"cpu ms/send {name}": 1000 * (cpu_seconds(procs[name].pid) - before) / max(ok, 1)
        for name, before in cpu_before.items()
    }
    # custody's side (this process: the client threads' HTTP and JSON) shares the CPUs
    cpu["cpu ms/send bench client"] = 1000 * client_cpu / max(ok, 1)
    return {
        **cpu,
        "load average (1 min)": os.getloadavg()[0],
        "sends": ok,
        "errors": len(errors),
        "first error": errors[0] if errors else "",
        "seconds": elapsed,
        "sends/s": ok / elapsed if elapsed else 0.0,
        "wire bytes/send": wire / ok if ok else 0.0,
        **per_lane,
        **frames,
        "mean ms": 1000 * statistics.mean(latencies) if latencies else 0.0,
        "p50 ms": 1000 * statistics.median(latencies) if latencies else 0.0,
        "p99 ms": 1000 * latencies[min(ok - 1, int(0.99 * ok))] if latencies else 0.0,
    }


def bench(baud: int, sends: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-cosign-") as tmp:
        env = {"CC__FIRMWARE_SIM__SERIAL__BAUD": str(baud), "CC__SERIAL__BAUD": str(baud)}
        d = Deployment(
            Path(tmp),
            env=env,
            config={
                "hsm_hot": {
                    "link_timeout": 60.0,
                    "max_requests_per_minute": 1_000_000,
                    "max_daily_sat": 10**15,
                    "max_fee_per_day_sat": 10**15,
                },
                "hsm_cold": {"max_fee_per_day_sat": 10**15},
            },
        )
        pair = HsmPair(d)
        c = concurrency
        try:
            pair.start()
            first, verified, shape = prepare(pair, sends + c, f"b{baud}")
            run_load(pair, first[:c], c, baud)  # warm-up: caches, connections
            firsts = run_load(pair, first[c:], c, baud)
            run_load(pair, verified[:c], c, baud)
            result = run_load(pair, verified[c:], c, baud)
        finally:
            problems = d.stop()
            if problems:
                print("teardown:", problems, file=sys.stderr)
    first_spends = {
        f"first spends: {k}": v
        for k, v in firsts.items()
        if k in ("sends", "errors", "sends/s", "p50 ms", "p99 ms") or k.startswith("wire bytes")
    }
    return {"baud": baud, "concurrency": c, **shape, **first_spends, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sends", type=int, default=300, help="sends per phase (first, verified; default: 300)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="client threads sending at once (default: 8)"
    )
    parser.add_argument(
        "--baud",
        type=int,
        action="append",
        help="line rate; repeat for several (default: 115200 and 921600)",
    )
    args = parser.parse_args()
    bauds = args.baud or [115200, 921600]
    print(
        f"workload: {args.sends} first spends, then {args.sends} verified spends (of their"
        f" change), per baud rate, from {args.concurrency} threads; each send spends 1"
        " hot-wallet input (2-of-3 P2WSH) to 1 payee + 1 change; firmware-sim, hsm-cold,"
        " hsm-hot each its own process, SoftHSM tokens; the target is for verified spends"
    )
    failed = False
    for baud in bauds:
        r = bench(baud, args.sends, args.concurrency)
        target = TARGETS.get(baud)
        verdict = "" if target is None else (" OK" if r["sends/s"] >= target else " BELOW TARGET")
        errors = r["errors"] + r["first spends: errors"]
        failed |= bool(target and r["sends/s"] < target) or errors > 0
        print(f"\n{baud} baud (target {target or '-'} verified sends/s){verdict}")
        for key, value in r.items():
            if key in ("baud",) or value == "":
                continue
            digits = 2 if key.startswith("cpu ms") else 1  # CPU per send: tenths are too coarse
            shown = f"{value:.{digits}f}" if isinstance(value, float) else value
            print(f"  {key:32} {shown}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
