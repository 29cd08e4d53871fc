"""ChainCloud protocol strings (reference sections 3 and 4), byte-exact.

- the batch content string the cold HSM signs: `0,<addr0>:1,<addr1>:...:999,<addr999>:`
  (position within the batch, not the global index);
- the canonical send request the V-device signs:
  `{"coin_code":"BTC","is_dynamic_fee":1,"outs":"<outs>","user_tx_no":"<user_tx_no>"}`;
- `outs` = `addr,value;addr,value` with integer satoshi values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .addresses import validate_address
from .errors import AddressError, BatchError, OutsError
from .messages import verify_message_pubkey
from .networks import Network

BATCH_SIZE = 1000
MAX_MONEY = 21_000_000 * 100_000_000
_VALUE = re.compile(r"0|[1-9][0-9]*")
# `user_tx_no`: 1-128 printable ASCII characters other than space, `"` and `\` (0x21-0x7e
# without 0x22 and 0x5c), matched over the whole value (a trailing newline is refused). It is
# inserted verbatim into the signed request string, so it needs no JSON escape, and it can hold
# no control or bidi character that would disguise it in an alert or a log.
USER_TX_NO_CHARS = "printable ASCII except space, '\"' and '\\'"
USER_TX_NO = re.compile(r"[!#-\[\]-~]{1,128}")


@dataclass(frozen=True)
class Out:
    """One payment: address and integer satoshi value."""

    address: str
    value: int


def batch_content(addresses: Sequence[str]) -> str:
    """The exact string signed for a batch (positions 0..len-1 within the batch)."""
    if not addresses:
        raise BatchError("empty address batch")
    joined = "".join(addresses)  # one scan for the separators, not one per address
    if not all(addresses) or "," in joined or ":" in joined:
        bad = next(a for a in addresses if not a or "," in a or ":" in a)
        raise BatchError(f"address {bad!r} cannot appear in a batch string")
    return "".join(f"{i},{a}:" for i, a in enumerate(addresses))


def batch_statement(wallet: str, account: int, batch_no: int, addresses: Sequence[str]) -> str:
    """Our extension: what the cold identity key signs to prove a batch over the link
    (`prove_batch`): `CC:BATCH:<cold|hot>:<account>:BTC:<batch_no>:` then the batch content,
    so a proof is valid for exactly one wallet, account, coin and batch number."""
    if wallet not in ("cold", "hot"):
        raise BatchError(f"wallet {wallet!r} is not cold or hot")
    return f"CC:BATCH:{wallet}:{account}:BTC:{batch_no}:" + batch_content(addresses)


def parse_batch_content(text: str, expected_size: int = BATCH_SIZE) -> list[str]:
    """Inverse of `batch_content`; checks positions run 0..expected_size-1."""
    if not text.endswith(":"):
        raise BatchError("batch string must end with ':'")
    entries = text[:-1].split(":")
    out = []
    for pos, entry in enumerate(entries):
        idx, sep, addr = entry.partition(",")
        if not sep or idx != str(pos) or not addr:
            raise BatchError(f"batch entry {pos} is malformed")
        out.append(addr)
    if len(out) != expected_size:
        raise BatchError(f"batch has {len(out)} entries, expected {expected_size}")
    return out


def parse_outs(outs: str, network: Network, *, allow_zero: bool = False) -> list[Out]:
    """Parse and validate `addr,value;addr,value` for `network`.

    Values are plain decimal satoshi integers (no sign, no leading zeros, no decimals).
    Zero is refused unless `allow_zero` (ChainCloud's V-device permits non-negative values;
    a zero output is dust and Core would not relay it).
    """
    return [out for out, _ in parse_outs_with_scripts(outs, network, allow_zero=allow_zero)]


def parse_outs_with_scripts(
    outs: str, network: Network, *, allow_zero: bool = False
) -> list[tuple[Out, bytes]]:
    """`parse_outs`, each output with its scriptPubKey (each address decoded once)."""
    if not outs:
        raise OutsError("outs is empty")
    result = []
    for n, part in enumerate(outs.split(";")):
        addr, sep, value = part.partition(",")
        if not sep or "," in value:
            raise OutsError(f"output {n}: expected 'address,value', got {part!r}")
        try:
            script = validate_address(addr, network).script_pubkey
        except AddressError as exc:
            raise OutsError(f"output {n}: {exc.message}") from None
        if not _VALUE.fullmatch(value):
            raise OutsError(f"output {n}: value {value!r} is not an integer number of satoshi")
        sat = int(value)
        if sat > MAX_MONEY or (sat == 0 and not allow_zero):
            raise OutsError(f"output {n}: value {sat} out of range")
        result.append((Out(addr, sat), script))
    return result


def format_outs(outs: Sequence[Out] | Sequence[tuple[str, int]]) -> str:
    parts = []
    for o in outs:
        addr, value = (o.address, o.value) if isinstance(o, Out) else o
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise OutsError(f"value {value!r} must be a non-negative integer")
        parts.append(f"{addr},{value}")
    if not parts:
        raise OutsError("no outputs")
    return ";".join(parts)


def channel_key_statement(account: int, c_id: str, channel_pubkey: bytes, expires_at: int) -> str:
    """Our extension: what the cold identity key signs to vouch for a live channel's V-device
    key, so that custody can check a `vc_code` before anything reaches an HSM."""
    return f"CC:CHANNEL_KEY:{account}:{c_id}:{channel_pubkey.hex()}:{expires_at}"


def send_signed_statement(account: int, txid: str, user_tx_no: str) -> str:
    """Our extension: the cold identity key's word that it co-signed `txid` for `user_tx_no`."""
    return f"CC:SEND_SIGNED:{account}:{txid}:{user_tx_no}"


def send_refused_statement(account: int, code: int, user_tx_no: str) -> str:
    """Our extension: the cold identity key's word that it refused `user_tx_no` (with `code`)
    and will never sign it: only this lets a V-device tell its site "failed"."""
    return f"CC:SEND_REFUSED:{account}:{code}:{user_tx_no}"


@dataclass(frozen=True)
class SendVerdict:
    """The cold HSM's final word on a send, verified: signed `txid`, or refused with `code`."""

    signed: bool
    txid: str = ""
    code: int = 0


_TXID = re.compile(r"[0-9a-f]{64}")


def verify_send_statement(
    cold_identity: bytes, account: int, user_tx_no: str, statement: object
) -> SendVerdict | None:
    """The verdict of a `cold_statement` ({state, txid|code, signature}) if the cold identity
    key signed it for exactly this account and `user_tx_no`; None for anything else."""
    if not isinstance(statement, dict):
        return None
    state, signature = statement.get("state"), statement.get("signature")
    if not isinstance(signature, str) or len(signature) > 200:
        return None
    if state == "signed":
        txid = statement.get("txid")
        if not isinstance(txid, str) or not _TXID.fullmatch(txid):
            return None
        text = send_signed_statement(account, txid, user_tx_no)
        verdict = SendVerdict(True, txid=txid)
    elif state == "refused":
        code = statement.get("code")
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code < 10_000:
            return None
        text = send_refused_statement(account, code, user_tx_no)
        verdict = SendVerdict(False, code=code)
    else:
        return None
    return verdict if verify_message_pubkey(cold_identity, text, signature) else None


def check_user_tx_no(user_tx_no: str) -> str:
    """`user_tx_no` unchanged if it is 1-128 characters of `USER_TX_NO_CHARS`, else `OutsError`."""
    if not isinstance(user_tx_no, str) or not USER_TX_NO.fullmatch(user_tx_no):
        raise OutsError(f"user_tx_no must be 1-128 characters, {USER_TX_NO_CHARS}")
    return user_tx_no


# what JSON would escape in a string: `"`, the backslash and the controls U+0000-U+001F
_UNQUOTABLE = re.compile(r'["\\\x00-\x1f]')


def send_request_string(
    outs: str, user_tx_no: str, *, coin_code: str = "BTC", is_dynamic_fee: int = 1
) -> str:
    """Canonical send request signed by the V-device (`vc_code`): fixed key order, no spaces.

    `outs` and `user_tx_no` are inserted verbatim; characters that JSON would escape are
    refused rather than escaped, so there is exactly one canonical form.
    """
    if is_dynamic_fee not in (0, 1) or isinstance(is_dynamic_fee, bool):
        raise OutsError("is_dynamic_fee must be 0 or 1")
    check_user_tx_no(user_tx_no)
    if not re.fullmatch(r"[A-Z]{2,10}", coin_code):
        raise OutsError("coin_code must be upper-case letters")
    if not outs or _UNQUOTABLE.search(outs):
        raise OutsError("outs contains characters that cannot appear in the request string")
    return (
        f'{{"coin_code":"{coin_code}","is_dynamic_fee":{is_dynamic_fee},'
        f'"outs":"{outs}","user_tx_no":"{user_tx_no}"}}'
    )
