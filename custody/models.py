"""The custody database: SQLAlchemy 2.x models (SQLite by default, PostgreSQL in production).

What is stored here is what the API may hold: public keys, descriptors, addresses, chain data,
send requests and their states, token *hashes*. Never a private key (invariant 3).
Migrations live in `custody/migrations` (Alembic); `custody db upgrade` applies them.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    false,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from custody import balance_sql

# JSON text kept as written: `json` on PostgreSQL (not `jsonb`, which would respace it), so a
# query embeds it in a document without parsing it; text on SQLite.
STORED_JSON = Text().with_variant(postgresql.JSON(none_as_null=True), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Wallet(enum.IntEnum):
    """The two isolated sides of an account; values are the reference's `address_type`."""

    HOT = 1
    COLD = 2


class Chain(enum.IntEnum):
    """BIP32 chain of an address: receiving (in verified batches) or change."""

    RECEIVE = 0
    CHANGE = 1


class TokenScope(enum.StrEnum):
    COLD = "cold"  # cold-receiving token: reads the cold side only, cannot send
    HOT = "hot"  # hot-sending token: reads the hot side, sends


class AccountStatus(enum.StrEnum):
    ACTIVE = "active"
    FROZEN = "frozen"


class BatchStatus(enum.StrEnum):
    PROVEN = "proven"  # created, carries the cold HSM's proof; not yet checked by the V-device
    VERIFIED = "verified"  # the V-device verified it over SMS
    FAILED = "failed"  # the V-device found it wrong: never hand out its addresses


class TxStatus(enum.StrEnum):
    MEMPOOL = "mempool"
    CONFIRMED = "confirmed"
    REMOVED = "removed"  # left the chain in a reorg and is no longer in the mempool


class DepositState(enum.StrEnum):
    """A transaction's life as the merchant sees it (the `cc_state` extension of `GET /tx`).

    `confirmed` carries its depth in the API (confirmations follow from the tip); `final` is
    reached at the configured depth. The last four are ends of an unconfirmed or disconnected
    transaction: another spend of one of its inputs took its place in the mempool (`replaced`)
    or in a block (`conflicted`), a block holding it left the chain (`reorged`, until it is
    mined again), or the node dropped it with its inputs still unspent (`dropped`).
    """

    SEEN = "seen"
    CONFIRMED = "confirmed"
    FINAL = "final"
    REPLACED = "replaced"
    CONFLICTED = "conflicted"
    REORGED = "reorged"
    DROPPED = "dropped"


class SendStatus(enum.StrEnum):
    """Life of a hot send. The reference shows pending / OK / failed (see `public_status`)."""

    PENDING = "pending"  # accepted, waiting for the worker
    WAITING_FUNDS = "waiting_funds"  # not fundable yet (reason in `state_reason`); retried
    BUILT = "built"  # inputs chosen and recorded, PSBT built: a retry rebuilds exactly this
    SIGNED = "signed"  # both HSMs signed; the final transaction is stored
    BROADCAST = "broadcast"  # accepted by the node
    CONFIRMED = "confirmed"
    FAILED = "failed"

    @property
    def public_status(self) -> str:
        if self in (SendStatus.BROADCAST, SendStatus.CONFIRMED):
            return "OK"
        if self is SendStatus.FAILED:
            return "failed"
        return "pending"


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    status: Mapped[AccountStatus] = mapped_column(
        Enum(AccountStatus, native_enum=False, length=16), default=AccountStatus.ACTIVE
    )
    frozen_reason: Mapped[str] = mapped_column(Text, default="")
    network: Mapped[str] = mapped_column(String(16))
    vdevice_phone: Mapped[str] = mapped_column(String(32))
    owner_phone: Mapped[str] = mapped_column(String(32))
    settlement_descriptor: Mapped[str] = mapped_column(Text)
    # Public material from the HSMs (never a private key).
    cold_receiving_xpub: Mapped[str] = mapped_column(Text)
    hot_pubkey: Mapped[str] = mapped_column(String(66))
    cold_cosigner_xpub: Mapped[str] = mapped_column(Text)
    recovery_xpub: Mapped[str] = mapped_column(Text)
    # Master fingerprints (hex) of the three derived keys: their key origins in descriptors and
    # PSBTs. '' on accounts provisioned before the HSM returned them (no origin known).
    receiving_fingerprint: Mapped[str] = mapped_column(String(8), server_default="")
    cosigner_fingerprint: Mapped[str] = mapped_column(String(8), server_default="")
    recovery_fingerprint: Mapped[str] = mapped_column(String(8), server_default="")
    cold_descriptor: Mapped[str] = mapped_column(Text)
    hot_descriptor: Mapped[str] = mapped_column(Text)
    cold_identity_pubkey: Mapped[str] = mapped_column(String(66))
    vdevice_identity_pubkey: Mapped[str] = mapped_column(String(66))
    provisioning_proof: Mapped[str] = mapped_column(Text)
    # Next index to hand out on each path (receive paths advance through verified batches).
    cold_receive_next: Mapped[int] = mapped_column(Integer, default=0)
    hot_receive_next: Mapped[int] = mapped_column(Integer, default=0)
    hot_change_next: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="account")


class ApiToken(Base):
    """A scoped API token. Only its SHA-256 is stored; compared in constant time."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    scope: Mapped[TokenScope] = mapped_column(Enum(TokenScope, native_enum=False, length=8))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(12))  # first characters, for operators
    rate_limit_per_minute: Mapped[int] = mapped_column(Integer, default=600)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    account: Mapped[Account] = relationship(back_populates="tokens")


class AddressBatch(Base):
    """1000 receiving addresses (batch n = indices n*1000 .. n*1000+999) with the cold proof."""

    __tablename__ = "address_batches"
    __table_args__ = (UniqueConstraint("account_id", "wallet", "batch_no"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    wallet: Mapped[Wallet] = mapped_column(Enum(Wallet, native_enum=False, length=8))
    batch_no: Mapped[int] = mapped_column(Integer)
    status: Mapped[BatchStatus] = mapped_column(
        Enum(BatchStatus, native_enum=False, length=16), default=BatchStatus.PROVEN
    )
    proof: Mapped[str] = mapped_column(Text)  # cold HSM's signed message over the content
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    status_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Address(Base):
    """Every address of an account the watcher must recognise, indexed by script."""

    __tablename__ = "addresses"
    __table_args__ = (
        UniqueConstraint("account_id", "wallet", "chain", "index"),
        Index("ix_addresses_script", "script_pubkey", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    wallet: Mapped[Wallet] = mapped_column(Enum(Wallet, native_enum=False, length=8))
    chain: Mapped[Chain] = mapped_column(Enum(Chain, native_enum=False, length=8))
    index: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(100), unique=True)
    script_pubkey: Mapped[bytes] = mapped_column(LargeBinary(64))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("address_batches.id"), nullable=True)
    handed_out_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class BlockSeen(Base):
    """The watcher's view of the best chain, to detect reorgs and resume after a restart."""

    __tablename__ = "blocks_seen"

    height: Mapped[int] = mapped_column(Integer, primary_key=True)
    block_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(DateTime)


class ChainTx(Base):
    """A transaction as it concerns one side (wallet) of one account."""

    __tablename__ = "chain_txs"
    __table_args__ = (
        UniqueConstraint("account_id", "wallet", "txid"),
        Index("ix_chain_txs_page", "account_id", "wallet", "id"),
        # The watcher's "which confirmed ones became final" visits only those not final yet.
        Index("ix_chain_txs_state_height", "state", "block_height"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    wallet: Mapped[Wallet] = mapped_column(Enum(Wallet, native_enum=False, length=8))
    txid: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[TxStatus] = mapped_column(Enum(TxStatus, native_enum=False, length=16))
    block_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    block_height: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    value: Mapped[int] = mapped_column(BigInteger)  # net effect on this side, satoshi
    tx_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)  # first seen
    confirm_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    state: Mapped[DepositState] = mapped_column(
        Enum(DepositState, native_enum=False, length=16), default=DepositState.SEEN
    )
    state_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    has_dust: Mapped[bool] = mapped_column(Boolean, default=False)
    # The `GET /tx` document's `inputs` and `outputs` arrays as stored by the writer that
    # recorded or changed them (`custody.api.tx_json.store_arrays`), NULL until then: a page
    # reads them instead of building them. Read in SQL only, never loaded by the ORM.
    inputs_json: Mapped[Any] = mapped_column(STORED_JSON, nullable=True, deferred=True)
    outputs_json: Mapped[Any] = mapped_column(STORED_JSON, nullable=True, deferred=True)

    inputs: Mapped[list[ChainTxInput]] = relationship(
        order_by="ChainTxInput.sn", cascade="all, delete-orphan"
    )
    outputs: Mapped[list[ChainTxOutput]] = relationship(
        order_by="ChainTxOutput.sn", cascade="all, delete-orphan"
    )


class TxStateChange(Base):
    """Every state a transaction went through, with when (append-only)."""

    __tablename__ = "tx_state_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_tx_id: Mapped[int] = mapped_column(ForeignKey("chain_txs.id"), index=True)
    state: Mapped[DepositState] = mapped_column(Enum(DepositState, native_enum=False, length=16))
    confirmations: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ChainTxInput(Base):
    __tablename__ = "chain_tx_inputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_tx_id: Mapped[int] = mapped_column(ForeignKey("chain_txs.id"), index=True)
    sn: Mapped[int] = mapped_column(Integer)
    prev_tx_hash: Mapped[str] = mapped_column(String(64))
    prev_out_sn: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(100))
    value: Mapped[int] = mapped_column(BigInteger)
    is_mine: Mapped[bool] = mapped_column(Boolean)


class ChainTxOutput(Base):
    __tablename__ = "chain_tx_outputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_tx_id: Mapped[int] = mapped_column(ForeignKey("chain_txs.id"), index=True)
    sn: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(100))
    value: Mapped[int] = mapped_column(BigInteger)
    is_mine: Mapped[bool] = mapped_column(Boolean)
    spent: Mapped[bool] = mapped_column(Boolean, default=False)


SPENDABLE = "spent_by IS NULL AND reserved_by_send IS NULL"


class Utxo(Base):
    """An output paying one of our addresses. Coin selection locks these rows."""

    __tablename__ = "utxos"
    __table_args__ = (
        UniqueConstraint("txid", "vout"),
        # the outputs of the newest blocks, which a min_confirmations balance leaves out
        Index("ix_utxos_side_height", "account_id", "wallet", "block_height"),
        # coin selection's and consolidation's ranges by value over the coins still free
        Index(
            "ix_utxos_spendable",
            "account_id",
            "wallet",
            "value",
            "id",
            postgresql_where=text(SPENDABLE),
            sqlite_where=text(SPENDABLE),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    wallet: Mapped[Wallet] = mapped_column(Enum(Wallet, native_enum=False, length=8))
    txid: Mapped[str] = mapped_column(String(64))
    vout: Mapped[int] = mapped_column(Integer)
    value: Mapped[int] = mapped_column(BigInteger)
    address_id: Mapped[int] = mapped_column(ForeignKey("addresses.id"))
    block_height: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: mempool
    spent_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reserved_by_send: Mapped[int | None] = mapped_column(ForeignKey("sends.id"), nullable=True)
    # Below the configured dust threshold: recorded and shown, never chosen by coin selection.
    is_dust: Mapped[bool] = mapped_column(Boolean, default=False)


class AccountBalance(Base):
    """Satoshis of an account side's unspent outputs, mined and mempool apart.

    Written only by the triggers of `custody.balance_sql`, in the transaction that changes
    `utxos`, and journalled in that transaction (`custody.balance_journal`);
    `custody.balances.verify_balances` checks it against the sums and the journal.
    """

    __tablename__ = "account_balances"
    # the rows `custody.balance_journal` must record at the next commit, found without a scan
    __table_args__ = (
        Index(
            "ix_account_balances_unjournalled",
            "account_id",
            "wallet",
            postgresql_where=text("unjournalled"),
            sqlite_where=text("unjournalled"),
        ),
    )

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    wallet: Mapped[Wallet] = mapped_column(
        Enum(Wallet, native_enum=False, length=8), primary_key=True
    )
    confirmed: Mapped[int] = mapped_column(BigInteger, default=0)
    unconfirmed: Mapped[int] = mapped_column(BigInteger, default=0)
    # changed since its last journal record (`custody.balance_journal` records and clears it)
    unjournalled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


def _create_balance_triggers(target: object, connection: Connection, **kw: Any) -> None:
    """After `create_all` made `utxos` and `account_balances`: the triggers between them."""
    del target
    created = {t.name for t in kw.get("tables") or ()}
    if {"utxos", balance_sql.TABLE} <= created:
        for statement in balance_sql.create_statements(connection.dialect.name):
            connection.exec_driver_sql(statement)


event.listen(Base.metadata, "after_create", _create_balance_triggers)


class Send(Base):
    """A hot send request (`POST /tx/request`), idempotent on (account, user_tx_no)."""

    __tablename__ = "sends"
    __table_args__ = (UniqueConstraint("account_id", "user_tx_no"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    user_tx_no: Mapped[str] = mapped_column(String(64))
    coin_code: Mapped[str] = mapped_column(String(8), default="BTC")
    outs: Mapped[str] = mapped_column(Text)
    is_dynamic_fee: Mapped[int] = mapped_column(Integer, default=1)
    vc_code: Mapped[str] = mapped_column(Text)
    c_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[SendStatus] = mapped_column(
        Enum(SendStatus, native_enum=False, length=16), default=SendStatus.PENDING, index=True
    )
    failure_reason: Mapped[str] = mapped_column(Text, default="")
    state_reason: Mapped[str] = mapped_column(Text, default="")  # why it waits (waiting_funds)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    fee: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    change_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    psbt: Mapped[str | None] = mapped_column(Text, nullable=True)  # unsigned, base64
    tx_hex: Mapped[str | None] = mapped_column(Text, nullable=True)  # final, signed
    txid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    request_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    tx_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The watcher's tip when the node took the current transaction (for automatic fee bumps).
    broadcast_height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A batched payout: the id of the send whose transaction pays this one too (its own id on
    # that send; None for a send alone). The batch's leader carries its inputs, fee and change.
    batch_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    locked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Alert(Base):
    """An operator alert, recorded first, then sent by SMS through Twilio."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), nullable=True)
    message: Mapped[str] = mapped_column(Text)
    recipient: Mapped[str] = mapped_column(String(32))
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    provider_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")


class JournalEntry(Base):
    """Append-only, hash-chained record of custody events (invariant 7)."""

    __tablename__ = "journal"
    # a side's newest balance record (`custody balance verify`)
    __table_args__ = (Index("ix_journal_kind_account", "kind", "account_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class KeyValue(Base):
    """Small service state (e.g. the watcher's last processed block)."""

    __tablename__ = "service_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class EventSide(enum.StrEnum):
    """Which token scope sees an event: one side of the account, or both."""

    HOT = "hot"
    COLD = "cold"
    BOTH = "both"


class Event(Base):
    """A merchant-facing event, numbered without gaps per account (`seq`), append-only."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("account_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(40))
    side: Mapped[EventSide] = mapped_column(Enum(EventSide, native_enum=False, length=8))
    data: Mapped[str] = mapped_column(Text)  # canonical JSON
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class EventCounter(Base):
    """The last `seq` given per account; its row lock serialises numbering."""

    __tablename__ = "event_counters"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # due at `next_at`
    DELIVERED = "delivered"  # the endpoint answered 2xx
    PARKED = "parked"  # failed for longer than the retry window: only a redelivery resends it


class WebhookEndpoint(Base):
    """An operator-registered URL receiving an account's events, signed with `secret`."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    side: Mapped[EventSide] = mapped_column(Enum(EventSide, native_enum=False, length=8))
    secret: Mapped[str] = mapped_column(String(128))  # HMAC key shared with the receiver
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Lease of the worker delivering this endpoint's queue (in sequence order).
    locked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    next_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # backoff


class WebhookDelivery(Base):
    """One event for one endpoint: its attempts and outcome."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_deliveries_queue", "endpoint_id", "status", "event_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"))
    status: Mapped[DeliveryStatus] = mapped_column(
        Enum(DeliveryStatus, native_enum=False, length=16), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    first_attempt_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_result: Mapped[str] = mapped_column(Text, default="")  # HTTP status or error
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class ReplacementStatus(enum.StrEnum):
    BUILT = "built"  # PSBT made, not yet co-signed (a retry signs exactly this one)
    SIGNED = "signed"  # co-signed, final transaction stored, not yet accepted by the node
    CURRENT = "current"  # accepted: the send's transaction now
    REPLACED = "replaced"  # an earlier transaction of the send, replaced by a fee bump
    REJECTED = "rejected"  # the node refused it; the send kept its transaction


class SendReplacement(Base):
    """The transactions of a fee-bumped send, the replaced ones kept (one may still confirm)."""

    __tablename__ = "send_replacements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    send_id: Mapped[int] = mapped_column(ForeignKey("sends.id"), index=True)
    txid: Mapped[str] = mapped_column(String(64), index=True)
    psbt: Mapped[str] = mapped_column(Text)
    tx_hex: Mapped[str | None] = mapped_column(Text, nullable=True)
    fee: Mapped[int] = mapped_column(BigInteger)
    change_value: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[ReplacementStatus] = mapped_column(
        Enum(ReplacementStatus, native_enum=False, length=16)
    )
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    at_height: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the watcher's tip
