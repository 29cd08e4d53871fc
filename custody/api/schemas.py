"""Validation of request input, kept out of the views.

Each schema turns raw form/query data into a typed value or raises `BadRequest` naming the
field. The send request is checked as strictly as the cold HSM will check it, so a request
that custody accepts has exactly one canonical signed form.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cc_common.reference import BatchVerdict
from custody.errors import BadRequest
from custody.models import BatchStatus, Wallet
from wallet_core.chaincloud import (
    Out,
    check_user_tx_no,
    parse_outs_with_scripts,
    send_request_string,
)
from wallet_core.errors import WalletError
from wallet_core.networks import Network

MAX_USER_TX_NO = 64
MAX_C_ID = 64
MAX_OUTS_LEN = 20_000
MAX_OUTPUTS = 100
TXID = re.compile(r"^[0-9a-f]{64}$")
_WITNESS_INPUT = 67  # vbytes of a typical witness input, as Bitcoin Core's dust rule counts
_LEGACY_INPUT = 148
DUST_RELAY_FEE = 3  # sat/vB (Core's -dustrelayfee default is 3000 sat/kvB)


def dust_threshold(script_pubkey: bytes) -> int:
    """Bitcoin Core's dust threshold for an output (294 P2WPKH, 330 P2WSH/P2TR, 546 P2PKH)."""
    size = 8 + 1 + len(script_pubkey)
    witness = len(script_pubkey) >= 4 and (
        script_pubkey[0] == 0 or 0x51 <= script_pubkey[0] <= 0x60
    )
    return (size + (_WITNESS_INPUT if witness else _LEGACY_INPUT)) * DUST_RELAY_FEE


def _one(form: Mapping[str, str], name: str, *, default: str | None = None) -> str:
    value = form.get(name)
    if value is None or value == "":
        if default is not None:
            return default
        raise BadRequest(f"{name} is required")
    return value


def parse_user_tx_no(value: str) -> str:
    """1-64 characters of `wallet_core.chaincloud.USER_TX_NO_CHARS`, the whole value."""
    if len(value) > MAX_USER_TX_NO:
        raise BadRequest(f"user_tx_no must be 1-{MAX_USER_TX_NO} characters")
    try:
        return check_user_tx_no(value)
    except WalletError as exc:
        raise BadRequest(exc.message) from None


@dataclass(frozen=True)
class SendRequest:
    coin_code: str
    user_tx_no: str
    outs: str
    outputs: tuple[Out, ...]
    is_dynamic_fee: int
    vc_code: str
    c_id: str
    text: str  # the request string the V-device signed (`send_request_string`)

    def request_dict(self) -> dict[str, object]:
        return {
            "coin_code": self.coin_code,
            "user_tx_no": self.user_tx_no,
            "is_dynamic_fee": self.is_dynamic_fee,
            "outs": self.outs,
        }


def parse_send_request(form: Mapping[str, str], network: Network) -> SendRequest:
    """Validate every field of `POST /tx/request` (reference section 1)."""
    coin_code = _one(form, "coin_code", default="BTC")
    if coin_code != "BTC":
        raise BadRequest("coin_code must be BTC")
    user_tx_no = parse_user_tx_no(_one(form, "user_tx_no"))
    fee = _one(form, "is_dynamic_fee", default="1")
    if fee not in ("0", "1"):
        raise BadRequest("is_dynamic_fee must be 0 or 1")
    outs = _one(form, "outs")
    if len(outs) > MAX_OUTS_LEN:
        raise BadRequest("outs is too long")
    try:
        parsed = parse_outs_with_scripts(outs, network)
    except WalletError as exc:
        raise BadRequest(f"outs: {exc.message}") from None
    if len(parsed) > MAX_OUTPUTS:
        raise BadRequest(f"outs: at most {MAX_OUTPUTS} outputs")
    outputs = [out for out, _ in parsed]
    for n, (out, script) in enumerate(parsed):
        if out.value < dust_threshold(script):
            raise BadRequest(
                f"outs: output {n} value {out.value} is dust (minimum {dust_threshold(script)} "
                "satoshi for this address type)"
            )
    try:
        text = send_request_string(outs, user_tx_no, coin_code=coin_code, is_dynamic_fee=int(fee))
    except WalletError as exc:
        raise BadRequest(exc.message) from None
    vc_code = _one(form, "vc_code")
    try:
        raw = base64.b64decode(vc_code, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("vc_code must be a base64 signed message") from None
    if len(raw) != 65:
        raise BadRequest("vc_code must be a 65-byte compact signature (base64)")
    c_id = _one(form, "c_id")
    if len(c_id) > MAX_C_ID or not c_id.isprintable():
        raise BadRequest(f"c_id must be 1-{MAX_C_ID} printable characters")
    return SendRequest(coin_code, user_tx_no, outs, tuple(outputs), int(fee), vc_code, c_id, text)


@dataclass(frozen=True)
class BatchStatusReport:
    status: BatchStatus
    wallet: Wallet


_STATUS = {
    str(int(BatchVerdict.VERIFIED)): BatchStatus.VERIFIED,
    str(int(BatchVerdict.FAILED)): BatchStatus.FAILED,
}
_TYPE = {"1": Wallet.HOT, "2": Wallet.COLD}


def parse_batch_status(form: Mapping[str, str]) -> BatchStatusReport:
    """Form `status` (2 verified / 3 failed) and `type` (1 hot / 2 cold), as in section 2."""
    status = _one(form, "status")
    if status not in _STATUS:
        raise BadRequest("status must be 2 (verified) or 3 (failed)")
    kind = _one(form, "type")
    if kind not in _TYPE:
        raise BadRequest("type must be 1 (hot) or 2 (cold)")
    return BatchStatusReport(_STATUS[status], _TYPE[kind])


def parse_txid(value: str, name: str = "tx_hash") -> str:
    if not TXID.match(value):
        raise BadRequest(f"{name} must be 64 lower-case hex characters")
    return value


def parse_path(value: str) -> int:
    if value not in ("0", "1"):
        raise BadRequest("path must be 0 (receiving) or 1 (change)")
    return int(value)
