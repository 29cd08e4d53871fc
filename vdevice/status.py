"""The V-device's state at a glance: for `vdevice status` and `run/vdevice-status.json`.

Built from the state database only, so the command works whether the loop runs or not. Holds
no key, token or SMS text.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from cc_common.cli import render_table
from cc_common.process import pid_alive, read_ready
from vdevice import policy_changes
from vdevice.settings import Policies
from vdevice.state import CheckState, State


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))


def _replaced(state: State, user_tx_no: str) -> list[str]:
    """The transactions a fee bump replaced for this send, oldest first."""
    db = state.db
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'replacements'").fetchone():
        return []
    rows = db.execute(
        "SELECT replaced_txid FROM replacements WHERE user_tx_no = ? AND replaced_txid != ''"
        " ORDER BY at",
        (user_tx_no,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def snapshot(state: State, policies: Policies, *, process_running: bool) -> dict[str, Any]:
    now = time.time()
    loop, reason = state.loop_state()
    db = state.db
    out: dict[str, Any] = {
        "time": _iso(now),
        "process": "running" if process_running else "not running",
        "loop": loop.value if process_running else f"{loop.value} (process not running)",
        "loop_reason": reason,
        "initialised": state.get_meta("identity_pub") is not None,
        "identity": state.get_meta("identity_pub"),
        "provisioned": state.is_provisioned(),
    }
    if state.is_provisioned():
        prov = state.provisioning()
        out["account_id"] = prov.account_id
        out["cold_numbers"] = list(prov.cold_numbers)
    channel = state.latest_channel()
    opening = len(state.outstanding_opens())
    out["channel"] = (
        None
        if channel is None
        else {
            "c_id": channel.c_id,
            "expiry": _iso(channel.expiry),
            "expires_in": int(channel.expiry - now),
            "live": channel.expiry > now,
            "confirmed": channel.confirmed,
        }
    )
    out["channel_requests_outstanding"] = opening
    batch = db.execute("SELECT * FROM batch_checks ORDER BY id DESC LIMIT 1").fetchone()
    out["last_batch"] = (
        None
        if batch is None
        else {
            "type": "hot" if batch["address_type"] == 1 else "cold",
            "batch_no": batch["batch_no"],
            "state": batch["state"],
            "reason": batch["reason"],
            "requests": batch["attempts"],
            "reported": bool(batch["site_reported"] and batch["custody_reported"]),
            "at": _iso(batch["finished_at"] or batch["created_at"]),
        }
    )
    counts = dict(db.execute("SELECT state, COUNT(*) FROM batch_checks GROUP BY state").fetchall())
    out["batches"] = {s.value: counts.get(s.value, 0) for s in CheckState}
    send = db.execute("SELECT * FROM sends ORDER BY created_at DESC LIMIT 1").fetchone()
    out["last_send"] = (
        None
        if send is None
        else {
            "vtest_id": send["vtest_id"],
            "user_tx_no": send["user_tx_no"],
            "state": send["state"],
            "outcome": send["outcome"],
            "tx_hash": send["tx_hash"],
            "reason": send["reason"],
            "total_sat": send["total_sat"],
            "at": _iso(send["created_at"]),
            "replaced": _replaced(state, send["user_tx_no"]),
        }
    )
    (day,) = db.execute(
        "SELECT COALESCE(SUM(total_sat), 0) FROM sends WHERE vc_code != '' AND created_at > ? "
        "AND outcome != 'failed'",
        (now - 86400,),
    ).fetchone()
    (hour,) = db.execute(
        "SELECT COUNT(*) FROM sends WHERE vc_code != '' AND created_at > ?", (now - 3600,)
    ).fetchone()
    spending = policy_changes.current(state, policies.spending)  # `vdevice policy set`'s
    out["policies"] = dataclasses.replace(policies, spending=spending).as_dict()
    change = policy_changes.last_change(state)
    out["policy_change"] = None if change is None else change.as_dict()
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'approvals'").fetchone():
        out["approvals"] = [
            dict(r)
            for r in db.execute(
                "SELECT id, vtest_id, total_sat, state FROM approvals ORDER BY created_at DESC "
                "LIMIT 5"
            )
        ]
    out["counters"] = {"sent_24h_sat": day, "sends_last_hour": hour}
    out["alerts"] = [
        {"at": _iso(a["at"]), "text": a["text"], "delivered": bool(a["delivered"])}
        for a in state.recent_alerts()
    ]
    return out


def write_status(path: Path, data: dict[str, Any]) -> None:
    """Atomic write, so the demo never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def process_running(run_dir: Path) -> bool:
    info = read_ready(run_dir, "vdevice")
    return bool(info and isinstance(info.get("pid"), int) and pid_alive(info["pid"]))


def _with(head: str, *extras: tuple[object, str]) -> str:
    """`head` followed by the text of each extra whose value is set."""
    return head + "".join(text for value, text in extras if value)


def render(data: dict[str, Any]) -> str:
    """The operator's view: one table of the essentials, then the recent alerts."""
    ch = data.get("channel")
    if ch is None:
        channel = "none"
    else:
        life = f"expires in {ch['expires_in']}s" if ch["live"] else "EXPIRED"
        channel = f"{ch['c_id']} ({life}{'' if ch['confirmed'] else ', unconfirmed'})"
    if data.get("channel_requests_outstanding"):
        channel += f"; opening ({data['channel_requests_outstanding']} request(s) out)"
    b = data.get("last_batch")
    batch = (
        "none"
        if b is None
        else _with(
            f"{b['type']} {b['batch_no']}: {b['state']}",
            (b["reason"], f" ({b['reason']})"),
            (not b["reported"] and b["state"] not in ("pending", "stalled"), ", not yet reported"),
        )
    )
    s = data.get("last_send")
    send = (
        "none"
        if s is None
        else _with(
            f"{s['vtest_id']}: {s['state']}",
            (s["outcome"], f", {s['outcome']}"),
            (s["tx_hash"], f", tx {s['tx_hash']}"),
            (s.get("replaced"), f" (fee bump of {', '.join(s.get('replaced') or ())})"),
            (s["reason"], f" ({s['reason']})"),
        )
    )
    p = data["policies"]
    policies = (
        f"whitelist {len(p['whitelist']) or 'any'}, per send {p['max_send_sat'] or '-'}, "
        f"per day {p['max_daily_sat'] or '-'} (used {data['counters']['sent_24h_sat']}), "
        f"per hour {p['max_sends_per_hour'] or '-'} (used {data['counters']['sends_last_hour']}), "
        f"low balance {p['low_balance_sat'] or '-'}"
    )
    loop = data["loop"] + (f" ({data['loop_reason']})" if data["loop_reason"] else "")
    rows = [
        ("loop", loop),
        ("provisioned", f"account {data['account_id']}" if data["provisioned"] else "no"),
        ("channel", channel),
        ("last batch", batch),
        ("last send", send),
        ("policies", policies),
    ]
    text = render_table(("what", "state"), rows)
    alerts = data.get("alerts") or []
    if alerts:
        text += "\n\n" + render_table(("alert at", "text"), [(a["at"], a["text"]) for a in alerts])
    return text
