"""Fee bumps: a second co-signature under a `user_tx_no` already used, for a replacement only.

The cold HSM signs each `user_tx_no` for one transaction (invariant 8), with one exception
that cannot pay twice: a BIP125 replacement of the transaction it signed last for that number.
It must spend at least one input of that transaction (so at most one of them can ever
confirm), signal replaceability on every input, pay exactly the same signed outputs (the
ordinary checks 3 and 5 already hold it to the V-device's `outs` and the wallet's own change)
and a fee higher by at least 1 sat/vB of its size (Core's incremental relay fee) while still
within the fee policy (check 7). At most `MAX_REPLACEMENTS` per number. No new V-device
signature is needed: the one it gave covers the payments, which do not change.

What the cold side signed for each number (txid, outpoints, fee) is kept in its own table.
"""

from __future__ import annotations

import json
import time

from hsm_cold.cosign import CosignRequest
from hsm_cold.errors import UserTxNoReused
from hsm_cold.store import ColdStore
from wallet_core.fees import estimate_vsize
from wallet_core.script import ScriptType

MAX_REPLACEMENTS = 10
INCREMENTAL_SAT_VB = 1
MAX_RBF_SEQUENCE = 0xFFFFFFFD

SCHEMA = """
CREATE TABLE IF NOT EXISTS signed_sends (
    account INTEGER NOT NULL,
    user_tx_no TEXT NOT NULL,
    txid TEXT NOT NULL,
    outpoints TEXT NOT NULL,
    fee INTEGER NOT NULL,
    signed_at REAL NOT NULL,
    PRIMARY KEY (account, user_tx_no, txid)
)
"""


def _outpoints(req: CosignRequest) -> list[str]:
    return [f"{i.txid.hex()}:{i.vout}" for i in req.tx.vin]


def record(store: ColdStore, req: CosignRequest, fee: int) -> None:
    """Remember what was co-signed under the request's number (a retry changes nothing)."""
    with store.transaction() as db:
        db.execute(SCHEMA)
        db.execute(
            "INSERT OR IGNORE INTO signed_sends"
            " (account, user_tx_no, txid, outpoints, fee, signed_at) VALUES (?, ?, ?, ?, ?, ?)",
            (req.account, req.user_tx_no, req.txid, json.dumps(_outpoints(req)), fee, time.time()),
        )


def adopt(store: ColdStore, req: CosignRequest, replaced_txid: str) -> bool:
    """Make the replacement the number's co-signed transaction; False if it changed meanwhile."""
    with store.transaction() as db:
        cur = db.execute(
            "UPDATE used_requests SET txid = ? WHERE account = ? AND user_tx_no = ? AND txid = ?",
            (req.txid, req.account, req.user_tx_no, replaced_txid),
        )
    return cur.rowcount == 1


def check(store: ColdStore, req: CosignRequest, fee: int, signed_txid: str) -> None:
    """Refuse (`UserTxNoReused`, saying why) unless `req` may replace `signed_txid`."""
    with store.transaction() as db:
        db.execute(SCHEMA)
        rows = db.execute(
            "SELECT txid, outpoints, fee FROM signed_sends WHERE account = ? AND user_tx_no = ?"
            " ORDER BY signed_at",
            (req.account, req.user_tx_no),
        ).fetchall()
    reused = f"user_tx_no {req.user_tx_no!r} was already co-signed for another transaction"
    last = next((r for r in rows if r[0] == signed_txid), None)
    if last is None:
        raise UserTxNoReused(f"{reused} (nothing recorded to replace)")
    if not set(_outpoints(req)) & set(json.loads(last[1])):
        raise UserTxNoReused(f"{reused}; a replacement must spend one of its inputs")
    if any(i.sequence > MAX_RBF_SEQUENCE for i in req.tx.vin):
        raise UserTxNoReused(f"{reused}; a replacement must signal BIP125 on every input")
    size = estimate_vsize(
        [ScriptType.P2WSH] * len(req.tx.vin), [o.script_pubkey for o in req.tx.vout]
    )
    needed = int(last[2]) + INCREMENTAL_SAT_VB * size
    if fee < needed:
        raise UserTxNoReused(f"{reused}; a replacement must pay at least {needed} sat (pays {fee})")
    if len(rows) > MAX_REPLACEMENTS:
        raise UserTxNoReused(f"{reused}; at most {MAX_REPLACEMENTS} replacements")
