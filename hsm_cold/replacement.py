"""Fee bumps: a second co-signature under a `user_tx_no` already used, for a replacement only.

The cold HSM binds each `user_tx_no` to one signing (invariant 8), with one exception that
cannot pay twice: a BIP125 replacement of the transaction it signed last for that number. It
must spend at least one input of that transaction (so at most one of them can ever confirm)
and signal replaceability on every input — otherwise it is a reuse, refused with a freeze by
check 4 — and pay at least 1 sat/vB of its size more fee, within the fee policy (check 9), at
most `MAX_REPLACEMENTS` times per number — otherwise refused without a freeze. Its payments
are held to the V-device's `outs` by the ordinary checks, so no new V-device signature is
needed. The replacement then becomes the number's binding (`adopt`), and its outputs are
learnt like any signed transaction's.

What was signed for each number (txid, outpoints, fee) is kept in the `signed_sends` table
(created with the cold state, `store.SCHEMA`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from hsm_cold import store as store_mod
from hsm_cold.cosign import CosignRequest
from hsm_cold.errors import UserTxNoReused
from hsm_cold.store import ColdStore, Signing
from wallet_core.fees import estimate_vsize
from wallet_core.script import ScriptType

MAX_REPLACEMENTS = 10
INCREMENTAL_SAT_VB = 1
MAX_RBF_SEQUENCE = 0xFFFFFFFD


def _outpoints(req: CosignRequest) -> list[str]:
    return [f"{i.txid.hex()}:{i.vout}" for i in req.tx.vin]


def _history(store: ColdStore, req: CosignRequest) -> list[tuple[str, list[str], int]]:
    with store.transaction() as db:
        rows = db.execute(
            "SELECT txid, outpoints, fee FROM signed_sends WHERE account = ? AND user_tx_no = ?"
            " ORDER BY signed_at",
            (req.account, req.user_tx_no),
        ).fetchall()
    return [(str(t), json.loads(o), int(f)) for t, o, f in rows]


def record(store: ColdStore, req: CosignRequest, fee: int) -> None:
    """Remember what was co-signed under the request's number (a retry changes nothing)."""
    with store.transaction() as db:
        db.execute(
            "INSERT OR IGNORE INTO signed_sends"
            " (account, user_tx_no, txid, outpoints, fee, signed_at) VALUES (?, ?, ?, ?, ?, ?)",
            (req.account, req.user_tx_no, req.txid, json.dumps(_outpoints(req)), fee, time.time()),
        )


def may_replace(store: ColdStore, req: CosignRequest, signed_txid: str) -> bool:
    """Whether `req` has the shape of a replacement of `signed_txid` (else: a reuse)."""
    last = next((h for h in _history(store, req) if h[0] == signed_txid), None)
    if last is None or not set(_outpoints(req)) & set(last[1]):
        return False
    return all(i.sequence <= MAX_RBF_SEQUENCE for i in req.tx.vin)


def check(store: ColdStore, req: CosignRequest, fee: int, signed_txid: str) -> None:
    """Refuse (`UserTxNoReused`, no freeze, saying why) a replacement paying too little."""
    history = _history(store, req)
    last = next(h for h in history if h[0] == signed_txid)
    reused = f"user_tx_no {req.user_tx_no!r} was co-signed for {signed_txid}"
    size = estimate_vsize(
        [ScriptType.P2WSH] * len(req.tx.vin), [o.script_pubkey for o in req.tx.vout]
    )
    needed = last[2] + INCREMENTAL_SAT_VB * size
    if fee < needed:
        raise UserTxNoReused(f"{reused}; a replacement must pay at least {needed} sat (pays {fee})")
    if len(history) > MAX_REPLACEMENTS:
        raise UserTxNoReused(f"{reused}; at most {MAX_REPLACEMENTS} replacements")


def adopt(store: ColdStore, s: Signing, replaced_txid: str) -> bool:
    """Make the replacement the number's binding and learn its outputs, in one transaction;
    False if the binding changed meanwhile."""
    return adopt_all(store, [s], replaced_txid)


def adopt_all(store: ColdStore, signings: Sequence[Signing], replaced_txid: str) -> bool:
    """`adopt` for every number of a (batched) transaction at once, its fee counted once;
    False (nothing changed) if any binding changed meanwhile."""
    try:
        with store.transaction() as db:
            for n, s in enumerate(signings):
                cur = db.execute(
                    "UPDATE used_requests SET txid = ?, digest = ?, signatures = ?, fee = ?,"
                    " signed_at = ? WHERE account = ? AND user_tx_no = ? AND txid = ?",
                    (
                        s.txid,
                        s.digest,
                        b"".join(s.signatures),
                        s.fee if n == 0 else 0,
                        time.time(),
                        s.account,
                        s.user_tx_no,
                        replaced_txid,
                    ),
                )
                if cur.rowcount != 1:
                    raise _Changed()
            store.rows_changed()  # fees and times of counted rows: rare, so the sums reload
            store_mod._add_outputs(db, signings[0].txid, signings[0].outputs)
            db.executemany(
                "DELETE FROM known_outputs WHERE txid = ? AND vout = ?", signings[0].spent
            )
    except _Changed:
        return False
    return True


class _Changed(Exception):
    """A binding moved between the check and the update: roll back."""
