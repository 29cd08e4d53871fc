"""The texts of the ChainCloud SMS channel (reference section 4) and our identity extension.

`parse(text) -> Message` and `format(msg) -> str` are exact inverses on canonical texts; the
formats, what each side checks and why are in `docs/sms-channel.md`, the single source of
truth. This module is a codec only: it knows the fields and the strings that get signed,
never which channel is live, which `h_id` or nonce was seen, or what time it is.

Every text that does not parse raises `SmsFormatError` (the reason names the field, never
quotes the text); callers answer `sms format is error` (`FORMAT_ERROR_TEXT`).
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from cc_common.sms.errors import SmsFormatError, SmsSignatureError
from cc_common.text import describe, first_unsafe
from wallet_core import secp
from wallet_core.chaincloud import batch_content
from wallet_core.errors import InvalidKeyError, MessageSignatureError
from wallet_core.messages import message_digest, recover_pubkey, sign_message

PREFIX = "CC"
FORMAT_ERROR_TEXT = "sms format is error"
MAX_TEXT = 1530  # ten concatenated GSM-7 segments: what a modem accepts in one send
DEFAULT_FRESHNESS_SECONDS = 600  # suggested window for QH times (policy is the caller's)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

# A signer takes the 32-byte message digest and returns a 65-byte compact recoverable
# signature (header 27 + recid + 4, r, s): how a PKCS#11 token or an HSM signs for us.
Signer = Callable[[bytes], bytes]
KeyOrSigner = bytes | Signer

_ID = re.compile(r"[0-9A-Za-z_-]{1,40}")
_UINT = re.compile(r"0|[1-9][0-9]{0,11}")
_COIN = re.compile(r"[A-Z][A-Z0-9]{1,9}")
_PUBHEX = re.compile(r"0[23][0-9a-fA-F]{64}|04[0-9a-fA-F]{128}")
_SIG = re.compile(r"[A-Za-z0-9+/]{87}=")
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


class MessageKind(enum.Enum):
    """Every message of the channel (section 4) and of the owner's remote control."""

    OPEN_REQUEST = "QH"
    OPEN_REPLY = "QC"
    CHANNEL_OK = "CHANNEL_OK"
    VERIFY_ADDRESSES = "VERIFY_ADDRESSES"
    ADDRESSES = "ADDRESSES"
    OWNER_COMMAND = "OWNER_COMMAND"
    TIME_REPLY = "V"
    FORMAT_ERROR = "FORMAT_ERROR"


class Form(enum.Enum):
    """Which form a text had: the reference's plain one or ours with the identity fields."""

    PLAIN = "plain"
    EXTENDED = "extended"


class AddressType(enum.IntEnum):
    """Batch type; the values are section 2's `address_type` (1 hot, 2 cold)."""

    HOT = 1
    COLD = 2

    @property
    def word(self) -> str:
        return self.name


class OwnerAction(enum.Enum):
    """The owner's remote-control commands to the V-device."""

    START_LOOP = "START_LOOP"
    STOP_LOOP = "STOP_LOOP"
    PING = "PING"
    TIME = "TIME"


# ----- field checks (shared by parse and by the dataclasses) --------------------------------


def _check(ok: bool, reason: str) -> None:
    if not ok:
        raise SmsFormatError(reason)


def _check_id(value: str, what: str) -> str:
    _check(isinstance(value, str) and _ID.fullmatch(value) is not None, f"{what} is malformed")
    return value


def _check_uint(value: int, what: str) -> int:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12,
        f"{what} is out of range",
    )
    return value


def _check_pubkey(value: bytes, what: str) -> bytes:
    _check(
        isinstance(value, bytes) and secp.is_valid_pubkey(value),
        f"{what} is not a secp256k1 public key",
    )
    return value


def _check_sig(value: str, what: str = "signature") -> str:
    _check(isinstance(value, str) and _SIG.fullmatch(value) is not None, f"{what} is malformed")
    raw = base64.b64decode(value)
    _check(len(raw) == 65 and 27 <= raw[0] <= 34, f"{what} is not a compact signature")
    return value


def _check_coin(value: str) -> str:
    _check(isinstance(value, str) and _COIN.fullmatch(value) is not None, "coin is malformed")
    return value


def _pub_field(text: str, what: str) -> bytes:
    _check(_PUBHEX.fullmatch(text) is not None, f"{what} is not hex of a public key")
    return _check_pubkey(bytes.fromhex(text), what)


def _uint_field(text: str, what: str) -> int:
    _check(_UINT.fullmatch(text) is not None, f"{what} is not a decimal number")
    return int(text)


def _all_or_none(values: Sequence[object], what: str) -> bool:
    """True if the extension fields are all present, False if all absent; else an error."""
    present = [v is not None for v in values]
    _check(all(present) or not any(present), f"{what}: extension fields must come together")
    return all(present)


# ----- signing-string builders ---------------------------------------------------------------


def qh_signing_string(v_channel_pubkey: bytes, h_id: str, time: int) -> str:
    """What the V-device's identity key signs to open a channel."""
    return f"QH:{v_channel_pubkey.hex()}:{h_id}:{time}"


def qc_signing_string(
    cold_channel_pubkey: bytes, c_id: str, h_id: str, v_channel_pubkey: bytes, expiry: int
) -> str:
    """What the cold HSM's identity key signs: its channel key bound to the V's request."""
    return f"QC:{cold_channel_pubkey.hex()}:{c_id}:{h_id}:{v_channel_pubkey.hex()}:{expiry}"


def channel_ok_signing_string(c_id: str) -> str:
    """What the V-device's channel key signs to prove it holds that key."""
    return f"CHANNEL_OK:{c_id}"


def verify_signing_string(
    address_type: AddressType, batch_no: int, coin: str, c_id: str, nonce: str
) -> str:
    """What the V-device's channel key signs to ask for a batch proof."""
    return f"VERIFY_{address_type.word}_ADDRESSES:{batch_no}:{coin}:{c_id}:{nonce}"


def batch_signing_string(addresses: Sequence[str]) -> str:
    """What the cold channel key signs for a batch in the plain (reference) form:
    `0,<addr0>:1,<addr1>:...`."""
    return batch_content(addresses)


def bound_batch_signing_string(
    address_type: AddressType,
    batch_no: int,
    account: int,
    coin: str,
    c_id: str,
    addresses: Sequence[str],
) -> str:
    """What the cold channel key signs for a batch in the extended form: the reference's
    content, after `<COLD|HOT>_ADDRESSES:<batch_no>:<account>:<coin>:<c_id>:`, so a proof is
    valid for exactly one batch number, address type, account, coin and channel."""
    return f"{address_type.word}_ADDRESSES:{batch_no}:{account}:{coin}:{c_id}:" + batch_content(
        addresses
    )


# ----- signatures ---------------------------------------------------------------------------


def sign_fields(key: KeyOrSigner, text: str) -> str:
    """Base64 signed-message signature over `text` by a private key or a `Signer` hook."""
    if isinstance(key, bytes):
        return sign_message(key, text)
    raw = key(message_digest(text))
    if not isinstance(raw, bytes) or len(raw) != 65 or not 27 <= raw[0] <= 34:
        raise SmsSignatureError("signer did not return a 65-byte compact signature")
    sig = base64.b64encode(raw).decode()
    verify_fields(text, sig)  # a broken signer is caught here, not by the other side
    return sig


def verify_fields(text: str, sig: str) -> bytes:
    """The compressed public key that made `sig` over `text`; `SmsSignatureError` if none."""
    try:
        return secp.compress_pubkey(recover_pubkey(text, sig))
    except (MessageSignatureError, InvalidKeyError):
        raise SmsSignatureError("signature does not verify") from None


def verify_fields_by(pubkey: bytes, text: str, sig: str) -> None:
    """Raise `SmsSignatureError` unless `sig` over `text` was made by `pubkey`."""
    try:
        expected = secp.compress_pubkey(pubkey)
    except InvalidKeyError:
        raise SmsSignatureError("expected key is not a public key") from None
    if verify_fields(text, sig) != expected:
        raise SmsSignatureError("signature is not by the expected key")


def _signature(msg: object, sig: str | None) -> str:
    if sig is None:
        raise SmsSignatureError(f"{type(msg).__name__} in plain form carries no signature")
    return sig


# ----- messages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenRequest:
    """V -> cold `CC:QH`: open a channel with this fresh V channel key; extended: signed."""

    kind: ClassVar[MessageKind] = MessageKind.OPEN_REQUEST
    channel_pubkey: bytes
    h_id: str
    time: int | None = None
    sig: str | None = None

    def __post_init__(self) -> None:
        _check_pubkey(self.channel_pubkey, "V channel pubkey")
        _check_id(self.h_id, "h_id")
        if _all_or_none((self.time, self.sig), "QH"):
            _check_uint(self.time, "time")  # type: ignore[arg-type]  # set: _all_or_none
            _check_sig(self.sig)  # type: ignore[arg-type]  # set: _all_or_none

    @property
    def form(self) -> Form:
        return Form.PLAIN if self.sig is None else Form.EXTENDED

    @classmethod
    def signed(
        cls, channel_pubkey: bytes, h_id: str, time: int, identity_key: KeyOrSigner
    ) -> OpenRequest:
        """The extended form, signed by the V-device's identity key."""
        sig = sign_fields(identity_key, qh_signing_string(channel_pubkey, h_id, time))
        return cls(channel_pubkey, h_id, time, sig)

    def signing_string(self) -> str:
        if self.time is None:
            raise SmsSignatureError("QH in plain form has nothing signed")
        return qh_signing_string(self.channel_pubkey, self.h_id, self.time)

    def recover_signer(self) -> bytes:
        """The identity key that signed it (compare with the pinned one)."""
        return verify_fields(self.signing_string(), _signature(self, self.sig))

    def to_text(self) -> str:
        text = f"CC:QH:{self.channel_pubkey.hex()}:H_ID:{self.h_id}:"
        if self.sig is not None:
            text += f"T:{self.time}:SIG:{self.sig}:"
        return text


@dataclass(frozen=True)
class OpenReply:
    """cold -> V `CC:QC`: the cold channel key and channel id; extended: signed, expiring."""

    kind: ClassVar[MessageKind] = MessageKind.OPEN_REPLY
    channel_pubkey: bytes
    c_id: str
    h_id: str
    expiry: int | None = None
    sig: str | None = None

    def __post_init__(self) -> None:
        _check_pubkey(self.channel_pubkey, "cold channel pubkey")
        _check_id(self.c_id, "c_id")
        _check_id(self.h_id, "h_id")
        if _all_or_none((self.expiry, self.sig), "QC"):
            _check_uint(self.expiry, "expiry")  # type: ignore[arg-type]  # set: _all_or_none
            _check_sig(self.sig)  # type: ignore[arg-type]  # set: _all_or_none

    @property
    def form(self) -> Form:
        return Form.PLAIN if self.sig is None else Form.EXTENDED

    @classmethod
    def signed(
        cls,
        channel_pubkey: bytes,
        c_id: str,
        h_id: str,
        v_channel_pubkey: bytes,
        expiry: int,
        identity_key: KeyOrSigner,
    ) -> OpenReply:
        """The extended form, signed by the cold HSM's identity key (or its token)."""
        text = qc_signing_string(channel_pubkey, c_id, h_id, v_channel_pubkey, expiry)
        return cls(channel_pubkey, c_id, h_id, expiry, sign_fields(identity_key, text))

    def signing_string(self, v_channel_pubkey: bytes) -> str:
        if self.expiry is None:
            raise SmsSignatureError("QC in plain form has nothing signed")
        return qc_signing_string(
            self.channel_pubkey, self.c_id, self.h_id, v_channel_pubkey, self.expiry
        )

    def recover_signer(self, v_channel_pubkey: bytes) -> bytes:
        """The identity key that signed it, given the V channel key the V-device sent."""
        return verify_fields(self.signing_string(v_channel_pubkey), _signature(self, self.sig))

    def to_text(self) -> str:
        text = f"CC:QC:{self.channel_pubkey.hex()}:C_ID:{self.c_id}:H_ID:{self.h_id}"
        if self.sig is not None:
            text += f":EXP:{self.expiry}:SIG:{self.sig}"
        return text


@dataclass(frozen=True)
class ChannelOk:
    """V -> cold `CC:CHANNEL_OK`: the channel is in use; extended: proves the V channel key."""

    kind: ClassVar[MessageKind] = MessageKind.CHANNEL_OK
    c_id: str
    sig: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.c_id, "c_id")
        if self.sig is not None:
            _check_sig(self.sig)

    @property
    def form(self) -> Form:
        return Form.PLAIN if self.sig is None else Form.EXTENDED

    @classmethod
    def signed(cls, c_id: str, channel_key: KeyOrSigner) -> ChannelOk:
        return cls(c_id, sign_fields(channel_key, channel_ok_signing_string(c_id)))

    def signing_string(self) -> str:
        return channel_ok_signing_string(self.c_id)

    def recover_signer(self) -> bytes:
        return verify_fields(self.signing_string(), _signature(self, self.sig))

    def to_text(self) -> str:
        if self.sig is None:
            return f"CC:CHANNEL_OK:{self.c_id}:"
        return f"CC:CHANNEL_OK:{self.c_id}:SIG:{self.sig}:"


@dataclass(frozen=True)
class VerifyAddresses:
    """V -> cold `CC:VERIFY_<COLD|HOT>_ADDRESSES`: prove a batch; extended: signed, nonce."""

    kind: ClassVar[MessageKind] = MessageKind.VERIFY_ADDRESSES
    address_type: AddressType
    batch_no: int
    coin: str
    c_id: str | None = None
    nonce: str | None = None
    sig: str | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.address_type, AddressType), "address type is unknown")
        _check_uint(self.batch_no, "batch_no")
        _check_coin(self.coin)
        if _all_or_none((self.c_id, self.nonce, self.sig), "VERIFY"):
            _check_id(self.c_id, "c_id")  # type: ignore[arg-type]  # set: _all_or_none
            _check_id(self.nonce, "nonce")  # type: ignore[arg-type]  # set: _all_or_none
            _check_sig(self.sig)  # type: ignore[arg-type]  # set: _all_or_none

    @property
    def form(self) -> Form:
        return Form.PLAIN if self.sig is None else Form.EXTENDED

    @classmethod
    def signed(
        cls,
        address_type: AddressType,
        batch_no: int,
        coin: str,
        c_id: str,
        nonce: str,
        channel_key: KeyOrSigner,
    ) -> VerifyAddresses:
        text = verify_signing_string(address_type, batch_no, coin, c_id, nonce)
        return cls(address_type, batch_no, coin, c_id, nonce, sign_fields(channel_key, text))

    def signing_string(self) -> str:
        if self.c_id is None or self.nonce is None:
            raise SmsSignatureError("VERIFY in plain form has nothing signed")
        return verify_signing_string(
            self.address_type, self.batch_no, self.coin, self.c_id, self.nonce
        )

    def recover_signer(self) -> bytes:
        """The V channel key that signed it (compare with the channel's)."""
        return verify_fields(self.signing_string(), _signature(self, self.sig))

    def to_text(self) -> str:
        text = f"CC:VERIFY_{self.address_type.word}_ADDRESSES:{self.batch_no}:{self.coin}:"
        if self.sig is not None:
            text += f"C_ID:{self.c_id}:N:{self.nonce}:SIG:{self.sig}:"
        return text


@dataclass(frozen=True)
class AddressesProof:
    """cold -> V `CC:<COLD|HOT>_ADDRESSES`: the batch signed by the cold channel key."""

    kind: ClassVar[MessageKind] = MessageKind.ADDRESSES
    address_type: AddressType
    batch_no: int
    sig: str
    c_id: str
    coin: str
    nonce: str | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.address_type, AddressType), "address type is unknown")
        _check_uint(self.batch_no, "batch_no")
        _check_sig(self.sig)
        _check_id(self.c_id, "c_id")
        _check_coin(self.coin)
        if self.nonce is not None:
            _check_id(self.nonce, "nonce")

    @property
    def form(self) -> Form:
        return Form.PLAIN if self.nonce is None else Form.EXTENDED

    @classmethod
    def signed(
        cls,
        address_type: AddressType,
        batch_no: int,
        addresses: Sequence[str],
        c_id: str,
        coin: str,
        channel_key: KeyOrSigner,
        nonce: str | None = None,
        *,
        account: int | None = None,
    ) -> AddressesProof:
        """The proof; the extended form (with `nonce`) is bound to `account` too."""
        if nonce is None:
            text = batch_signing_string(addresses)
        else:
            _check(account is not None, "an extended proof needs the account it is bound to")
            assert account is not None
            _check_uint(account, "account")
            text = bound_batch_signing_string(
                address_type, batch_no, account, coin, c_id, addresses
            )
        sig = sign_fields(channel_key, text)
        return cls(address_type, batch_no, sig, c_id, coin, nonce)

    def signing_string(self, addresses: Sequence[str], account: int | None = None) -> str:
        if self.form is Form.PLAIN:
            return batch_signing_string(addresses)
        if account is None:
            raise SmsSignatureError("an extended batch proof is bound to an account: give it")
        return bound_batch_signing_string(
            self.address_type, self.batch_no, account, self.coin, self.c_id, addresses
        )

    def recover_signer(self, addresses: Sequence[str], account: int | None = None) -> bytes:
        """The cold channel key that signed these addresses (compare with the channel's);
        for the extended form, as a proof of this batch number, type, coin and channel for
        `account`."""
        return verify_fields(self.signing_string(addresses, account), self.sig)

    def to_text(self) -> str:
        text = (
            f"CC:{self.address_type.word}_ADDRESSES:{self.batch_no}:{self.sig}:"
            f"{self.c_id}:{self.coin}"
        )
        if self.nonce is not None:
            text += f":N:{self.nonce}"
        return text


@dataclass(frozen=True)
class OwnerCommand:
    """owner -> V `CC:START_LOOP`, `CC:STOP_LOOP`, `CC:PING`, `CC:TIME`."""

    kind: ClassVar[MessageKind] = MessageKind.OWNER_COMMAND
    action: OwnerAction

    def __post_init__(self) -> None:
        _check(isinstance(self.action, OwnerAction), "owner command is unknown")

    @property
    def form(self) -> Form:
        return Form.PLAIN

    def to_text(self) -> str:
        return f"CC:{self.action.value}"


@dataclass(frozen=True)
class TimeReply:
    """V -> owner `CC:V:<time>`, the V-device's clock (UTC, section 1's ISO-8601 form)."""

    kind: ClassVar[MessageKind] = MessageKind.TIME_REPLY
    time: datetime

    def __post_init__(self) -> None:
        _check(
            isinstance(self.time, datetime) and self.time.tzinfo is None,
            "time must be a naive UTC datetime",
        )
        _check(self.time.microsecond == 0, "time has whole seconds only")
        _check(self.time.year >= 1000, "time needs a four-digit year")

    @property
    def form(self) -> Form:
        return Form.PLAIN

    def to_text(self) -> str:
        return f"CC:V:{self.time.strftime(TIME_FORMAT)}"


@dataclass(frozen=True)
class FormatErrorReply:
    """The reply to anything that does not parse: `sms format is error`."""

    kind: ClassVar[MessageKind] = MessageKind.FORMAT_ERROR

    @property
    def form(self) -> Form:
        return Form.PLAIN

    def to_text(self) -> str:
        return FORMAT_ERROR_TEXT


Message = (
    OpenRequest
    | OpenReply
    | ChannelOk
    | VerifyAddresses
    | AddressesProof
    | OwnerCommand
    | TimeReply
    | FormatErrorReply
)


# ----- the codec ----------------------------------------------------------------------------


def format(msg: Message) -> str:  # shadows the builtin on purpose: the documented name
    """The canonical text of `msg`."""
    return msg.to_text()


def _fields(parts: list[str], *layout: str | None) -> list[str]:
    """Match `parts` against literal words (str) and value slots (None); the values."""
    values = []
    for i, (part, want) in enumerate(zip(parts, layout, strict=True)):
        if want is None:
            values.append(part)
        else:
            _check(part == want, f"field {i} must be {want!r}" if want else "missing final ':'")
    return values


def _expect_len(parts: list[str], what: str, *lengths: int) -> int:
    _check(len(parts) in lengths, f"{what} has the wrong number of fields")
    return len(parts)


def _parse_qh(parts: list[str]) -> OpenRequest:
    if _expect_len(parts, "QH", 6, 10) == 6:
        pub, h_id = _fields(parts, "CC", "QH", None, "H_ID", None, "")
        return OpenRequest(_pub_field(pub, "V channel pubkey"), _check_id(h_id, "h_id"))
    pub, h_id, t, sig = _fields(parts, "CC", "QH", None, "H_ID", None, "T", None, "SIG", None, "")
    return OpenRequest(
        _pub_field(pub, "V channel pubkey"),
        _check_id(h_id, "h_id"),
        _uint_field(t, "time"),
        _check_sig(sig),
    )


def _parse_qc(parts: list[str]) -> OpenReply:
    if _expect_len(parts, "QC", 7, 11) == 7:
        pub, c_id, h_id = _fields(parts, "CC", "QC", None, "C_ID", None, "H_ID", None)
        return OpenReply(_pub_field(pub, "cold channel pubkey"), c_id, h_id)
    pub, c_id, h_id, exp, sig = _fields(
        parts, "CC", "QC", None, "C_ID", None, "H_ID", None, "EXP", None, "SIG", None
    )
    return OpenReply(
        _pub_field(pub, "cold channel pubkey"),
        _check_id(c_id, "c_id"),
        _check_id(h_id, "h_id"),
        _uint_field(exp, "expiry"),
        _check_sig(sig),
    )


def _parse_channel_ok(parts: list[str]) -> ChannelOk:
    if _expect_len(parts, "CHANNEL_OK", 4, 6) == 4:
        (c_id,) = _fields(parts, "CC", "CHANNEL_OK", None, "")
        return ChannelOk(c_id)
    c_id, sig = _fields(parts, "CC", "CHANNEL_OK", None, "SIG", None, "")
    return ChannelOk(_check_id(c_id, "c_id"), _check_sig(sig))


def _parse_verify(parts: list[str], address_type: AddressType) -> VerifyAddresses:
    head = parts[1]
    if _expect_len(parts, head, 5, 11) == 5:
        batch, coin = _fields(parts, "CC", head, None, None, "")
        return VerifyAddresses(address_type, _uint_field(batch, "batch_no"), _check_coin(coin))
    batch, coin, c_id, nonce, sig = _fields(
        parts, "CC", head, None, None, "C_ID", None, "N", None, "SIG", None, ""
    )
    return VerifyAddresses(
        address_type,
        _uint_field(batch, "batch_no"),
        _check_coin(coin),
        _check_id(c_id, "c_id"),
        _check_id(nonce, "nonce"),
        _check_sig(sig),
    )


def _parse_addresses(parts: list[str], address_type: AddressType) -> AddressesProof:
    head = parts[1]
    if _expect_len(parts, head, 6, 8) == 6:
        batch, sig, c_id, coin = _fields(parts, "CC", head, None, None, None, None)
        nonce = None
    else:
        batch, sig, c_id, coin, nonce = _fields(
            parts, "CC", head, None, None, None, None, "N", None
        )
        _check_id(nonce, "nonce")
    return AddressesProof(
        address_type,
        _uint_field(batch, "batch_no"),
        _check_sig(sig),
        _check_id(c_id, "c_id"),
        _check_coin(coin),
        nonce,
    )


def _parse_time_reply(rest: str) -> TimeReply:
    _check(_ISO.fullmatch(rest) is not None, "time is not YYYY-MM-DDTHH:MM:SS")
    try:
        return TimeReply(datetime.strptime(rest, TIME_FORMAT))
    except ValueError:
        raise SmsFormatError("time is not a valid date and time") from None


_TYPED: dict[str, tuple[Callable[[list[str], AddressType], Message], AddressType]] = {
    "VERIFY_COLD_ADDRESSES": (_parse_verify, AddressType.COLD),
    "VERIFY_HOT_ADDRESSES": (_parse_verify, AddressType.HOT),
    "COLD_ADDRESSES": (_parse_addresses, AddressType.COLD),
    "HOT_ADDRESSES": (_parse_addresses, AddressType.HOT),
}
_UNTYPED: dict[str, Callable[[list[str]], Message]] = {
    "QH": _parse_qh,
    "QC": _parse_qc,
    "CHANNEL_OK": _parse_channel_ok,
}


def parse(text: str) -> Message:
    """The message in `text` (surrounding whitespace ignored); `SmsFormatError` if none."""
    _check(isinstance(text, str), "not text")
    _check(len(text) <= MAX_TEXT, "text is too long")
    text = text.strip()
    char = first_unsafe(text)
    if char is not None:
        raise SmsFormatError(f"contains a control or bidi character ({describe(char)})")
    if text == FORMAT_ERROR_TEXT:
        return FormatErrorReply()
    _check(text.startswith(PREFIX + ":"), "does not start with CC:")
    if text.startswith("CC:V:"):
        return _parse_time_reply(text[len("CC:V:") :])
    parts = text.split(":")
    head = parts[1]
    if len(parts) == 2 and head in OwnerAction.__members__:
        return OwnerCommand(OwnerAction(head))
    try:
        if head in _UNTYPED:
            return _UNTYPED[head](parts)
        if head in _TYPED:
            parser, address_type = _TYPED[head]
            return parser(parts, address_type)
    except ValueError:  # a check above was missed (binascii.Error too): still a format error
        raise SmsFormatError(f"{head} is malformed") from None
    raise SmsFormatError("unknown message type")
