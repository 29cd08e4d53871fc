"""What the site does with its database, shared by the views and the CLI.

State changes the V-device reports are conditional updates (`... WHERE status = waiting`), so
a finished batch or withdrawal cannot change again, even under two concurrent reports.
Repeating the very same report is accepted and changes nothing, so a V-device that crashed
after posting can safely post again.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cc_common.vtest import encrypt_vtest, vtest_plaintext
from examples.merchant_site.custody_client import CustodyClient
from examples.merchant_site.errors import BadRequest, Conflict
from examples.merchant_site.models import (
    AddressType,
    Batch,
    BatchStatus,
    Setting,
    Withdrawal,
    WithdrawalStatus,
    utcnow,
)
from wallet_core.chaincloud import format_outs, parse_outs
from wallet_core.errors import WalletError
from wallet_core.networks import Network

BATCH_SIZE = 1000


# -- batches


def get_batch(s: Session, address_type: AddressType, batch_no: int) -> Batch | None:
    return s.scalars(
        select(Batch).where(Batch.address_type == address_type, Batch.batch_no == batch_no)
    ).one_or_none()


def oldest_unverified_batch(s: Session) -> Batch | None:
    q = select(Batch).where(Batch.status == BatchStatus.UNVERIFIED).order_by(Batch.id).limit(1)
    return s.scalars(q).first()


def save_batch(
    s: Session, address_type: AddressType, batch_no: int, addresses: list[dict[str, Any]]
) -> Batch:
    """Store a batch fetched from custody, to be verified by the V-device.

    A verified batch is never replaced: custody handing out different addresses for it later
    is exactly what the V-device exists to catch. An unverified or failed one is replaced and
    waits for (another) verification.
    """
    batch = get_batch(s, address_type, batch_no)
    if batch is None:
        batch = Batch(address_type=address_type, batch_no=batch_no, addresses=addresses)
        s.add(batch)
    elif batch.status is BatchStatus.VERIFIED:
        if batch.addresses != addresses:
            raise Conflict(
                f"{address_type.name.lower()} batch {batch_no} is verified, but custody now "
                "hands out different addresses for it: not replaced (is the API hacked?)"
            )
    else:
        batch.addresses = addresses
        batch.status = BatchStatus.UNVERIFIED
        batch.fetched_at = utcnow()
        batch.reported_at = None
    s.flush()
    return batch


def fetch_batch(
    s: Session, custody: CustodyClient, token: str, address_type: AddressType, batch_no: int
) -> Batch:
    """Fetch batch `batch_no` of one side from custody and queue it for the V-device."""
    return save_batch(
        s, address_type, batch_no, download_batch(custody, token, address_type, batch_no)
    )


def download_batch(
    custody: CustodyClient, token: str, address_type: AddressType, batch_no: int
) -> list[dict[str, Any]]:
    """The batch from custody, before any database work: no transaction waits on custody."""
    if not token:
        side = address_type.name.lower()
        raise BadRequest(f"no {side} token: run `merchant-site set-tokens --{side} TOKEN` first")
    return custody.fetch_batch(token, batch_no)


def report_batch(s: Session, address_type: AddressType, batch_no: int, status: BatchStatus) -> None:
    """The V-device's verdict on a batch (reference `POST /batch`)."""
    result = s.execute(
        update(Batch)
        .where(
            Batch.address_type == address_type,
            Batch.batch_no == batch_no,
            Batch.status == BatchStatus.UNVERIFIED,
        )
        .values(status=status, reported_at=utcnow())
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]  # an UPDATE gives a CursorResult
        return
    batch = get_batch(s, address_type, batch_no)
    name = f"{address_type.name.lower()} batch {batch_no}"
    if batch is None:
        raise BadRequest(f"unknown batch: the site holds no {name}")
    if batch.status is not status:
        raise Conflict(f"{name} is already {batch.status.name.lower()}; it cannot change")


def tamper_batch(
    s: Session, address_type: AddressType, batch_no: int, position: int, address: str
) -> Batch:
    """DEMO/ATTACK TOOL: substitute one address and put the batch back in the V-device's queue.

    This is what a site fed by a hacked API would hold; the V-device must mark it failed.
    """
    batch = get_batch(s, address_type, batch_no)
    if batch is None:
        raise BadRequest(f"unknown batch: the site holds no {address_type.name.lower()} batch")
    if not 0 <= position < len(batch.addresses):
        raise BadRequest(f"position must be 0-{len(batch.addresses) - 1}")
    addresses = [dict(a) for a in batch.addresses]
    addresses[position]["address"] = address
    batch.addresses = addresses
    batch.status = BatchStatus.UNVERIFIED
    batch.reported_at = None
    s.flush()
    return batch


def find_in_verified_batch(
    s: Session, address_type: AddressType, index: int, address: str
) -> Batch | None:
    """The verified batch holding `address` at `index`, if any: only those may be used."""
    batch = get_batch(s, address_type, index // BATCH_SIZE)
    if batch is None or batch.status is not BatchStatus.VERIFIED:
        return None
    entry = batch.addresses[index % BATCH_SIZE]
    return batch if entry == {"index": index, "address": address} else None


def list_batches(s: Session) -> Sequence[Batch]:
    return s.scalars(select(Batch).order_by(Batch.id)).all()


# -- withdrawals (the reference's "vtest")


def enqueue_withdrawal(
    s: Session, outs: str, dynamic: int, password: str, network: Network
) -> Withdrawal:
    """Check the outputs, encrypt the request for the V-device (section 2), queue it."""
    try:
        canonical = format_outs(parse_outs(outs, network))
    except WalletError as exc:
        raise BadRequest(f"outs: {exc.message}") from None
    blob = encrypt_vtest(vtest_plaintext(canonical, dynamic), password)
    return add_withdrawal(s, blob, canonical, dynamic)


def add_withdrawal(
    s: Session, vtest_info: str, outs: str | None, dynamic: int | None
) -> Withdrawal:
    w = Withdrawal(
        vtest_id="w" + secrets.token_hex(8), vtest_info=vtest_info, outs=outs, dynamic=dynamic
    )
    s.add(w)
    s.flush()
    return w


def oldest_pending_withdrawal(s: Session, skip: Sequence[str] = ()) -> Withdrawal | None:
    q = (
        select(Withdrawal)
        .where(Withdrawal.status == WithdrawalStatus.PENDING, Withdrawal.vtest_id.not_in(skip))
        .order_by(Withdrawal.id)
        .limit(1)
    )
    return s.scalars(q).first()


def report_withdrawal(s: Session, vtest_id: str, tx_hash: str | None) -> None:
    """The V-device's outcome (reference `POST /vtest`): a tx hash, or None for failed."""
    status = WithdrawalStatus.SENT if tx_hash else WithdrawalStatus.FAILED
    result = s.execute(
        update(Withdrawal)
        .where(Withdrawal.vtest_id == vtest_id, Withdrawal.status == WithdrawalStatus.PENDING)
        .values(status=status, tx_hash=tx_hash, finished_at=utcnow())
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]  # an UPDATE gives a CursorResult
        return
    w = s.scalars(select(Withdrawal).where(Withdrawal.vtest_id == vtest_id)).one_or_none()
    if w is None:
        raise BadRequest(f"unknown vtest_id {vtest_id!r}")
    if w.status is not status or w.tx_hash != tx_hash:
        raise Conflict(
            f"vtest {vtest_id} is already finished ({w.status.value}); it cannot be updated again"
        )


def list_withdrawals(s: Session) -> Sequence[Withdrawal]:
    return s.scalars(select(Withdrawal).order_by(Withdrawal.id)).all()


# -- settings


def get_setting(s: Session, key: str) -> str | None:
    row = s.get(Setting, key)
    return row.value if row else None


def set_setting(s: Session, key: str, value: str) -> None:
    row = s.get(Setting, key)
    if row is None:
        s.add(Setting(key=key, value=value))
    else:
        row.value = value
