"""The merchant site's own database: batches, withdrawals and a few settings.

Tables are created on start (`create_all`): a template site has no migrations to run.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    Enum,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from cc_common.reference import BatchVerdict as BatchStatus  # the reference's status


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def iso(when: datetime | None) -> str | None:
    """Reference time format: `2016-08-02T12:51:34` (UTC)."""
    return when.isoformat(timespec="seconds") if when else None


class AddressType(enum.IntEnum):
    """Reference `address_type` / `type`: which side of the account a batch belongs to."""

    HOT = 1
    COLD = 2


class WithdrawalStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for the V-device (served by GET /vtest)
    SENT = "sent"  # the V-device reported a tx_hash
    FAILED = "failed"  # the V-device reported failure (no tx_hash)


class Base(DeclarativeBase):
    pass


class Batch(Base):
    """1000 addresses fetched from custody; usable only once the V-device verified them."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("address_type", "batch_no"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address_type: Mapped[AddressType] = mapped_column(Enum(AddressType))
    batch_no: Mapped[int] = mapped_column(Integer)
    # [{"index": n, "address": "..."}] x 1000, exactly as custody handed them out.
    addresses: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    status: Mapped[BatchStatus] = mapped_column(Enum(BatchStatus), default=BatchStatus.UNVERIFIED)
    fetched_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    reported_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    def summary(self) -> dict[str, Any]:
        return {
            "type": self.address_type.name.lower(),
            "batch_no": self.batch_no,
            "status": self.status.name.lower(),
            "addresses": len(self.addresses),
            "fetched_at": iso(self.fetched_at),
            "reported_at": iso(self.reported_at),
        }


class Withdrawal(Base):
    """A send the merchant asked for: a "vtest" in the reference's words."""

    __tablename__ = "withdrawals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # order of arrival
    # Opaque and random, so ids never repeat even if this database is reset: the V-device
    # uses it as custody's `user_tx_no`, and custody treats a repeated one as already sent.
    vtest_id: Mapped[str] = mapped_column(String(40), unique=True)
    vtest_info: Mapped[str] = mapped_column(Text)
    outs: Mapped[str | None] = mapped_column(Text, nullable=True)  # None for a raw (demo) one
    dynamic: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[WithdrawalStatus] = mapped_column(
        Enum(WithdrawalStatus), default=WithdrawalStatus.PENDING
    )
    tx_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    def summary(self) -> dict[str, Any]:
        return {
            "vtest_id": self.vtest_id,
            "vtest_at": iso(self.created_at),
            "outs": self.outs,
            "dynamic": self.dynamic,
            "status": self.status.value,
            "tx_hash": self.tx_hash,
            "finished_at": iso(self.finished_at),
        }


class CustodyEvent(Base):
    """An event from custody, stored once per (account, seq): from a webhook or the catch-up."""

    __tablename__ = "custody_events"
    __table_args__ = (UniqueConstraint("account_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(40))
    side: Mapped[str] = mapped_column(String(8))
    data: Mapped[str] = mapped_column(Text)
    via: Mapped[str] = mapped_column(String(8))  # "webhook" or "poll"
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Deposit(Base):
    """A payment to the merchant as custody's events describe it; only `confirmed`/`final`
    ones may be credited to a customer."""

    __tablename__ = "deposits"
    __table_args__ = (UniqueConstraint("side", "txid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    side: Mapped[str] = mapped_column(String(8))
    txid: Mapped[str] = mapped_column(String(64))
    value: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    def summary(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "txid": self.txid,
            "value": self.value,
            "state": self.state,
            "updated_at": iso(self.updated_at),
        }


class Setting(Base):
    """Small key/value store: the custody tokens set by `merchant-site set-tokens`."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def make_session_factory(url: str) -> sessionmaker[Session]:
    """Engine and tables for `url`; SQLite gets WAL so the CLI can write while the site runs."""
    engine: Engine
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    else:
        engine = create_engine(url, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)
