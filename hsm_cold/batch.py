"""Batched payouts: one transaction paying several V-device-signed requests (docs/money.md).

A batch shares one unsigned transaction, its inputs, its change and its previous transactions;
each member brings what the V-device signed for its own `user_tx_no` (`outs`, `vc_code`,
`c_id`, ...). Decoded here, every member is an ordinary `CosignRequest` over the shared
transaction, so each passes the same checks a single send does; what a batch adds is checked
in `service.cosign_batch`: the payments are exactly the members' `outs` one after the other
(the union, in member order: nothing missing, nothing added, nothing twice), every `vc_code`
verifies, and every `user_tx_no` is bound to the one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hsm_cold.cosign import CosignRequest, decode_request, field
from hsm_cold.errors import BadRequest
from wallet_core.hashes import sha256

MAX_MEMBERS = 100
SHARED_KEYS = ("account", "tx", "inputs", "change", "prev_txs")
MEMBER_KEYS = frozenset({"user_tx_no", "is_dynamic_fee", "coin_code", "outs", "vc_code", "c_id"})


def decode(payload: Mapping[str, Any]) -> tuple[CosignRequest, ...]:
    """The members as co-sign requests over the shared transaction; `BadRequest` names the
    first bad member or field."""
    members = field(payload, "members", list)
    if not 2 <= len(members) <= MAX_MEMBERS:
        raise BadRequest(f"a batch has 2 to {MAX_MEMBERS} members, not {len(members)}")
    shared = {k: payload[k] for k in SHARED_KEYS if k in payload}
    out = []
    for n, member in enumerate(members):
        if not isinstance(member, dict):
            raise BadRequest(f"members[{n}] must be a map")
        unknown = sorted(set(member) - MEMBER_KEYS)
        if unknown:
            raise BadRequest(f"members[{n}] has unknown field {unknown[0]!r}")
        try:
            out.append(decode_request({**shared, **member}))
        except BadRequest as exc:
            raise BadRequest(f"members[{n}]: {exc.message}") from None
    return tuple(out)


def duplicate(members: Sequence[CosignRequest]) -> str | None:
    """A `user_tx_no` that appears twice in the batch (one signed request paid twice)."""
    seen: set[str] = set()
    for m in members:
        if m.user_tx_no in seen:
            return m.user_tx_no
        seen.add(m.user_tx_no)
    return None


def digest(members: Sequence[CosignRequest]) -> bytes:
    """What every member's `user_tx_no` is bound to: the shared transaction's digest and the
    member numbers in order (an identical retry has the same, a single send of one member or
    another grouping not)."""
    names = b"".join(b"U" + m.user_tx_no.encode() + b"\x00" for m in members)
    return sha256(members[0].digest() + names)
