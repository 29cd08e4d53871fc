"""Fee bumping: replace a broadcast, unconfirmed send by the same payments with a higher fee.

`custody send bump USER_TX_NO [--fee-rate N]` (and the worker, after `send_bump_after_blocks`
blocks) builds a BIP125 replacement that spends exactly the send's inputs, pays exactly its
`outs`, and takes the extra fee from its change. The HSM pair co-signs it with the V-device's
original `vc_code` (the cold HSM accepts it only as a replacement: hsm_cold/replacement.py).

Crash safety: the replacement is recorded (`send_replacements`, BUILT) before it is signed,
its final transaction (SIGNED) before it is broadcast, and it becomes the send's transaction
(CURRENT; the old one REPLACED) only once the node accepted it. A retry resumes the pending
replacement instead of making another, so a crash at any point signs and broadcasts at most
that one; and since it spends the same inputs, at most one of the two can ever confirm. If the
replaced one confirms after all, the send follows it (`follow_replaced`).

A send whose change another of our sends already spends cannot be bumped (the replacement
would evict that child), nor one without change to pay the bump from. A batched send is
bumped whole, through its batch's leader: the replacement pays every member again, the HSM
pair co-signs it as a batch with the same numbers, and every member takes the new txid.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from cc_common.errors import CustodyError
from custody import journal
from custody.balances import tip_height
from custody.batches import account_keys
from custody.chain.errors import RPCError, TxRejected
from custody.db import rowcount, transaction
from custody.hsm_client import HsmRefused
from custody.journal import JournalKind
from custody.models import (
    Account,
    Address,
    Chain,
    ChainTx,
    ReplacementStatus,
    Send,
    SendReplacement,
    SendStatus,
    TxStatus,
    Utxo,
    Wallet,
    utcnow,
)
from custody.sends import SOLO, SendWorker, psbt_inputs, record_change, request_of
from wallet_core.fees import estimate_vsize, fee_for
from wallet_core.psbt import Psbt, PsbtOutput
from wallet_core.rawtx import parse_signed_tx
from wallet_core.script import ScriptType

log = logging.getLogger(__name__)

INCREMENTAL_SAT_VB = 1  # Core's incremental relay fee: what a replacement adds at least
MIN_CHANGE = 330  # P2WSH dust: the change must stay above it
LEASE_PATIENCE, LEASE_RETRY = 10.0, 0.2  # seconds: how long a bump waits for a busy send


class BumpRefused(CustodyError):
    """The send cannot be fee-bumped now (the message says why)."""

    code = 601


@dataclass(frozen=True)
class BumpResult:
    user_tx_no: str
    replaced_txid: str
    txid: str
    fee: int
    fee_rate: float


def find_send(s: Session, user_tx_no: str, account_id: int | None) -> Send:
    q = select(Send).where(Send.user_tx_no == user_tx_no)
    if account_id is not None:
        q = q.where(Send.account_id == account_id)
    rows = s.execute(q).scalars().all()
    if not rows:
        raise BumpRefused(f"no send with user_tx_no {user_tx_no!r}")
    if len(rows) > 1:
        raise BumpRefused(f"user_tx_no {user_tx_no!r} exists in several accounts: give --account")
    return rows[0]


def leader_id(send: Send) -> int:
    """The send whose transaction pays `send`: itself, or its batch's leader."""
    return send.id if send.batch_id in (None, SOLO) else int(send.batch_id)


def _lease(worker: SendWorker, send_id: int, patience: float = LEASE_PATIENCE) -> None:
    """Take the send's lease (it must be BROADCAST and not held by a live worker). A worker
    that holds it only to look for its confirmation lets go within a step: wait that long."""
    deadline = time.monotonic() + patience
    while True:
        now = utcnow()
        until = now + timedelta(seconds=worker.settings.lease_seconds)
        with transaction(worker.factory) as s:
            res = s.execute(
                update(Send)
                .where(
                    Send.id == send_id,
                    Send.status == SendStatus.BROADCAST,
                    worker._claimable(now, [SendStatus.BROADCAST]),
                )
                .values(locked_by=worker.owner, locked_until=until)
            )
            if rowcount(res) == 1:
                return
            send = s.get(Send, send_id)
            state = send.status.value if send is not None else "gone"
        if state != SendStatus.BROADCAST.value or time.monotonic() >= deadline:
            raise BumpRefused(f"send is {state} or busy: only a broadcast, unconfirmed send bumps")
        time.sleep(LEASE_RETRY)


def _release(worker: SendWorker, send_id: int) -> None:
    with transaction(worker.factory) as s:
        s.execute(
            update(Send)
            .where(Send.id == send_id, Send.locked_by == worker.owner)
            .values(locked_by=None, locked_until=None)
        )


def bump(
    worker: SendWorker,
    user_tx_no: str,
    *,
    account_id: int | None = None,
    fee_rate: float | None = None,
    ceiling: float | None = None,
    patience: float = LEASE_PATIENCE,
) -> BumpResult:
    """Replace the send's transaction by one paying `fee_rate` (default: twice its rate, at
    most `ceiling` sat/vB)."""
    with worker.factory() as s:
        found = find_send(s, user_tx_no, account_id)
        send_id = leader_id(found)  # a batch is bumped whole, through its leader
    _lease(worker, send_id, patience)
    try:
        rep_id = _pending_or_new(worker, send_id, fee_rate, ceiling)
        _sign(worker, send_id, rep_id)
        return dataclasses.replace(_broadcast(worker, send_id, rep_id), user_tx_no=user_tx_no)
    finally:
        _release(worker, send_id)


def _pending_or_new(
    worker: SendWorker, send_id: int, fee_rate: float | None, ceiling: float | None = None
) -> int:
    with transaction(worker.factory) as s:
        send = worker._hold(s, send_id)
        pending = s.execute(
            select(SendReplacement.id).where(
                SendReplacement.send_id == send_id,
                SendReplacement.status.in_((ReplacementStatus.BUILT, ReplacementStatus.SIGNED)),
            )
        ).scalar()
        if pending is not None:
            return int(pending)  # a bump interrupted earlier: finish exactly that one
        return _build(s, send, fee_rate, ceiling)


def _build(s: Session, send: Send, fee_rate: float | None, ceiling: float | None) -> int:
    assert send.txid and send.psbt and send.fee is not None
    confirmed = s.execute(
        select(ChainTx.id).where(ChainTx.txid == send.txid, ChainTx.status == TxStatus.CONFIRMED)
    ).first()
    if confirmed is not None:
        raise BumpRefused(f"transaction {send.txid} is confirmed already")
    if send.change_index is None:
        raise BumpRefused("the send has no change output to pay a higher fee from")
    account = s.get(Account, send.account_id)
    assert account is not None
    keys = account_keys(account)
    hot = keys.hot
    change_script = keys.one(Wallet.HOT, Chain.CHANGE, send.change_index).script_pubkey
    tx = parse_signed_tx(bytes.fromhex(str(send.tx_hex)))
    change_vout = next(n for n, (sc, _) in enumerate(tx.outputs) if bytes(sc) == change_script)
    child = s.execute(
        select(Utxo.id).where(
            Utxo.txid == send.txid,
            Utxo.vout == change_vout,
            (Utxo.reserved_by_send.is_not(None)) | (Utxo.spent_by.is_not(None)),
        )
    ).first()
    if child is not None:
        raise BumpRefused(
            f"its change is spent by a later send: bumping {send.txid} would evict that one"
        )
    vsize = estimate_vsize([ScriptType.P2WSH] * len(tx.outpoints), [sc for sc, _ in tx.outputs])
    earlier = s.execute(
        select(SendReplacement.fee).where(SendReplacement.send_id == send.id)
    ).scalars()
    floor = max([int(send.fee), *[int(f) for f in earlier]])  # what the cold HSM last signed
    old_rate = int(send.fee) / vsize
    rate = fee_rate if fee_rate is not None else max(2 * old_rate, old_rate + 1)
    if ceiling is not None and fee_rate is None:
        rate = min(rate, ceiling)
        if rate < old_rate + INCREMENTAL_SAT_VB:
            raise BumpRefused(f"already at {old_rate:.1f} sat/vB, the ceiling is {ceiling:g}")
    fee = max(fee_for(vsize, rate), floor + INCREMENTAL_SAT_VB * vsize)
    change = tx.outputs[change_vout][1] - (fee - int(send.fee))
    if change < MIN_CHANGE:
        raise BumpRefused(
            f"the change ({tx.outputs[change_vout][1]} sat) cannot pay a fee of {fee}"
        )
    rows = s.execute(
        select(Utxo, Address)
        .join(Address, Address.id == Utxo.address_id)
        .where(Utxo.reserved_by_send == send.id)
    ).all()
    by_outpoint = {(u.txid, u.vout): (u, a) for u, a in rows}
    inputs = psbt_inputs(hot, [by_outpoint[outpoint] for outpoint in tx.outpoints])
    outputs = []
    for n, out in enumerate(Psbt.from_base64(send.psbt).outputs):
        if n == change_vout:
            outputs.append(PsbtOutput(out.script_pubkey, change, out.origins, out.witness_script))
        else:
            outputs.append(out)
    psbt = Psbt.create(inputs, outputs)
    rep = SendReplacement(
        send_id=send.id,
        txid=psbt.txid,
        psbt=psbt.to_base64(),
        fee=fee,
        change_value=change,
        status=ReplacementStatus.BUILT,
        reason="",
        at_height=tip_height(s),
    )
    s.add(rep)
    s.flush()
    log.info("send %d: fee bump built", send.id)
    return rep.id


def _sign(worker: SendWorker, send_id: int, rep_id: int) -> None:
    with worker.factory() as s:
        send = s.get(Send, send_id)
        rep = s.get(SendReplacement, rep_id)
        assert send is not None and rep is not None
        if rep.status is not ReplacementStatus.BUILT:
            return
        request = request_of(send)
        args = (send.account_id, rep.psbt, request, send.vc_code, send.c_id)
        batch = [
            {"request": request_of(m), "vc_code": m.vc_code, "c_id": m.c_id}
            for m in [send, *worker._members(s, send)]
        ]
    try:
        if len(batch) > 1:  # the same members, the same payments: the cold HSM's bump rule
            signed = worker._sign_batch_with_prev_txs(send.account_id, rep.psbt, batch)
        else:
            signed = worker._sign_with_prev_txs(*args)
    except HsmRefused as exc:
        with transaction(worker.factory) as s:
            rep = s.get(SendReplacement, rep_id)
            assert rep is not None
            rep.status, rep.reason = ReplacementStatus.REJECTED, f"HSM: {exc.message}"[:1000]
        raise BumpRefused(f"refused by the HSM (code {exc.code}): {exc.message}") from None
    tx_hex = worker._finalize(args[1], signed)
    with transaction(worker.factory) as s:
        worker._hold(s, send_id)
        rep = s.get(SendReplacement, rep_id)
        assert rep is not None
        if parse_signed_tx(bytes.fromhex(tx_hex)).txid != rep.txid:
            raise BumpRefused("the HSM signed a different transaction than the replacement")
        rep.tx_hex, rep.status = tx_hex, ReplacementStatus.SIGNED


def _broadcast(worker: SendWorker, send_id: int, rep_id: int) -> BumpResult:
    with worker.factory() as s:
        rep = s.get(SendReplacement, rep_id)
        assert rep is not None and rep.tx_hex
        tx_hex, txid = rep.tx_hex, rep.txid
    try:
        worker.rpc.send_raw_transaction(tx_hex)
    except (TxRejected, RPCError) as exc:
        if not worker._node_knows(txid):
            reason = exc.reason if isinstance(exc, TxRejected) else exc.rpc_message
            with transaction(worker.factory) as s:
                rep = s.get(SendReplacement, rep_id)
                assert rep is not None
                rep.status, rep.reason = ReplacementStatus.REJECTED, f"node: {reason}"[:1000]
            raise BumpRefused(f"the node refused the replacement: {reason}") from None
    with transaction(worker.factory) as s:
        send = worker._hold(s, send_id)
        rep = s.get(SendReplacement, rep_id)
        assert rep is not None and send.txid and send.tx_hex and send.psbt
        old_txid = send.txid
        s.add(
            SendReplacement(
                send_id=send.id,
                txid=old_txid,
                psbt=send.psbt,
                tx_hex=send.tx_hex,
                fee=int(send.fee or 0),
                change_value=0,
                status=ReplacementStatus.REPLACED,
                reason=f"replaced by {txid}",
            )
        )
        rep.status = ReplacementStatus.CURRENT
        send.txid, send.tx_hex, send.psbt, send.fee = txid, tx_hex, rep.psbt, rep.fee
        record_change(s, send, tx_hex, txid)
        at, height = utcnow(), tip_height(s)
        for one in [send, *worker._members(s, send)]:
            one.txid, one.tx_hex = txid, tx_hex
            one.tx_at, one.broadcast_height = at, height
            if one is not send:
                one.psbt = rep.psbt
            journal.append(
                s,
                JournalKind.SEND_REPLACED,
                one.account_id,
                {"user_tx_no": one.user_tx_no, "txid": txid, "replaced_txid": old_txid},
            )
        vsize = estimate_vsize(
            [ScriptType.P2WSH] * len(parse_signed_tx(bytes.fromhex(tx_hex)).outpoints),
            [sc for sc, _ in parse_signed_tx(bytes.fromhex(tx_hex)).outputs],
        )
        result = BumpResult(send.user_tx_no, old_txid, txid, int(rep.fee), rep.fee / vsize)
    log.info("send %d: replaced %s by %s", send_id, old_txid, txid)
    return result


def follow_replaced(s: Session, send: Send) -> bool:
    """If a transaction this send's bump replaced was mined after all, the send follows it.

    Returns True if the send was switched back (the caller then confirms it as usual).
    """
    if leader_id(send) != send.id:
        return _member_follows(s, send)
    replaced = s.execute(
        select(SendReplacement).where(
            SendReplacement.send_id == send.id,
            SendReplacement.status == ReplacementStatus.REPLACED,
        )
    ).scalars()
    for rep in list(replaced):
        mined = s.execute(
            select(ChainTx.id).where(
                ChainTx.account_id == send.account_id,
                ChainTx.wallet == Wallet.HOT,
                ChainTx.txid == rep.txid,
                ChainTx.status == TxStatus.CONFIRMED,
            )
        ).first()
        if mined is None:
            continue
        s.execute(
            update(SendReplacement)
            .where(
                SendReplacement.send_id == send.id,
                SendReplacement.status == ReplacementStatus.CURRENT,
            )
            .values(status=ReplacementStatus.REPLACED, reason=f"{rep.txid} was mined instead")
        )
        rep.status, rep.reason = ReplacementStatus.CURRENT, "mined after all"
        send.txid, send.tx_hex, send.psbt, send.fee = rep.txid, rep.tx_hex, rep.psbt, rep.fee
        log.info("send %d: the replaced transaction %s was mined", send.id, rep.txid)
        return True
    return False


def _member_follows(s: Session, member: Send) -> bool:
    """A batch member takes whichever of its leader's transactions was mined (the leader's
    own `follow_replaced` keeps the replacement records)."""
    txids = select(SendReplacement.txid).where(SendReplacement.send_id == leader_id(member))
    mined = s.execute(
        select(ChainTx.txid).where(
            ChainTx.account_id == member.account_id,
            ChainTx.wallet == Wallet.HOT,
            ChainTx.txid.in_(txids),
            ChainTx.txid != member.txid,
            ChainTx.status == TxStatus.CONFIRMED,
        )
    ).scalar()
    if mined is None:
        return False
    rep = (
        s.execute(
            select(SendReplacement).where(
                SendReplacement.send_id == leader_id(member), SendReplacement.txid == mined
            )
        )
        .scalars()
        .first()
    )
    assert rep is not None
    member.txid, member.tx_hex, member.psbt = rep.txid, rep.tx_hex, rep.psbt
    log.info("send %d: its batch's transaction %s was mined", member.id, rep.txid)
    return True


def due_for_bump(s: Session, after_blocks: int) -> list[tuple[str, int]]:
    """(user_tx_no, account) of broadcast sends still unconfirmed `after_blocks` blocks after
    their broadcast and after their last bump attempt (by the watcher's tip)."""
    tip = tip_height(s)
    if tip is None:
        return []
    last_try = (
        select(func.max(SendReplacement.at_height))
        .where(SendReplacement.send_id == Send.id)
        .scalar_subquery()
    )
    rows = s.execute(
        select(Send.user_tx_no, Send.account_id, Send.broadcast_height, last_try).where(
            Send.status == SendStatus.BROADCAST,
            Send.broadcast_height.is_not(None),
            or_(Send.batch_id.is_(None), Send.batch_id.in_((SOLO, Send.id))),  # leaders bump
        )
    ).all()
    return [
        (no, acct)
        for no, acct, sent_at, tried_at in rows
        if tip - max(int(sent_at), int(tried_at or 0)) >= after_blocks
    ]


def auto_bump(worker: SendWorker, after_blocks: int) -> int:
    """Bump every send stuck `after_blocks` blocks (0: off), at twice its rate up to the
    ceiling; returns how many were replaced. Refusals are logged and tried again later."""
    if after_blocks <= 0:
        return 0
    with worker.factory() as s:
        due = due_for_bump(s, after_blocks)
    done = 0
    for user_tx_no, account_id in due:
        try:
            bump(
                worker,
                user_tx_no,
                account_id=account_id,
                ceiling=worker.settings.fee_ceiling,
                patience=0.0,  # the worker loop never waits: a busy send is bumped next time
            )
            done += 1
        except BumpRefused as exc:
            log.info("send %s: automatic fee bump not made: %s", user_tx_no, exc.message)
    return done
