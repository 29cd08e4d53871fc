"""The spending policy on the phone, and the owner's approvals of the sends that need one.

The phone applies the same rules as the cold HSM (`cc_common.spending_policy.judge`) so that
it refuses early and tells the owner why; the cold HSM enforces them whatever the phone does.
A send the policy wants approved is held: the owner gets a summary (amount, destinations and a
short id) and the send is signed only after `CC:APPROVE:<id>:<code>` with a valid one-time code.
Only then is the approval flag put inside what the phone signs (`approved_request_string`),
which is how the cold HSM learns that the owner said yes. A held send that is not approved
within `approval_timeout` is refused.

A held send does not stop the queue: its encrypted request is kept here and the site is asked
for the next withdrawal past the held ones (`GET /vtest?skip=`); once the owner answers (or the
time runs out) it is taken up before any newer withdrawal. Until then it counts against the
rolling limits as if it had been signed (`history`), so the sends that go meanwhile never use
up what the held one needs once approved; the cold HSM counts only what it co-signs. At most
`MAX_HELD` sends wait at once: a further one needing approval is refused, so a hacked site
cannot flood the owner with requests.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cc_common.spending_policy import SpendHistory, SpendingPolicy, judge
from vdevice import policy_changes
from vdevice.phone import Phone
from vdevice.state import Outcome, State

log = logging.getLogger(__name__)

APPROVAL_ID_BYTES = 3  # six hex digits: short to type, unique among the few held at a time
MAX_HELD = 5

SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, vtest_id TEXT NOT NULL UNIQUE, outs TEXT NOT NULL,
    total_sat INTEGER NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL,
    decided_at REAL
);
"""


class ApprovalState(enum.StrEnum):
    HELD = "held"
    APPROVED = "approved"
    REJECTED = "rejected"  # the owner said no
    EXPIRED = "expired"


@dataclass(frozen=True)
class Decision:
    """`refusal`: refuse with this reason; `held`: wait for the owner; else sign, with the
    approval flag when `approved`."""

    refusal: str | None = None
    held: bool = False
    approved: bool = False


def ensure_schema(state: State) -> None:
    state.db.executescript(SCHEMA)
    columns = {r["name"] for r in state.db.execute("PRAGMA table_info(approvals)")}
    if "blob" not in columns:  # the held request (encrypted as the site gave it)
        state.db.execute("ALTER TABLE approvals ADD COLUMN blob TEXT NOT NULL DEFAULT ''")


class SendPolicy:
    """The local policy check and the approvals table."""

    def __init__(
        self, state: State, phone: Phone, policy: SpendingPolicy, approval_timeout: float
    ) -> None:
        self.state = state
        self.phone = phone
        self.configured = policy
        self.approval_timeout = approval_timeout
        ensure_schema(state)

    @property
    def policy(self) -> SpendingPolicy:
        """The configured policy, or the one the owner set since (`vdevice policy set`)."""
        return policy_changes.current(self.state, self.configured)

    def history(self, now: float, exclude: str = "") -> SpendHistory:
        """What the policy counts: the sends signed in its windows plus the sends waiting
        for (or released by) the owner, except `exclude` (the send being judged)."""
        db = self.state.db
        args = (exclude, ApprovalState.APPROVED, ApprovalState.HELD, now - self.approval_timeout)
        (day,) = db.execute(
            "SELECT COALESCE(SUM(total_sat), 0) FROM sends WHERE vc_code != '' "
            "AND created_at > ? AND outcome != ?",
            (now - 86_400, Outcome.FAILED),
        ).fetchone()
        (hour,) = db.execute(
            "SELECT COUNT(*) FROM sends WHERE vc_code != '' AND created_at > ?", (now - 3_600,)
        ).fetchone()
        held_sat, held_count = db.execute(
            "SELECT COALESCE(SUM(a.total_sat), 0), COUNT(*) FROM approvals a"
            " WHERE a.vtest_id != ? AND (a.state = ? OR (a.state = ? AND a.created_at > ?))"
            " AND NOT EXISTS (SELECT 1 FROM sends s WHERE s.vtest_id = a.vtest_id)",
            args,
        ).fetchone()
        day, hour = int(day) + int(held_sat), int(hour) + int(held_count)
        paid: set[str] = set()
        for (outs,) in db.execute(
            "SELECT outs FROM sends WHERE vc_code != '' AND outcome != ?", (Outcome.FAILED,)
        ):
            paid.update(part.split(",", 1)[0] for part in str(outs).split(";") if part)
        return SpendHistory(int(day), int(hour), frozenset(paid))

    def decide(
        self,
        vtest_id: str,
        outs_text: str,
        destinations: Sequence[str],
        total: int,
        now: float,
        blob: str = "",
    ) -> Decision:
        verdict = judge(self.policy, destinations, total, self.history(now, vtest_id))
        if verdict.refusal is not None:
            return Decision(refusal=verdict.refusal)
        if not verdict.needs_approval:
            return Decision()
        row = self.state.db.execute(
            "SELECT * FROM approvals WHERE vtest_id = ?", (vtest_id,)
        ).fetchone()
        if row is None:
            if len(self.waiting(now)) >= MAX_HELD:
                return Decision(refusal=f"{MAX_HELD} sends already wait for the owner's approval")
            self._hold(vtest_id, outs_text, blob, destinations, total, verdict.needs_approval, now)
            return Decision(held=True)
        if row["outs"] != outs_text:  # the site changed the withdrawal under the same id
            return Decision(refusal="the withdrawal changed while it waited for approval")
        if row["state"] == ApprovalState.APPROVED:
            return Decision(approved=True)
        if row["state"] == ApprovalState.REJECTED:
            return Decision(refusal="the owner declined it")
        if row["state"] == ApprovalState.HELD and now - row["created_at"] > self.approval_timeout:
            with self.state.tx():
                self.state.db.execute(
                    "UPDATE approvals SET state = ?, decided_at = ? WHERE id = ?",
                    (ApprovalState.EXPIRED, now, row["id"]),
                )
            return Decision(refusal="the owner did not approve it in time")
        if row["state"] == ApprovalState.EXPIRED:
            return Decision(refusal="the owner did not approve it in time")
        return Decision(held=True)

    def _hold(
        self,
        vtest_id: str,
        outs_text: str,
        blob: str,
        destinations: Sequence[str],
        total: int,
        why: Sequence[str],
        now: float,
    ) -> None:
        approval_id = secrets.token_hex(APPROVAL_ID_BYTES)
        with self.state.tx():
            self.state.db.execute(
                "INSERT INTO approvals(id, vtest_id, outs, total_sat, state, created_at, blob) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (approval_id, vtest_id, outs_text, total, ApprovalState.HELD, now, blob),
            )
        dests = ", ".join(dict.fromkeys(destinations))
        text = (
            f"CC APPROVE? send {approval_id}: {total} sat to {dests} ({'; '.join(why)})."
            f" Reply CC:APPROVE:{approval_id}:<code> (or CC:REJECT)"
        )
        log.info("vtest %s held for the owner's approval as %s", vtest_id, approval_id)
        sent = self.phone.send(self.phone.owner_number, text)
        self.state.add_alert(f"approval asked: send {approval_id} ({total} sat)", sent, now)

    def approve(self, approval_id: str, now: float, *, yes: bool = True) -> bool:
        """The owner's valid `CC:APPROVE` (or `CC:REJECT`, `yes=False`): the held send may be
        signed (or is refused); False if no such send is held."""
        with self.state.tx():
            cur = self.state.db.execute(
                "UPDATE approvals SET state = ?, decided_at = ? WHERE id = ? AND state = ? "
                "AND created_at > ?",
                (
                    ApprovalState.APPROVED if yes else ApprovalState.REJECTED,
                    now,
                    approval_id,
                    ApprovalState.HELD,
                    now - self.approval_timeout,
                ),
            )
        return cur.rowcount == 1

    def waiting(self, now: float) -> list[str]:
        """The vtest ids still waiting for the owner (the site is asked to skip them)."""
        rows = self.state.db.execute(
            "SELECT vtest_id FROM approvals WHERE state = ? AND created_at > ? ORDER BY created_at",
            (ApprovalState.HELD, now - self.approval_timeout),
        ).fetchall()
        return [str(r["vtest_id"]) for r in rows]

    def due(self, now: float) -> tuple[str, str] | None:
        """(vtest id, encrypted request) of the oldest held send the owner answered, or whose
        time ran out, that is not signed or refused yet: it goes before newer withdrawals."""
        row = self.state.db.execute(
            "SELECT vtest_id, blob FROM approvals a WHERE (a.state IN (?, ?, ?)"
            " OR (a.state = ? AND a.created_at <= ?)) AND a.blob != ''"
            " AND NOT EXISTS (SELECT 1 FROM sends s WHERE s.vtest_id = a.vtest_id)"
            " ORDER BY a.created_at LIMIT 1",
            (
                ApprovalState.APPROVED,
                ApprovalState.REJECTED,
                ApprovalState.EXPIRED,
                ApprovalState.HELD,
                now - self.approval_timeout,
            ),
        ).fetchone()
        return None if row is None else (str(row["vtest_id"]), str(row["blob"]))

    def held(self) -> list[dict[str, object]]:
        rows = self.state.db.execute(
            "SELECT id, vtest_id, total_sat, state FROM approvals ORDER BY created_at DESC LIMIT 10"
        ).fetchall()
        return [dict(r) for r in rows]
