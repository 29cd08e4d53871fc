"""What the operator console shows: one read of every part of the deployment, part by part.

Each part is read on its own and never raises: a part that cannot be read (the node is down,
the hot HSM does not answer) comes back with `error` set, so one dead dependency shows as one
red panel instead of a blank page. Problems that need the operator (a frozen account, a stuck
send, a dead process, a lagging watcher) are flagged where they are found, so the page, the
`/health` view and the metrics all agree on what is wrong.

Nothing here reads a secret into what it returns: balances and counts only, never a token,
PIN or key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cc_common.config import Config
from cc_common.errors import CustodyError
from custody import freezes, journal
from custody.balances import confirmed_balance_at, tip_height, unconfirmed_balance
from custody.chain_progress import read_progress
from custody.models import (
    Account,
    AccountStatus,
    AddressBatch,
    Alert,
    BatchStatus,
    ChainTx,
    JournalEntry,
    Send,
    SendStatus,
    Wallet,
)

log = logging.getLogger(__name__)

# Sends in these states are still on their way to the chain.
OPEN_SEND_STATES = tuple(
    s
    for s in SendStatus
    if s not in (SendStatus.BROADCAST, SendStatus.CONFIRMED, SendStatus.FAILED)
)


@dataclass(frozen=True)
class ConsoleSettings:
    """`[operator]` thresholds that decide what counts as a problem."""

    stuck_send_seconds: float = 600.0
    watcher_lag_blocks: int = 3
    recent_alerts: int = 10

    @classmethod
    def from_config(cls, config: Config) -> ConsoleSettings:
        d = cls()
        if not config.has_section("operator"):
            return d
        s = config.section("operator")
        return cls(
            stuck_send_seconds=s.float("stuck_send_seconds", d.stuck_send_seconds),
            watcher_lag_blocks=s.int("watcher_lag_blocks", d.watcher_lag_blocks),
            recent_alerts=s.int("recent_alerts", d.recent_alerts),
        )


@dataclass
class Part:
    """One panel: its rows, whether it could be read, and what in it needs the operator."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems


def _age(at: datetime | None, now: float) -> float | None:
    if at is None:
        return None
    return max(0.0, now - at.replace(tzinfo=UTC).timestamp())


class IncrementalJournalCheck:
    """Verifies the journal's hash chain once, then only the entries added since.

    The first check walks the whole chain; later ones start after the last verified entry, so
    a refresh every few seconds costs what was appended, not the journal's length. A failed
    check starts over from the first entry next time (a record appended during the walk can
    look like a removed one for an instant; a real break shows again on the full walk).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._last_id = 0
        self._last_hash = journal.GENESIS
        self._count = 0

    def check(self, session: Session) -> journal.VerifyResult:
        with self._lock:
            result = journal.verify(
                session,
                after_id=self._last_id,
                prev_hash=self._last_hash,
                verified_before=self._count,
            )
            if not result.ok:
                total = self._count + result.count
                self._reset()
                return journal.VerifyResult(False, total, result.first_bad_id, result.reason)
            if result.last_id is not None:
                self._last_id, self._last_hash = result.last_id, result.last_hash
            self._count += result.count
            return journal.VerifyResult(True, self._count)


class Snapshotter:
    """Reads every part; `processes`, `hot_hsm` and `node` are injected so tests can use the
    real ones against a running deployment and the console can run without the supervisor."""

    def __init__(
        self,
        config: Config,
        factory: sessionmaker[Session],
        *,
        read_processes: Callable[[], list[dict[str, Any]]],
        hot_hsm: Any,
        node: Any,
        settings: ConsoleSettings | None = None,
    ) -> None:
        self.config = config
        self.factory = factory
        self.read_processes = read_processes
        self.hot_hsm = hot_hsm
        self.node = node
        self.settings = settings or ConsoleSettings.from_config(config)
        self.journal_check = IncrementalJournalCheck()

    # -- parts -------------------------------------------------------------------------------

    def processes(self) -> Part:
        part = Part("processes")
        rows = self.read_processes()
        part.data["rows"] = rows
        for r in rows:
            if r.get("state") != "ready":
                part.problems.append(f"process {r.get('name')} is {r.get('state')}")
        return part

    def hsms(self) -> tuple[Part, Part, Part]:
        """The HSM pair, the serial link and SMS: all come through the hot HSM's RPC."""
        hsm, link, sms = Part("hsms"), Part("link"), Part("sms")
        try:
            health = self.hot_hsm.health()
        except CustodyError as exc:
            for p in (hsm, link, sms):
                p.error = f"hot HSM: {exc.message}"
            return hsm, link, sms
        hot = {
            "token_present": health.get("token_present", True),
            "pin_tries_left": health.get("pin_tries_left"),
            "audit_head": health.get("audit_head", ""),
            "accounts": health.get("accounts", 0),
        }
        cold_reachable = bool(health.get("cold_reachable"))
        hsm.data["hot"] = hot
        hsm.data["cosign"] = health.get("cosign")
        hsm.data["hot_refusals"] = health.get("refusals", {})
        hsm.data["cold"] = {"reachable": cold_reachable}
        if not hot["token_present"]:
            hsm.problems.append("hot HSM token missing")
        if hot["pin_tries_left"] is not None and int(hot["pin_tries_left"]) < 3:
            hsm.problems.append(f"hot HSM: {hot['pin_tries_left']} PIN tries left")
        link.data["stats"] = health.get("link", {})
        link.data["last_error"] = health.get("link_last_error", "")
        failures = {
            k: v
            for k, v in link.data["stats"].items()
            if any(w in k for w in ("rejected", "unauthenticated", "stale", "gave up", "timeouts"))
        }
        link.data["failures"] = failures
        if not cold_reachable:
            link.problems.append("the cold HSM does not answer over the serial link")
            sms.error = "cold HSM unreachable"
            return hsm, link, sms
        try:
            cold = self.hot_hsm.cold_status()
        except CustodyError as exc:
            sms.error = f"cold status: {exc.message}"
            return hsm, link, sms
        hsm.data["cold"].update(
            {
                "accounts": cold.get("accounts", []),
                "frozen": cold.get("frozen", []),
                "pending_alerts": cold.get("alerts", 0),
                "audit_head": cold.get("audit_head", ""),
                "pin_tries_left": cold.get("pin_tries_left"),
                "refusals": cold.get("link_refusals", {}),
            }
        )
        sms.data["modems"] = cold.get("modems", [])
        sms.data["queued"] = cold.get("sms_queued", 0)
        sms.data["counters"] = cold.get("sms_counters", {})
        now = time.time()
        channels = []
        for ch in cold.get("channels", []):
            expires_in = float(ch.get("expires_at", 0)) - now
            channels.append({**ch, "expires_in": expires_in})
            if ch.get("state") == "live" and expires_in < 0:
                sms.problems.append(f"account {ch.get('account')}: channel expired")
        sms.data["channels"] = channels
        for m in sms.data["modems"]:
            if m.get("registered") is False:
                sms.problems.append(f"modem {m.get('name')} is not registered")
        return hsm, link, sms

    def accounts(self, session: Session, tip: int | None, cold_frozen: dict[int, str]) -> Part:
        part = Part("accounts")
        now = time.time()
        rows = []
        open_sends = session.execute(
            select(
                Send.account_id, Send.user_tx_no, Send.status, Send.request_at, Send.failure_reason
            )
            .where(Send.status.in_(OPEN_SEND_STATES))
            .order_by(Send.request_at)
        ).all()
        verified = dict(
            session.execute(
                select(AddressBatch.account_id, func.max(AddressBatch.status_at))
                .where(AddressBatch.status == BatchStatus.VERIFIED)
                .group_by(AddressBatch.account_id)
            ).all()
        )
        for acct in session.execute(select(Account).order_by(Account.id)).scalars():
            sends = []
            for s in (s for s in open_sends if s.account_id == acct.id):
                age = _age(s.request_at, now) or 0.0
                stuck = age > self.settings.stuck_send_seconds
                sends.append(
                    {
                        "user_tx_no": s.user_tx_no,
                        "state": str(s.status),
                        "age": age,
                        "stuck": stuck,
                        "reason": s.failure_reason,
                    }
                )
                if stuck:
                    part.problems.append(
                        f"account {acct.id}: send {s.user_tx_no} stuck in {s.status} "
                        f"for {int(age)} s"
                    )
            frozen_by = []
            if acct.status == AccountStatus.FROZEN:
                record = freezes.get_record(session, acct.id)
                who = f"custody ({record.origin.value})" if record is not None else "custody"
                frozen_by.append((who, acct.frozen_reason))
            if acct.id in cold_frozen:
                frozen_by.append(("cold HSM", cold_frozen[acct.id]))
            if frozen_by:
                part.problems.append(f"account {acct.id} is frozen")
            rows.append(
                {
                    "id": acct.id,
                    "name": acct.name,
                    "frozen": bool(frozen_by),
                    "frozen_by": frozen_by,
                    "cold_balance": confirmed_balance_at(session, tip, acct.id, Wallet.COLD),
                    "hot_balance": confirmed_balance_at(session, tip, acct.id, Wallet.HOT),
                    "cold_incoming": unconfirmed_balance(session, acct.id, Wallet.COLD),
                    "hot_incoming": unconfirmed_balance(session, acct.id, Wallet.HOT),
                    "deposits": session.execute(
                        select(func.count(ChainTx.id)).where(
                            ChainTx.account_id == acct.id, ChainTx.value > 0
                        )
                    ).scalar_one(),
                    "sends": sends,
                    "last_verified_age": _age(verified.get(acct.id), now),
                }
            )
        part.data["rows"] = rows
        part.data["sends_by_state"] = {
            str(state): n
            for state, n in session.execute(
                select(Send.status, func.count(Send.id)).group_by(Send.status)
            ).all()
        }
        return part

    def alerts(self, session: Session) -> Part:
        part = Part("alerts")
        rows = session.execute(
            select(Alert).order_by(Alert.id.desc()).limit(self.settings.recent_alerts)
        ).scalars()
        part.data["rows"] = [
            {
                "at": a.at.strftime("%Y-%m-%d %H:%M:%S"),
                "kind": a.kind,
                "account": a.account_id,
                "message": a.message,
                "delivered": a.delivered,
            }
            for a in rows
        ]
        part.data["by_kind"] = dict(
            session.execute(select(Alert.kind, func.count(Alert.id)).group_by(Alert.kind)).all()
        )
        return part

    def journal(self, session: Session) -> Part:
        part = Part("journal")
        head = session.execute(
            select(JournalEntry.id, JournalEntry.hash, JournalEntry.at, JournalEntry.kind)
            .order_by(JournalEntry.id.desc())
            .limit(1)
        ).first()
        result = self.journal_check.check(session)
        part.data = {
            "head_id": head.id if head else 0,
            "head_hash": head.hash if head else journal.GENESIS,
            "head_kind": str(head.kind) if head else "",
            "verified": result.ok,
            "count": result.count,
            "detail": result.describe(),
        }
        if not result.ok:
            part.problems.append(result.describe())
        return part

    def chain(self, watcher_height: int | None) -> Part:
        part = Part("chain")
        part.data["watcher_height"] = watcher_height
        try:
            tip = int(self.node.call("getblockcount"))
        except CustodyError as exc:
            part.error = f"node: {exc.message}"
            return part
        behind = tip - watcher_height if watcher_height is not None else tip + 1
        part.data.update({"node_tip": tip, "behind": behind})
        progress = read_progress(self.config.run_dir)  # the worker's catch-up rate and rescan
        if progress is not None:
            part.data["blocks_per_s"] = progress.blocks_per_s
            part.data["rescan_left"] = progress.rescan_left
        if behind > self.settings.watcher_lag_blocks:
            part.problems.append(f"the watcher is {behind} blocks behind the node")
        return part

    # -- everything --------------------------------------------------------------------------

    def take(self) -> dict[str, Part]:
        """Every part, each read on its own."""
        parts: dict[str, Part] = {}
        parts["processes"] = self._guard("processes", self.processes)
        hsm, link, sms = self.hsms()
        parts.update(hsms=hsm, link=link, sms=sms)
        cold_frozen = {int(a): str(r) for a, r in hsm.data.get("cold", {}).get("frozen", [])}
        watcher_height: int | None = None
        try:
            with self.factory() as session:
                watcher_height = tip_height(session)
                parts["accounts"] = self.accounts(session, watcher_height, cold_frozen)
                parts["alerts"] = self.alerts(session)
                parts["journal"] = self.journal(session)
        except Exception as exc:  # noqa: BLE001 (the database is one dependency among several)
            log.warning("operator console: database unreadable: %s", type(exc).__name__)
            for name in ("accounts", "alerts", "journal"):
                parts[name] = Part(name, error=f"database: {type(exc).__name__}")
        parts["chain"] = self.chain(watcher_height)
        return parts

    @staticmethod
    def _guard(name: str, read: Callable[[], Part]) -> Part:
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 (one unreadable part must not blank the page)
            log.warning("operator console: %s unreadable: %s", name, exc)
            return Part(name, error=f"{type(exc).__name__}: {exc}")
