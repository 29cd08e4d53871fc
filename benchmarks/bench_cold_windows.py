"""The cold HSM's limit windows at every co-sign: the day's fees (`ColdStore.fees_since`) and the
policy's day and hour (`PolicyStore.window`), from the sums held beside the tables and, for
comparison, by the SQL over the rows (what they were answered by before).

Workload: one account with `--rows` sends co-signed in the last 24 hours (each a signing and a
policy send, as the cold service records them; 1 payee), in a state database in a temporary
directory; then `--asks` rounds of the three questions a co-sign asks. Prints CPU microseconds
per co-sign's questions (this process's CPU time, so the load of a shared machine matters
little), both ways, and checks that both give the same answers.

Run: .venv/bin/python benchmarks/bench_cold_windows.py [--rows 4000] [--asks 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hsm_cold.policy_store import PolicyStore
from hsm_cold.store import AccountRecord, ColdStore, Signing

DAY = 86_400.0


def fill(store: ColdStore, policies: PolicyStore, rows: int, now: float) -> None:
    for n in range(rows):
        at = now - DAY + (n + 1) * DAY / (rows + 1)
        with store.transaction():
            store.record_signing(
                Signing(7, f"u{n}", f"{n:064x}", b"d" * 32, (b"s" * 64,), 150, ((1, b"x"),), None)
            )
            policies.record_send(7, f"u{n}", 10_000, [f"bcrt1payee{n % 50}"], at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=4000, help="sends co-signed in the last 24 hours"
    )
    parser.add_argument("--asks", type=int, default=2000, help="co-signs' questions timed")
    args = parser.parse_args()
    if args.rows < 0 or args.asks < 1:
        parser.error("--rows must be >= 0 and --asks >= 1")
    with tempfile.TemporaryDirectory(prefix="bench-cold-windows-") as tmp:
        store = ColdStore(Path(tmp) / "cold.db")
        store.add_account(AccountRecord(7, "regtest", b"s", b"c", b"h", "tpub", b"v", "w()"))
        policies = PolicyStore(store)
        now = time.time()
        fill(store, policies, args.rows, now)

        def held() -> tuple[int, int, int]:
            day, hour, _ = policies.window(7, now, ["bcrt1payee1"])
            return store.fees_since(7, now - DAY), day, hour

        def scanned() -> tuple[int, int, int]:
            with store.transaction() as db:
                day = PolicyStore._sent_since_sql(db, 7, now - DAY)[1]
                hour = PolicyStore._sent_since_sql(db, 7, now - 3_600)[0]
                db.execute(
                    "SELECT 1 FROM policy_destinations WHERE account = ? AND address = ?",
                    (7, "bcrt1payee1"),
                ).fetchone()
            return store._fees_since_sql(7, now - DAY), day, hour

        assert held() == scanned(), (held(), scanned())
        print(
            f"workload: 1 account, {args.rows} sends in the last 24 hours, {args.asks} co-signs'"
            " questions (the day's fees, the policy's day and hour, one payee paid before?)"
        )
        for name, ask in (("sums beside the tables", held), ("SQL over the rows", scanned)):
            start = time.process_time()
            for _ in range(args.asks):
                ask()
            per = 1e6 * (time.process_time() - start) / args.asks
            print(f"  {name:<24} {per:9.1f} us CPU per co-sign")
        store.close()


if __name__ == "__main__":
    main()
