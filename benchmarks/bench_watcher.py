"""Benchmark: the chain watcher at mainnet block size against 10 000 to 1 000 000 watched
addresses on PostgreSQL (issue 14, item 1).

Workload (all on 127.0.0.1):
- a regtest chain built once by the simulated node's own code, in this process (`Node`,
  every block validated by it): 101 blocks, one fan-out block, then `--blocks` + `--tip-blocks`
  blocks of `--txs` transactions each (2 500 by default). Each transaction spends one
  P2WSH(OP_TRUE) output and makes 3 outputs (7 500 a block): the next P2WSH(OP_TRUE) link and
  two P2WPKH payments to unwatched programs; `--hits` transactions a block (5) pay one watched
  address instead (always among the first 10 000, so every size sees the same deposits). The
  datadir is kept under `--chain-dir` and reused by the next run;
- the node then runs as its own process (`firmware-sim node`) on that datadir, txindex off;
- per size: a fresh database `cc_bench_<random>` migrated with Alembic, 100 accounts, the
  watched addresses (P2WPKH, bech32) in 1 000 batches spread over the 100 accounts, COPY-ed in
  bulk (not derived), ANALYZE; the watcher runs in a child process (one `Watcher` with the
  worker's engine settings, nothing else in it) so its peak RSS is its own;
- catch-up: the watcher starts below the `--blocks` big blocks and steps until at their last
  one (the tip blocks are invalidated meanwhile): blocks/s = blocks / wall time of the steps;
- tip: the `--tip-blocks` blocks are reconsidered one at a time, each followed by one watcher
  step (`getblockcount` to mempool sync): ms per block = the step's wall time (p50, max);
- memory: the child's peak RSS (`ru_maxrss`) after both phases.

Run: `.venv/bin/python benchmarks/bench_watcher.py [--sizes 10000 100000 1000000]
[--blocks 60] [--tip-blocks 10] [--chain-dir /tmp/cc-bench-watcher-chain]`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import secrets
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bitcointx.core import (  # noqa: E402
    COutPoint,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
)
from bitcointx.core.script import OP_RETURN, CScript, CScriptWitness  # noqa: E402

from custody.admin_cli import upgrade_database  # noqa: E402
from custody.chain.rpc import BitcoinRPC  # noqa: E402
from custody.db import make_engine, make_session_factory  # noqa: E402
from custody.watcher import Watcher, WatcherSettings  # noqa: E402
from firmware_sim.node.blocks import (  # noqa: E402
    BLOCK_VERSION,
    REGTEST_BITS,
    WITNESS_COMMITMENT_HEADER,
    BlockHeader,
    block_subsidy,
    grind,
    txid_of,
)
from firmware_sim.node.formatting import use_regtest  # noqa: E402
from firmware_sim.node.node import Node  # noqa: E402
from firmware_sim.node.storage import StoredBlock  # noqa: E402
from tests.node_fixtures import NodeProcess  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
OP_TRUE = b"\x51"
LINK_SCRIPT = b"\x00\x20" + hashlib.sha256(OP_TRUE).digest()  # P2WSH(OP_TRUE)
PAYMENT = 5_000  # sats per P2WPKH output
FEE = 200  # sats per big-block transaction
ACCOUNTS = 100
BATCHES = 1_000
SMALLEST = 10_000  # deposits go to the first addresses, watched at every size
CHAIN_VERSION = "v1"


def watched_program(i: int) -> bytes:
    return hashlib.sha256(b"watched %d" % i).digest()[:20]


def foreign_program(block: int, tx: int, n: int) -> bytes:
    return hashlib.sha256(b"foreign %d %d %d" % (block, tx, n)).digest()[:20]


def p2wpkh(program: bytes) -> bytes:
    return b"\x00\x14" + program


# ---------------------------------------------------------------------- the chain


def _varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    return b"\xfe" + struct.pack("<I", n)


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _link_tx(prev: bytes, n: int, outs: list[tuple[bytes, int]]) -> tuple[bytes, bytes, bytes]:
    """A segwit transaction spending P2WSH(OP_TRUE) output `prev:n`: (raw, txid, wtxid)."""
    version, lock = struct.pack("<i", 2), b"\x00" * 4
    ins = b"\x01" + prev + struct.pack("<I", n) + b"\x00" + struct.pack("<I", 0xFFFFFFFE)
    body = _varint(len(outs)) + b"".join(
        struct.pack("<q", v) + _varint(len(s)) + s for s, v in outs
    )
    full = version + b"\x00\x01" + ins + body + b"\x01\x01" + OP_TRUE + lock
    return full, _sha256d(version + ins + body + lock), _sha256d(full)


def _merkle(hashes: list[bytes]) -> bytes:
    while len(hashes) > 1:
        if len(hashes) % 2:
            hashes = [*hashes, hashes[-1]]
        hashes = [_sha256d(hashes[i] + hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


def _big_block(
    links: list[tuple[bytes, int, int]], height: int, block_no: int, hits: int
) -> tuple[list[tuple[bytes, bytes, bytes]], list[tuple[bytes, int, int]]]:
    """One big block's transactions spending `links` (raw, txid, wtxid); the next links."""
    txs = []
    nxt = []
    step = max(1, len(links) // max(hits, 1))
    for t, (txid, n, value) in enumerate(links):
        a = p2wpkh(foreign_program(block_no, t, 1))
        if hits and t % step == 0 and t // step < hits:
            a = p2wpkh(watched_program((block_no * 7919 + t) % SMALLEST))
        b = p2wpkh(foreign_program(block_no, t, 2))
        rest = value - 2 * PAYMENT - FEE
        tx = _link_tx(txid, n, [(LINK_SCRIPT, rest), (a, PAYMENT), (b, PAYMENT)])
        txs.append(tx)
        nxt.append((tx[1], 0, rest))
    return txs, nxt


def build_chain(datadir: Path, big: int, per_block: int, hits: int) -> float:
    """The chain described in the module docstring: the first 102 blocks mined by the node's
    own code; the big ones serialized here and stored in its datadir, checked by the node
    when it loads them (amounts, spends, coinbase value; scripts are all OP_TRUE)."""
    use_regtest()
    datadir.mkdir(parents=True, exist_ok=True)
    node = Node(datadir)
    node.load()
    t0 = time.perf_counter()
    node.generate(101, LINK_SCRIPT)
    first = node.chain.block(node.chain.active[1].hash).txs[0]
    each = (first.vout[0].nValue - 10_000) // per_block
    fan = CTransaction(
        [CTxIn(COutPoint(txid_of(first), 0), nSequence=0xFFFFFFFE)],
        [CTxOut(each, CScript(LINK_SCRIPT)) for _ in range(per_block)],
        nVersion=2,
        witness=CTxWitness([CTxInWitness(CScriptWitness([OP_TRUE]))]),
    )
    node.generate_block(LINK_SCRIPT, [fan])
    links = [(txid_of(fan), n, each) for n in range(per_block)]
    tip = node.chain.tip
    prev, height, seq, when = tip.hash, tip.height, tip.seq, tip.header.time
    storage = node.storage
    for b in range(big):
        height += 1
        seq += 1
        when += 1
        txs, links = _big_block(links, height, b, hits)
        commitment = _sha256d(_merkle([b"\x00" * 32] + [w for _, _, w in txs]) + b"\x00" * 32)
        coinbase = CTransaction(
            [CTxIn(COutPoint(), CScript([height, 0]), 0xFFFFFFFF)],
            [
                CTxOut(block_subsidy(height) + FEE * len(txs), CScript(LINK_SCRIPT)),
                CTxOut(0, CScript([OP_RETURN, WITNESS_COMMITMENT_HEADER + commitment])),
            ],
            nLockTime=0,
            nVersion=2,
            witness=CTxWitness([CTxInWitness(CScriptWitness([b"\x00" * 32]))]),
        )
        cb_full = coinbase.serialize()
        cb_txid = txid_of(coinbase)
        merkle = _merkle([cb_txid] + [t for _, t, _ in txs])
        header = grind(BlockHeader(BLOCK_VERSION, prev, merkle, when, REGTEST_BITS, 0))
        count = _varint(len(txs) + 1)
        raw = header.serialize() + count + cb_full + b"".join(r for r, _, _ in txs)
        stripped = 80 + len(count) + len(coinbase.serialize(include_witness=False))
        stripped += sum(len(r) - 5 for r, _, _ in txs)  # marker, flag, 1-item witness
        entry = StoredBlock(
            header.hash(),
            prev,
            height,
            seq,
            False,
            header.serialize(),
            len(txs) + 1,
            len(raw),
            stripped,
        )
        storage.put_block(entry, raw)
        storage.set_meta("tip", entry.hash.hex())
        storage.commit()
        prev = entry.hash
        print(f"  built block {height} ({len(txs)} txs, {len(raw)} bytes)", flush=True)
    node.storage.close()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------- the database


def create_database() -> str:
    name = f"cc_bench_{secrets.token_hex(5)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load_addresses(url: str, count: int) -> float:
    """100 accounts, `count` watched addresses in 1 000 batches; returns the load seconds."""
    t0 = time.perf_counter()
    per_batch = max(1, count // BATCHES)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        account = {
            "status": "ACTIVE",
            "network": "regtest",
            "vdevice_phone": "+15550000100",
            "owner_phone": "+15550000200",
            "cold_receiving_xpub": "xpub",
            "hot_pubkey": "02" + "00" * 32,
            "cold_cosigner_xpub": "xpub",
            "recovery_xpub": "xpub",
            "cold_identity_pubkey": "02" + "11" * 32,
            "vdevice_identity_pubkey": "02" + "22" * 32,
            "cold_receive_next": "0",
            "hot_receive_next": "0",
            "hot_change_next": "0",
            "created_at": "2026-01-01",
        }
        empty = (
            "frozen_reason",
            "settlement_descriptor",
            "receiving_fingerprint",
            "cosigner_fingerprint",
            "recovery_fingerprint",
            "cold_descriptor",
            "hot_descriptor",
            "provisioning_proof",
        )
        account.update(dict.fromkeys(empty, ""))
        cols = ["id", "name", *account]
        with cur.copy(f"COPY accounts ({', '.join(cols)}) FROM STDIN") as copy:
            for a in range(1, ACCOUNTS + 1):
                copy.write("\t".join([str(a), f"bench-{a}", *account.values()]) + "\n")
        batches = io.StringIO()
        for b in range(BATCHES):
            batches.write(
                f"{b + 1}\t{b % ACCOUNTS + 1}\tCOLD\t{b // ACCOUNTS}\tPROVEN\t\t2026-01-01\n"
            )
        with cur.copy(
            "COPY address_batches (id, account_id, wallet, batch_no, status, proof, created_at) "
            "FROM STDIN"
        ) as copy:
            copy.write(batches.getvalue())
        # Generated by the server (a million rows from Python took minutes): the script is
        # P2WPKH of watched_program(i); the address text is a label (matching is by script).
        cur.execute(
            "INSERT INTO addresses (id, account_id, wallet, chain, index, address, "
            "script_pubkey, batch_id) "
            "SELECT i + 1, (i / %(per)s) %% %(accounts)s + 1, 'COLD', 'RECEIVE', "
            "(i / %(per)s / %(accounts)s) * %(per)s + i %% %(per)s, 'bench-' || i, "
            "'\\x0014'::bytea || substring(sha256(convert_to('watched ' || i, 'UTF8')) "
            "FROM 1 FOR 20), i / %(per)s + 1 FROM generate_series(0, %(last)s) AS i",
            {"per": per_batch, "accounts": ACCOUNTS, "last": count - 1},
        )
        for table in ("accounts", "address_batches", "addresses"):
            cur.execute(
                "SELECT setval(pg_get_serial_sequence(%(t)s, 'id'), %(n)s)",
                {
                    "t": table,
                    "n": {"accounts": ACCOUNTS, "address_batches": BATCHES}.get(table, count),
                },
            )
        conn.commit()
        cur.execute("ANALYZE")
        conn.commit()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------- the watcher child


class TimedWatcher(Watcher):
    """The watcher, counting the time spent reading and matching blocks (fetch, parse, the
    address and outpoint queries, the matches decoded) apart from recording them."""

    matching = 0.0

    def _fetch_block(self, block_hash: str, height: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            return super()._fetch_block(block_hash, height)
        finally:
            self.matching += time.perf_counter() - t0


def child(args: argparse.Namespace) -> int:
    """Steps a watcher on command (`step` lines on stdin), answering one JSON line each."""
    engine = make_engine(args.db, pool_size=2)
    factory = make_session_factory(engine)
    rpc = BitcoinRPC(args.rpc_url, args.rpc_user, args.rpc_password, timeout=120)
    watcher = TimedWatcher(
        factory,
        rpc,
        WatcherSettings(start_height=args.start, max_blocks_per_step=args.max_blocks),
    )
    print("BW", json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        watcher.matching = 0.0
        result = watcher.step()
        elapsed = time.perf_counter() - t0
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        answer = {
            "seconds": elapsed,
            "matching": watcher.matching,
            "connected": result.connected,
            "height": result.height,
            "tip": result.tip,
            "maxrss_mb": rss_kb / 1024,
        }
        print("BW", json.dumps(answer), flush=True)
    return 0


class Child:
    def __init__(self, db: str, node: Any, start: int, max_blocks: int) -> None:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "child",
            "--db",
            db,
            "--rpc-url",
            node.url,
            "--rpc-user",
            node.user,
            "--rpc-password",
            node.password,
            "--start",
            str(start),
            "--max-blocks",
            str(max_blocks),
        ]
        profile = os.environ.get("BENCH_WATCHER_PYSPY")  # a path: py-spy collapsed stacks
        if profile:
            py_spy = Path(sys.executable).parent / "py-spy"
            argv = [str(py_spy), "record", "-r", "200", "-f", "raw", "-o", profile, "--", *argv]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        self._answer()

    def _answer(self) -> dict[str, Any]:
        """The child's next answer line (py-spy, when profiling, writes lines of its own)."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the watcher child died (exit {self.proc.wait()})")
            if line.startswith("BW "):
                return dict(json.loads(line[3:]))

    def step(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


# ---------------------------------------------------------------------- main


def run_size(node: Any, count: int, first: int, last: int, tip_hashes: list[str]) -> dict[str, Any]:
    rpc = node.rpc()
    rpc.call("invalidateblock", tip_hashes[0])  # the tip blocks come back one by one below
    url = create_database()
    try:
        upgrade_database(url)
        load_s = load_addresses(url, count)
        child_proc = Child(url, node, first, 10_000)
        try:
            t0 = time.perf_counter()
            done = 0
            matching = 0.0
            while True:
                r = child_proc.step()
                done += r["connected"]
                matching += r["matching"]
                if r["height"] is not None and r["height"] >= last:
                    break
            catchup_s = time.perf_counter() - t0
            tip_ms = []
            tip_match_ms = []
            for i, h in enumerate(tip_hashes):
                rpc.call("reconsiderblock", h)  # brings back its descendants too
                if i + 1 < len(tip_hashes):
                    rpc.call("invalidateblock", tip_hashes[i + 1])
                r = child_proc.step()
                assert r["connected"] == 1, r
                tip_ms.append(r["seconds"] * 1000)
                tip_match_ms.append(r["matching"] * 1000)
            rss = child_proc.step()["maxrss_mb"]
        finally:
            child_proc.close()
        with psycopg.connect(url) as conn:
            deposits = conn.execute("SELECT count(*) FROM utxos").fetchone()
        return {
            "addresses": count,
            "load_s": load_s,
            "blocks": done,
            "catchup_s": catchup_s,
            "blocks_per_s": done / catchup_s,
            "tip_ms_p50": statistics.median(tip_ms),
            "match_ms_catchup": 1000 * matching / max(done, 1),
            "match_ms_tip_p50": statistics.median(tip_match_ms),
            "tip_ms_max": max(tip_ms),
            "maxrss_mb": rss,
            "deposits": deposits[0] if deposits else 0,
        }
    finally:
        rpc.call("reconsiderblock", tip_hashes[0])
        drop_database(url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    c = sub.add_parser("child", help="(internal) the watcher process")
    c.add_argument("--db", required=True, help="database URL")
    c.add_argument("--rpc-url", required=True, help="node RPC URL")
    c.add_argument("--rpc-user", required=True, help="node RPC user")
    c.add_argument("--rpc-password", required=True, help="node RPC password")
    c.add_argument("--start", type=int, required=True, help="first block height to watch")
    c.add_argument("--max-blocks", type=int, default=500, help="blocks per watcher step")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10_000, 100_000, 1_000_000],
        help="watched address counts",
    )
    parser.add_argument("--blocks", type=int, default=60, help="big blocks to catch up")
    parser.add_argument("--tip-blocks", type=int, default=10, help="big blocks at the tip")
    parser.add_argument("--txs", type=int, default=2_500, help="transactions per big block")
    parser.add_argument("--hits", type=int, default=5, help="deposits per big block")
    parser.add_argument(
        "--chain-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "cc-bench-watcher-chain",
        help="where the built chain is kept (reused when it matches the workload)",
    )
    args = parser.parse_args()
    if args.cmd == "child":
        return child(args)

    key = f"{CHAIN_VERSION}-{args.blocks + args.tip_blocks}-{args.txs}-{args.hits}"
    datadir = args.chain_dir / key / "node"
    marker = args.chain_dir / key / "built"
    if not marker.exists():
        shutil.rmtree(args.chain_dir / key, ignore_errors=True)
        print(f"building the chain in {datadir} ...", flush=True)
        built = build_chain(datadir, args.blocks + args.tip_blocks, args.txs, args.hits)
        marker.write_text(f"{built:.1f}\n")
        print(f"built in {built:.1f} s", flush=True)
    deploy = Path(tempfile.mkdtemp(prefix="cc-bench-watcher-"))
    node = NodeProcess(deploy / "deploy")
    node.deployment.env["CC__FIRMWARE_SIM__NODE__DATADIR"] = str(datadir)
    load = os.getloadavg()
    print(
        f"workload: {args.blocks} blocks to catch up + {args.tip_blocks} at the tip, "
        f"{args.txs} txs and {3 * args.txs + 2} outputs a block, {args.hits} deposits a block; "
        f"load average {load[0]:.1f}",
        flush=True,
    )
    node.start(deadline=600)
    try:
        rpc = node.rpc()
        for tip in rpc.call("getchaintips"):  # an interrupted run may have left some out
            if tip["status"] == "invalid":
                rpc.call("reconsiderblock", tip["hash"])
        height = rpc.get_block_count()
        first = height - args.blocks - args.tip_blocks + 1
        last = height - args.tip_blocks
        tip_hashes = [rpc.get_block_hash(h) for h in range(last + 1, height + 1)]
        block = rpc.get_block(rpc.get_block_hash(first), 1)
        print(f"block {first}: {len(block['tx'])} txs, {block['size']} bytes", flush=True)
        rows = []
        for count in args.sizes:
            r = run_size(node, count, first, last, tip_hashes)
            rows.append(r)
            print(
                f"{count:>9} addresses: catch-up {r['blocks']} blocks in {r['catchup_s']:.2f} s "
                f"= {r['blocks_per_s']:.1f} blocks/s; tip p50 {r['tip_ms_p50']:.0f} ms "
                f"(max {r['tip_ms_max']:.0f}); peak RSS {r['maxrss_mb']:.0f} MB; "
                f"{r['deposits']} deposits recorded; address load {r['load_s']:.1f} s; "
                f"reading + matching a block: {r['match_ms_catchup']:.0f} ms catching up, "
                f"{r['match_ms_tip_p50']:.0f} ms at the tip (p50)",
                flush=True,
            )
        if len(rows) > 1:
            base = rows[0]["tip_ms_p50"]
            for r in rows[1:]:
                print(
                    f"tip cost at {r['addresses']} / at {rows[0]['addresses']}: "
                    f"{r['tip_ms_p50'] / base:.2f}x"
                )
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        node.stop()
        shutil.rmtree(deploy, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
