"""The detailed health view: which dependency failed (database, node, hot HSM, serial link,
cold HSM), read from the same snapshot the dashboard shows so the two never disagree."""

from __future__ import annotations

from typing import Any

from custody.operator.snapshot import Part


def _check(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": ok, "detail": detail}


def health_checks(parts: dict[str, Part]) -> dict[str, dict[str, Any]]:
    accounts, chain, hsms, sms = parts["accounts"], parts["chain"], parts["hsms"], parts["sms"]
    db_error = accounts.error if accounts.error and accounts.error.startswith("database") else None
    checks = {"database": _check(db_error is None, db_error or "answers")}
    if chain.error:
        checks["node"] = _check(False, chain.error)
    else:
        checks["node"] = _check(True, f"tip {chain.data.get('node_tip')}")
    if hsms.error:
        checks["hot_hsm"] = _check(False, hsms.error)
        checks["serial_link"] = _check(False, "unknown: the hot HSM does not answer")
        checks["cold_hsm"] = _check(False, "unknown: the hot HSM does not answer")
        return checks
    hot = hsms.data.get("hot", {})
    checks["hot_hsm"] = _check(
        bool(hot.get("token_present", True)),
        "token answers" if hot.get("token_present", True) else "token does not answer",
    )
    reachable = bool(hsms.data.get("cold", {}).get("reachable"))
    checks["serial_link"] = _check(
        reachable, "round trip to the cold HSM answered" if reachable else "no answer over the link"
    )
    if not reachable:
        checks["cold_hsm"] = _check(False, "unreachable over the serial link")
    elif sms.error:
        checks["cold_hsm"] = _check(False, sms.error)
    else:
        cold = hsms.data["cold"]
        checks["cold_hsm"] = _check(
            True, f"{len(cold.get('accounts', []))} accounts, {len(cold.get('frozen', []))} frozen"
        )
    return checks
