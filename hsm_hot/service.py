"""The methods of the hot HSM's RPC (docs/hsm-pair.md, "hsm_hot RPC"), in domain words.

Each method takes the JSON `params` object and returns a JSON-ready value, or raises a
`HotHsmError` (or another `CustodyError`) whose code and message go back to custody.

`sign_send` is the heart: the hot HSM's own checks (the account's wallet, its limits) first,
without touching the link; then the cold HSM's co-signature, checked against the cold child key;
only then the hot signature from the token. A hot signature alone never completes a spend, and
the hot HSM never gives one for something the cold HSM refused.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from cc_common import fields
from cc_common.errors import CustodyError
from cc_common.text import UnsafeText, check_values
from cc_common.token import HsmToken
from hsm_hot import batch, consolidation
from hsm_hot.audit import AuditLog
from hsm_hot.compact import (
    PREV_TX_REQUIRED,
    CosignPlan,
    inline_prev_txs,
    packed_request,
    plan_cosign,
    prev_tx_parts,
)
from hsm_hot.errors import (
    BadRequest,
    ColdRefused,
    ColdSignatureInvalid,
    ColdUnreachable,
    HotHsmError,
    ProofInvalid,
    UnknownAccount,
)
from hsm_hot.locks import KeyedLocks
from hsm_hot.policy import PolicyLedger, SendCost
from hsm_hot.relay import ColdRelay
from hsm_hot.state import HotAccount, HotState
from hsm_hot.stats import ServiceStats
from wallet_core import messages, signatures
from wallet_core.bip32 import parse_xpub
from wallet_core.chaincloud import check_user_tx_no
from wallet_core.errors import PsbtError, SignatureError, TxParseError, WalletError
from wallet_core.networks import Network
from wallet_core.psbt import Psbt
from wallet_core.wallets import HotWallet

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 3.0
MAX_ACCOUNT = 2**31 - 1


def hot_key_label(account: int) -> str:
    return f"hot/{account}"


def provision_statement(
    account: int, network: str, receiving: str, cosigner: str, recovery: str, hot_pubkey: str
) -> str:
    """The string the cold identity key signs at provisioning (docs/hsm-pair.md)."""
    return f"CC:PROVISION:{account}:{network}:{receiving}:{cosigner}:{recovery}:{hot_pubkey}"


# -- parameter checks ------------------------------------------------------------------------


def _param(params: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    return fields.field(params, key, kind, error=BadRequest, noun="parameter")


def _account(params: Mapping[str, Any]) -> int:
    account: int = _param(params, "account", int)
    if not 0 <= account <= MAX_ACCOUNT:
        raise BadRequest(f"account {account} out of range")
    return account


def _text(params: Mapping[str, Any], key: str, max_len: int = 4096) -> str:
    return fields.text_field(params, key, max_len, error=BadRequest, noun="parameter")


def _user_tx_no(request: Mapping[str, Any]) -> str:
    try:
        return check_user_tx_no(_text(request, "user_tx_no", 128))
    except WalletError as exc:
        raise BadRequest(exc.message) from None


def signed_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of the request a V-device signed, each checked (its vc_code covers them)."""
    return {
        "coin_code": _text(request, "coin_code", 10),
        "is_dynamic_fee": _param(request, "is_dynamic_fee", int),
        "outs": _text(request, "outs", 100_000),
        "user_tx_no": _user_tx_no(request),
    }


def _hex_text(value: Any, what: str) -> str:
    """A cold answer's key or fingerprint as lower-case hex (bytes or hex text accepted)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str):
        try:
            return bytes.fromhex(value).hex()
        except ValueError:
            pass
    raise ColdUnreachable(f"cold HSM answered a malformed {what}")


def _b64_text(value: Any, what: str) -> str:
    """A signed message as base64 text (the cold side may send the 65 raw bytes)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, str):
        return value
    raise ColdUnreachable(f"cold HSM answered a malformed {what}")


def jsonable(value: Any) -> Any:
    """A link answer made JSON-ready: bytes become hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class InFlight:
    """How many co-signs are between their request count and their answer.

    A co-sign alone hands its fsyncs to a helper thread to overlap them with other work (its
    latency is what counts then). Among others it waits for them in its own thread: another
    request's commit has then mostly made its change durable already (group commit), and a
    hand-off to a thread costs more CPU than the fsync it would hide.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    @contextmanager
    def one(self) -> Iterator[None]:
        with self._lock:
            self.count += 1
        try:
            yield
        finally:
            with self._lock:
                self.count -= 1

    @property
    def alone(self) -> bool:
        return self.count <= 1


class HotService:
    """The hot HSM: its token, its state, its limits, its audit log and the link to cold."""

    def __init__(
        self,
        token: HsmToken,
        state: HotState,
        relay: ColdRelay,
        ledger: PolicyLedger,
        audit: AuditLog,
        network: Network,
        cold_identity: bytes,
        *,
        token_status: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.token = token
        self.token_status = token_status or dict
        self.stats = ServiceStats()
        self.state = state
        self.relay = relay
        self.ledger = ledger
        self.audit = audit
        self.network = network
        self.cold_identity = cold_identity
        self._provision_lock = threading.Lock()
        self._send_locks = KeyedLocks()
        self._in_flight = InFlight()
        self.short_fallbacks = 0  # short co-sign requests asked again in the packed form
        # Commits and fsyncs a co-sign alone waits for while it does something else.
        self._disk = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hot-disk")
        self.methods: dict[str, Callable[[Mapping[str, Any]], Any]] = {
            "health": self.health,
            "provision_account": self.provision_account,
            "prove_batch": self.prove_batch,
            "register_channel": self.register_channel,
            "channel_key": self.channel_key,
            "send_statement": self.send_statement,
            "sign_send": self.sign_send,
            "sign_consolidation": lambda p: consolidation.sign(self, p),
            "sign_batch": lambda p: batch.sign(self, p),
            "freeze": self.freeze,
            "sweep": self.sweep,
            "cold_status": self.cold_status,
            "take_alerts": self.take_alerts,
            "account_states": self.account_states,
            "unfreeze": self.unfreeze,
        }

    def dispatch(self, method: str, params: Mapping[str, Any]) -> Any:
        started = time.monotonic()
        try:
            handler = self.methods.get(method)
            if handler is None:
                raise BadRequest(f"unknown method {method!r}")
            try:
                check_values(dict(params), "params")
            except UnsafeText as exc:
                raise BadRequest(exc.message) from None
            result = handler(params)
        except CustodyError as exc:
            self.stats.refused(int(exc.code))
            raise
        if method in ("sign_send", "sign_batch"):
            self.stats.observe_cosign(time.monotonic() - started)
        return result

    def _account_record(self, account: int) -> HotAccount:
        acct = self.state.account(account)
        if acct is None:
            raise UnknownAccount(f"account {account} is not provisioned on this hot HSM")
        return acct

    # -- methods -------------------------------------------------------------------------------

    def health(self, params: Mapping[str, Any]) -> dict[str, Any]:
        try:
            hello = self.relay.call("hello", {}, timeout=min(self.relay.timeout, HEALTH_TIMEOUT))
            identity = _hex_text(hello.get("identity_pubkey"), "identity key")
            reachable = identity == self.cold_identity.hex()
            if not reachable:
                log.error("the cold HSM's identity key is not the one pinned at pairing")
        except HotHsmError:
            reachable = False
        return {
            "paired": True,
            "cold_reachable": reachable,
            "accounts": self.state.account_count(),
            # for the operator console (docs/hsm-pair.md): counts and states, never a secret
            **self.token_status(),
            "audit_head": self.audit.head(),
            "link": self.relay.stats(),
            "link_last_error": self.relay.last_error,
            **self.stats.snapshot(),
        }

    def provision_account(self, params: Mapping[str, Any]) -> dict[str, Any]:
        account = _account(params)
        network = _text(params, "network", 16)
        vdevice_identity = _text(params, "vdevice_identity", 130)
        settlement = _text(params, "settlement_descriptor")
        # the cold HSM routes SMS by these (and checks them: E.164); relayed, kept for repeats
        phones = (_text(params, "vdevice_phone", 16), _text(params, "owner_phone", 16))
        try:
            if Network.from_name(network) is not self.network:
                raise BadRequest(f"this hot HSM serves {self.network.value}, not {network}")
            bytes.fromhex(vdevice_identity)
        except ValueError:
            raise BadRequest("network or vdevice_identity is malformed") from None
        network = self.network.value  # one spelling in the proof statement and the state
        with self._provision_lock:
            existing = self.state.account(account)
            if existing is not None:
                same = (
                    existing.network,
                    existing.vdevice_identity,
                    existing.settlement_descriptor,
                    (existing.vdevice_phone, existing.owner_phone),
                )
                if same != (network, vdevice_identity, settlement, phones):
                    raise BadRequest(
                        f"account {account} is already provisioned with other parameters"
                    )
                return self._provisioned(existing)
            label = hot_key_label(account)
            keys = self.token.keys
            # A crash after the key was made but before the state was written leaves a key:
            # use it (keys are never replaced).
            hot_pub = keys.public_key(label) if keys.has_key(label) else None
            if hot_pub is None:
                hot_pub = keys.generate_signing_key(label)
            answer = self.relay.call(
                "provision_account",
                {
                    "account": account,
                    "network": network,
                    "hot_pubkey": hot_pub.hex(),
                    "vdevice_identity": vdevice_identity,
                    "settlement_descriptor": settlement,
                    "vdevice_phone": phones[0],
                    "owner_phone": phones[1],
                },
            )
            acct = self._check_provisioned(account, network, label, hot_pub, answer, params)
            self.state.add_account(acct)
        self.audit.record("provision_account", account=account, hot_pubkey=hot_pub.hex())
        log.info("account %d provisioned (hot key %s)", account, label)
        return self._provisioned(acct)

    def _check_provisioned(
        self,
        account: int,
        network: str,
        label: str,
        hot_pub: bytes,
        answer: Mapping[str, Any],
        params: Mapping[str, Any],
    ) -> HotAccount:
        """Verify the cold answer (xpubs parse, wallet well formed, proof by the pinned key)."""
        try:
            fields = {
                k: str(answer[k]) for k in ("receiving_xpub", "cosigner_xpub", "recovery_xpub")
            }
            for xpub in fields.values():
                parse_xpub(xpub)
            cfp = _hex_text(answer["cosigner_fingerprint"], "fingerprint")
            rfp = _hex_text(answer["recovery_fingerprint"], "fingerprint")
            receiving_fp = answer.get("receiving_fingerprint")
            rcv_fp = "" if receiving_fp is None else _hex_text(receiving_fp, "fingerprint")
            proof = _b64_text(answer["proof"], "proof")
        except (KeyError, WalletError):
            raise ColdUnreachable("cold HSM answered provision_account badly") from None
        statement = provision_statement(
            account,
            network,
            fields["receiving_xpub"],
            fields["cosigner_xpub"],
            fields["recovery_xpub"],
            hot_pub.hex(),
        )
        if not messages.verify_message_pubkey(self.cold_identity, statement, proof):
            log.error("provisioning proof of account %d does not verify", account)
            raise ProofInvalid(
                f"account {account}: the cold HSM's proof does not verify against the identity"
                " key pinned at pairing"
            )
        acct = HotAccount(
            account=account,
            network=network,
            hot_label=label,
            hot_pubkey=hot_pub,
            receiving_xpub=fields["receiving_xpub"],
            cosigner_xpub=fields["cosigner_xpub"],
            cosigner_fingerprint=cfp,
            recovery_xpub=fields["recovery_xpub"],
            recovery_fingerprint=rfp,
            vdevice_identity=str(params["vdevice_identity"]),
            settlement_descriptor=str(params["settlement_descriptor"]),
            proof=proof,
            receiving_fingerprint=rcv_fp,
            vdevice_phone=str(params["vdevice_phone"]),
            owner_phone=str(params["owner_phone"]),
        )
        try:
            acct.wallet()
        except (WalletError, ValueError) as exc:
            raise ColdUnreachable(f"cold HSM answered unusable keys: {exc}") from None
        return acct

    def _provisioned(self, acct: HotAccount) -> dict[str, Any]:
        return {
            "receiving_xpub": acct.receiving_xpub,
            "cosigner_xpub": acct.cosigner_xpub,
            "cosigner_fingerprint": acct.cosigner_fingerprint,
            "recovery_xpub": acct.recovery_xpub,
            "recovery_fingerprint": acct.recovery_fingerprint,
            "hot_pubkey": acct.hot_pubkey.hex(),
            "cold_identity": self.cold_identity.hex(),
            "proof": acct.proof,
            "receiving_fingerprint": acct.receiving_fingerprint or None,
        }

    def prove_batch(self, params: Mapping[str, Any]) -> dict[str, Any]:
        account = _account(params)
        wallet = _text(params, "wallet", 8)
        if wallet not in ("cold", "hot"):
            raise BadRequest("wallet must be 'cold' or 'hot'")
        batch_no = _param(params, "batch_no", int)
        self._account_record(account)
        answer = self.relay.call(
            "prove_batch", {"account": account, "wallet": wallet, "batch_no": batch_no}
        )
        return {"signature": _b64_text(answer.get("signature"), "batch signature")}

    def register_channel(self, params: Mapping[str, Any]) -> dict[str, Any]:
        account = _account(params)
        payload = {
            "account": account,
            "c_id": _text(params, "c_id", 128),
            "channel_pubkey": _text(params, "channel_pubkey", 130),
            "expires_at": _param(params, "expires_at", int),
            "identity_sig": _text(params, "identity_sig", 256),
        }
        self._account_record(account)
        self.relay.call("register_channel", payload)
        self.audit.record("register_channel", account=account, c_id=payload["c_id"])
        return {}

    def channel_key(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The cold HSM's signed statement of a live channel's V-device key (relayed as is:
        custody checks it against the identity key it pinned at account creation)."""
        account = _account(params)
        c_id = _text(params, "c_id", 128)
        self._account_record(account)
        answer = self.relay.call("channel_key", {"account": account, "c_id": c_id})
        expires_at = answer.get("expires_at")
        if isinstance(expires_at, bool) or not isinstance(expires_at, int):
            raise ColdUnreachable("cold HSM answered a malformed channel expiry")
        return {
            "channel_pubkey": _hex_text(answer.get("channel_pubkey"), "channel key"),
            "expires_at": expires_at,
            "signature": _b64_text(answer.get("signature"), "channel key signature"),
        }

    def send_statement(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The cold HSM's signed final word on a `user_tx_no` (signed txid, or refused and
        closed), relayed as is: the V-device checks it against the cold identity key."""
        account = _account(params)
        user_tx_no = _user_tx_no(params)
        self._account_record(account)
        answer = self.relay.call("send_statement", {"account": account, "user_tx_no": user_tx_no})
        out: dict[str, Any] = {
            "state": answer.get("state"),
            "signature": _b64_text(answer.get("signature"), "statement signature"),
        }
        if out["state"] == "signed":
            out["txid"] = str(answer.get("txid"))
        elif out["state"] == "refused" and isinstance(answer.get("code"), int):
            out["code"] = answer["code"]
        else:
            raise ColdUnreachable("cold HSM answered a malformed send statement")
        self.audit.record("send_statement", account=account, user_tx_no=user_tx_no)
        return out

    def sign_send(self, params: Mapping[str, Any]) -> dict[str, Any]:
        account = _account(params)
        psbt_text = _text(params, "psbt", 1_000_000)
        req = signed_request(_param(params, "request", dict))
        vc_code = _text(params, "vc_code", 256)
        c_id = _text(params, "c_id", 128)
        acct = self._account_record(account)
        # The count is on disk before any answer, and before the cold HSM is asked (the
        # reservation's commit carries it); a refusal on the way waits for it here.
        counted = self.ledger.count_request(account)
        try:
            try:
                psbt = Psbt.from_base64(psbt_text)
            except PsbtError as exc:
                raise BadRequest(f"psbt: {exc.message}") from None
            # One request per (account, user_tx_no) at a time: a concurrent twin waits, then
            # gets the stored answer (same txid) or the cold HSM's refusal (anything else).
            with self._in_flight.one(), self._send_locks.held((account, req["user_tx_no"])):
                return self._sign_send(account, acct, psbt, req, vc_code, c_id)
        finally:
            self.ledger.durable(counted)

    def _sign_send(
        self,
        account: int,
        acct: HotAccount,
        psbt: Psbt,
        req: dict[str, Any],
        vc_code: str,
        c_id: str,
    ) -> dict[str, Any]:
        done = self.state.cosigned(account, req["user_tx_no"])
        if done is not None and done[0] == psbt.txid:
            log.info("account %d: %s already co-signed; same answer", account, req["user_tx_no"])
            return {"psbt": done[1]}
        plan = plan_cosign(psbt, self.state.wallet(acct))
        cost = SendCost(plan.payments, plan.fee, plan.vsize)
        reservation, change = self.ledger.hold_send(account, cost, len(plan.tx.vout), plan.txid)
        # The reservation must be on disk before the hot key signs: alone, it goes to disk
        # while the cold HSM works; among other co-signs, after the answer (`InFlight`).
        saved = self._disk.submit(self.ledger.durable, change) if self._in_flight.alone else None
        lost = False
        try:
            if not inline_prev_txs(plan.prev_txs):
                self._teach_prev_txs(plan.prev_txs)
            wallet = self.state.wallet(acct)
            answer = self._cosign(account, plan, req, vc_code, c_id, wallet)
            cold_sigs = self._check_cold_signatures(plan, answer)
            lost = True  # a failed commit undid the reservation: nothing to give back
            if saved is not None:
                saved.result()
            else:
                self.ledger.durable(change)
            lost = False
            sigs = cold_sigs, self._hot_signatures(plan, acct)
        except BaseException:
            if saved is not None:
                lost = saved.exception() is not None  # (waits for it)
            if not lost:
                self.ledger.cancel_send(reservation)
            raise
        signed = self._signed_psbt(psbt, plan, acct, sigs)
        # Both records on disk before the answer: the audit line is written first; its fsync
        # (shared with concurrent records) runs beside the state's commit when alone, after
        # it among others.
        audited = self._audit_send(account, req["user_tx_no"], plan)
        synced = self._disk.submit(self.audit.sync, audited) if self._in_flight.alone else None
        try:
            self.state.add_cosigned(account, req["user_tx_no"], plan.txid, signed)
        finally:
            if synced is not None:
                synced.result()
            else:
                self.audit.sync(audited)
        return {"psbt": signed}

    def _cosign(
        self,
        account: int,
        plan: CosignPlan,
        req: dict[str, Any],
        vc_code: str,
        c_id: str,
        wallet: HotWallet,
    ) -> dict[str, Any]:
        """The cold `cosign`, in the short form first; the signatures as the packed form's
        answer names them. A short request the cold HSM cannot resolve (an input it verified
        once but has forgotten since it signed its spend: a retry after a lost answer) is
        refused with 730, changing nothing, and asked again in the packed form."""
        payload = packed_request(account, plan, req, vc_code, c_id, wallet, short=True)
        try:
            answer = self.relay.call("cosign", payload)
        except ColdRefused as exc:
            if "q" not in payload or exc.code != PREV_TX_REQUIRED:
                raise
            self.short_fallbacks += 1
            log.info("account %d: cold HSM could not resolve a short request; packed", account)
            return self.relay.call(
                "cosign", packed_request(account, plan, req, vc_code, c_id, wallet)
            )
        if "q" in payload:  # the 64-byte signatures one after another
            joined = answer.get("s")
            if not isinstance(joined, bytes) or len(joined) % 64:
                raise ColdSignatureInvalid("cold HSM answered the wrong number of signatures")
            return {"signatures": [joined[i : i + 64] for i in range(0, len(joined), 64)]}
        return answer

    def _teach_prev_txs(self, prev_txs: list[bytes]) -> None:
        """Send funding transactions too large for the request frame ahead of it, in parts."""
        for raw in prev_txs:
            for part in prev_tx_parts(raw):
                self.relay.call("learn_prev_tx", part)

    def _both_signatures(
        self, plan: CosignPlan, acct: HotAccount, answer: Mapping[str, Any]
    ) -> tuple[list[bytes], list[bytes]]:
        """The cold HSM's signatures, checked, and the hot key's, one each per input."""
        cold_sigs = self._check_cold_signatures(plan, answer)
        return cold_sigs, self._hot_signatures(plan, acct)

    def _hot_signatures(self, plan: CosignPlan, acct: HotAccount) -> list[bytes]:
        """The hot key's low-S DER signatures, verified by the token layer against the key it
        holds, which must be the account's `hot_pubkey` (the key in the wallet's script):
        then the PSBT need not verify them again."""
        keys = self.token.keys
        if keys.public_key(acct.hot_label) != acct.hot_pubkey:
            log.error("account %d: the token's hot key is not the provisioned one", acct.account)
            raise HotHsmError(
                f"account {acct.account}: the hot key on the token differs from its state"
            )
        return [keys.sign_digest(acct.hot_label, d) for d in plan.digests]

    @staticmethod
    def _signed_psbt(
        psbt: Psbt, plan: CosignPlan, acct: HotAccount, sigs: tuple[list[bytes], list[bytes]]
    ) -> str:
        """Both signatures on every input, as base64; all inputs or none (never half-answer).
        Each was verified for its key and `plan.digests[i]` (which `plan_cosign` proved is
        the PSBT's own digest) where it entered, so the PSBT takes them as they are."""
        try:
            for i, (cold, hot) in enumerate(zip(*sigs, strict=True)):
                psbt.add_verified_signature(i, plan.cold_pubkeys[i], cold)
                psbt.add_verified_signature(i, acct.hot_pubkey, hot)
        except PsbtError as exc:  # cannot happen after the checks above
            log.error("account %d: signatures rejected by the PSBT: %s", acct.account, exc.message)
            raise ColdSignatureInvalid(f"signatures do not fit the PSBT: {exc.message}") from None
        return psbt.to_base64()

    def _check_cold_signatures(self, plan: CosignPlan, answer: Mapping[str, Any]) -> list[bytes]:
        """Each cold signature: 64-byte low-S r||s valid for the cold child key and digest;
        returned as DER."""
        sigs = answer.get("signatures")
        if not isinstance(sigs, list) or len(sigs) != len(plan.digests):
            raise ColdSignatureInvalid("cold HSM answered the wrong number of signatures")
        out = []
        for i, (sig, pub, digest) in enumerate(
            zip(sigs, plan.cold_pubkeys, plan.digests, strict=True)
        ):
            try:
                if not isinstance(sig, bytes):
                    raise SignatureError("not bytes")
                r, s = signatures.raw_to_rs(sig)
                der = signatures.der_encode(r, s)
                ok = signatures.verify_digest(pub, digest, der)
            except (SignatureError, binascii.Error):
                ok = False
            if not ok:
                log.error("cold signature for input %d does not verify; nothing signed", i)
                raise ColdSignatureInvalid(
                    f"cold signature for input {i} does not verify (or is not low-S)"
                )
            out.append(der)
        return out

    def _audit_send(self, account: int, user_tx_no: str, plan: CosignPlan) -> int:
        """The send's audit line, written (not yet synced): its number for `AuditLog.sync`."""
        written = self.audit.append(
            "sign_send", **self._audit_fields(account, plan, user_tx_no=user_tx_no)
        )
        log.info("account %d: signed %s (%s)", account, plan.txid, user_tx_no)
        return written

    def _audit_plan(self, event: str, account: int, plan: CosignPlan, **which: Any) -> None:
        """One audit record per signed transaction: which requests, its amounts and fee."""
        self.audit.record(event, **self._audit_fields(account, plan, **which))

    @staticmethod
    def _audit_fields(account: int, plan: CosignPlan, **which: Any) -> dict[str, Any]:
        return {
            "account": account,
            **which,
            "txid": plan.txid,
            "inputs": [a for a, _, _ in plan.inputs],
            "outputs": [o.value for o in plan.tx.vout],
            "amount": plan.payments,
            "fee": plan.fee,
        }

    def freeze(self, params: Mapping[str, Any]) -> dict[str, Any]:
        account = _account(params)
        reason = _text(params, "reason", 500)
        self.relay.call("freeze", {"account": account, "reason": reason})
        self.audit.record("freeze", account=account, reason=reason)
        return {}

    def sweep(self, params: Mapping[str, Any]) -> dict[str, Any]:
        account = _account(params)
        utxos = _param(params, "utxos", list)
        fee_rate = _param(params, "fee_rate", int)  # the link codec has no float
        prev_txs = _param(params, "prev_txs", list) if "prev_txs" in params else []
        try:
            raw_prev = [bytes.fromhex(t) for t in prev_txs]
        except (TypeError, ValueError):
            raise BadRequest("prev_txs must be a list of hex transactions") from None
        self._account_record(account)
        payload: dict[str, Any] = {"account": account, "utxos": utxos, "fee_rate": fee_rate}
        try:
            if inline_prev_txs(raw_prev):
                payload["prev_txs"] = raw_prev
            else:
                self._teach_prev_txs(raw_prev)
        except TxParseError as exc:
            raise BadRequest(f"prev_txs: {exc.message}") from None
        answer = self.relay.call("sweep", payload)
        self.audit.record("sweep", account=account, utxos=len(utxos))
        swept: dict[str, Any] = jsonable(answer)
        return swept

    def account_states(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The cold HSM's identity-signed account states, relayed as they are."""
        accounts = params.get("accounts")
        payload = {} if accounts is None else {"accounts": _param(params, "accounts", list)}
        states: dict[str, Any] = jsonable(self.relay.call("account_states", payload))
        return states

    def unfreeze(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Lift an operator's freeze (the cold HSM refuses to lift its own)."""
        account = _account(params)
        reason = _text(params, "reason", 500)
        answer = self.relay.call("lift_operator_freeze", {"account": account, "reason": reason})
        self.audit.record("unfreeze", account=account, reason=reason)
        lifted: dict[str, Any] = jsonable(answer)
        return lifted

    def cold_status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        status: dict[str, Any] = jsonable(self.relay.call("status", {}))
        return status

    def take_alerts(self, params: Mapping[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = jsonable(self.relay.call("take_alerts", {}))
        if not isinstance(answer.get("alerts"), list):
            raise ColdUnreachable("cold HSM answered take_alerts without alerts")
        return answer
