"""Custody checks `vc_code` before a send reaches the HSMs.

The V-device signs each send with its channel key (protocol section 3). The cold HSM checks
that signature too, and freezes the account when it fails: right for a hacked custody that
forwards a forgery, wrong for a thief of the hot token alone, who could otherwise freeze the
account at will. So custody refuses a forged `vc_code` itself, with a 400 that freezes nothing.

The channel key comes from the cold HSM (relayed by the hot HSM) as a statement signed by the
cold identity key, `CC:CHANNEL_KEY:<account>:<c_id>:<pubkey hex>:<expires_at>`, checked here
against the identity key custody pinned at account creation; so neither the hot HSM nor a
network attacker can make custody accept a key of theirs. Verified keys are kept in memory per
(account, c_id, identity); a channel's key never changes, only its expiry, which the cold HSM
checks at co-signing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from cc_common.spending_policy import signed_forms
from custody.errors import (
    ForgedVcCode,
    HsmRefusedError,
    HsmUnavailableError,
    ProofInvalid,
    UnknownChannel,
)
from custody.hsm_client import HsmRefused
from wallet_core import messages
from wallet_core.chaincloud import channel_key_statement, send_request_string
from wallet_core.errors import WalletError
from wallet_core.secp import is_valid_pubkey

UNKNOWN_CHANNEL_CODES = (704, 705)  # the cold HSM's `unknown channel`, `channel expired`
CACHE_SIZE = 4096

_cache: OrderedDict[tuple[int, str, str], bytes] = OrderedDict()
_lock = threading.Lock()


def _fetch(hsm: Any, account: int, c_id: str, cold_identity: bytes) -> bytes:
    try:
        answer = hsm.channel_key(account, c_id)
    except HsmUnavailableError as exc:
        raise HsmUnavailableError(f"cannot check vc_code now: {exc.message}") from None
    except HsmRefused as exc:
        if exc.code in UNKNOWN_CHANNEL_CODES:
            raise UnknownChannel(f"c_id {c_id!r} is not a live channel of this account") from None
        raise HsmRefusedError(f"cannot check vc_code: HSM code {exc.code}") from None
    try:
        pubkey = bytes.fromhex(str(answer["channel_pubkey"]))
        expires_at = answer["expires_at"]
        signature = str(answer["signature"])
        if isinstance(expires_at, bool) or not isinstance(expires_at, int):
            raise ValueError
        if len(pubkey) != 33 or not is_valid_pubkey(pubkey):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise ProofInvalid("the HSM answered a malformed channel key") from None
    statement = channel_key_statement(account, c_id, pubkey, expires_at)
    if not messages.verify_message_pubkey(cold_identity, statement, signature):
        raise ProofInvalid(
            "the channel key is not signed by the cold identity key pinned for this account"
        )
    return pubkey


def channel_pubkey(hsm: Any, account: int, c_id: str, cold_identity_hex: str) -> bytes:
    """The V-device key of channel `c_id`, as the cold HSM vouched for it."""
    key = (account, c_id, cold_identity_hex)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    pubkey = _fetch(hsm, account, c_id, bytes.fromhex(cold_identity_hex))
    with _lock:
        _cache[key] = pubkey
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return pubkey


def check_vc_code(
    hsm: Any,
    account: int,
    cold_identity_hex: str,
    request: dict[str, Any],
    vc_code: str,
    c_id: str,
) -> None:
    """Return if `vc_code` is channel `c_id`'s signature over `request`; else `ForgedVcCode`."""
    try:
        text = send_request_string(
            request["outs"],
            request["user_tx_no"],
            coin_code=request["coin_code"],
            is_dynamic_fee=request["is_dynamic_fee"],
        )
    except WalletError as exc:
        raise ForgedVcCode(f"the request cannot have been signed: {exc.message}") from None
    check_vc_text(hsm, account, cold_identity_hex, text, vc_code, c_id)


def check_vc_text(
    hsm: Any, account: int, cold_identity_hex: str, text: str, vc_code: str, c_id: str
) -> None:
    """`check_vc_code` for a request whose string (`send_request_string`) the caller built
    already, as the API's validation does: the same check, the string not built twice."""
    pubkey = channel_pubkey(hsm, account, c_id, cold_identity_hex)
    # the plain form, or the form that carries the owner's approval (cc_common.spending_policy)
    if not any(messages.verify_message_pubkey(pubkey, t, vc_code) for t in signed_forms(text)):
        raise ForgedVcCode(
            f"vc_code is not the V-device's signature over this request under channel {c_id!r};"
            " refused before reaching the HSMs (nothing frozen)"
        )
