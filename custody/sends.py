"""The hot-send pipeline: PENDING -> BUILT -> SIGNED -> BROADCAST -> CONFIRMED (or FAILED).

A send the wallet cannot fund yet goes to WAITING_FUNDS (the reason in `state_reason`, shown
as pending by the API) and is tried again after `send_wait_seconds`; it never fails for want
of coin. Coin selection takes confirmed coins and the wallet's own unconfirmed change (outputs
of our own broadcast sends to our change path), as long as the new transaction stays within
Core's chain limit: with its unconfirmed ancestors at most 25 transactions
(`send_max_unconfirmed_ancestors`, at most 24). A broadcast refused for a too-long mempool
chain stays SIGNED and is retried: the signed transaction is the only one for its user_tx_no.

Each transition is its own database transaction, committed before the next step starts, and
each step starts from what is stored, so a crash anywhere resumes without a second payment
(DESIGN invariant 5):

- **BUILT** records, in one transaction, the chosen inputs (`utxos.reserved_by_send`), the
  change index (taken from `accounts.hot_change_next`, its `Address` row inserted so the
  watcher recognises the change), the fee and the unsigned PSBT. A send that is BUILT is never
  rebuilt: every later step uses exactly the stored PSBT, so a retry can only produce the same
  transaction.
- **SIGNED** asks the hot HSM (which asks the cold HSM) to sign the stored PSBT, finalizes it,
  checks that the final transaction spends exactly the recorded inputs and pays exactly `outs`
  plus the recorded change, and stores `tx_hex`/`txid`. A crash before the store repeats the
  signing request for the *same* transaction.
- **BROADCAST** sends the stored `tx_hex`. "Already in the chain / mempool" counts as success,
  so a crash after the node accepted it and before we recorded that only re-announces the same
  transaction. A definitive rejection (the node does not know the txid) fails the send and
  releases its inputs.
- **CONFIRMED** once the watcher recorded the transaction in a block.

Batching (`[custody] batch_sends`, docs/money.md): a send's build may take the other pending
sends of its account along (`sends.batch_id` = the leader's id); the leader holds the inputs,
fee, change and PSBT, and moves every member with it through BUILT, SIGNED and BROADCAST in
the same transactions; a member is never claimed on its own until then. A refused batch goes
back to pending, each member to be sent alone (`batch_id` = `SOLO`).

Claiming: a worker takes a send with a lease (`locked_by`, `locked_until`), claimed with
`SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL and a compare-and-set UPDATE everywhere; every
step's write re-checks the lease, so a worker that lost it (or crashed and came back) writes
nothing. UTXOs are row-locked (`FOR UPDATE SKIP LOCKED`) during selection and reserved by a
conditional UPDATE, so two workers never spend the same coin. The HSM and node being
unreachable are temporary: the send stays where it is and is retried with backoff; after
`hsm_alert_after` attempts the operator is alerted (`cold_unreachable`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from cc_common.errors import CustodyError
from custody import journal
from custody.alerts import AlertKind, raise_alert
from custody.balances import tip_height
from custody.batches import account_keys
from custody.chain.errors import ChainUnavailable, RPCError, TxRejected
from custody.chain.rpc import BitcoinRPC
from custody.db import default_owner, is_postgres, rowcount, transaction
from custody.errors import HsmUnavailableError
from custody.hsm_client import HotHsm, HsmRefused
from custody.journal import JournalKind
from custody.models import (
    Account,
    AccountStatus,
    Address,
    Chain,
    ChainTx,
    Send,
    SendStatus,
    TxStatus,
    Utxo,
    Wallet,
    utcnow,
)
from custody.prevtxs import PREV_TX_REQUIRED, PrevTxUnavailable, with_prev_txs
from wallet_core import coinselect
from wallet_core.addresses import address_to_script
from wallet_core.chaincloud import Out, parse_outs
from wallet_core.errors import (
    CoinSelectionError,
    FeeEstimateError,
    InsufficientFundsError,
    TxParseError,
    WalletError,
)
from wallet_core.fees import (
    DEFAULT_CEILING_SAT_VB,
    DEFAULT_FLOOR_SAT_VB,
    feerate_from_estimate,
    output_weight,
)
from wallet_core.networks import Network
from wallet_core.psbt import Psbt, PsbtInput, PsbtOutput
from wallet_core.rawtx import SignedTx, parse_signed_tx
from wallet_core.wallets import HotWallet

log = logging.getLogger(__name__)

ACTIVE = (
    SendStatus.PENDING,
    SendStatus.WAITING_FUNDS,
    SendStatus.BUILT,
    SendStatus.SIGNED,
    SendStatus.BROADCAST,
)
BUILDABLE = (SendStatus.PENDING, SendStatus.WAITING_FUNDS)
LED = (SendStatus.BUILT, SendStatus.SIGNED)  # a batch member's states its leader drives
MAX_BATCH = 100  # sends in one transaction (the HSMs' limit)
SOLO = 0  # batch_id of a send that goes alone (its batch was refused): never batched again
CHAIN_LIMIT = 25  # Core's DEFAULT_ANCESTOR_LIMIT, the transaction itself included


class SendFailed(CustodyError):
    """A definitive failure of one send: it becomes FAILED with this message as the reason."""

    code = 610


class _LostLease(Exception):
    """Another worker owns the send now: write nothing."""


class _Race(Exception):
    """A chosen UTXO was taken between selection and reservation: select again."""


class _ChainTooLong(Exception):
    """The node refused the broadcast for Core's chain limit: wait for a block."""


@dataclass(frozen=True)
class SendSettings:
    """`[custody]` keys: fee_rate_sat_vb, fee_floor_sat_vb, fee_ceiling_sat_vb,
    fee_conf_target, send_min_conf, send_lease_seconds, hsm_alert_after, send_max_inputs,
    send_wait_seconds, send_spend_unconfirmed_change, send_max_unconfirmed_ancestors,
    send_bump_after_blocks (0: no automatic fee bump), batch_sends, batch_window_seconds,
    batch_max_outputs."""

    fee_rate: float = 2.0
    fee_floor: float = DEFAULT_FLOOR_SAT_VB
    fee_ceiling: float = DEFAULT_CEILING_SAT_VB
    conf_target: int = 6
    min_conf: int = 1
    lease_seconds: float = 180.0  # longer than the HSM RPC timeout
    backoff_initial: float = 2.0
    backoff_max: float = 300.0
    alert_after: int = 5
    max_inputs: int = 50
    claim_batch: int = 10
    wait_seconds: float = 5.0
    spend_unconfirmed_change: bool = True
    max_unconfirmed_ancestors: int = CHAIN_LIMIT - 1
    bump_after_blocks: int = 0
    batching: bool = False
    batch_window: float = 0.0
    batch_max_outputs: int = 50

    @classmethod
    def from_config(cls, config: Config) -> SendSettings:
        s = config.section("custody")
        d = cls()
        return cls(
            fee_rate=s.float("fee_rate_sat_vb", d.fee_rate),
            fee_floor=s.float("fee_floor_sat_vb", d.fee_floor),
            fee_ceiling=s.float("fee_ceiling_sat_vb", d.fee_ceiling),
            conf_target=s.int("fee_conf_target", d.conf_target),
            min_conf=s.int("send_min_conf", d.min_conf),
            lease_seconds=s.float("send_lease_seconds", d.lease_seconds),
            backoff_initial=s.float("send_backoff_initial", d.backoff_initial),
            backoff_max=s.float("send_backoff_max", d.backoff_max),
            alert_after=s.int("hsm_alert_after", d.alert_after),
            max_inputs=s.int("send_max_inputs", d.max_inputs),
            claim_batch=s.int("send_claim_batch", d.claim_batch),
            wait_seconds=s.float("send_wait_seconds", d.wait_seconds),
            spend_unconfirmed_change=s.bool(
                "send_spend_unconfirmed_change", d.spend_unconfirmed_change
            ),
            max_unconfirmed_ancestors=min(
                s.int("send_max_unconfirmed_ancestors", d.max_unconfirmed_ancestors),
                CHAIN_LIMIT - 1,
            ),
            bump_after_blocks=max(0, s.int("send_bump_after_blocks", d.bump_after_blocks)),
            batching=s.bool("batch_sends", d.batching),
            batch_window=max(0.0, s.float("batch_window_seconds", d.batch_window)),
            batch_max_outputs=max(1, s.int("batch_max_outputs", d.batch_max_outputs)),
        )


# ---------------------------------------------------------------------- the hot wallet


def next_change_address(session: Session, account: Account) -> Address:
    """The account's next hot change address; its index is taken for good (never reused, so a
    crash after this leaves a gap the watcher's look-ahead covers, never a reuse)."""
    index = (
        session.execute(
            update(Account)
            .where(Account.id == account.id)
            .values(hot_change_next=Account.hot_change_next + 1)
            .returning(Account.hot_change_next)
        ).scalar_one()
        - 1
    )
    return ensure_address(session, account, Chain.CHANGE, index)


def psbt_inputs(hot: HotWallet, coins: Sequence[tuple[Utxo, Address]]) -> list[PsbtInput]:
    """PSBT inputs for hot coins, each with the witness script and key origins of its address
    so the HSM pair can derive and check what it signs."""
    return [
        PsbtInput(
            txid=u.txid,
            vout=u.vout,
            value=u.value,
            script_pubkey=bytes(a.script_pubkey),
            witness_script=hot.witness_script(a.index, int(a.chain)),
            origins=hot.origins(a.index, int(a.chain)),
        )
        for u, a in coins
    ]


def ensure_address(session: Session, account: Account, chain: Chain, index: int) -> Address:
    """The hot `Address` row at (chain, index), inserted if missing (so the watcher sees it)."""
    row = session.execute(
        select(Address).where(
            Address.account_id == account.id,
            Address.wallet == Wallet.HOT,
            Address.chain == chain,
            Address.index == index,
        )
    ).scalar_one_or_none()
    if row is not None:
        return row
    derived = account_keys(account).one(Wallet.HOT, chain, index)
    row = Address(
        account_id=account.id,
        wallet=Wallet.HOT,
        chain=chain,
        index=index,
        address=derived.address,
        script_pubkey=derived.script_pubkey,
        handed_out_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


CANDIDATES_NEAR = 100  # coins just above and just below a payment that coin selection sees


def _spendable(
    s: Session, account_id: int, tip: int, settings: SendSettings
) -> Select[Utxo, Address]:
    """The account's hot coins coin selection may use (unordered).

    Confirmed coins at `send_min_conf` depth, and (if allowed) outputs to our change path of
    transactions we broadcast ourselves, confirmed or not: nobody else can replace those.
    Dust is never chosen.
    """
    confirmed = confirmed_at(tip, settings.min_conf)
    usable = confirmed
    if settings.spend_unconfirmed_change:
        ours = select(Send.txid).where(
            Send.account_id == account_id,
            Send.txid.is_not(None),
            Send.status.in_((SendStatus.BROADCAST, SendStatus.CONFIRMED)),
        )
        usable = or_(confirmed, and_(Address.chain == Chain.CHANGE, Utxo.txid.in_(ours)))
    return free_hot_coins(account_id, usable)


def confirmed_at(tip: int, min_conf: int) -> ColumnElement[bool]:
    """Coins confirmed at least `min_conf` deep (one at the least) below `tip`."""
    return and_(Utxo.block_height.is_not(None), Utxo.block_height <= tip - max(min_conf, 1) + 1)


def free_hot_coins(account_id: int, usable: ColumnElement[bool]) -> Select[Utxo, Address]:
    """The account's hot coins matching `usable` that nothing holds: unspent, unreserved, and
    never dust."""
    return (
        select(Utxo, Address)
        .join(Address, Address.id == Utxo.address_id)
        .where(
            Utxo.account_id == account_id,
            Utxo.wallet == Wallet.HOT,
            usable,
            Utxo.is_dust.is_(False),
            Utxo.spent_by.is_(None),
            Utxo.reserved_by_send.is_(None),
        )
    )


def locked_coins(s: Session, q: Select[Utxo, Address]) -> Select[Utxo, Address]:
    """`q` locking its coins on PostgreSQL, passing over those another builder holds."""
    return q.with_for_update(skip_locked=True, of=Utxo) if is_postgres(s) else q


def _locked(s: Session, q: Select[Utxo, Address]) -> list[tuple[Utxo, Address]]:
    return [(u, a) for u, a in s.execute(locked_coins(s, q)).all()]


def spendable_utxos(
    s: Session, account_id: int, tip: int, settings: SendSettings
) -> list[tuple[Utxo, Address]]:
    """Every coin coin selection may use (`_spendable`), row-locked on PostgreSQL."""
    return _locked(s, _spendable(s, account_id, tip, settings).order_by(Utxo.id))


def candidate_utxos(
    s: Session, account_id: int, tip: int, settings: SendSettings, amount: int
) -> tuple[list[tuple[Utxo, Address]], bool]:
    """The coins coin selection needs for `amount`, row-locked on PostgreSQL, however many
    the wallet holds: the `send_max_inputs` (at least CANDIDATES_NEAR) largest, which is all
    largest-first can use, and CANDIDATES_NEAR either side of the amount, where branch and
    bound finds a set without change. Three index ranges on `ix_utxos_spendable`, never all
    of the account's coins. Also says whether the largest were cut off (more coins exist)."""
    base = _spendable(s, account_id, tip, settings)
    k = max(settings.max_inputs, CANDIDATES_NEAR)
    largest = _locked(s, base.order_by(Utxo.value.desc(), Utxo.id).limit(k))
    rows = {u.id: (u, a) for u, a in largest}
    for q in (
        base.where(Utxo.value >= amount).order_by(Utxo.value, Utxo.id),
        base.where(Utxo.value < amount).order_by(Utxo.value.desc(), Utxo.id),
    ):
        rows.update((u.id, (u, a)) for u, a in _locked(s, q.limit(CANDIDATES_NEAR)))
    return [rows[i] for i in sorted(rows)], len(largest) == k


def unconfirmed_ancestry(s: Session, utxos: Sequence[Utxo]) -> dict[str, set[str]]:
    """For each unconfirmed txid among `utxos`: it and its unconfirmed ancestors (ours).

    Walked through our own records (the coins each of our sends spent), so it needs no node
    call inside the selection transaction; only our own transactions can be unconfirmed here.
    """
    memo: dict[str, set[str]] = {}

    def walk(txid: str, depth: int) -> set[str]:
        if txid in memo:
            return memo[txid]
        found = {txid}
        if depth < CHAIN_LIMIT + 1:
            send_id = (
                s.execute(
                    select(func.coalesce(func.nullif(Send.batch_id, SOLO), Send.id)).where(
                        Send.txid == txid
                    )
                )
                .scalars()
                .first()
            )
            spent = Utxo.spent_by == txid
            if send_id is not None:
                spent = or_(spent, Utxo.reserved_by_send == send_id)
            parents = s.execute(
                select(Utxo.txid).where(Utxo.block_height.is_(None), spent).distinct()
            ).scalars()
            for parent in list(parents):
                if parent != txid:
                    found |= walk(parent, depth + 1)
        memo[txid] = found
        return found

    return {u.txid: walk(u.txid, 0) for u in utxos if u.block_height is None}


def record_change(s: Session, send: Send, tx_hex: str, txid: str) -> None:
    """Our change output as an unconfirmed UTXO the moment the node took the transaction.

    The next send may then spend it without waiting for the watcher; the watcher finds the row
    when it sees the transaction (same txid/vout) and follows it from there.
    """
    if send.change_index is None:
        return
    account = s.get(Account, send.account_id)
    assert account is not None
    address = ensure_address(s, account, Chain.CHANGE, send.change_index)
    for vout, (script, value) in enumerate(parse_signed_tx(bytes.fromhex(tx_hex)).outputs):
        if bytes(script) != bytes(address.script_pubkey):
            continue
        exists = s.execute(select(Utxo.id).where(Utxo.txid == txid, Utxo.vout == vout)).first()
        if exists is None:
            s.add(
                Utxo(
                    account_id=send.account_id,
                    wallet=Wallet.HOT,
                    txid=txid,
                    vout=vout,
                    value=value,
                    address_id=address.id,
                    block_height=None,
                )
            )
    s.flush()


# ---------------------------------------------------------------------- the worker


class SendWorker:
    """Moves claimed sends through the pipeline; `step()` is called by the worker loop."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        rpc: BitcoinRPC,
        hsm: HotHsm,
        settings: SendSettings | None = None,
        config: Config | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        self.factory = session_factory
        self.rpc = rpc
        self.hsm = hsm
        self.settings = settings or SendSettings()
        self.config = config
        self.owner = owner or default_owner("sends")

    # ------------------------------------------------------------------ claiming

    def _claimable(self, now: Any, statuses: Sequence[SendStatus] = ACTIVE) -> Any:
        return and_(
            Send.status.in_(statuses),
            or_(Send.locked_until.is_(None), Send.locked_until < now, Send.locked_by == self.owner),
            # a batch member is built, signed and broadcast by its leader
            or_(
                Send.batch_id.is_(None),
                Send.batch_id.in_((SOLO, Send.id)),
                Send.status.not_in(LED),
            ),
        )

    def claim(self, limit: int | None = None, statuses: Sequence[SendStatus] = ACTIVE) -> list[int]:
        """Take up to `limit` due sends in `statuses`; returns their ids (lease held by us)."""
        limit = limit or self.settings.claim_batch
        now = utcnow()
        until = now + timedelta(seconds=self.settings.lease_seconds)
        claimed: list[int] = []
        with transaction(self.factory) as s:
            due = self._claimable(now, statuses)
            # sends with work to do first: a broadcast one only waits for its block, and a
            # mempool full of them must not keep a new send (or a batch) from being built
            following = case((Send.status == SendStatus.BROADCAST, 1), else_=0)
            q = select(Send.id).where(due).order_by(following, Send.id).limit(limit)
            if is_postgres(s):
                q = q.with_for_update(skip_locked=True)
            for send_id in s.execute(q).scalars().all():
                res = s.execute(
                    update(Send)
                    .where(Send.id == send_id, due)
                    .values(locked_by=self.owner, locked_until=until)
                )
                if rowcount(res) == 1:
                    claimed.append(send_id)
        return claimed

    def _hold(self, s: Session, send_id: int) -> Send:
        """First statement of every step's transaction: renew our lease or give up.

        Being a write, it also takes SQLite's write lock, so what we read next is current.
        """
        until = utcnow() + timedelta(seconds=self.settings.lease_seconds)
        res = s.execute(
            update(Send)
            .where(Send.id == send_id, Send.locked_by == self.owner)
            .values(locked_until=until)
        )
        if rowcount(res) != 1:
            raise _LostLease()
        send = s.get(Send, send_id, populate_existing=True)
        assert send is not None
        return send

    def _unlock(self, s: Session, send: Send, delay: float = 0.0) -> None:
        send.locked_by = None
        send.locked_until = utcnow() + timedelta(seconds=delay) if delay > 0 else None

    # ------------------------------------------------------------------ driving

    def step(self, limit: int | None = None) -> dict[int, SendStatus]:
        """Claim due sends and take each as far as it can go now; returns their states."""
        out: dict[int, SendStatus] = {}
        for send_id in self.claim(limit):
            out[send_id] = self.process(send_id)
        return out

    def process(self, send_id: int) -> SendStatus:
        """Advance one claimed send until it waits (for the HSM, the node, the chain) or ends."""
        status = self._status(send_id)
        for _ in range(5):
            new = self.advance(send_id)
            if new is SendStatus.BROADCAST and status is not SendStatus.BROADCAST:
                return self.advance(send_id)  # already confirmed? else wait for the watcher
            if new == status or new in (
                SendStatus.FAILED,
                SendStatus.CONFIRMED,
                SendStatus.WAITING_FUNDS,
            ):
                return new
            status = new
        return status

    def _led(self, send_id: int) -> bool:
        with self.factory() as s:
            batch_id = s.execute(select(Send.batch_id).where(Send.id == send_id)).scalar_one()
        return batch_id not in (None, SOLO, send_id)

    def _status(self, send_id: int) -> SendStatus:
        with self.factory() as s:
            return SendStatus(s.execute(select(Send.status).where(Send.id == send_id)).scalar_one())

    def advance(self, send_id: int) -> SendStatus:
        """Exactly one transition of a send we hold (tests call it to stop between steps)."""
        status = self._status(send_id)
        if status in LED and self._led(send_id):
            return status  # its leader moves it (claimed before it joined a batch)
        try:
            if status in BUILDABLE:
                self._build(send_id)
            elif status is SendStatus.BUILT:
                self._sign(send_id)
            elif status is SendStatus.SIGNED:
                self._broadcast(send_id)
            elif status is SendStatus.BROADCAST:
                self._follow(send_id)
        except _LostLease:
            log.info("send %d: lease lost to another worker", send_id)
        except (HsmUnavailableError, ChainUnavailable) as exc:
            self._retry_later(send_id, exc)
        except _ChainTooLong:
            log.info("send %d: mempool chain too long; broadcast after the next block", send_id)
            self._retry_later(send_id, None)
        except OperationalError:  # deadlock victim, database busy: nothing was written
            log.warning("send %d: database conflict; retrying later", send_id)
            self._retry_later(send_id, None)
        except SendFailed as exc:
            self._fail(send_id, exc.message)
        return self._status(send_id)

    # ------------------------------------------------------------------ PENDING -> BUILT

    def _fee_rate(self, dynamic: int) -> float:
        s = self.settings
        if not dynamic:
            return s.fee_rate
        est = self.rpc.estimate_smart_fee(s.conf_target)
        result = {"feerate": est.feerate, "errors": list(est.errors)}
        try:
            return feerate_from_estimate(
                result, floor=s.fee_floor, ceiling=s.fee_ceiling, fallback=s.fee_rate
            )
        except FeeEstimateError:
            return s.fee_rate

    def _build(self, send_id: int) -> None:
        with self.factory() as s:
            send = s.get(Send, send_id)
            assert send is not None
            dynamic = send.is_dynamic_fee
            held = self._window_left(send)
        if held > 0:  # batching: wait for companions until the send is the window old
            with transaction(self.factory) as s:
                send = self._hold(s, send_id)
                if send.status is SendStatus.PENDING:
                    self._unlock(s, send, held)
            return
        rate = self._fee_rate(dynamic)  # the node is asked outside the transaction
        for _ in range(5):
            try:
                with transaction(self.factory) as s:
                    send = self._hold(s, send_id)
                    if send.status not in BUILDABLE:
                        return
                    self._build_in(s, send, rate)
                return
            except _Race:
                continue
        log.info("send %d: UTXOs contended; retrying later", send_id)
        with transaction(self.factory) as s:
            self._unlock(s, self._hold(s, send_id), self.settings.backoff_initial)

    def _window_left(self, send: Send) -> float:
        """Seconds a pending send still waits for others to join its batch (0: build now)."""
        if (
            not self.settings.batching
            or self.settings.batch_window <= 0
            or send.status is not SendStatus.PENDING
            or send.batch_id == SOLO
        ):
            return 0.0
        age = (utcnow() - send.request_at).total_seconds()
        return max(0.0, self.settings.batch_window - age)

    def _companions(
        self, s: Session, leader: Send, network: Network, outputs: int
    ) -> list[tuple[Send, list[Out]]]:
        """Other buildable sends of the leader's account that no other worker holds, oldest
        first, while the batch stays within `batch_max_outputs` payments (row-locked on
        PostgreSQL, SKIP LOCKED: a send another build is taking is left to it)."""
        now = utcnow()
        q = (
            select(Send)
            .where(
                Send.account_id == leader.account_id,
                Send.id != leader.id,
                Send.status.in_(BUILDABLE),
                Send.batch_id.is_(None),
                self._joinable(now),
            )
            .order_by(Send.id)
            .limit(MAX_BATCH - 1)
        )
        if is_postgres(s):
            q = q.with_for_update(skip_locked=True)
        out: list[tuple[Send, list[Out]]] = []
        for other in s.execute(q).scalars().all():
            try:
                outs = parse_outs(other.outs, network)
            except WalletError:
                continue  # it fails on its own
            if outputs + len(outs) > self.settings.batch_max_outputs:
                break
            out.append((other, outs))
            outputs += len(outs)
        return out

    def _joinable(self, now: Any) -> Any:
        """Not held by another worker's live lease (a send only waiting for its window or for
        funds, with no owner, may join)."""
        return or_(Send.locked_by.is_(None), Send.locked_by == self.owner, Send.locked_until < now)

    def _join(self, s: Session, leader: Send, members: Sequence[Send]) -> None:
        """Make `members` part of the leader's batch, if still free; else a race."""
        ids = [m.id for m in members]
        res = s.execute(
            update(Send)
            .where(
                Send.id.in_(ids),
                Send.status.in_(BUILDABLE),
                Send.batch_id.is_(None),
                self._joinable(utcnow()),
            )
            .values(batch_id=leader.id, locked_by=None, locked_until=None)
            .execution_options(synchronize_session="fetch")
        )
        if rowcount(res) != len(ids):
            raise _Race()

    def _build_in(self, s: Session, send: Send, rate: float) -> None:
        """Choose coins, reserve them, and store the unsigned PSBT: pending -> built (or it
        waits for funds, or fails with the reason). With batching, other pending sends of the
        account join it: one transaction pays them all (the send alone if they cannot all be
        funded now)."""
        # One build per account at a time (PostgreSQL row lock; SQLite's write lock is held
        # already): the change index and the reserved set are consistent.
        account = s.get(Account, send.account_id, with_for_update=is_postgres(s))
        assert account is not None
        if account.status is AccountStatus.FROZEN:
            self._fail_in(s, send, f"account is frozen: {account.frozen_reason}".rstrip(": "))
            return
        network = Network.from_name(account.network)
        try:
            outs = parse_outs(send.outs, network)
        except WalletError as exc:
            self._fail_in(s, send, f"invalid outs: {exc.message}")
            return
        group: list[tuple[Send, list[Out]]] = [(send, outs)]
        if self.settings.batching and send.batch_id is None:
            group += self._companions(s, send, network, len(outs))
        while True:
            union = [o for _, member_outs in group for o in member_outs]
            scripts = [address_to_script(o.address, network) for o in union]
            found = self._select(s, account.id, sum(o.value for o in union), rate, scripts)
            if not isinstance(found, str) or len(group) == 1:
                break
            group = group[:1]  # the batch cannot be funded now: the send alone
        if isinstance(found, str):
            self._wait_in(s, send, found)
            return
        members = [m for m, _ in group[1:]]
        if members:
            self._join(s, send, members)
            send.batch_id = send.id
        sel, by_outpoint = found
        chosen = [by_outpoint[(c.txid, c.vout)] for c in sel.inputs]
        self._reserve(s, send, [u.id for u, _ in chosen])
        hot = account_keys(account).hot
        inputs = psbt_inputs(hot, chosen)
        outputs = [PsbtOutput(sc, o.value) for sc, o in zip(scripts, union, strict=True)]
        change_index = None
        if sel.has_change:
            change_index, change_out = self._change_output(s, account, hot, sel.change)
            outputs.append(change_out)
        psbt = Psbt.create(inputs, outputs)
        self._mark_built(
            s, send, psbt, sel.fee, change_index, [f"{u.txid}:{u.vout}" for u, _ in chosen]
        )
        for member in members:
            member.psbt = send.psbt
            member.status = SendStatus.BUILT
            member.state_reason = ""
            member.attempts = 0
            journal.append(
                s,
                JournalKind.SEND_BUILT,
                member.account_id,
                {"user_tx_no": member.user_tx_no, "txid": psbt.txid, "batch": send.user_tx_no},
            )
        if members:
            log.info("send %d leads a batch of %d sends", send.id, len(group))

    @staticmethod
    def _reserve(s: Session, send: Send, utxo_ids: list[int]) -> None:
        """Reserve the chosen coins for `send`; another build that took one first is a race."""
        res = s.execute(
            update(Utxo)
            .where(Utxo.id.in_(utxo_ids), Utxo.reserved_by_send.is_(None), Utxo.spent_by.is_(None))
            .values(reserved_by_send=send.id)
            .execution_options(synchronize_session=False)
        )
        if rowcount(res) != len(utxo_ids):
            raise _Race()

    @staticmethod
    def _change_output(
        s: Session, account: Account, hot: HotWallet, value: int
    ) -> tuple[int, PsbtOutput]:
        """The account's next change address and the output paying it `value`."""
        change = next_change_address(s, account)
        return change.index, PsbtOutput(
            bytes(change.script_pubkey),
            value,
            origins=hot.origins(change.index, int(Chain.CHANGE)),
            witness_script=hot.witness_script(change.index, int(Chain.CHANGE)),
        )

    @staticmethod
    def _mark_built(
        s: Session,
        send: Send,
        psbt: Psbt,
        fee: int,
        change_index: int | None,
        outpoints: list[str],
    ) -> None:
        send.psbt = psbt.to_base64()
        send.fee = fee
        send.change_index = change_index
        send.status = SendStatus.BUILT
        send.state_reason = ""
        send.attempts = 0
        journal.append(
            s,
            JournalKind.SEND_BUILT,
            send.account_id,
            {
                "user_tx_no": send.user_tx_no,
                "txid": psbt.txid,
                "inputs": outpoints,
                "fee": fee,
                "change_index": change_index,
            },
        )
        log.info("send %d built (%d inputs)", send.id, len(outpoints))

    def _select(
        self, s: Session, account_id: int, amount: int, rate: float, scripts: list[bytes]
    ) -> tuple[coinselect.Selection, dict[tuple[str, int], tuple[Utxo, Address]]] | str:
        """Inputs for `amount`, or the reason the send must wait."""
        tip = tip_height(s)
        if tip is None:
            return "waiting for funds: the watcher has not seen a block yet"
        rows, cut = candidate_utxos(s, account_id, tip, self.settings, amount)
        by_outpoint = {(u.txid, u.vout): (u, a) for u, a in rows}
        chains = unconfirmed_ancestry(s, [u for u, _ in rows])
        limit = self.settings.max_unconfirmed_ancestors
        candidates = [
            coinselect.Utxo(u.txid, u.vout, u.value)
            for u, _ in rows
            if len(chains.get(u.txid, set())) <= limit
        ]
        while True:
            try:
                sel = coinselect.select_coins(
                    candidates,
                    amount,
                    rate,
                    outputs_weight=sum(output_weight(sc) for sc in scripts),
                    max_inputs=self.settings.max_inputs,
                )
            except CoinSelectionError as exc:
                if cut and isinstance(exc, InsufficientFundsError):
                    # even the largest coins, more than max_inputs of them, do not pay it
                    return (
                        f"waiting for funds: paying {amount} sat needs more than "
                        f"{self.settings.max_inputs} inputs"
                    )
                return f"waiting for funds: {exc.message}"
            ancestry: set[str] = set()
            for c in sel.inputs:
                ancestry |= chains.get(c.txid, set())
            if len(ancestry) <= limit:
                return sel, by_outpoint
            # Two chains together are too long: give up the longest and select again.
            longest = max(sel.inputs, key=lambda c: len(chains.get(c.txid, set())))
            candidates = [c for c in candidates if c.txid != longest.txid]

    def _wait_in(self, s: Session, send: Send, reason: str) -> None:
        """WAITING_FUNDS with `reason` (journaled on entry); tried again after a while."""
        first = send.status is not SendStatus.WAITING_FUNDS or send.state_reason != reason
        send.status = SendStatus.WAITING_FUNDS
        send.state_reason = reason[:1000]
        self._unlock(s, send, self.settings.wait_seconds)
        if first:
            journal.append(
                s,
                JournalKind.SEND_WAITING,
                send.account_id,
                {"user_tx_no": send.user_tx_no, "reason": send.state_reason},
            )
            log.info("send %d waits for funds", send.id)

    # ------------------------------------------------------------------ BUILT -> SIGNED

    def _sign(self, send_id: int) -> None:
        with self.factory() as s:
            send = s.get(Send, send_id)
            assert send is not None and send.psbt is not None
            request = request_of(send)
            account_id, psbt_b64 = send.account_id, send.psbt
            vc_code, c_id = send.vc_code, send.c_id
            batch = [
                {"request": request_of(m), "vc_code": m.vc_code, "c_id": m.c_id}
                for m in [send, *self._members(s, send)]
            ]
        try:
            if len(batch) > 1:
                signed = self._sign_batch_with_prev_txs(account_id, psbt_b64, batch)
            else:
                signed = self._sign_with_prev_txs(account_id, psbt_b64, request, vc_code, c_id)
        except HsmRefused as exc:
            if len(batch) > 1:  # refused whole: each member is judged alone next
                self._unbatch(send_id, exc)
                return
            raise SendFailed(f"refused by the HSM (code {exc.code}): {exc.message}") from None
        try:
            tx_hex = self._finalize(psbt_b64, signed)
        except WalletError as exc:
            raise SendFailed(f"signed PSBT unusable: {exc.message}") from None
        with transaction(self.factory) as s:
            send = self._hold(s, send_id)
            if send.status is not SendStatus.BUILT:
                return
            parsed = self._parse_final(tx_hex)
            members = self._members(s, send)
            self._verify_final(s, send, parsed, members)
            send.attempts = 0
            for one in [send, *members]:
                one.tx_hex = tx_hex
                one.txid = parsed.txid
                one.status = SendStatus.SIGNED
                journal.append(
                    s,
                    JournalKind.SEND_SIGNED,
                    one.account_id,
                    {"user_tx_no": one.user_tx_no, "txid": parsed.txid},
                )
        log.info("send %d signed", send_id)

    def _unbatch(self, send_id: int, exc: HsmRefused) -> None:
        """A refused batch goes back to pending, its coins freed, every member to be built
        and signed alone: one member the policy refuses does not fail the others."""
        with transaction(self.factory) as s:
            leader = self._hold(s, send_id)
            if leader.status is not SendStatus.BUILT:
                return
            members = self._members(s, leader)
            s.execute(
                update(Utxo)
                .where(Utxo.reserved_by_send == leader.id)
                .values(reserved_by_send=None)
                .execution_options(synchronize_session=False)
            )
            reason = f"batch refused by the HSM (code {exc.code}): {exc.message}; sent alone"
            for one in [leader, *members]:
                one.status = SendStatus.PENDING
                one.batch_id = SOLO
                one.psbt = None
                one.fee = None
                one.change_index = None
                one.state_reason = reason[:1000]
                journal.append(
                    s,
                    JournalKind.SEND_WAITING,
                    one.account_id,
                    {"user_tx_no": one.user_tx_no, "reason": one.state_reason},
                )
                if one is not leader:
                    self._unlock(s, one)
        log.warning(
            "send %d: batch of %d refused (code %d); sent alone",
            send_id,
            1 + len(members),
            exc.code,
        )

    @staticmethod
    def _members(s: Session, leader: Send) -> list[Send]:
        """The other sends the leader's transaction pays (none unless it leads a batch)."""
        if leader.batch_id != leader.id:
            return []
        return list(
            s.execute(
                select(Send)
                .where(Send.batch_id == leader.id, Send.id != leader.id)
                .order_by(Send.id)
            )
            .scalars()
            .all()
        )

    def _sign_batch_with_prev_txs(
        self, account_id: int, psbt_b64: str, members: list[dict[str, Any]]
    ) -> str:
        """`_sign_with_prev_txs` for a batch: every member's signed request with the PSBT."""
        try:
            first = with_prev_txs(self.factory, self.rpc, psbt_b64, all_inputs=False)
            try:
                return str(self.hsm.sign_batch(account_id, first, members))
            except HsmRefused as exc:
                if exc.code != PREV_TX_REQUIRED:
                    raise
            full = with_prev_txs(self.factory, self.rpc, psbt_b64)
        except PrevTxUnavailable as exc:
            raise ChainUnavailable(f"funding transaction for the cold HSM: {exc}") from None
        return str(self.hsm.sign_batch(account_id, full, members))

    def _sign_with_prev_txs(
        self, account_id: int, psbt_b64: str, request: dict[str, Any], vc_code: str, c_id: str
    ) -> str:
        """Sign with the funding transactions of inputs the cold HSM cannot know; if it asks
        for more (a send it did not sign), attach every input's and ask again."""
        try:
            first = with_prev_txs(self.factory, self.rpc, psbt_b64, all_inputs=False)
            try:
                return str(self.hsm.sign_send(account_id, first, request, vc_code, c_id))
            except HsmRefused as exc:
                if exc.code != PREV_TX_REQUIRED:
                    raise
            full = with_prev_txs(self.factory, self.rpc, psbt_b64)
        except PrevTxUnavailable as exc:
            raise ChainUnavailable(f"funding transaction for the cold HSM: {exc}") from None
        return str(self.hsm.sign_send(account_id, full, request, vc_code, c_id))

    @staticmethod
    def _finalize(unsigned_b64: str, signed_b64: str) -> str:
        unsigned = Psbt.from_base64(unsigned_b64)
        signed = Psbt.from_base64(signed_b64)
        if signed.txid != unsigned.txid:
            raise SendFailed("the HSM signed a different transaction than the one built")
        signed.finalize()
        return signed.extract_hex()

    @staticmethod
    def _parse_final(tx_hex: str) -> SignedTx:
        """The finished transaction, read by `wallet_core.rawtx` (the project's one parser)."""
        try:
            return parse_signed_tx(bytes.fromhex(tx_hex))
        except ValueError:
            raise SendFailed("final transaction is not hex") from None
        except TxParseError as exc:
            raise SendFailed(f"final transaction unreadable: {exc.message}") from None

    def _verify_final(
        self, s: Session, send: Send, tx: SignedTx, members: Sequence[Send] = ()
    ) -> None:
        """The final transaction spends exactly the recorded inputs and pays outs + change
        (a batch: every member's outs after the leader's, in order, then change)."""
        account = s.get(Account, send.account_id)
        assert account is not None
        reserved = s.execute(
            select(Utxo.txid, Utxo.vout, Utxo.value).where(Utxo.reserved_by_send == send.id)
        ).all()
        if sorted(tx.outpoints) != sorted((t, v) for t, v, _ in reserved):
            raise SendFailed("final transaction does not spend exactly the recorded inputs")
        network = Network.from_name(account.network)
        expected = [
            (address_to_script(o.address, network), o.value)
            for one in [send, *members]
            for o in parse_outs(one.outs, network)
        ]
        total_in = sum(value for _, _, value in reserved)
        change = total_in - sum(v for _, v in expected) - int(send.fee or 0)
        if send.change_index is not None:
            script = account_keys(account).one(Wallet.HOT, Chain.CHANGE, send.change_index)
            expected.append((script.script_pubkey, change))
        elif change != 0:
            raise SendFailed("recorded fee does not match the inputs and outputs")
        if [(bytes(sc), v) for sc, v in tx.outputs] != expected:
            raise SendFailed("final transaction does not pay exactly outs plus change")

    # ------------------------------------------------------------------ SIGNED -> BROADCAST

    def _broadcast(self, send_id: int) -> None:
        with self.factory() as s:
            send = s.get(Send, send_id)
            assert send is not None and send.tx_hex and send.txid
            tx_hex, txid = send.tx_hex, send.txid
        try:
            self.rpc.send_raw_transaction(tx_hex)
        except TxRejected as exc:
            if exc.reason.startswith("too-long-mempool-chain"):
                raise _ChainTooLong() from None
            if not (exc.already_in_chain or self._node_knows(txid)):
                raise SendFailed(f"rejected by the node: {exc.reason}") from None
        except RPCError as exc:
            if not self._node_knows(txid):
                raise SendFailed(f"rejected by the node: {exc.rpc_message}") from None
        with transaction(self.factory) as s:
            send = self._hold(s, send_id)
            if send.status is not SendStatus.SIGNED:
                return
            send.attempts = 0
            record_change(s, send, tx_hex, txid)
            height, at = tip_height(s), utcnow()
            for one in [send, *self._members(s, send)]:
                one.status = SendStatus.BROADCAST
                one.tx_at = at
                one.broadcast_height = height
                journal.append(
                    s,
                    JournalKind.SEND_BROADCAST,
                    one.account_id,
                    {"user_tx_no": one.user_tx_no, "txid": txid},
                )
        log.info("send %d broadcast", send_id)

    def _node_knows(self, txid: str) -> bool:
        """True if the node has `txid` in its mempool or chain (our earlier broadcast). Asks
        only what a node without txindex answers: its mempool, then the chain's UTXO set for
        the transaction's first output (a send's outputs are unspent right after it is mined)."""
        try:
            self.rpc.get_mempool_entry(txid)
            return True
        except RPCError:
            pass
        try:
            return self.rpc.get_tx_out(txid, 0, include_mempool=False) is not None
        except RPCError:
            return False

    # ------------------------------------------------------------------ BROADCAST -> CONFIRMED

    def _follow(self, send_id: int) -> None:
        from custody.fee_bump import follow_replaced  # noqa: PLC0415 (it builds on this module)

        rebroadcast = None
        with transaction(self.factory) as s:
            send = self._hold(s, send_id)
            if send.status is not SendStatus.BROADCAST:
                return
            follow_replaced(s, send)  # a fee-bumped send whose original was mined after all
            row = s.execute(
                select(ChainTx).where(
                    ChainTx.account_id == send.account_id,
                    ChainTx.wallet == Wallet.HOT,
                    ChainTx.txid == send.txid,
                )
            ).scalar_one_or_none()
            if row is not None and row.status is TxStatus.CONFIRMED:
                send.status = SendStatus.CONFIRMED
                journal.append(
                    s,
                    JournalKind.SEND_CONFIRMED,
                    send.account_id,
                    {"user_tx_no": send.user_tx_no, "txid": send.txid, "height": row.block_height},
                )
                self._unlock(s, send)
                log.info("send %d confirmed", send_id)
                return
            if row is not None and row.status is TxStatus.REMOVED:
                rebroadcast = send.tx_hex  # the same transaction again: it cannot pay twice
            self._unlock(s, send)
        if rebroadcast:
            try:
                self.rpc.send_raw_transaction(rebroadcast)
            except RPCError as exc:
                log.warning("send %d: rebroadcast refused (rpc %s)", send_id, exc.rpc_code)

    # ------------------------------------------------------------------ failures and retries

    def _fail(self, send_id: int, reason: str) -> None:
        try:
            with transaction(self.factory) as s:
                send = self._hold(s, send_id)
                if send.status in (SendStatus.FAILED, SendStatus.CONFIRMED):
                    return
                self._fail_in(s, send, reason)
        except _LostLease:
            log.info("send %d: lease lost before recording its failure", send_id)

    def _fail_in(self, s: Session, send: Send, reason: str) -> None:
        """FAILED with `reason`, its inputs released, journaled and alerted (same transaction);
        a batch fails whole (the HSMs refused or the node rejected the one transaction)."""
        for member in self._members(s, send):
            self._fail_one(s, member, reason)
        self._fail_one(s, send, reason)

    def _fail_one(self, s: Session, send: Send, reason: str) -> None:
        send.status = SendStatus.FAILED
        send.failure_reason = reason[:1000]
        s.execute(
            update(Utxo)
            .where(Utxo.reserved_by_send == send.id)
            .values(reserved_by_send=None)
            .execution_options(synchronize_session=False)
        )
        self._unlock(s, send)
        journal.append(
            s,
            JournalKind.SEND_FAILED,
            send.account_id,
            {"user_tx_no": send.user_tx_no, "reason": send.failure_reason},
        )
        if self.config is not None:
            raise_alert(
                s,
                self.config,
                AlertKind.SEND_FAILED,
                f"send {send.user_tx_no} failed: {send.failure_reason}"[:300],
                account_id=send.account_id,
            )
        log.warning("send %d failed", send.id)

    def _retry_later(self, send_id: int, exc: CustodyError | None) -> None:
        try:
            with transaction(self.factory) as s:
                send = self._hold(s, send_id)
                send.attempts += 1
                delay = min(
                    self.settings.backoff_initial * 2 ** (send.attempts - 1),
                    self.settings.backoff_max,
                )
                self._unlock(s, send, delay)
                hsm_down = isinstance(exc, HsmUnavailableError)
                if hsm_down and send.attempts == self.settings.alert_after and self.config:
                    raise_alert(
                        s,
                        self.config,
                        AlertKind.COLD_UNREACHABLE,
                        f"send {send.user_tx_no}: HSM unreachable after {send.attempts} attempts",
                        account_id=send.account_id,
                    )
                log.warning(
                    "send %d: %s unavailable (attempt %d); retry in %.0fs",
                    send_id,
                    "HSM" if hsm_down else "node or database",
                    send.attempts,
                    delay,
                )
        except _LostLease:
            pass


def request_of(send: Send) -> dict[str, Any]:
    """The request the V-device signed for `send` (what the HSMs check its vc_code over)."""
    return {
        "coin_code": send.coin_code,
        "is_dynamic_fee": send.is_dynamic_fee,
        "outs": send.outs,
        "user_tx_no": send.user_tx_no,
    }
