"""The cold HSM's link commands (docs/hsm-pair.md, "Link commands"), each one small.

A handler takes the decoded payload and returns the answer map, or raises a `ColdHsmError`
whose code and message the link server sends back. The link server runs one handler at a
time, so a check followed by a state change here cannot interleave with another command; the
SMS thread (`sms_service.py`) touches other rows (channels, one-time ids) and claims its one-time
ids atomically, so the two never need a common lock.
Nothing reachable from here unfreezes an account: that is `hsm-cold unfreeze`, at the console.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from cc_common.spending_policy import DEFAULT_POLICY, MIN_LOOSEN_DELAY, PolicyAck, SpendingPolicy
from cc_common.text import printable
from hsm_cold import (
    account_state,
    accounts,
    backup,
    batch,
    consolidation,
    cosign,
    replacement,
    sweep,
)
from hsm_cold.accounts import AccountFacts, SeedPurpose
from hsm_cold.cosign import CosignRequest, FeePolicy, field, signed_message_text, text_field
from hsm_cold.derived_batches import DerivedBatches
from hsm_cold.errors import (
    AccountExists,
    AccountFrozen,
    AlreadySwept,
    AmountMismatch,
    BadIdentitySignature,
    BadLocktime,
    BadRequest,
    BadSequence,
    BadSettlementDescriptor,
    BadTxVersion,
    ChangeNotDerivable,
    ColdHsmError,
    DailyFeeAbovePolicy,
    ExtraOutput,
    ForeignInput,
    ForgedVcCode,
    OutputMismatch,
    SendClosed,
    UnknownAccount,
    UnknownChannel,
    UserTxNoReused,
    WrongNetwork,
)
from hsm_cold.keystore import ColdKeystore
from hsm_cold.policy import ColdPolicies, signed_approval
from hsm_cold.prevtxs import PrevTxAssembler
from hsm_cold.store import (
    CHANNEL_LIVE,
    AccountRecord,
    ChannelRecord,
    ColdStore,
    SignedRequest,
    Signing,
)
from wallet_core import messages
from wallet_core.addresses import script_to_address
from wallet_core.bip32 import HARDENED
from wallet_core.chaincloud import (
    USER_TX_NO,
    batch_statement,
    channel_key_statement,
    send_refused_statement,
    send_signed_statement,
)
from wallet_core.descriptors import settlement_problem
from wallet_core.errors import WalletError
from wallet_core.keys import master_key
from wallet_core.networks import Network
from wallet_core.rawtx import TxOut
from wallet_core.secp import is_valid_pubkey
from wallet_core.wallets import RECEIVE, HotWallet, batch_addresses

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1


class Command(StrEnum):
    HELLO = "hello"
    PROVISION_ACCOUNT = "provision_account"
    PROVE_BATCH = "prove_batch"
    REGISTER_CHANNEL = "register_channel"
    CHANNEL_KEY = "channel_key"
    SEND_STATEMENT = "send_statement"
    COSIGN = "cosign"
    COSIGN_BATCH = "cosign_batch"
    CONSOLIDATE = "consolidate"
    FREEZE = "freeze"
    SWEEP = "sweep"
    LEARN_PREV_TX = "learn_prev_tx"
    STATUS = "status"
    TAKE_ALERTS = "take_alerts"
    ACCOUNT_STATES = "account_states"
    LIFT_OPERATOR_FREEZE = "lift_operator_freeze"


class AlertKind(StrEnum):
    ACCOUNT_FROZEN = "account_frozen"
    ACCOUNT_UNFROZEN = "account_unfrozen"
    CHANNEL_REFUSED = "channel_refused"
    SMS_REFUSED = "sms_refused"
    SMS_FORMAT_ERROR = "sms_format_error"
    SMS_UNDELIVERABLE = "sms_undeliverable"
    POLICY_REFUSED = "policy_refused"
    POLICY_CHANGED = "policy_changed"
    POLICY_LOOSENING = "policy_loosening"
    POLICY_CANCELLED = "policy_cancelled"


class WalletKind(StrEnum):
    COLD = "cold"
    HOT = "hot"


def provision_statement(
    account: int, network: str, receiving: str, cosigner: str, recovery: str, hot_pubkey: bytes
) -> str:
    """What the identity key signs to prove a provisioning (docs/hsm-pair.md)."""
    return f"CC:PROVISION:{account}:{network}:{receiving}:{cosigner}:{recovery}:{hot_pubkey.hex()}"


def channel_statement(account: int, c_id: str, channel_pubkey: bytes, expires_at: int) -> str:
    """What the V-device identity key signs to register a channel."""
    return f"CC:CHANNEL:{account}:{c_id}:{channel_pubkey.hex()}:{expires_at}"


PHONE = re.compile(r"\+[1-9][0-9]{6,14}")  # E.164, as custody checks it

# Refusals that mean the request was not what the V-device signed: the account is frozen
# (reference section 3: "pays exactly outs. Otherwise it refuses, closes (freezes) the account").
# A transaction shape no honest custody builds, a reused user_tx_no and a lying amount are
# the same: a request that is not (only) what the V-device signed.
FREEZE_WHAT: dict[type[ColdHsmError], str] = {
    ForgedVcCode: "forged vc_code",
    OutputMismatch: "output mismatch",
    ExtraOutput: "extra output",
    ChangeNotDerivable: "change not derivable",
    ForeignInput: "foreign input",
    AmountMismatch: "amount mismatch",
    UserTxNoReused: "user_tx_no reused for another transaction",
    BadTxVersion: "bad transaction version",
    BadLocktime: "bad nLockTime",
    BadSequence: "bad input sequence",
}
FREEZING = tuple(FREEZE_WHAT)


def _outputs(vout: Sequence[TxOut]) -> tuple[tuple[int, bytes], ...]:
    return tuple((o.value, o.script_pubkey) for o in vout)


def _signing(req: CosignRequest, digest: bytes, sigs: Sequence[bytes], fee: int) -> Signing:
    """What the store keeps of one co-signed request (a batch keeps one per member)."""
    return Signing(
        account=req.account,
        user_tx_no=req.user_tx_no,
        txid=req.txid,
        digest=digest,
        signatures=tuple(sigs),
        fee=fee,
        outputs=_outputs(req.tx.vout),
        change_index=max((index for _, index in req.change), default=None),
        spent=tuple((vin.txid.hex(), vin.vout) for vin in req.tx.vin),
    )


AlertHook = Callable[[int | None, str, str, str], None]  # account, kind, message, source
SOURCE_COLD = "cold"  # the cold HSM's own checks
SOURCE_HOT = "hot"  # a `freeze` command over the link
SOURCE_SMS = "sms"  # an SMS received (any sender number: one budget, so no flood either)


def phone_field(payload: Mapping[str, Any], key: str) -> str:
    value = text_field(payload, key, 16)
    if not PHONE.fullmatch(value):
        raise BadRequest(f"field {key!r} must be an E.164 number like +15550000100")
    return value


def pubkey_field(payload: Mapping[str, Any], key: str) -> bytes:
    """A 33-byte compressed public key, as bytes or hex text."""
    value = payload.get(key)
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value)
        except ValueError:
            value = None
    if not isinstance(value, bytes) or len(value) != 33 or not is_valid_pubkey(value):
        raise BadRequest(f"field {key!r} must be a 33-byte compressed public key")
    return value


def account_field(payload: Mapping[str, Any]) -> int:
    account: int = field(payload, "account", int)
    if not 0 <= account < HARDENED:
        raise BadRequest(f"account {account} out of range")
    return account


class ColdService:
    """The command handlers, over the cold token (keystore) and the cold state (store)."""

    def __init__(
        self,
        keystore: ColdKeystore,
        store: ColdStore,
        network: Network,
        policy: FeePolicy,
        export_dir: Path,
        link_refusals: Callable[[], Mapping[str, int]] | None = None,
        clock: Callable[[], float] = time.time,
        spending_defaults: SpendingPolicy = DEFAULT_POLICY,
        min_loosen_delay: int = MIN_LOOSEN_DELAY,
    ) -> None:
        self.keystore = keystore
        self.store = store
        self.network = network
        self.policy = policy
        self.export_dir = export_dir
        self.link_refusals = link_refusals or dict
        self.clock = clock
        # Called after an alert is recorded (the SMS thread sends it to the operator/owner).
        self.on_alert: AlertHook | None = None
        # Queues a text to a number (the SMS thread's outbox): the cold HSM's signed word to a
        # V-device (a policy change's answer, a fee bump's new txid). (number, text, purpose)
        self.on_text: Callable[[str, str, str], object] | None = None
        # What `status` adds from outside the service (the SIMs' radio state, the token).
        self.status_extras: Callable[[], Mapping[str, Any]] = dict
        self._wallets: dict[int, tuple[tuple[AccountFacts, bytes], HotWallet]] = {}
        self._batches = DerivedBatches()
        self.policies = ColdPolicies(
            store,
            spending_defaults,
            keystore.random,
            lambda account, kind, message: self.alert(account, AlertKind(kind), message),
            lambda: self.clock(),  # noqa: PLW0108 (a test may replace self.clock later)
            self._policy_answer,
            min_delay=min_loosen_delay,
        )
        self._prev_txs = PrevTxAssembler(
            lambda txid, prev: self.store.add_known_outputs(txid, _outputs(prev.vout))
        )

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        handlers = {c.value: getattr(self, c.value) for c in Command}
        handlers[Command.COSIGN.value] = self._cosign_noting_refusals
        handlers[Command.COSIGN_BATCH.value] = self._cosign_batch_noting_refusals
        return handlers

    def _cosign_noting_refusals(self, payload: dict[str, Any]) -> dict[str, Any]:
        """`cosign`, remembering each refusal's code for the account's `user_tx_no` (what a
        later "refused" statement names)."""
        try:
            if "q" in payload:  # the short form: its answer is short too (r||s one after another)
                self._record(cosign.short_account(payload))
                packed = cosign.expand_short(payload, self.store.known_outputs_like)
                return {"s": b"".join(self.cosign(packed)["signatures"])}
            return self.cosign(payload)
        except ColdHsmError as exc:
            self._note_refusal(*cosign.refusal_names(payload), exc)
            raise

    def _cosign_batch_noting_refusals(self, payload: dict[str, Any]) -> dict[str, Any]:
        """`cosign_batch`: a refusal is noted for every member's `user_tx_no`."""
        try:
            return self.cosign_batch(payload)
        except ColdHsmError as exc:
            members = payload.get("members")
            for member in members[: batch.MAX_MEMBERS] if isinstance(members, list) else []:
                if isinstance(member, dict):
                    self._note_refusal(payload.get("account"), member.get("user_tx_no"), exc)
            raise

    def _note_refusal(self, account: Any, user_tx_no: Any, exc: ColdHsmError) -> None:
        if (
            isinstance(account, int)
            and not isinstance(account, bool)
            and isinstance(user_tx_no, str)
            and USER_TX_NO.fullmatch(user_tx_no)
            and self.store.get_account(account) is not None
        ):
            self.store.note_refusal(account, user_tx_no, int(exc.code))

    # -- helpers --------------------------------------------------------------------------------

    def _record(self, account: int) -> AccountRecord:
        rec = self.store.get_account(account)
        if rec is None:
            raise UnknownAccount(f"account {account} is not provisioned on the cold HSM")
        return rec

    def _live_record(self, account: int) -> AccountRecord:
        rec = self._record(account)
        self.policies.require_confirmed(account)
        if rec.frozen:
            raise AccountFrozen(f"account {account} is frozen: {rec.frozen_reason}")
        return rec

    def _sign_message(self, message: str) -> str:
        raw = self.keystore.sign_message_digest(messages.message_digest(message))
        return signed_message_text(raw, "identity signature")

    def _hot_wallet(self, rec: AccountRecord) -> HotWallet:
        """The account's hot wallet: public keys only, derived once per account record.

        The cosigner xpub comes from the sealed seed, opened for that derivation alone; the
        wallet (public material: xpubs and derived public keys, no private key) is then kept,
        keyed by every public fact and the sealed blob, so an edited record is a miss and its
        seed is opened again (and refused, `state damaged`, as before). Signing still opens
        the seed for each command (`cosign`).
        """
        facts = AccountFacts.of(rec)
        key = (facts, rec.cosigner_seed)
        cached = self._wallets.get(rec.account)
        if cached is not None and cached[0] == key:
            return cached[1]
        with accounts.opened_root(self.keystore, rec, SeedPurpose.COSIGNER) as root:
            cosigner = accounts.cosigner_key(root, self.network)
        wallet = accounts.hot_wallet(facts, cosigner)
        self._wallets[rec.account] = (key, wallet)
        return wallet

    def _text_vdevice(self, account: int, statement: str, purpose: str) -> None:
        """Text the account's V-device `statement` with the identity key's signature."""
        rec = self.store.get_account(account)
        if self.on_text is None or rec is None or not rec.vdevice_phone:
            return
        self.on_text(rec.vdevice_phone, f"{statement}:{self._sign_message(statement)}", purpose)

    def _policy_answer(self, account: int, ack: PolicyAck) -> None:
        self._text_vdevice(account, ack.statement(), f"policy_ack:{ack.state.value}")

    def alert(
        self, account: int | None, kind: AlertKind, message: str, *, source: str = SOURCE_COLD
    ) -> None:
        """Record an alert (handed to custody by `take_alerts`) and pass it to the SMS side.

        `source` says who caused it (the cold checks, the hot side, a received SMS): the SMS
        side budgets alert texts per source and kind, so no one source can use up the budget
        another one's alerts need.
        """
        message = printable(message)
        self.store.add_alert(account, kind.value, message)
        if self.on_alert is not None:
            try:
                self.on_alert(account, kind.value, message, source)
            except Exception:  # an SMS problem never changes what the cold HSM decided
                log.exception("alert hook failed (the alert is recorded)")

    def _freeze(self, account: int, reason: str, *, source: str = SOURCE_COLD) -> None:
        self.store.set_frozen(account, True, reason)
        log.warning("account %d frozen: %s", account, reason)
        self.alert(account, AlertKind.ACCOUNT_FROZEN, reason, source=source)

    def derive_batch(self, rec: AccountRecord, kind: WalletKind, batch_no: int) -> list[str]:
        """The addresses of a receive batch, derived here from the account's own keys (once:
        the V-device's SMS check of a batch reuses its proof's derivation, `derived_batches`)."""
        cold = kind is WalletKind.COLD
        key = (
            kind,
            batch_no,
            AccountFacts.of(rec),
            rec.receiving_seed if cold else rec.cosigner_seed,
        )
        kept = self._batches.get(key)
        if kept is not None:
            return kept
        wallet: Any
        if cold:
            with accounts.opened_root(self.keystore, rec, SeedPurpose.RECEIVING) as root:
                wallet = accounts.receiving_wallet(root, self.network)
        else:
            wallet = self._hot_wallet(rec)
        try:
            addresses = [address for _, address in batch_addresses(wallet, batch_no, RECEIVE)]
        except WalletError as exc:
            raise BadRequest(f"batch {batch_no}: {exc.message}") from None
        self._batches.put(key, addresses)
        return addresses

    # -- commands -------------------------------------------------------------------------------

    def hello(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": PROTOCOL_VERSION,
            "identity_pubkey": self.keystore.identity_pubkey,
            "network": self.network.value,
        }

    def provision_account(self, payload: dict[str, Any]) -> dict[str, Any]:
        account = account_field(payload)
        network = text_field(payload, "network", 16)
        try:
            if Network.from_name(network) is not self.network:
                raise ValueError
        except ValueError:
            raise WrongNetwork(
                f"this cold HSM serves {self.network.value}, not {network}"
            ) from None
        hot_pubkey = pubkey_field(payload, "hot_pubkey")
        vdevice_identity = pubkey_field(payload, "vdevice_identity")
        vdevice_phone = phone_field(payload, "vdevice_phone")
        owner_phone = phone_field(payload, "owner_phone")
        descriptor = text_field(payload, "settlement_descriptor", 4096)
        desc = sweep.settlement(descriptor)
        problem = settlement_problem(desc)
        if problem is not None:
            raise BadSettlementDescriptor(f"settlement descriptor: {problem}")
        if settlement_problem(desc, self.network) is not None:
            raise WrongNetwork(f"the settlement descriptor is not for {self.network.value}")
        existing = self.store.get_account(account)
        if existing is not None:
            asked = (
                self.network.value,
                hot_pubkey,
                vdevice_identity,
                descriptor,
                vdevice_phone,
                owner_phone,
            )
            held = (
                existing.network,
                existing.hot_pubkey,
                existing.vdevice_identity,
                existing.settlement_descriptor,
                existing.vdevice_phone,
                existing.owner_phone,
            )
            if asked != held:
                raise AccountExists(f"account {account} exists with other parameters")
            return self._provisioned(existing)
        return self._provisioned(
            self._create_account(
                account, hot_pubkey, vdevice_identity, descriptor, (vdevice_phone, owner_phone)
            )
        )

    def _create_account(
        self,
        account: int,
        hot_pubkey: bytes,
        vdevice_identity: bytes,
        descriptor: str,
        phones: tuple[str, str],
    ) -> AccountRecord:
        """New seeds; the recovery one goes to the paper backup, then the account is stored."""
        ks, net = self.keystore, self.network
        recovery_root = master_key(accounts.new_seed(ks), net)
        recovery = accounts.cosigner_key(recovery_root, net)  # same BIP48 path, other seed
        facts = AccountFacts(
            account=account,
            network=net,
            hot_pubkey=hot_pubkey,
            vdevice_identity=vdevice_identity,
            settlement_descriptor=descriptor,
            recovery_xpub=recovery.xpub.serialize(),
            recovery_fingerprint=recovery.fingerprint,
        )
        receiving_seed, cosigner_seed = accounts.new_seed(ks), accounts.new_seed(ks)
        cosigner = accounts.cosigner_key(master_key(cosigner_seed, net), net)
        try:
            wallet = accounts.hot_wallet(facts, cosigner)
        except WalletError as exc:
            raise BadRequest(f"hot_pubkey: {exc.message}") from None
        rec = AccountRecord(
            account=account,
            network=net.value,
            receiving_seed=accounts.seal_seed(ks, receiving_seed, facts, SeedPurpose.RECEIVING),
            cosigner_seed=accounts.seal_seed(ks, cosigner_seed, facts, SeedPurpose.COSIGNER),
            hot_pubkey=hot_pubkey,
            recovery_xpub=facts.recovery_xpub,
            recovery_fingerprint=facts.recovery_fingerprint,
            vdevice_identity=vdevice_identity,
            settlement_descriptor=descriptor,
            vdevice_phone=phones[0],
            owner_phone=phones[1],
        )
        del receiving_seed, cosigner_seed
        path = accounts.write_recovery_export(self.export_dir, facts, recovery_root, wallet)
        del recovery_root
        try:
            backup.write_account_backup(self.keystore, self.store, self.export_dir, rec)
            self.store.add_account(rec)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        log.info("account %d provisioned; recovery key exported to %s", account, path)
        return rec

    def _provisioned(self, rec: AccountRecord) -> dict[str, Any]:
        with accounts.opened_root(self.keystore, rec, SeedPurpose.RECEIVING) as root:
            receiving = accounts.receiving_wallet(root, self.network).account
        with accounts.opened_root(self.keystore, rec, SeedPurpose.COSIGNER) as root:
            cosigner = accounts.cosigner_key(root, self.network)
        receiving_xpub = receiving.xpub.serialize()
        cosigner_xpub = cosigner.xpub.serialize()
        statement = provision_statement(
            rec.account,
            rec.network,
            receiving_xpub,
            cosigner_xpub,
            rec.recovery_xpub,
            rec.hot_pubkey,
        )
        return {
            "receiving_xpub": receiving_xpub,
            "receiving_fingerprint": receiving.fingerprint.hex(),
            "cosigner_xpub": cosigner_xpub,
            "cosigner_fingerprint": cosigner.fingerprint.hex(),
            "recovery_xpub": rec.recovery_xpub,
            "recovery_fingerprint": rec.recovery_fingerprint.hex(),
            "proof": self._sign_message(statement),
        }

    def prove_batch(self, payload: dict[str, Any]) -> dict[str, Any]:
        rec = self._record(account_field(payload))
        self.policies.require_confirmed(rec.account)
        try:
            kind = WalletKind(field(payload, "wallet", str))
        except ValueError:
            raise BadRequest("wallet must be 'cold' or 'hot'") from None
        batch_no = field(payload, "batch_no", int)
        addresses = self.derive_batch(rec, kind, batch_no)
        statement = batch_statement(kind.value, rec.account, batch_no, addresses)
        return {"signature": self._sign_message(statement)}

    def register_channel(self, payload: dict[str, Any]) -> dict[str, Any]:
        rec = self._live_record(account_field(payload))
        c_id = text_field({"c_id": str(payload.get("c_id", ""))}, "c_id", 128)
        channel_pubkey = pubkey_field(payload, "channel_pubkey")
        expires_at = field(payload, "expires_at", int)
        sig = signed_message_text(payload.get("identity_sig"), "identity_sig")
        statement = channel_statement(rec.account, c_id, channel_pubkey, expires_at)
        if not messages.verify_message_pubkey(rec.vdevice_identity, statement, sig):
            self.store.add_alert(
                rec.account,
                AlertKind.CHANNEL_REFUSED.value,
                f"channel {c_id} refused: not signed by the V-device identity key",
            )
            raise BadIdentitySignature(
                f"channel {c_id!r} is not signed by account {rec.account}'s V-device identity key"
            )
        self.store.put_channel(ChannelRecord(rec.account, c_id, channel_pubkey, expires_at))
        log.info("account %d: channel %s registered (expires %d)", rec.account, c_id, expires_at)
        return {}

    def channel_key(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A live channel's V-device key and expiry, signed by the identity key.

        Public facts only; a frozen account still answers (checking a `vc_code` early changes
        nothing), a pending or unknown channel is `unknown channel` (704).
        """
        account = account_field(payload)
        self._record(account)
        c_id = text_field({"c_id": str(payload.get("c_id", ""))}, "c_id", 128)
        channel = self.store.get_channel(account, c_id)
        if channel is None or channel.state != CHANNEL_LIVE:
            raise UnknownChannel(f"account {account} has no live channel {c_id!r}")
        expires_at = int(channel.expires_at)
        statement = channel_key_statement(account, c_id, channel.channel_pubkey, expires_at)
        return {
            "channel_pubkey": channel.channel_pubkey.hex(),
            "expires_at": expires_at,
            "signature": self._sign_message(statement),
        }

    def send_statement(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The cold HSM's final word on a `user_tx_no`, signed by the identity key.

        Co-signed: `{state: "signed", txid, signature}` over `CC:SEND_SIGNED:<account>:<txid>:
        <user_tx_no>`. Otherwise the number is closed here and now (never signed afterwards,
        `send closed` 741) and the answer is `{state: "refused", code, signature}` over
        `CC:SEND_REFUSED:<account>:<code>:<user_tx_no>`, `code` being its last refusal (741 if
        it was never refused). A V-device reports "failed" to its site only on the latter.
        Frozen accounts answer too: the statement changes nothing that could move coins.
        """
        rec = self._record(account_field(payload))
        user_tx_no = cosign.user_tx_no_field(payload)
        signed = self.store.signed_request(rec.account, user_tx_no)
        if signed is not None:
            text = send_signed_statement(rec.account, signed.txid, user_tx_no)
            return {"state": "signed", "txid": signed.txid, "signature": self._sign_message(text)}
        code = self.store.close_request(rec.account, user_tx_no, int(SendClosed.code))
        log.info("account %d: %s closed (refused, code %d)", rec.account, user_tx_no, code)
        text = send_refused_statement(rec.account, code, user_tx_no)
        return {"state": "refused", "code": code, "signature": self._sign_message(text)}

    def cosign(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The checks of docs/hsm-pair.md in order; signatures only if all pass."""
        unpacked: cosign.Unpacked | None = None
        if "p" in payload:  # the packed form: rebuilt from our own derivations first
            rec = self._record(cosign.packed_account(payload))
            unpacked = cosign.unpack_payments(payload, self._hot_wallet(rec))
            payload = unpacked.payload
        req = cosign.decode_request(payload, None if unpacked is None else unpacked.tx)
        rebuilt = None if unpacked is None else unpacked.payments  # outs rebuilt by unpack
        if self.store.request_closed(req.account, req.user_tx_no):
            raise SendClosed(
                f"user_tx_no {req.user_tx_no!r} was closed by a refused statement: never signed"
            )
        rec = self._live_record(req.account)  # 1
        channel_key = cosign.check_channel(  # 2
            self.store.get_channel(req.account, req.c_id), req, self.clock()
        )
        approved = signed_approval(req, channel_key)  # 3 (and the owner's approval)
        if approved is None:
            self._freeze(
                req.account,
                f"forged vc_code for user_tx_no {req.user_tx_no!r} (channel {req.c_id})",
            )
            raise ForgedVcCode(
                f"vc_code does not recover to channel {req.c_id!r}'s key: account"
                f" {req.account} frozen, operator alerted"
            )
        digest = req.digest()
        prior = self.store.signed_request(req.account, req.user_tx_no)  # 4
        bump = False  # a fee bump of the number's last transaction (checked at 9b)
        if prior is not None:
            if (
                prior.digest != digest
                and replacement.may_replace(self.store, req, prior.txid)
                and self.store.user_tx_nos_of(req.account, prior.txid) == [req.user_tx_no]
            ):  # a batch is replaced only by a batch paying all its members (cosign_batch)
                bump = True
            elif prior.digest != digest:
                self._refuse_and_freeze(
                    req,
                    UserTxNoReused(
                        f"user_tx_no {req.user_tx_no!r} was co-signed for {prior.txid};"
                        f" this request is for {req.txid} or states other amounts"
                    ),
                )
            else:
                log.info("account %d: %s already co-signed; same signatures", req.account, req.txid)
                return {"signatures": list(prior.signatures)}
        payments = rebuilt if rebuilt is not None else cosign.signed_payments(req, self.network)
        outs = [out for out, _ in payments]
        wallet = self._hot_wallet(rec)  # public keys only
        try:
            cosign.check_shape(req.tx)  # 5
            cosign.check_outputs(req, payments, wallet)  # 6
            scripts = cosign.witness_scripts(req, wallet)  # 7
        except FREEZING as exc:
            self._refuse_and_freeze(req, exc)
        fee = self._inputs_and_fee(req, scripts)  # 8, 9
        if bump and prior is not None:
            replacement.check(self.store, req, fee, prior.txid)  # 9b: its payments passed 10
        else:
            self.policies.check_send(req.account, outs, approved)  # 10: the customer's policy
        # The seed is opened for this signature only; sign_inputs checks every private child
        # against the wallet's public key, so a wallet that is not this seed's signs nothing.
        with accounts.opened_root(self.keystore, rec, SeedPurpose.COSIGNER) as root:
            node = accounts.cosigner_signing_node(root, self.network)
        sigs = cosign.sign_inputs(req, scripts, node, wallet)
        del node
        signing = _signing(req, digest, sigs, fee)
        with self.store.transaction():  # what the signature binds: all durable in one commit
            if bump and prior is not None:
                recorded = replacement.adopt(self.store, signing, prior.txid)
            else:
                recorded = self.store.record_signing(signing)
            if not recorded:
                raise UserTxNoReused(f"user_tx_no {req.user_tx_no!r} was co-signed meanwhile")
            replacement.record(self.store, req, fee)
            if not bump:
                self.policies.record_send(req.account, req.user_tx_no, outs)
        log.info(
            "account %d: co-signed %s (%s), %d input(s), fee %d%s",
            req.account,
            req.txid,
            req.user_tx_no,
            len(sigs),
            fee,
            " (fee bump)" if bump else "",
        )
        if bump:  # the V-device learns the txid that now pays its request
            statement = send_signed_statement(req.account, req.txid, req.user_tx_no)
            try:
                self._text_vdevice(req.account, statement, "replaced")
            except Exception:  # the signature stands; the V-device can still ask custody
                log.exception("account %d: replacement notice not queued", req.account)
        return {"signatures": sigs}

    def cosign_batch(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A transaction paying several signed requests of one account: the checks of `cosign`
        for every member, its payments exactly the union of their `outs`; any bad member
        refuses the whole batch (and freezes the account where `cosign` would)."""
        members = batch.decode(payload)
        first = members[0]
        for m in members:
            if self.store.request_closed(m.account, m.user_tx_no):
                raise SendClosed(
                    f"user_tx_no {m.user_tx_no!r} was closed by a refused statement: never signed"
                )
        rec = self._live_record(first.account)  # 1
        approvals = []
        for m in members:
            channel_key = cosign.check_channel(  # 2
                self.store.get_channel(m.account, m.c_id), m, self.clock()
            )
            approved = signed_approval(m, channel_key)  # 3, every member
            if approved is None:
                self._freeze(
                    m.account,
                    f"forged vc_code for user_tx_no {m.user_tx_no!r} (channel {m.c_id})"
                    f" in a batch of {len(members)}",
                )
                raise ForgedVcCode(
                    f"vc_code of batch member {m.user_tx_no!r} does not recover to channel"
                    f" {m.c_id!r}'s key: the batch is refused, account {m.account} frozen,"
                    " operator alerted"
                )
            approvals.append(approved)
        twice = batch.duplicate(members)
        if twice is not None:
            self._refuse_and_freeze(
                first, UserTxNoReused(f"user_tx_no {twice!r} appears twice in one batch")
            )
        digest = batch.digest(members)
        priors = [self.store.signed_request(m.account, m.user_tx_no) for m in members]  # 4
        replaced: str | None = None  # the batch this one replaces (a fee bump, checked at 9b)
        if all(p is not None and p.digest == digest for p in priors):
            assert priors[0] is not None
            log.info(
                "account %d: batch %s already co-signed; same signatures", rec.account, first.txid
            )
            return {"signatures": list(priors[0].signatures)}
        if any(p is not None for p in priors):
            replaced = self._batch_replaces(members, priors)
        signed = [cosign.signed_payments(m, self.network) for m in members]
        outs = [[out for out, _ in member] for member in signed]
        union = [payment for member in signed for payment in member]
        wallet = self._hot_wallet(rec)  # public keys only
        try:
            cosign.check_shape(first.tx)  # 5
            cosign.check_outputs(first, union, wallet)  # 6: exactly the union, plus change
            scripts = cosign.witness_scripts(first, wallet)  # 7
        except FREEZING as exc:
            self._refuse_and_freeze(first, exc)
        fee = self._inputs_and_fee(first, scripts)  # 8, 9: the whole transaction's fee
        if replaced is not None:
            for m in members:
                replacement.check(self.store, m, fee, replaced)  # 9b
        else:  # 10: each member counts against the customer's policy, in turn
            self.policies.check_batch(first.account, list(zip(outs, approvals, strict=True)))
        with accounts.opened_root(self.keystore, rec, SeedPurpose.COSIGNER) as root:
            node = accounts.cosigner_signing_node(root, self.network)
        sigs = cosign.sign_inputs(first, scripts, node, wallet)
        del node
        signings = [_signing(m, digest, sigs, fee) for m in members]
        if replaced is not None:
            recorded = replacement.adopt_all(self.store, signings, replaced)
        else:
            recorded = self.store.record_signings(signings)
        if not recorded:
            raise UserTxNoReused("a user_tx_no of the batch was co-signed meanwhile")
        for m, member_outs in zip(members, outs, strict=True):
            replacement.record(self.store, m, fee)
            if replaced is None:
                self.policies.record_send(m.account, m.user_tx_no, member_outs)
        log.info(
            "account %d: co-signed batch %s of %d sends, %d input(s), fee %d%s",
            first.account,
            first.txid,
            len(members),
            len(sigs),
            fee,
            " (fee bump)" if replaced else "",
        )
        return {"signatures": sigs}

    def _batch_replaces(
        self, members: Sequence[CosignRequest], priors: Sequence[SignedRequest | None]
    ) -> str:
        """The txid a batch with used numbers replaces, if it is a fee bump of exactly the
        batch signed last for them (every member, nobody else's); otherwise a reuse: freeze."""
        first = members[0]
        txids = {p.txid for p in priors if p is not None}
        if len(txids) == 1 and all(p is not None for p in priors):
            (txid,) = txids
            same_members = self.store.user_tx_nos_of(first.account, txid) == sorted(
                m.user_tx_no for m in members
            )
            if same_members and all(replacement.may_replace(self.store, m, txid) for m in members):
                return txid
        used = next((m, p) for m, p in zip(members, priors, strict=True) if p is not None)
        assert used[1] is not None
        self._refuse_and_freeze(
            used[0],
            UserTxNoReused(
                f"user_tx_no {used[0].user_tx_no!r} was co-signed for {used[1].txid};"
                f" this batch is for {first.txid} and is not a replacement of exactly that"
                " transaction's sends"
            ),
        )

    def consolidate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A hot spend paying only the account's own change: no V-device signature needed."""
        req = consolidation.decode(payload)
        rec = self._live_record(req.account)
        wallet = self._hot_wallet(rec)
        try:
            cosign.check_shape(req.tx)
            consolidation.check_outputs(req, wallet)
            scripts = consolidation.scripts(req, wallet)
        except FREEZING as exc:  # it would move coin without the V-device: a hacked hot side
            self._freeze(req.account, f"not a consolidation: {exc.message}")
            raise type(exc)(
                f"{exc.message}: account {req.account} frozen, operator alerted"
            ) from None
        cosign.check_change_gap(req, self.store.change_high(req.account))
        supplied = cosign.parse_prev_txs(req.prev_txs)
        for txid, prev in supplied.items():
            self.store.add_known_outputs(txid, _outputs(prev.vout))
        try:
            cosign.verified_inputs(req, scripts, self.store.known_output, supplied)
        except FREEZING as exc:
            self._freeze(req.account, f"consolidation with unverified inputs: {exc.message}")
            raise type(exc)(
                f"{exc.message}: account {req.account} frozen, operator alerted"
            ) from None
        fee = consolidation.check_fee(req, self.policy)
        with accounts.opened_root(self.keystore, rec, SeedPurpose.COSIGNER) as root:
            node = accounts.cosigner_signing_node(root, self.network)
        sigs = cosign.sign_inputs(req, scripts, node, wallet)
        del node
        self.store.add_known_outputs(req.txid, _outputs(req.tx.vout))  # its change, spent next
        log.info(
            "account %d: co-signed consolidation %s, %d input(s), fee %d",
            req.account,
            req.txid,
            len(sigs),
            fee,
        )
        return {"signatures": sigs}

    def _inputs_and_fee(self, req: CosignRequest, scripts: list[bytes]) -> int:
        """The change index gap, then checks 8 (every input's amount and script, from the
        funding transactions known or supplied) and 9 (the fee, today's total included)."""
        cosign.check_change_gap(req, self.store.change_high(req.account))
        supplied = cosign.parse_prev_txs(req.prev_txs)
        for txid, prev in supplied.items():  # hash-checked facts, whatever happens next
            self.store.add_known_outputs(txid, _outputs(prev.vout))
        try:
            cosign.verified_inputs(req, scripts, self.store.known_output, supplied)
        except FREEZING as exc:
            self._refuse_and_freeze(req, exc)
        fees_today = self.store.fees_since(req.account, self.clock() - cosign.DAY)
        return cosign.check_fee(req, self.policy, fees_today)

    def _refuse_and_freeze(self, req: CosignRequest, exc: ColdHsmError) -> NoReturn:
        """Not what the V-device signed: freeze, alert, and refuse with the same code."""
        what = FREEZE_WHAT.get(type(exc), "refused request")
        self._freeze(
            req.account,
            f"{what} in a send (user_tx_no {req.user_tx_no!r}, channel {req.c_id}): {exc.message}",
        )
        raise type(exc)(f"{exc.message}: account {req.account} frozen, operator alerted") from None

    def freeze(self, payload: dict[str, Any]) -> dict[str, Any]:
        rec = self._record(account_field(payload))
        reason = text_field(payload, "reason", 500)
        self._freeze(rec.account, f"frozen from the hot side: {reason}", source=SOURCE_HOT)
        return {}

    def sweep(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Sign a sweep of verified cold UTXOs to the next settlement index (docs/hsm-pair.md).

        Each outpoint is swept once (an identical retry gets the stored answer), the amounts
        come from hash-checked previous transactions, and the settlement index advances only
        with a signed sweep.
        """
        rec = self._live_record(account_field(payload))
        utxos = sweep.decode_utxos(payload)
        rate = sweep.decode_fee_rate(payload, self.policy)
        digest = sweep.request_digest(utxos, payload.get("fee_rate"))
        stored = self.store.sweep_answer(rec.account, digest)
        if stored is not None:
            log.info("account %d: identical sweep request; same answer", rec.account)
            return dict(json.loads(stored))
        outpoints = [(u.txid, u.vout) for u in utxos]
        done = self.store.swept(outpoints)
        if done:
            txid, vout, by = done[0]
            raise AlreadySwept(f"utxo {txid}:{vout} was already swept by {by}")
        desc = self._settlement(rec)
        prev_txs = cosign.decode_prev_txs(payload, len(utxos))
        supplied = cosign.parse_prev_txs(prev_txs)
        for txid, prev in supplied.items():
            self.store.add_known_outputs(txid, _outputs(prev.vout))
        with accounts.opened_root(self.keystore, rec, SeedPurpose.RECEIVING) as root:
            wallet = accounts.receiving_wallet(root, self.network)
            node = accounts.receiving_account_node(root, self.network)
        try:
            sweep.verify_utxos(utxos, wallet, self.store.known_output, supplied)
        except FREEZING as exc:
            what = FREEZE_WHAT.get(type(exc), "refused request")
            self._freeze(rec.account, f"{what} in a sweep: {exc.message}")
            raise type(exc)(
                f"{exc.message}: account {rec.account} frozen, operator alerted"
            ) from None
        index = rec.settlement_index
        destination = desc.script_pubkey(index)
        result = sweep.build_sweep(utxos, wallet, node, destination, rate, self.policy)
        del node
        fees_today = self.store.fees_since(rec.account, self.clock() - cosign.DAY)
        if fees_today + result.fee > self.policy.max_fee_per_day_sat:
            raise DailyFeeAbovePolicy(
                f"sweep fee {result.fee} sat would pass the daily fee ceiling of"
                f" {self.policy.max_fee_per_day_sat} sat ({fees_today} sat signed in 24 hours)"
            )
        answer = {
            "tx": result.tx_hex,
            "txid": result.txid,
            "fee": result.fee,
            "address": script_to_address(destination, self.network),
            "settlement_index": index,
        }
        if not self.store.record_sweep(
            rec.account, index, result.txid, digest, json.dumps(answer), result.fee, outpoints
        ):
            raise AlreadySwept("another sweep of these outpoints was signed meanwhile")
        log.info(
            "account %d: sweep %s of %d UTXO(s), %d sat to settlement index %d, fee %d",
            rec.account,
            result.txid,
            len(utxos),
            result.value,
            index,
            result.fee,
        )
        return answer

    def _settlement(self, rec: AccountRecord) -> Any:
        desc = sweep.settlement(rec.settlement_descriptor)
        problem = settlement_problem(desc, self.network)
        if problem is not None:
            raise BadSettlementDescriptor(
                f"account {rec.account}'s settlement descriptor: {problem}"
            )
        return desc

    def learn_prev_tx(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A part of a funding transaction too large to travel inside a request."""
        return self._prev_txs.part(payload)

    def status(self, payload: dict[str, Any]) -> dict[str, Any]:
        rows = self.store.list_accounts()
        newest: dict[int, ChannelRecord] = {}
        for ch in self.store.list_channels():  # newest first within each account
            newest.setdefault(ch.account, ch)
        return {
            "accounts": [a for a, _, _ in rows],
            "frozen": [[a, reason] for a, frozen, reason in rows if frozen],
            "alerts": self.store.pending_alert_count(),
            "link_refusals": dict(self.link_refusals()),
            "channels": [
                {"account": a, "c_id": ch.c_id, "state": ch.state, "expires_at": int(ch.expires_at)}
                for a, ch in sorted(newest.items())
            ],
            "sms_queued": self.store.pending_sms_count(),
            "sms_counters": self.store.counters(),
            **self.status_extras(),
        }

    def account_states(self, payload: dict[str, Any]) -> dict[str, Any]:
        return account_state.account_states(self.store, self._sign_message, payload, self.clock())

    def lift_operator_freeze(self, payload: dict[str, Any]) -> dict[str, Any]:
        account = account_field(payload)
        if account_state.lift_operator_freeze(self.store, payload, account):
            self.alert(account, AlertKind.ACCOUNT_UNFROZEN, "operator freeze lifted")
        return account_state.account_states(
            self.store, self._sign_message, {"accounts": [account]}, self.clock()
        )

    def take_alerts(self, payload: dict[str, Any]) -> dict[str, Any]:
        alerts = self.store.take_alerts()
        return {
            "alerts": [
                {
                    "id": a.id,
                    "at": int(a.at),
                    "account": a.account,
                    "kind": a.kind,
                    "message": a.message,
                }
                for a in alerts
            ]
        }
