"""Address derivation from the stored public keys, address batches and handing out addresses.

The two wallets of an account (docs/hsm-pair.md) are `wallet_core.wallets` wallets built from
the stored public keys and key origins:

- cold receiving: `ColdWallet`, BIP84 P2WPKH, `[rfp/84'/c'/0']<xpub>/<chain>/*`;
- hot: `HotWallet`, `wsh(sortedmulti(2, HOTPUB, [cfp/48'/c'/0'/2']COLDXPUB/<chain>/*,
  [rfp/48'/c'/0'/2']RECXPUB/<chain>/*))` whose hot cosigner is a `FixedKey` (a PKCS#11 token
  cannot derive BIP32 children).

A batch is proven by the cold HSM (through the hot HSM); its proof is verified here against
the cold identity key pinned at provisioning before anything is committed, so an HSM link or
a database that substitutes an address is caught at once, not only later by the V-device.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn

from sqlalchemy import Connection, Select, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from custody import journal
from custody.alerts import AlertKind, raise_alert
from custody.db import is_postgres, rowcount
from custody.errors import (
    BadRequest,
    BatchNotNext,
    BatchNotVerified,
    Conflict,
    HsmRefusedError,
    HsmUnavailableError,
    NotFound,
    ProofInvalid,
)
from custody.hsm_client import HotHsm, HsmRefused
from custody.models import (
    Account,
    Address,
    AddressBatch,
    BatchStatus,
    Chain,
    Wallet,
    utcnow,
)
from wallet_core.bip32 import parse_xpub
from wallet_core.chaincloud import BATCH_SIZE, batch_statement
from wallet_core.hashes import hash160, sha256
from wallet_core.messages import verify_message_pubkey
from wallet_core.networks import Network
from wallet_core.wallets import (
    AccountKey,
    ColdWallet,
    DerivedAddress,
    FixedKey,
    HotWallet,
    bip48_account_path,
    bip84_account_path,
)

log = logging.getLogger(__name__)

MAX_BATCH_NO = (2**31 // BATCH_SIZE) - 1


def wallet_name(wallet: Wallet) -> str:
    """The `wallet` parameter of the HSM RPC (`cold` / `hot`)."""
    return "cold" if wallet is Wallet.COLD else "hot"


def _account_key(xpub: str, fingerprint: str, path: tuple[int, ...]) -> AccountKey:
    """The stored xpub with its origin; without a stored fingerprint (accounts provisioned
    before the HSM returned it) the key is its own origin, as custody always wrote it then."""
    key = parse_xpub(xpub)
    if not fingerprint:
        return AccountKey(key, hash160(key.public_key)[:4], ())
    return AccountKey(key, bytes.fromhex(fingerprint), path)


@dataclass(frozen=True)
class AccountKeys:
    """An account's two wallets, built once from its stored public keys and key origins."""

    cold: ColdWallet
    hot: HotWallet

    @classmethod
    def from_account(cls, account: Account) -> AccountKeys:
        net = Network.from_name(account.network)
        multisig = bip48_account_path(net, 0)
        receiving = _account_key(
            account.cold_receiving_xpub, account.receiving_fingerprint, bip84_account_path(net, 0)
        )
        cosigner = _account_key(account.cold_cosigner_xpub, account.cosigner_fingerprint, multisig)
        recovery = _account_key(account.recovery_xpub, account.recovery_fingerprint, multisig)
        hot = FixedKey(bytes.fromhex(account.hot_pubkey))
        return cls(ColdWallet(receiving, net), HotWallet((hot, cosigner, recovery), net))

    def wallet(self, wallet: Wallet) -> ColdWallet | HotWallet:
        return self.cold if wallet is Wallet.COLD else self.hot

    def derive(self, wallet: Wallet, chain: Chain, start: int, count: int) -> list[DerivedAddress]:
        """Addresses start..start+count-1 of one chain (1000 in a few tens of ms)."""
        return self.wallet(wallet).derive_range(start, count, int(chain))

    def one(self, wallet: Wallet, chain: Chain, index: int) -> DerivedAddress:
        return self.derive(wallet, chain, index, 1)[0]

    def descriptor(self, wallet: Wallet, chain: Chain) -> str:
        """Watch-only descriptor (with checksum and key origins) for Bitcoin Core."""
        return self.wallet(wallet).descriptor(int(chain)).to_string()


_KEYS_CACHE: dict[tuple[Any, ...], AccountKeys] = {}


def account_keys(account: Account) -> AccountKeys:
    """Parsed keys of `account`, cached (public material never changes for an account)."""
    key = (
        account.id,
        account.network,
        account.cold_receiving_xpub,
        account.cold_cosigner_xpub,
        account.recovery_xpub,
        account.hot_pubkey,
        account.receiving_fingerprint,
        account.cosigner_fingerprint,
        account.recovery_fingerprint,
    )
    keys = _KEYS_CACHE.get(key)
    if keys is None:
        if len(_KEYS_CACHE) > 10_000:
            _KEYS_CACHE.clear()
        keys = _KEYS_CACHE[key] = AccountKeys.from_account(account)
    return keys


# -- batches ---------------------------------------------------------------------------
def check_batch_no(batch_no: int) -> None:
    if not 0 <= batch_no <= MAX_BATCH_NO:
        raise BadRequest(f"batch_no must be between 0 and {MAX_BATCH_NO}")


def batch_addresses(session: Session, batch: AddressBatch) -> list[dict[str, object]]:
    rows = session.execute(
        select(Address.index, Address.address)
        .where(Address.batch_id == batch.id)
        .order_by(Address.index)
    ).all()
    return [{"index": i, "address": a} for i, a in rows]


def _find_batch(session: Session, account_id: int, wallet: Wallet, n: int) -> AddressBatch | None:
    return session.execute(
        select(AddressBatch).where(
            AddressBatch.account_id == account_id,
            AddressBatch.wallet == wallet,
            AddressBatch.batch_no == n,
        )
    ).scalar_one_or_none()


def next_batch_no(session: Session | Connection, account_id: int, wallet: Wallet) -> int:
    top = session.execute(
        select(func.max(AddressBatch.batch_no)).where(
            AddressBatch.account_id == account_id, AddressBatch.wallet == wallet
        )
    ).scalar()
    return 0 if top is None else int(top) + 1


def get_or_create_batch(
    factory: sessionmaker[Session],
    hsm: HotHsm,
    config: Config,
    account_id: int,
    wallet: Wallet,
    batch_no: int,
) -> list[dict[str, object]]:
    """Batch `batch_no` of one side: the stored one, or the next one derived, proven by the
    cold HSM, verified here, then stored with its 1000 addresses.

    Our derivation (and on PostgreSQL the uncommitted rows) overlap the cold HSM's round
    trip, which derives the same batch on the other side: figures in benchmarks/RESULTS.md."""
    check_batch_no(batch_no)
    with factory() as session:
        batch = _find_batch(session, account_id, wallet, batch_no)
        if batch is not None:
            return batch_addresses(session, batch)
        nxt = next_batch_no(session, account_id, wallet)
        if batch_no != nxt:
            raise BatchNotNext(f"batch {batch_no} cannot be created yet: the next batch is {nxt}")
        account = session.get(Account, account_id)
        if account is None:
            raise NotFound("account not found")
        keys = account_keys(account)
        identity = bytes.fromhex(account.cold_identity_pubkey)
        session.rollback()  # no transaction is held during the HSM round trip
    # The cold HSM derives the batch on its own machine to prove it: ask first and derive our
    # copy while it works, so the request costs one derivation's time, not two.
    asking = _proof_pool().submit(_ask_proof, hsm, account_id, wallet, batch_no)
    try:
        with factory() as session:
            new: AddressBatch | None = None
            try:
                derived = keys.derive(wallet, Chain.RECEIVE, batch_no * BATCH_SIZE, BATCH_SIZE)
                content = batch_statement(
                    wallet_name(wallet), account_id, batch_no, [d.address for d in derived]
                )
                if is_postgres(session):
                    # PostgreSQL: the rows are written while the cold HSM works, and committed
                    # only once its proof verifies (nobody sees them before). The journal's
                    # lock is taken only after the proof is in. SQLite would hold its one
                    # write lock for the whole round trip: there the rows are written after.
                    session.begin()
                    new = _insert_batch(session, account_id, wallet, batch_no, derived)
            except BaseException:
                asking.exception()  # let the round trip end; its outcome no longer matters
                raise
            proof = asking.result()
            if not verify_message_pubkey(identity, content, proof):
                session.rollback()
                _refuse_batch(factory, config, account_id, wallet, batch_no)
            if new is None:
                session.begin()
                new = _insert_batch(session, account_id, wallet, batch_no, derived)
            _record_proof(session, new, proof, content)
            session.commit()
    except IntegrityError:
        # Created concurrently by another request: answer that one.
        with factory() as session:
            batch = _find_batch(session, account_id, wallet, batch_no)
            if batch is None:
                raise
            return batch_addresses(session, batch)
    log.info("account %d: %s batch %d created and proven", account_id, wallet.name, batch_no)
    return [{"index": d.index, "address": d.address} for d in derived]


_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _proof_pool() -> ThreadPoolExecutor:
    """Threads for the HSM's proof round trips (one per process, made again after a fork)."""
    global _POOL  # noqa: PLW0603 (one per process)
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="batch-proof")
            _POOL = (os.getpid(), pool)
        return _POOL[1]


def _ask_proof(hsm: HotHsm, account_id: int, wallet: Wallet, batch_no: int) -> str:
    """The cold HSM's proof of one batch (its signature over the batch statement)."""
    try:
        return str(hsm.prove_batch(account_id, wallet_name(wallet), batch_no))
    except HsmUnavailableError as exc:
        raise HsmUnavailableError(f"cannot prove the batch: {exc.message}") from None
    except HsmRefused as exc:
        raise HsmRefusedError(f"the HSM refused to prove the batch: {exc.message}") from None


def _refuse_batch(
    factory: sessionmaker[Session],
    config: Config,
    account_id: int,
    wallet: Wallet,
    batch_no: int,
) -> NoReturn:
    """A proof that does not verify against the cold identity key: alert, refuse the batch."""
    log.error(
        "proof of %s batch %d of account %d does not verify", wallet.name, batch_no, account_id
    )
    with factory() as session, session.begin():
        raise_alert(
            session,
            config,
            AlertKind.BATCH_FAILED,
            f"{wallet_name(wallet)} batch {batch_no}: the cold HSM's proof does not match "
            "the derived addresses; batch refused",
            account_id,
        )
    raise ProofInvalid(
        f"batch {batch_no} refused: its proof does not verify against the account's cold "
        "identity key"
    )


def _insert_batch(
    session: Session,
    account_id: int,
    wallet: Wallet,
    batch_no: int,
    derived: list[DerivedAddress],
) -> AddressBatch:
    """Insert the batch and its address rows (its proof is recorded by `_record_proof`)."""
    batch = AddressBatch(
        account_id=account_id,
        wallet=wallet,
        batch_no=batch_no,
        status=BatchStatus.PROVEN,
        proof="",
    )
    session.add(batch)
    session.flush()
    _insert_addresses(session, account_id, wallet, batch.id, derived)
    return batch


def _record_proof(session: Session, batch: AddressBatch, proof: str, content: str) -> None:
    """The verified proof on the batch row and the batch's journal entries (caller commits)."""
    batch.proof = proof
    info = {
        "wallet": wallet_name(batch.wallet),
        "batch_no": batch.batch_no,
        "first_index": batch.batch_no * BATCH_SIZE,
        "content_sha256": sha256(content.encode()).hex(),
    }
    journal.append(session, journal.JournalKind.BATCH_CREATED, batch.account_id, info)
    journal.append(
        session, journal.JournalKind.BATCH_PROVEN, batch.account_id, {**info, "proof": proof}
    )


_COPY_ADDRESSES = (
    "COPY addresses (account_id, wallet, chain, index, address, script_pubkey, batch_id) FROM STDIN"
)


def _insert_addresses(
    session: Session, account_id: int, wallet: Wallet, batch_id: int, derived: list[DerivedAddress]
) -> None:
    """A batch's address rows in the session's transaction: one COPY on PostgreSQL (the
    ORM's multi-row insert spent ~30 ms of Python per 1000 rows on its parameters), the
    ORM's insert elsewhere. The enum columns hold the members' names, as the ORM writes them."""
    if not is_postgres(session):
        session.execute(
            insert(Address),
            [
                {
                    "account_id": account_id,
                    "wallet": wallet,
                    "chain": Chain.RECEIVE,
                    "index": d.index,
                    "address": d.address,
                    "script_pubkey": d.script_pubkey,
                    "batch_id": batch_id,
                }
                for d in derived
            ],
        )
        return
    raw = session.connection().connection.driver_connection
    if raw is None:  # pragma: no cover - a live session's connection always has one
        raise RuntimeError("no database connection")
    with raw.cursor() as cur, cur.copy(_COPY_ADDRESSES) as copy:
        copy.write(_copy_text(account_id, wallet, batch_id, derived))


def _copy_text(
    account_id: int, wallet: Wallet, batch_id: int, derived: list[DerivedAddress]
) -> bytes:
    """The rows in COPY's text format, built in one pass: psycopg's `write_row` formats each
    row in Python (2.6 ms of CPU a batch, 0.9 ms this way). Our own values only: integers,
    enum names, bech32 addresses (no tab, newline or backslash) and a bytea as `\\x` hex."""
    head = f"{account_id}\t{wallet.name}\t{Chain.RECEIVE.name}\t"
    tail = f"\t{batch_id}\n"
    return "".join(
        f"{head}{d.index}\t{d.address}\t\\\\x{d.script_pubkey.hex()}{tail}" for d in derived
    ).encode("ascii")


def set_batch_status(
    session: Session,
    config: Config,
    account_id: int,
    wallet: Wallet,
    batch_no: int,
    status: BatchStatus,
) -> AddressBatch:
    """Record the V-device's verdict on a batch. FAILED is final; VERIFIED only from PROVEN."""
    check_batch_no(batch_no)
    batch = session.execute(
        select(AddressBatch)
        .where(
            AddressBatch.account_id == account_id,
            AddressBatch.wallet == wallet,
            AddressBatch.batch_no == batch_no,
        )
        .with_for_update()
    ).scalar_one_or_none()
    if batch is None:
        raise NotFound(f"{wallet_name(wallet)} batch {batch_no} does not exist")
    if batch.status is status:
        return batch
    if batch.status is BatchStatus.FAILED:
        raise Conflict(f"batch {batch_no} already failed verification; it stays failed")
    batch.status = status
    batch.status_at = utcnow()
    kind = (
        journal.JournalKind.BATCH_VERIFIED
        if status is BatchStatus.VERIFIED
        else journal.JournalKind.BATCH_FAILED
    )
    journal.append(session, kind, account_id, {"wallet": wallet_name(wallet), "batch_no": batch_no})
    if status is BatchStatus.FAILED:
        raise_alert(
            session,
            config,
            AlertKind.BATCH_FAILED,
            f"the V-device reported {wallet_name(wallet)} batch {batch_no} as FAILED; "
            "its addresses will never be handed out",
            account_id,
        )
    session.flush()
    return batch


def usable_statuses(require_verified: bool) -> Sequence[BatchStatus]:
    if require_verified:
        return (BatchStatus.VERIFIED,)
    return (BatchStatus.VERIFIED, BatchStatus.PROVEN)


@functools.cache
def _next_stmt(require_verified: bool) -> Select[int, int, str]:
    return (
        select(Address.id, Address.index, Address.address)
        .join(AddressBatch, Address.batch_id == AddressBatch.id)
        .where(
            Address.account_id == bindparam("account_id"),
            Address.wallet == bindparam("wallet"),
            Address.chain == Chain.RECEIVE,
            Address.handed_out_at.is_(None),
            Address.index >= bindparam("start"),
            AddressBatch.status.in_(usable_statuses(require_verified)),
        )
        .order_by(Address.index)
        .limit(1)
    )


def next_address(
    conn: Session | Connection,
    account_id: int,
    wallet: Wallet,
    *,
    require_verified: bool,
    take: bool,
    start_hint: int | None = None,
) -> tuple[int, str]:
    """The lowest receiving address not yet handed out, from usable batches.

    With `take`, it is marked handed out (a conditional update, so two concurrent callers
    never get the same address); `conn` must then be a session in a write transaction.
    """
    attr = "cold_receive_next" if wallet is Wallet.COLD else "hot_receive_next"
    base = _next_stmt(require_verified)
    params = {"account_id": account_id, "wallet": wallet}
    for _ in range(20):
        # Fast path: addresses are handed out in index order, so start at the account's next
        # index (an index lookup however many were handed out); fall back to a full search
        # for addresses left behind in a batch verified late.
        nxt = start_hint
        if nxt is None or take:
            nxt = conn.execute(
                select(getattr(Account, attr)).where(Account.id == account_id)
            ).scalar_one()
        row = conn.execute(base, {**params, "start": nxt}).first()
        if row is None:
            row = conn.execute(base, {**params, "start": 0}).first()
        if row is None:
            raise _no_address(conn, account_id, wallet, require_verified)
        if not take:
            return int(row[1]), str(row.address)
        done = conn.execute(
            update(Address)
            .where(Address.id == row.id, Address.handed_out_at.is_(None))
            .values(handed_out_at=utcnow())
        )
        if rowcount(done) == 1:
            conn.execute(
                update(Account)
                .where(Account.id == account_id, getattr(Account, attr) < row[1] + 1)
                .values({attr: row[1] + 1})
            )
            return int(row[1]), str(row.address)
    raise Conflict("too many concurrent requests for a new address; retry")


def _no_address(
    session: Session | Connection, account_id: int, wallet: Wallet, require_verified: bool
) -> Conflict | BatchNotVerified:
    waiting = session.execute(
        select(AddressBatch.batch_no)
        .where(
            AddressBatch.account_id == account_id,
            AddressBatch.wallet == wallet,
            AddressBatch.status == BatchStatus.PROVEN,
        )
        .order_by(AddressBatch.batch_no)
        .limit(1)
    ).scalar()
    if waiting is not None and require_verified:
        return BatchNotVerified(
            f"no verified address left: batch {waiting} must be verified by the V-device first "
            f"(POST /address/batch/{waiting}/status)"
        )
    nxt = next_batch_no(session, account_id, wallet)
    return BatchNotVerified(
        f"no address left: request batch {nxt} (GET /address/batch/{nxt}) and have the "
        "V-device verify it"
    )
