"""The co-sign checks of docs/hsm-pair.md, as pure functions over a decoded request.

Each check either returns or raises its own refusal; `service.py` runs them in the contract's
order and does what touches state (freezing, marking `user_tx_no` used). Nothing here trusts the
hot side: scripts are derived from the account's keys, outputs compared with what the V-device
signed, and every signature verified before it is returned.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cc_common import fields
from hsm_cold.errors import (
    AmountMismatch,
    BadLocktime,
    BadPrevTx,
    BadRequest,
    BadSequence,
    BadTxVersion,
    ChangeBeyondGap,
    ChangeNotDerivable,
    ChannelExpired,
    DailyFeeAbovePolicy,
    ExtraOutput,
    FeeAbovePolicy,
    FeeRateAbovePolicy,
    ForeignInput,
    OutputMismatch,
    PrevTxRequired,
    UnknownChannel,
)
from hsm_cold.store import CHANNEL_LIVE, ChannelRecord
from wallet_core import messages, packedtx, signatures
from wallet_core.addresses import script_to_address
from wallet_core.bech32 import SegwitV0Encoder
from wallet_core.bip32 import HARDENED, PrivateNode
from wallet_core.chaincloud import (
    MAX_MONEY,
    Out,
    check_user_tx_no,
    format_outs,
    parse_outs_with_scripts,
    send_request_string,
)
from wallet_core.errors import OutsError, TxParseError, WalletError
from wallet_core.fees import estimate_vsize, fee_for
from wallet_core.hashes import sha256
from wallet_core.networks import Network
from wallet_core.prevtx import PrevTx, parse_prev_tx
from wallet_core.rawtx import TxIn, TxOut, UnsignedTx, parse_unsigned_tx, serialize_unsigned
from wallet_core.script import ScriptType, classify, p2wsh_script
from wallet_core.sighash import bip143_sighash
from wallet_core.wallets import CHANGE, RECEIVE, AccountKey, HotWallet

MAX_TEXT = 100_000
COIN_CODE = "BTC"
TX_VERSION = 2
# Final, final-but-locktime-enabled, and BIP125-signalling: none enables a BIP68 relative lock
# (bit 31 set), so no accepted sequence can delay a signed send.
SEQUENCES = frozenset({0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD})
# How far past the highest change index co-signed so far a new change output may go: custody
# takes a fresh index per built send (refused or failed builds skip one), and a recovery scan
# with this gap still finds every change output the cold HSM ever signed.
CHANGE_GAP = 1000
DAY = 86_400.0
COSIGNER = 1  # the cold HSM's place among the hot wallet's cosigners (hot, cold, recovery)


@dataclass(frozen=True)
class FeePolicy:
    """The cold side's own fee ceilings: per send (sat), rate (sat/vB) and per day (sat)."""

    max_fee_sat: int
    max_fee_rate: float
    max_fee_per_day_sat: int = 10_000_000


@dataclass(frozen=True)
class InputRef:
    amount: int
    chain: int
    index: int


@dataclass(frozen=True)
class CosignRequest:
    """The compact co-sign request, decoded and type-checked (not yet trusted)."""

    account: int
    tx: UnsignedTx
    inputs: tuple[InputRef, ...]
    change: tuple[tuple[int, int], ...]  # (vout, index)
    user_tx_no: str
    is_dynamic_fee: int
    coin_code: str
    outs: str
    vc_code: str
    c_id: str
    prev_txs: tuple[bytes, ...] = ()

    @property
    def txid(self) -> str:
        return self.tx.txid

    def digest(self) -> bytes:
        """What one `user_tx_no` is bound to: the exact transaction, stated amounts and paths,
        and declared change (an identical retry has the same digest, anything else not)."""
        parts = [self.tx.raw]
        for i in self.inputs:
            parts.append(i.amount.to_bytes(8, "little"))
            parts.append(i.chain.to_bytes(4, "little") + i.index.to_bytes(4, "little"))
        for vout, index in self.change:
            parts.append(b"C" + vout.to_bytes(4, "little") + index.to_bytes(4, "little"))
        return sha256(b"".join(parts))

    def request_string(self) -> str:
        """The canonical string the V-device signed (protocol section 3)."""
        try:
            return send_request_string(
                self.outs,
                self.user_tx_no,
                coin_code=self.coin_code,
                is_dynamic_fee=self.is_dynamic_fee,
            )
        except OutsError as exc:
            raise BadRequest(f"request: {exc.message}") from None


# -- decoding -----------------------------------------------------------------------------------


def field(payload: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """`payload[key]` of type `kind` (bool is not an int here), else `BadRequest`."""
    return fields.field(payload, key, kind, error=BadRequest)


def text_field(payload: Mapping[str, Any], key: str, max_len: int = MAX_TEXT) -> str:
    return fields.text_field(payload, key, max_len, error=BadRequest)


def int_list(value: Any, n: int, what: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != n
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value)
    ):
        raise BadRequest(f"{what} must be {n} non-negative integers")
    return tuple(value)


def signed_message_text(value: Any, what: str) -> str:
    """A signed message as base64 text (65 raw bytes are accepted too)."""
    if isinstance(value, bytes) and len(value) == 65:
        return base64.b64encode(value).decode()
    if isinstance(value, str) and 0 < len(value) <= 200:
        return value
    raise BadRequest(f"{what} must be a signed message (base64 of 65 bytes)")


def decode_tx(raw: bytes) -> UnsignedTx:
    """The strict `wallet_core.rawtx` parse of the unsigned transaction; `BadRequest` if refused."""
    try:
        return parse_unsigned_tx(raw)
    except TxParseError as exc:
        raise BadRequest(exc.message) from None


def user_tx_no_field(payload: Mapping[str, Any]) -> str:
    """`user_tx_no` by `wallet_core.chaincloud.check_user_tx_no` (fullmatch, no control char)."""
    try:
        return check_user_tx_no(field(payload, "user_tx_no", str))
    except OutsError as exc:
        raise BadRequest(exc.message) from None


def decode_tx_inputs(
    payload: Mapping[str, Any], parsed: UnsignedTx | None = None
) -> tuple[UnsignedTx, tuple[InputRef, ...]]:
    """The unsigned transaction and one `[amount, chain, index]` description per input.

    `parsed`: the transaction as `unpack_payments` built it from its own parse; used when its
    bytes are exactly the payload's (parsing them again would give the same object)."""
    raw = field(payload, "tx", bytes)
    tx = parsed if parsed is not None and parsed.raw == raw else decode_tx(raw)
    raw_inputs = field(payload, "inputs", list)
    inputs = tuple(InputRef(*int_list(i, 3, "each input")) for i in raw_inputs)
    if len(inputs) != len(tx.vin):
        raise BadRequest(f"{len(inputs)} input descriptions for {len(tx.vin)} inputs")
    return tx, inputs


def decode_request(payload: Mapping[str, Any], parsed: UnsignedTx | None = None) -> CosignRequest:
    """Type-check the compact request; `BadRequest` names the first bad field (`parsed`: see
    `decode_tx_inputs`)."""
    tx, inputs = decode_tx_inputs(payload, parsed)
    change = tuple(
        (vout, index)
        for vout, index in (
            int_list(c, 2, "each change entry") for c in field(payload, "change", list)
        )
    )
    for vout, _ in change:
        if vout >= len(tx.vout):
            raise BadRequest(f"change output {vout} does not exist")
    is_dynamic_fee = field(payload, "is_dynamic_fee", int)
    if is_dynamic_fee not in (0, 1):
        raise BadRequest("is_dynamic_fee must be 0 or 1")
    coin_code = text_field(payload, "coin_code", 10)
    if coin_code != COIN_CODE:
        raise BadRequest(f"coin_code {coin_code!r} is not {COIN_CODE}")
    c_id = payload.get("c_id")
    if isinstance(c_id, int) and not isinstance(c_id, bool):
        c_id = str(c_id)
    prev_txs = decode_prev_txs(payload, len(tx.vin))
    return CosignRequest(
        account=field(payload, "account", int),
        tx=tx,
        inputs=inputs,
        change=change,
        user_tx_no=user_tx_no_field(payload),
        is_dynamic_fee=is_dynamic_fee,
        coin_code=coin_code,
        outs=text_field(payload, "outs"),
        vc_code=signed_message_text(payload.get("vc_code"), "vc_code"),
        c_id=text_field({"c_id": c_id}, "c_id", 128),
        prev_txs=prev_txs,
    )


def decode_prev_txs(payload: Mapping[str, Any], n_inputs: int) -> tuple[bytes, ...]:
    """The optional `prev_txs`: raw previous transactions, at most one per input."""
    raw = payload.get("prev_txs", [])
    if not isinstance(raw, list) or len(raw) > n_inputs:
        raise BadRequest(f"prev_txs must be a list of at most {n_inputs} transactions")
    if not all(isinstance(t, bytes) and t for t in raw):
        raise BadRequest("each of prev_txs must be a transaction's bytes")
    return tuple(raw)


def parse_prev_txs(raw: Sequence[bytes]) -> dict[str, PrevTx]:
    """Parse previous transactions; the txid is computed here, so it cannot lie."""
    out = {}
    for n, tx in enumerate(raw):
        try:
            prev = parse_prev_tx(tx)
        except TxParseError as exc:
            raise BadPrevTx(f"prev_txs[{n}]: {exc.message}") from None
        out[prev.txid] = prev
    return out


# -- the checks, in the contract's order --------------------------------------------------------


def check_channel(channel: ChannelRecord | None, req: CosignRequest, now: float) -> bytes:
    """Check 2: the channel exists for the account, is live and unexpired; its public key.

    A renewal does not retire the previous channel: each stays valid until its own expiry,
    so a send signed just before a renewal still co-signs (docs/sms-channel.md).
    """
    if channel is None:
        raise UnknownChannel(f"account {req.account} has no channel {req.c_id!r}")
    if channel.state != CHANNEL_LIVE:  # opened by SMS, not yet confirmed by CHANNEL_OK
        raise UnknownChannel(f"channel {req.c_id!r} of account {req.account} is not live yet")
    if now >= channel.expires_at:
        raise ChannelExpired(
            f"channel {req.c_id!r} of account {req.account} expired at {int(channel.expires_at)}"
        )
    return channel.channel_pubkey


def vc_code_valid(req: CosignRequest, channel_pubkey: bytes) -> bool:
    """Check 3: `vc_code` recovers to the channel key over the canonical request string."""
    return messages.verify_message_pubkey(channel_pubkey, req.request_string(), req.vc_code)


Payment = tuple[Out, bytes]  # a signed output and the script its address pays


def signed_payments(req: CosignRequest, network: Network) -> list[Payment]:
    """`outs` parsed, each address decoded once into the script it pays."""
    try:
        return parse_outs_with_scripts(req.outs, network)
    except OutsError as exc:
        raise BadRequest(f"outs: {exc.message}") from None


def check_outputs(req: CosignRequest, signed: Sequence[Payment], wallet: HotWallet) -> None:
    """Check 5: outputs are exactly `outs` in order, plus at most one derivable change."""
    if len(req.change) > 1:
        raise ExtraOutput(f"{len(req.change)} change outputs declared; at most one is allowed")
    change_vouts = {vout for vout, _ in req.change}
    payments = [(n, o) for n, o in enumerate(req.tx.vout) if n not in change_vouts]
    outs = [want for want, _ in signed]
    for (n, got), (want, script) in zip(payments, signed, strict=False):
        if got.script_pubkey != script or got.value != want.value:
            raise OutputMismatch(
                f"output {n} pays {got.value} sat to script {got.script_pubkey.hex()}; the signed"
                f" request says {want.value} sat to {want.address}"
            )
    if len(payments) > len(outs):
        extra = payments[len(outs)][0]
        raise ExtraOutput(
            f"output {extra} is not in the signed request and not declared change"
            f" ({len(payments)} payments for {len(outs)} signed outputs)"
        )
    if len(payments) < len(outs):
        raise OutputMismatch(f"{len(outs)} signed outputs but only {len(payments)} payments")
    check_change_scripts(req, wallet, "change output")


def check_change_scripts(req: CosignRequest, wallet: HotWallet, label: str) -> None:
    """Each declared change output pays the script the cold HSM derives for its index: the
    hot side names the index, never the script."""
    for vout, index in req.change:
        try:
            own = wallet.script_pubkey(index, CHANGE)
        except WalletError:
            own = b""
        if req.tx.vout[vout].script_pubkey != own:
            raise ChangeNotDerivable(
                f"{label} {vout} is not the hot wallet's change address {index}"
            )


def check_shape(tx: UnsignedTx) -> None:
    """Version 2, nLockTime 0 and sequences from `SEQUENCES`: nothing that delays a signed
    send (the cold HSM knows no chain height, so it accepts no absolute lock time at all)."""
    if tx.version != TX_VERSION:
        raise BadTxVersion(f"transaction version {tx.version}; only {TX_VERSION} is co-signed")
    if tx.locktime != 0:
        raise BadLocktime(f"nLockTime {tx.locktime}; only 0 is co-signed")
    for n, vin in enumerate(tx.vin):
        if vin.sequence not in SEQUENCES:
            raise BadSequence(
                f"input {n} has sequence {vin.sequence:#010x}; only final (0xffffffff,"
                " 0xfffffffe) or BIP125 (0xfffffffd) is co-signed"
            )


def check_change_gap(req: CosignRequest, change_high: int) -> None:
    """A change index at most `CHANGE_GAP` past the highest one co-signed so far."""
    for vout, index in req.change:
        if index > change_high + CHANGE_GAP:
            raise ChangeBeyondGap(
                f"change output {vout} uses index {index}, more than {CHANGE_GAP} past the"
                f" highest co-signed change index ({change_high})"
            )


def verified_inputs(
    req: CosignRequest,
    scripts: Sequence[bytes],
    known: Callable[[str, int], tuple[int, bytes] | None],
    supplied: Mapping[str, PrevTx],
) -> None:
    """Every input's amount and script as verified (earlier, or from a supplied previous
    transaction) must equal the stated amount and the derived script.

    `PrevTxRequired` names the outpoints nobody verified yet; `ForeignInput` an input whose
    verified script is not this wallet's; `AmountMismatch` a stated amount that is not true.
    """
    facts: list[tuple[int, bytes] | None] = []
    for vin in req.tx.vin:
        txid = vin.txid.hex()
        fact = known(txid, vin.vout)
        if fact is None and txid in supplied:
            outs = supplied[txid].vout
            if vin.vout >= len(outs):
                raise BadPrevTx(f"previous transaction {txid} has no output {vin.vout}")
            fact = (outs[vin.vout].value, outs[vin.vout].script_pubkey)
        facts.append(fact)
    missing = [f"{v.txid.hex()}:{v.vout}" for v, f in zip(req.tx.vin, facts, strict=True) if not f]
    if missing:
        raise PrevTxRequired(
            f"send the previous transaction of {', '.join(missing)}: its amount is not verified"
        )
    for n, (ref, script, fact) in enumerate(zip(req.inputs, scripts, facts, strict=True)):
        assert fact is not None
        amount, script_pubkey = fact
        if script_pubkey != p2wsh_script(sha256(script)):
            raise ForeignInput(
                f"input {n} spends script {script_pubkey.hex()}, not the hot wallet's"
                f" (chain {ref.chain}, index {ref.index})"
            )
        if ref.amount != amount:
            raise AmountMismatch(
                f"input {n} is stated as {ref.amount} sat; its verified amount is {amount} sat"
            )


def witness_scripts(req: CosignRequest, wallet: HotWallet) -> list[bytes]:
    """Check 6: every input names a key path of the hot wallet; its derived witness script.

    The path is all the cold side is told, so this is also what it signs for: an input that
    spends some other script gets a signature over our own script, valid for nothing else.
    """
    scripts = []
    for n, ref in enumerate(req.inputs):
        if ref.chain not in (RECEIVE, CHANGE) or ref.index >= HARDENED:
            raise ForeignInput(
                f"input {n} (chain {ref.chain}, index {ref.index}) is not a path of the"
                f" account's hot wallet"
            )
        try:
            scripts.append(wallet.witness_script(ref.index, ref.chain))
        except WalletError as exc:
            raise ForeignInput(f"input {n}: {exc.message}") from None
    return scripts


def check_fee(req: CosignRequest, policy: FeePolicy, fees_today: int) -> int:
    """Fee = verified inputs - outputs within the per-send, rate and daily ceilings; the fee."""
    total_in = sum(i.amount for i in req.inputs)
    total_out = sum(o.value for o in req.tx.vout)
    fee = total_in - total_out
    if fee < 0:
        raise BadRequest(f"outputs ({total_out} sat) exceed inputs ({total_in} sat)")
    # Worst-case size (72-byte signatures): the real rate is at most ~1% above this one.
    size = estimate_vsize(
        [ScriptType.P2WSH] * len(req.inputs), [o.script_pubkey for o in req.tx.vout]
    )
    if fee > policy.max_fee_sat:
        raise FeeAbovePolicy(
            f"fee {fee} sat is above the policy's {policy.max_fee_sat} sat per send"
        )
    ceiling = fee_for(size, policy.max_fee_rate)
    if fee > ceiling:
        raise FeeRateAbovePolicy(
            f"fee {fee} sat ({fee / size:.1f} sat/vB) is above the policy's"
            f" {policy.max_fee_rate:g} sat/vB ({ceiling} sat here)"
        )
    if fees_today + fee > policy.max_fee_per_day_sat:
        raise DailyFeeAbovePolicy(
            f"fee {fee} sat would pass the daily fee ceiling of {policy.max_fee_per_day_sat}"
            f" sat ({fees_today} sat of fees signed in the last 24 hours)"
        )
    return fee


# -- signing ------------------------------------------------------------------------------------


def sign_inputs(
    req: CosignRequest, scripts: Sequence[bytes], account_node: PrivateNode, wallet: HotWallet
) -> list[bytes]:
    """The cosigner's 64-byte low-S r||s per input, each verified against the wallet's cosigner
    key for its path before it leaves.

    The private child is derived from the sealed seed's account node; the public keys a
    non-hardened step hashes come from `wallet` (derived from the same seed). The signature is
    verified against the wallet's key, so a child that is not the wallet's key (a wallet not
    of this seed) signs nothing: the same guarantee as comparing the child's public key first.
    """
    cosigner = wallet.cosigners[COSIGNER]
    if not isinstance(cosigner, AccountKey) or cosigner.xpub.chain_code != account_node.chain_code:
        raise WalletError("the cosigner account node is not the wallet's cosigner key")
    chains: dict[int, PrivateNode] = {}
    out = []
    for n, (ref, script) in enumerate(zip(req.inputs, scripts, strict=True)):
        chain_node = chains.get(ref.chain)
        if chain_node is None:
            chain_node = chains[ref.chain] = account_node.child(ref.chain, cosigner.xpub.key)
        child = chain_node.child(ref.index, wallet.chain_key(COSIGNER, ref.chain).key)
        pubkey = wallet.pubkeys(ref.index, ref.chain)[COSIGNER]
        digest = bip143_sighash(req.tx, n, script, ref.amount)
        der = signatures.sign_digest(child.key, digest)
        if not signatures.verify_digest(pubkey, digest, der):
            raise WalletError(
                f"input {n}: signature does not verify against the wallet's cosigner key; withheld"
            )
        r, s = signatures.der_decode(der)
        out.append(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return out


# -- the packed form ----------------------------------------------------------------------------

# `{"p": [...]}`: the request's fields by position, without what the cold HSM derives itself:
# the transaction without its version (2) and nLockTime (0), each declared change output with an
# empty script (the cold HSM puts in the script it derives for the index), `outs` None when it is
# the transaction's payments written as `addr,value;...` and `coin_code` (always BTC).
PACKED_FIELDS = (
    "account",
    "tx",
    "inputs",
    "change",
    "user_tx_no",
    "is_dynamic_fee",
    "vc_code",
    "c_id",
    "outs",
    "prev_txs",
)
PACKED_VERSION = TX_VERSION.to_bytes(4, "little")
PACKED_LOCKTIME = bytes(4)


def packed_account(payload: Mapping[str, Any]) -> int:
    """The account a packed request names (its wallet is needed to unpack it)."""
    packed = field(payload, "p", list)
    if len(packed) != len(PACKED_FIELDS):
        raise BadRequest(f"a packed request has {len(PACKED_FIELDS)} fields, not {len(packed)}")
    return int(field({"account": packed[0]}, "account", int))


def refusal_names(payload: Mapping[str, Any]) -> tuple[Any, Any]:
    """The (account, user_tx_no) a request of either form names, unchecked (for noting a
    refusal, which checks them)."""
    packed = payload.get("p")
    if isinstance(packed, list) and len(packed) == len(PACKED_FIELDS):
        return packed[0], packed[PACKED_FIELDS.index("user_tx_no")]
    short = short_refusal_names(payload)
    if short is not None:
        return short
    return payload.get("account"), payload.get("user_tx_no")


def unpack(payload: Mapping[str, Any], wallet: HotWallet) -> dict[str, Any]:
    """The long form of a packed request, rebuilt with the cold HSM's own derivations: every
    check then runs on it exactly as on a long-form request."""
    return unpack_payments(payload, wallet).payload


@dataclass(frozen=True)
class Unpacked:
    """A packed request unpacked: the long form, the transaction in it as parsed here, and
    the payments of a rebuilt `outs` (None: not rebuilt, or to be parsed from the text)."""

    payload: dict[str, Any]
    tx: UnsignedTx
    payments: list[Payment] | None


def unpack_payments(payload: Mapping[str, Any], wallet: HotWallet) -> Unpacked:
    """`unpack`, with the transaction it built (so `decode_request` need not parse its bytes
    again) and, when `outs` was left out (rebuilt here from the transaction's payments), those
    payments with their scripts: what `signed_payments` would decode from the rebuilt text,
    known without decoding the addresses just encoded."""
    packed_account(payload)  # the field count
    packed = dict(zip(PACKED_FIELDS, field(payload, "p", list), strict=True))
    tx = decode_tx(PACKED_VERSION + field(packed, "tx", bytes) + PACKED_LOCKTIME)
    change = [int_list(c, 2, "each change entry") for c in field(packed, "change", list)]
    vout = list(tx.vout)
    for at, index in change:
        if at >= len(vout):
            raise BadRequest(f"change output {at} does not exist")
        if vout[at].script_pubkey:
            raise BadRequest(f"change output {at}: a packed request leaves its script out")
        try:
            vout[at] = TxOut(vout[at].value, wallet.script_pubkey(index, CHANGE))
        except WalletError:
            raise ChangeNotDerivable(
                f"change output {at} is not the hot wallet's change address {index}"
            ) from None
    outs = packed["outs"]
    rebuilt: list[Payment] | None = None
    if outs is None:
        outs, rebuilt = rebuilt_payments(vout, {at for at, _ in change}, wallet.network)
    raw = serialize_unsigned(tx.version, tx.vin, vout, tx.locktime)
    long_form = {**packed, "tx": raw, "change": change, "coin_code": COIN_CODE, "outs": outs}
    return Unpacked(
        long_form, UnsignedTx(tx.version, tx.vin, tuple(vout), tx.locktime, raw), rebuilt
    )


def rebuilt_outs(vout: Sequence[TxOut], change: set[int], network: Network) -> str:
    """`addr,value;...` of the payments (every output not declared change), in order."""
    return rebuilt_payments(vout, change, network)[0]


# Scripts whose address decodes back to exactly the script (tests/test_hsm_cold.py checks
# the round trip): only for these are the rebuilt payments used without decoding them again.
ROUND_TRIP_TYPES = frozenset(
    {ScriptType.P2PKH, ScriptType.P2SH, ScriptType.P2WPKH, ScriptType.P2WSH, ScriptType.P2TR}
)


_V0_ENCODERS: dict[tuple[str, int], SegwitV0Encoder] = {}


def _address(script: bytes, kind: ScriptType, network: Network) -> str:
    """`script_to_address`, by the table-driven encoder for witness v0 (the usual payee)."""
    if kind not in (ScriptType.P2WPKH, ScriptType.P2WSH):
        return script_to_address(script, network)
    key = (network.hrp, len(script) - 2)
    encoder = _V0_ENCODERS.get(key)
    if encoder is None:
        encoder = _V0_ENCODERS[key] = SegwitV0Encoder(*key)
    return encoder.encode(script[2:])


def rebuilt_payments(
    vout: Sequence[TxOut], change: set[int], network: Network
) -> tuple[str, list[Payment] | None]:
    """`rebuilt_outs`, with the payments as `signed_payments` would parse them back from it,
    or None where parsing could say otherwise (a value `parse_outs` refuses, a script type
    outside `ROUND_TRIP_TYPES`): the caller then parses the text as for any request."""
    payments: list[Payment] = []
    exact = True
    for n, out in enumerate(vout):
        if n in change:
            continue
        try:
            kind = classify(out.script_pubkey).type
            address = _address(out.script_pubkey, kind, network)
        except WalletError as exc:
            raise BadRequest(f"output {n} has no address: {exc.message}") from None
        exact = exact and kind in ROUND_TRIP_TYPES and 0 < out.value <= MAX_MONEY
        payments.append((Out(address, out.value), out.script_pubkey))
    try:
        text = format_outs([o for o, _ in payments])
    except OutsError as exc:
        raise BadRequest(f"outs: {exc.message}") from None
    return text, payments if exact else None


# -- the short form -----------------------------------------------------------------------------

# `{"q": [...]}`: the packed form's fields in the same places, with less of them on the line:
# `tx` in `wallet_core.packedtx`'s encoding, whose inputs may name their funding transaction by
# its txid's first 8 bytes (an outpoint the cold HSM verified: it fills in the txid from
# `known_outputs`), sequences and values written short. The stated amounts still travel: check
# 8 compares them with the verified ones, so a lying custody still freezes the account (731)
# instead of merely failing the fee check. `expand_short` rebuilds the packed form, and from it
# the long form, before any check.
SHORT_FIELDS = PACKED_FIELDS
OutputsLike = Callable[[str, int], list[tuple[str, int, bytes]]]


def short_account(payload: Mapping[str, Any]) -> int:
    """The account a short request names."""
    short = field(payload, "q", list)
    if len(short) != len(SHORT_FIELDS):
        raise BadRequest(f"a short request has {len(SHORT_FIELDS)} fields, not {len(short)}")
    return int(field({"account": short[0]}, "account", int))


def expand_short(payload: Mapping[str, Any], outputs_like: OutputsLike) -> dict[str, Any]:
    """The packed form (`{"p": [...]}`) of a short request.

    `outputs_like(prefix_hex, vout)`: the verified outputs whose txid starts with the prefix
    (at most two are needed). An input by prefix that names no verified output, or more than
    one, is refused as `previous transaction required` (730), which changes nothing; the hot
    side then asks again in the packed form, where the full txid decides.
    """
    short_account(payload)
    short = dict(zip(SHORT_FIELDS, field(payload, "q", list), strict=True))
    try:
        vin_packed, vout = packedtx.unpack_tx(field(short, "tx", bytes))
    except TxParseError as exc:
        raise BadRequest(exc.message) from None
    vin: list[TxIn] = []
    for n, p in enumerate(vin_packed):
        if not p.short:
            vin.append(TxIn(p.txid, p.vout, p.sequence))
            continue
        found = outputs_like(p.txid.hex(), p.vout)
        if len(found) != 1:
            what = "no verified output" if not found else "more than one verified output"
            raise PrevTxRequired(
                f"input {n} names {what} by {p.txid.hex()}...:{p.vout}: send it in full"
            )
        vin.append(TxIn(bytes.fromhex(found[0][0]), p.vout, p.sequence))
    body = serialize_unsigned(TX_VERSION, tuple(vin), tuple(vout), 0)[4:-4]
    return {"p": [short["account"], body, *(short[f] for f in SHORT_FIELDS[2:])]}


def short_refusal_names(payload: Mapping[str, Any]) -> tuple[Any, Any] | None:
    """(account, user_tx_no) of a short request, unchecked; None if it is not one."""
    short = payload.get("q")
    if isinstance(short, list) and len(short) == len(SHORT_FIELDS):
        return short[0], short[SHORT_FIELDS.index("user_tx_no")]
    return None
