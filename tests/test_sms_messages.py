"""The SMS channel codec (docs/sms-channel.md): exact texts, round trips, signatures, fuzzing.

Golden texts follow the templates of reference section 4 with fixed keys (private keys 1..4),
so their signatures (RFC 6979, deterministic) are fixed too.
"""

from __future__ import annotations

import base64
import contextlib
from datetime import datetime

import pytest
from coincurve import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from cc_common.sms import channel_messages as cm
from cc_common.sms.channel_messages import (
    AddressesProof,
    AddressType,
    ChannelOk,
    Form,
    FormatErrorReply,
    MessageKind,
    OpenReply,
    OpenRequest,
    OwnerAction,
    OwnerCommand,
    TimeReply,
    VerifyAddresses,
)
from cc_common.sms.errors import SmsFormatError, SmsSignatureError
from wallet_core import secp
from wallet_core.messages import compact_from_rs

V_IDENTITY = (1).to_bytes(32, "big")
V_CHANNEL = (2).to_bytes(32, "big")
COLD_IDENTITY = (3).to_bytes(32, "big")
COLD_CHANNEL = (4).to_bytes(32, "big")


def pub(priv: bytes) -> bytes:
    return secp.pubkey_from_privkey(priv)


G_HEX = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
V_CH_HEX = "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5"
COLD_CH_HEX = "02e493dbf1c10d80f3581e4904930b1404cc6c13900ee0758474fa94abe8c4cd13"
NONCE = "5f3a9c0e12ab34cd"
ADDRESSES = [f"bcrt1qaddr{i}" for i in range(1000)]

QH_SIG = "IH+WjCmXK1DwvkkTysJiUgnVlDeuS0GfOnvgdnj+0JrJEPQNG2tg+0f49Z+4rNsjK5EapgXZh9q8Qfeq9NgougA="
QC_SIG = "H79ghnSmJdYvamyFbiVdJraRUMxmTS0TFKvrOHNcRexaXfljOoRZIr+4p+R2nG4aj0ifWqbe8flERwaEcQrDINs="
OK_SIG = "IH025/qwZiFlgdVO4IDCdT1SOiSgsWVBd8lh0rcvmVUdag6Uhp2RY1aE+zb21smiwoTyWlpFcw+RHgHlSQiE0rk="
VERIFY_SIG = (
    "IJ6IIqhki57d6Qy3LuI9VxF4qH5VQCrsM8vV9P2fL4DPZl6/zJxK2SMgkyu5mjkcYjkXvxbX0L91/jrWMZxEZm0="
)
BATCH_SIG = (
    "IBQdg1IJBnMkVaeJClebMmCSuqPi2zX44FASQPAP/1PIR5AhTWfU16S+5m/ggqp1ecOhW77q1rrW7obx6hdQImE="
)
# the extended proof: bound to batch 0, COLD, account 5, BTC, channel 9001
BOUND_BATCH_SIG = (
    "H8O/uyNlvR0p90ubKH9NuNuCQ2wo07Moc2ItjWMmGcngMR4VTllspiz2flcpiuqraanN5IbnPeLi7PG7JwyONfs="
)
ACCOUNT = 5

# (text, message, form): every form of every message of section 4, plain and extended.
GOLDEN: list[tuple[str, cm.Message, Form]] = [
    (
        f"CC:QH:{V_CH_HEX}:H_ID:17:",
        OpenRequest(bytes.fromhex(V_CH_HEX), "17"),
        Form.PLAIN,
    ),
    (
        f"CC:QH:{V_CH_HEX}:H_ID:17:T:1470142294:SIG:{QH_SIG}:",
        OpenRequest(bytes.fromhex(V_CH_HEX), "17", 1470142294, QH_SIG),
        Form.EXTENDED,
    ),
    (
        f"CC:QC:{COLD_CH_HEX}:C_ID:9001:H_ID:17",
        OpenReply(bytes.fromhex(COLD_CH_HEX), "9001", "17"),
        Form.PLAIN,
    ),
    (
        f"CC:QC:{COLD_CH_HEX}:C_ID:9001:H_ID:17:EXP:1470228694:SIG:{QC_SIG}",
        OpenReply(bytes.fromhex(COLD_CH_HEX), "9001", "17", 1470228694, QC_SIG),
        Form.EXTENDED,
    ),
    ("CC:CHANNEL_OK:9001:", ChannelOk("9001"), Form.PLAIN),
    (f"CC:CHANNEL_OK:9001:SIG:{OK_SIG}:", ChannelOk("9001", OK_SIG), Form.EXTENDED),
    (
        "CC:VERIFY_COLD_ADDRESSES:0:BTC:",
        VerifyAddresses(AddressType.COLD, 0, "BTC"),
        Form.PLAIN,
    ),
    (
        "CC:VERIFY_HOT_ADDRESSES:12:BTC:",
        VerifyAddresses(AddressType.HOT, 12, "BTC"),
        Form.PLAIN,
    ),
    (
        f"CC:VERIFY_COLD_ADDRESSES:0:BTC:C_ID:9001:N:{NONCE}:SIG:{VERIFY_SIG}:",
        VerifyAddresses(AddressType.COLD, 0, "BTC", "9001", NONCE, VERIFY_SIG),
        Form.EXTENDED,
    ),
    (
        f"CC:COLD_ADDRESSES:0:{BATCH_SIG}:9001:BTC",
        AddressesProof(AddressType.COLD, 0, BATCH_SIG, "9001", "BTC"),
        Form.PLAIN,
    ),
    (
        f"CC:HOT_ADDRESSES:3:{BATCH_SIG}:9001:BTC",
        AddressesProof(AddressType.HOT, 3, BATCH_SIG, "9001", "BTC"),
        Form.PLAIN,
    ),
    (
        f"CC:COLD_ADDRESSES:0:{BOUND_BATCH_SIG}:9001:BTC:N:{NONCE}",
        AddressesProof(AddressType.COLD, 0, BOUND_BATCH_SIG, "9001", "BTC", NONCE),
        Form.EXTENDED,
    ),
    ("CC:START_LOOP", OwnerCommand(OwnerAction.START_LOOP), Form.PLAIN),
    ("CC:STOP_LOOP", OwnerCommand(OwnerAction.STOP_LOOP), Form.PLAIN),
    ("CC:PING", OwnerCommand(OwnerAction.PING), Form.PLAIN),
    ("CC:TIME", OwnerCommand(OwnerAction.TIME), Form.PLAIN),
    ("CC:V:2016-08-02T12:51:34", TimeReply(datetime(2016, 8, 2, 12, 51, 34)), Form.PLAIN),
    ("sms format is error", FormatErrorReply(), Form.PLAIN),
]


@pytest.mark.parametrize(("text", "message", "form"), GOLDEN, ids=[g[0][:28] for g in GOLDEN])
def test_golden_texts(text: str, message: cm.Message, form: Form) -> None:
    parsed = cm.parse(text)
    assert parsed == message
    assert parsed.form is form
    assert cm.format(message) == text
    assert cm.format(cm.parse(cm.format(parsed))) == text


def test_kinds() -> None:
    kinds = {type(m).__name__: m.kind for _, m, _ in GOLDEN}
    assert kinds["OpenRequest"] is MessageKind.OPEN_REQUEST
    assert kinds["AddressesProof"] is MessageKind.ADDRESSES
    assert kinds["OwnerCommand"] is MessageKind.OWNER_COMMAND
    assert cm.FORMAT_ERROR_TEXT == "sms format is error"


def test_golden_signatures_verify() -> None:
    """The extended golden texts carry signatures by the documented keys."""
    v_ch = bytes.fromhex(V_CH_HEX)
    qh = cm.parse(GOLDEN[1][0])
    qc = cm.parse(GOLDEN[3][0])
    ok = cm.parse(GOLDEN[5][0])
    verify = cm.parse(GOLDEN[8][0])
    proof = cm.parse(GOLDEN[11][0])
    assert isinstance(qh, OpenRequest) and qh.recover_signer() == pub(V_IDENTITY)
    assert qh.signing_string() == f"QH:{V_CH_HEX}:17:1470142294"
    assert isinstance(qc, OpenReply) and qc.recover_signer(v_ch) == pub(COLD_IDENTITY)
    assert qc.signing_string(v_ch) == f"QC:{COLD_CH_HEX}:9001:17:{V_CH_HEX}:1470228694"
    assert isinstance(ok, ChannelOk) and ok.recover_signer() == pub(V_CHANNEL)
    assert ok.signing_string() == "CHANNEL_OK:9001"
    assert isinstance(verify, VerifyAddresses) and verify.recover_signer() == pub(V_CHANNEL)
    assert verify.signing_string() == f"VERIFY_COLD_ADDRESSES:0:BTC:9001:{NONCE}"
    assert isinstance(proof, AddressesProof)
    assert proof.recover_signer(ADDRESSES, ACCOUNT) == pub(COLD_CHANNEL)
    assert cm.batch_signing_string(ADDRESSES[:2]) == "0,bcrt1qaddr0:1,bcrt1qaddr1:"
    assert proof.signing_string(ADDRESSES[:2], ACCOUNT) == (
        "COLD_ADDRESSES:0:5:BTC:9001:0,bcrt1qaddr0:1,bcrt1qaddr1:"
    )
    plain = cm.parse(GOLDEN[9][0])
    assert isinstance(plain, AddressesProof) and plain.recover_signer(ADDRESSES) == pub(
        COLD_CHANNEL
    )


def test_extended_batch_proof_is_bound_to_batch_type_account_coin_and_channel() -> None:
    """A proof replayed for another batch number, type, account, coin or channel does not
    recover to the cold channel key (the same addresses, so only the binding differs)."""
    proof = cm.parse(GOLDEN[11][0])
    assert isinstance(proof, AddressesProof)
    cold = pub(COLD_CHANNEL)
    assert proof.recover_signer(ADDRESSES, ACCOUNT) == cold
    replays = [
        AddressesProof(AddressType.COLD, 1, proof.sig, "9001", "BTC", NONCE),
        AddressesProof(AddressType.HOT, 0, proof.sig, "9001", "BTC", NONCE),
        AddressesProof(AddressType.COLD, 0, proof.sig, "9002", "BTC", NONCE),
        AddressesProof(AddressType.COLD, 0, proof.sig, "9001", "TBTC", NONCE),
    ]
    for replay in replays:
        assert replay.recover_signer(ADDRESSES, ACCOUNT) != cold, replay
    assert proof.recover_signer(ADDRESSES, ACCOUNT + 1) != cold
    with pytest.raises(SmsSignatureError, match="bound to an account"):
        proof.recover_signer(ADDRESSES)
    with pytest.raises(SmsFormatError, match="needs the account"):
        AddressesProof.signed(AddressType.COLD, 0, ADDRESSES, "9001", "BTC", COLD_CHANNEL, NONCE)


def test_signed_builders_reproduce_the_golden_texts() -> None:
    v_ch, cold_ch = pub(V_CHANNEL), pub(COLD_CHANNEL)
    built = [
        OpenRequest.signed(v_ch, "17", 1470142294, V_IDENTITY),
        OpenReply.signed(cold_ch, "9001", "17", v_ch, 1470228694, COLD_IDENTITY),
        ChannelOk.signed("9001", V_CHANNEL),
        VerifyAddresses.signed(AddressType.COLD, 0, "BTC", "9001", NONCE, V_CHANNEL),
        AddressesProof.signed(
            AddressType.COLD, 0, ADDRESSES, "9001", "BTC", COLD_CHANNEL, NONCE, account=ACCOUNT
        ),
    ]
    assert [cm.format(m) for m in built] == [GOLDEN[i][0] for i in (1, 3, 5, 8, 11)]


def test_signer_hook_signs_like_a_token() -> None:
    """The cold side signs with a callable (its token): digest -> 65-byte compact sig."""

    seen: list[bytes] = []

    def token(digest: bytes) -> bytes:
        seen.append(digest)
        rec = PrivateKey(COLD_IDENTITY).sign_recoverable(digest, hasher=None)
        r, s = int.from_bytes(rec[:32], "big"), int.from_bytes(rec[32:64], "big")
        return base64.b64decode(compact_from_rs(r, s, rec[64]))

    v_ch = pub(V_CHANNEL)
    reply = OpenReply.signed(pub(COLD_CHANNEL), "9001", "17", v_ch, 1470228694, token)
    assert len(seen) == 1 and len(seen[0]) == 32
    assert cm.format(reply) == GOLDEN[3][0]
    assert reply.recover_signer(v_ch) == pub(COLD_IDENTITY)


def test_a_broken_signer_hook_is_caught() -> None:
    with pytest.raises(SmsSignatureError):
        cm.sign_fields(lambda digest: b"\x1f" + bytes(64), "CHANNEL_OK:1")
    with pytest.raises(SmsSignatureError):
        cm.sign_fields(lambda digest: b"short", "CHANNEL_OK:1")


def test_wrong_key_or_altered_field_fails() -> None:
    v_ch = pub(V_CHANNEL)
    qh = cm.parse(GOLDEN[1][0])
    assert isinstance(qh, OpenRequest)
    assert qh.recover_signer() != pub(COLD_IDENTITY)
    with pytest.raises(SmsSignatureError, match="expected key"):
        cm.verify_fields_by(pub(COLD_IDENTITY), qh.signing_string(), QH_SIG)
    cm.verify_fields_by(pub(V_IDENTITY), qh.signing_string(), QH_SIG)

    # each altered field changes the signed string, so the signer recovered changes
    altered = [
        GOLDEN[1][0].replace(":H_ID:17:", ":H_ID:18:"),
        GOLDEN[1][0].replace(":T:1470142294:", ":T:1470142295:"),
        GOLDEN[1][0].replace(V_CH_HEX, COLD_CH_HEX),
    ]
    for text in altered:
        msg = cm.parse(text)
        assert isinstance(msg, OpenRequest)
        with contextlib.suppress(SmsSignatureError):  # or no key at all
            assert msg.recover_signer() != pub(V_IDENTITY)
    qc = cm.parse(GOLDEN[3][0].replace(":C_ID:9001:", ":C_ID:9002:"))
    assert isinstance(qc, OpenReply) and qc.recover_signer(v_ch) != pub(COLD_IDENTITY)
    qc = cm.parse(GOLDEN[3][0])
    assert isinstance(qc, OpenReply)
    assert qc.recover_signer(pub(V_IDENTITY)) != pub(COLD_IDENTITY)  # bound to the V's key
    verify = cm.parse(GOLDEN[8][0].replace(f":N:{NONCE}:", ":N:0000000000000000:"))
    assert isinstance(verify, VerifyAddresses) and verify.recover_signer() != pub(V_CHANNEL)
    proof = cm.parse(GOLDEN[11][0])
    assert isinstance(proof, AddressesProof)
    substituted = ADDRESSES[:500] + ["bcrt1qattacker"] + ADDRESSES[501:]
    assert proof.recover_signer(substituted, ACCOUNT) != pub(COLD_CHANNEL)


def test_plain_forms_have_nothing_to_verify() -> None:
    with pytest.raises(SmsSignatureError):
        OpenRequest(pub(V_CHANNEL), "17").recover_signer()
    with pytest.raises(SmsSignatureError):
        ChannelOk("9001").recover_signer()
    with pytest.raises(SmsSignatureError):
        VerifyAddresses(AddressType.HOT, 1, "BTC").recover_signer()


def test_garbage_signature_is_a_signature_error() -> None:
    with pytest.raises(SmsSignatureError):
        cm.verify_fields("CHANNEL_OK:1", "not base64")
    with pytest.raises(SmsSignatureError):
        cm.verify_fields("CHANNEL_OK:1", base64.b64encode(b"\x1f" + bytes(64)).decode())


MALFORMED = [
    ("", "does not start"),
    ("hello", "does not start"),
    ("CC:", "unknown"),
    ("CC:FOO:1:", "unknown"),
    ("cc:PING", "does not start"),
    ("CC:PING:", "unknown"),
    ("CC:QH:02ab:H_ID:17:", "V channel pubkey"),
    (f"CC:QH:{G_HEX[:-2]}00:H_ID:17:", "V channel pubkey"),  # not on the curve
    (f"CC:QH:{V_CH_HEX}:H_ID:17", "wrong number"),  # the reference's final ':' is required
    (f"CC:QH:{V_CH_HEX}:HID:17:", "field 3"),
    (f"CC:QH:{V_CH_HEX}:H_ID::", "h_id"),
    (f"CC:QH:{V_CH_HEX}:H_ID:a b:", "h_id"),
    (f"CC:QH:{V_CH_HEX}:H_ID:17:T:-5:SIG:{QH_SIG}:", "time"),
    (f"CC:QH:{V_CH_HEX}:H_ID:17:T:1:SIG:abc:", "signature"),
    (f"CC:QH:{V_CH_HEX}:H_ID:17:T:1:SIG:{QH_SIG}:x", "missing final"),
    (f"CC:QC:{COLD_CH_HEX}:C_ID:9001:H_ID:17:", "wrong number"),
    (f"CC:QC:{COLD_CH_HEX}:C_ID:9001:H_ID:17:EXP:1:SIG:{'A' * 87}=", "compact signature"),
    ("CC:CHANNEL_OK::", "c_id"),
    ("CC:CHANNEL_OK:9001", "wrong number"),
    ("CC:VERIFY_COLD_ADDRESSES:01:BTC:", "batch_no"),
    ("CC:VERIFY_COLD_ADDRESSES:0:btc:", "coin"),
    ("CC:VERIFY_WARM_ADDRESSES:0:BTC:", "unknown"),
    (f"CC:COLD_ADDRESSES:0:{BATCH_SIG}:9001", "wrong number"),
    (f"CC:COLD_ADDRESSES:0:{BATCH_SIG}:9001:BTC:N:", "nonce"),
    (f"CC:COLD_ADDRESSES:0:{BATCH_SIG}:9001:BTC:X:{NONCE}", "field 6"),
    ("CC:V:2016-08-02 12:51:34", "time"),
    ("CC:V:2016-13-02T12:51:34", "valid date"),
    ("sms format is errors", "does not start"),
    ("CC:" + "A" * 2000, "too long"),
]


@pytest.mark.parametrize(("text", "reason"), MALFORMED, ids=[m[0][:30] for m in MALFORMED])
def test_malformed_texts_raise_format_error(text: str, reason: str) -> None:
    with pytest.raises(SmsFormatError) as caught:
        cm.parse(text)
    assert reason in caught.value.reason
    assert caught.value.code == 830
    assert caught.value.message.startswith("sms format is error")


def test_parse_ignores_surrounding_whitespace_and_upper_case_hex() -> None:
    assert cm.parse("  CC:PING\r\n") == OwnerCommand(OwnerAction.PING)
    upper = cm.parse(f"CC:QH:{V_CH_HEX.upper()}:H_ID:17:")
    assert upper == GOLDEN[0][1]
    assert cm.format(upper) == GOLDEN[0][0]  # canonical output is lower case


def test_constructors_refuse_what_would_not_parse() -> None:
    with pytest.raises(SmsFormatError):
        OpenRequest(pub(V_CHANNEL), "17", 1470142294)  # time without signature
    with pytest.raises(SmsFormatError):
        ChannelOk("90:01")
    with pytest.raises(SmsFormatError):
        VerifyAddresses(AddressType.COLD, -1, "BTC")
    with pytest.raises(SmsFormatError):
        VerifyAddresses(AddressType.COLD, 1, "BTC", c_id="9001")  # nonce and sig missing
    with pytest.raises(SmsFormatError):
        TimeReply(datetime(2016, 8, 2, 12, 51, 34, 5))


# ----- property tests -----------------------------------------------------------------------

ids = st.from_regex(r"[0-9A-Za-z_-]{1,40}", fullmatch=True)
uints = st.integers(min_value=0, max_value=10**12 - 1)
coins = st.from_regex(r"[A-Z][A-Z0-9]{1,9}", fullmatch=True)
privs = st.integers(min_value=1, max_value=secp.N - 1).map(lambda k: k.to_bytes(32, "big"))
pubkeys = st.builds(lambda k, c: secp.pubkey_from_privkey(k, compressed=c), privs, st.booleans())
sigs = st.just(QH_SIG) | st.just(BATCH_SIG)
types = st.sampled_from(AddressType)

messages = st.one_of(
    st.builds(OpenRequest, pubkeys, ids),
    st.builds(OpenRequest, pubkeys, ids, uints, sigs),
    st.builds(OpenReply, pubkeys, ids, ids),
    st.builds(OpenReply, pubkeys, ids, ids, uints, sigs),
    st.builds(ChannelOk, ids),
    st.builds(ChannelOk, ids, sigs),
    st.builds(VerifyAddresses, types, uints, coins),
    st.builds(VerifyAddresses, types, uints, coins, ids, ids, sigs),
    st.builds(AddressesProof, types, uints, sigs, ids, coins),
    st.builds(AddressesProof, types, uints, sigs, ids, coins, ids),
    st.builds(OwnerCommand, st.sampled_from(OwnerAction)),
    st.builds(
        TimeReply,
        st.datetimes(min_value=datetime(1000, 1, 1)).map(lambda d: d.replace(microsecond=0)),
    ),
    st.just(FormatErrorReply()),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip_of_every_form(message: cm.Message) -> None:
    text = cm.format(message)
    assert cm.parse(text) == message
    assert cm.format(cm.parse(text)) == text


@settings(max_examples=200, deadline=None)
@given(privs, ids, uints)
def test_signed_open_request_round_trip(priv: bytes, h_id: str, t: int) -> None:
    request = OpenRequest.signed(pub(V_CHANNEL), h_id, t, priv)
    assert cm.parse(cm.format(request)).recover_signer() == pub(priv)  # type: ignore[union-attr]


fragments = st.sampled_from(
    [
        "CC",
        ":",
        "QH",
        "QC",
        "H_ID",
        "C_ID",
        "T",
        "EXP",
        "SIG",
        "N",
        "CHANNEL_OK",
        "VERIFY_COLD_ADDRESSES",
        "HOT_ADDRESSES",
        "PING",
        "V",
        V_CH_HEX,
        QH_SIG,
        "0",
        "17",
        "BTC",
        "2016-08-02T12:51:34",
        "",
    ]
)


def _parse_or_format_error(text: str) -> None:
    try:
        message = cm.parse(text)
    except SmsFormatError:
        return
    assert cm.parse(cm.format(message)) == message


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=300))
def test_parse_never_raises_anything_else_on_any_text(text: str) -> None:
    _parse_or_format_error(text)


@settings(max_examples=1000, deadline=None)
@given(st.lists(fragments | st.text(max_size=5), max_size=14).map("".join))
def test_parse_never_raises_anything_else_on_near_misses(text: str) -> None:
    _parse_or_format_error(text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([g[0] for g in GOLDEN]), st.data())
def test_parse_survives_mutations_of_golden_texts(text: str, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 3))
    insert = data.draw(st.text(max_size=3))
    _parse_or_format_error(text[:pos] + insert + text[pos + cut :])
