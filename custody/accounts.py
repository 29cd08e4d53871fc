"""Accounts and their scoped tokens (service functions; no Flask here).

Provisioning asks the HSM pair for the account's public material and checks the cold
identity key's signature over it before storing anything, so custody never stores keys the
cold HSM did not vouch for. Only public keys, descriptors and token *hashes* are stored
(DESIGN invariants 3 and 4); the plaintext tokens are returned once, to the operator.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cc_common.config import Config
from custody import freezes, journal
from custody.alerts import AlertKind, raise_alert
from custody.batches import AccountKeys
from custody.errors import (
    AccountError,
    Conflict,
    HsmRefusedError,
    HsmUnavailableError,
    NotFound,
    ProofInvalid,
)
from custody.hsm_client import HotHsm, HsmError, HsmRefused, ProvisionedAccount
from custody.models import Account, AccountStatus, ApiToken, Chain, TokenScope, Wallet, utcnow
from wallet_core import secp
from wallet_core.bip32 import parse_xpub
from wallet_core.descriptors import parse_descriptor, settlement_problem
from wallet_core.errors import WalletError
from wallet_core.messages import verify_message_pubkey
from wallet_core.networks import Network

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
HINT_CHARS = 6
DEFAULT_RATE_LIMIT = 600  # requests per minute and token
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}$")


def hash_token(token: str) -> str:
    """SHA-256 hex of a token: the only form stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def provision_message(account_id: int, network: str, p: ProvisionedAccount) -> str:
    """The statement the cold identity key signs at provisioning (docs/hsm-pair.md)."""
    return (
        f"CC:PROVISION:{account_id}:{network}:{p.receiving_xpub}:{p.cosigner_xpub}:"
        f"{p.recovery_xpub}:{p.hot_pubkey}"
    )


@dataclass
class CreatedAccount:
    """What the operator gets once: the tokens in plaintext, the V-device bundle, descriptors."""

    account_id: int
    name: str
    cold_token: str
    hot_token: str
    cold_identity: str
    descriptors: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "name": self.name,
            "cold_token": self.cold_token,
            "hot_token": self.hot_token,
            "cold_identity": self.cold_identity,
            "descriptors": self.descriptors,
        }


def _issue_token(
    session: Session, account_id: int, scope: TokenScope, rate_limit: int = DEFAULT_RATE_LIMIT
) -> str:
    token = secrets.token_hex(TOKEN_BYTES)
    session.add(
        ApiToken(
            account_id=account_id,
            scope=scope,
            token_hash=hash_token(token),
            hint=token[:HINT_CHARS],
            rate_limit_per_minute=rate_limit,
        )
    )
    return token


def _check_inputs(
    name: str,
    vdevice_phone: str,
    owner_phone: str,
    settlement: str,
    vdevice_identity: str,
    network: Network,
) -> None:
    if not _NAME.match(name):
        raise AccountError("name must be 1-100 letters, digits, spaces or ._@- characters")
    for label, phone in (("vdevice phone", vdevice_phone), ("owner phone", owner_phone)):
        if not _PHONE.match(phone):
            raise AccountError(f"{label} must be an E.164 number like +15550000100")
    try:
        problem = settlement_problem(parse_descriptor(settlement), network)
    except WalletError as exc:
        raise AccountError(f"settlement descriptor: {exc.message}") from None
    if problem is not None:
        raise AccountError(f"settlement descriptor: {problem}")
    try:
        key = bytes.fromhex(vdevice_identity)
    except ValueError:
        raise AccountError("vdevice identity must be hex") from None
    if len(key) != 33 or not secp.is_valid_pubkey(key):
        raise AccountError("vdevice identity must be a 33-byte compressed public key (hex)")


def _check_provisioned(account_id: int, network: Network, p: ProvisionedAccount) -> None:
    """Every returned key parses, is public and of our network; the proof verifies."""
    try:
        identity = bytes.fromhex(p.cold_identity)
        hot = bytes.fromhex(p.hot_pubkey)
        keys = [parse_xpub(x) for x in (p.receiving_xpub, p.cosigner_xpub, p.recovery_xpub)]
        for fpr in (p.receiving_fingerprint, p.cosigner_fingerprint, p.recovery_fingerprint):
            if fpr is None or len(bytes.fromhex(fpr)) != 4:
                raise ValueError("fingerprint")
    except (ValueError, WalletError):
        raise ProofInvalid("the HSM returned malformed public material") from None
    if not (secp.is_valid_pubkey(identity) and len(hot) == 33 and secp.is_valid_pubkey(hot)):
        raise ProofInvalid("the HSM returned an invalid public key")
    if any(network not in k.networks for k in keys):
        raise ProofInvalid(f"the HSM returned keys that are not for {network.value}")
    message = provision_message(account_id, network.value, p)
    if not verify_message_pubkey(identity, message, p.proof):
        raise ProofInvalid("the provisioning proof does not verify against the cold identity key")


def create_account(
    session: Session,
    hsm: HotHsm,
    name: str,
    vdevice_phone: str,
    owner_phone: str,
    settlement_descriptor: str,
    vdevice_identity: str,
    *,
    network: Network | str = Network.REGTEST,
    pinned_cold_identity: str | None = None,
) -> CreatedAccount:
    """Provision an account on the HSM pair and store its public material and two tokens.

    `pinned_cold_identity`, when known (e.g. from `hsm-cold init`), must equal the identity
    key the HSM answers with. The caller commits.
    """
    net = network if isinstance(network, Network) else Network.from_name(network)
    _check_inputs(name, vdevice_phone, owner_phone, settlement_descriptor, vdevice_identity, net)
    if session.execute(select(Account.id).where(Account.name == name)).first() is not None:
        raise Conflict(f"an account named {name!r} already exists")
    account = Account(
        name=name,
        network=net.value,
        vdevice_phone=vdevice_phone,
        owner_phone=owner_phone,
        settlement_descriptor=settlement_descriptor,
        cold_receiving_xpub="",
        hot_pubkey="",
        cold_cosigner_xpub="",
        recovery_xpub="",
        cold_descriptor="",
        hot_descriptor="",
        cold_identity_pubkey="",
        vdevice_identity_pubkey=vdevice_identity.lower(),
        provisioning_proof="",
    )
    session.add(account)
    session.flush()  # the account id is part of what the HSMs sign
    p = _provision(hsm, account, net, pinned_cold_identity)
    descriptors = _store_public_material(account, p)
    cold_token = _issue_token(session, account.id, TokenScope.COLD)
    hot_token = _issue_token(session, account.id, TokenScope.HOT)
    session.flush()
    _journal_creation(session, account, p, cold_token, hot_token)
    log.info("account %d (%s) provisioned", account.id, name)
    return CreatedAccount(
        account.id, name, cold_token, hot_token, account.cold_identity_pubkey, descriptors
    )


def _provision(
    hsm: HotHsm, account: Account, net: Network, pinned_cold_identity: str | None
) -> ProvisionedAccount:
    """Ask the HSM pair for the account's keys and check what comes back (proof, pin)."""
    try:
        p: ProvisionedAccount = hsm.provision_account(
            account.id,
            net.value,
            account.vdevice_identity_pubkey,
            account.settlement_descriptor,
            vdevice_phone=account.vdevice_phone,
            owner_phone=account.owner_phone,
        )
    except HsmUnavailableError as exc:
        raise HsmUnavailableError(f"cannot provision: {exc.message}") from None
    except HsmRefused as exc:
        raise HsmRefusedError(f"the HSM refused to provision: {exc.message}") from None
    _check_provisioned(account.id, net, p)
    if pinned_cold_identity and p.cold_identity.lower() != pinned_cold_identity.lower():
        raise ProofInvalid("the HSM's cold identity key is not the pinned one")
    return p


def _store_public_material(account: Account, p: ProvisionedAccount) -> dict[str, str]:
    """Put the checked public keys on the row; the four descriptors the operator gets."""
    account.cold_receiving_xpub = p.receiving_xpub
    account.cold_cosigner_xpub = p.cosigner_xpub
    account.recovery_xpub = p.recovery_xpub
    account.hot_pubkey = p.hot_pubkey.lower()
    account.cold_identity_pubkey = p.cold_identity.lower()
    account.provisioning_proof = p.proof
    assert p.receiving_fingerprint is not None  # checked by _check_provisioned
    account.receiving_fingerprint = p.receiving_fingerprint.lower()
    account.cosigner_fingerprint = p.cosigner_fingerprint.lower()
    account.recovery_fingerprint = p.recovery_fingerprint.lower()
    keys = AccountKeys.from_account(account)
    descriptors = {
        "cold_receive": keys.descriptor(Wallet.COLD, Chain.RECEIVE),
        "cold_change": keys.descriptor(Wallet.COLD, Chain.CHANGE),
        "hot_receive": keys.descriptor(Wallet.HOT, Chain.RECEIVE),
        "hot_change": keys.descriptor(Wallet.HOT, Chain.CHANGE),
    }
    account.cold_descriptor = descriptors["cold_receive"]
    account.hot_descriptor = descriptors["hot_receive"]
    return descriptors


def _journal_creation(
    session: Session, account: Account, p: ProvisionedAccount, cold_token: str, hot_token: str
) -> None:
    """Record the account's public material and its tokens' hints (never the tokens)."""
    journal.append(
        session,
        journal.JournalKind.ACCOUNT_CREATED,
        account.id,
        {
            "name": account.name,
            "network": account.network,
            "cold_identity": account.cold_identity_pubkey,
            "hot_pubkey": account.hot_pubkey,
            "receiving_xpub": p.receiving_xpub,
            "cosigner_xpub": p.cosigner_xpub,
            "recovery_xpub": p.recovery_xpub,
            "proof": p.proof,
        },
    )
    for scope, token in ((TokenScope.COLD, cold_token), (TokenScope.HOT, hot_token)):
        journal.append(
            session,
            journal.JournalKind.TOKEN_ISSUED,
            account.id,
            {"scope": scope.value, "hint": token[:HINT_CHARS]},
        )


def get_account(session: Session, account_id: int) -> Account:
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound(f"account {account_id} does not exist")
    return account


def rotate_token(session: Session, account_id: int, scope: TokenScope | str) -> str:
    """Revoke the account's live token(s) of `scope` and issue a new one (returned once)."""
    scope = TokenScope(scope)
    get_account(session, account_id)
    now = utcnow()
    limit = DEFAULT_RATE_LIMIT
    for tok in session.execute(
        select(ApiToken).where(
            ApiToken.account_id == account_id,
            ApiToken.scope == scope,
            ApiToken.revoked_at.is_(None),
        )
    ).scalars():
        tok.revoked_at = now
        limit = tok.rate_limit_per_minute
    token = _issue_token(session, account_id, scope, limit)
    session.flush()
    journal.append(
        session,
        journal.JournalKind.TOKEN_ROTATED,
        account_id,
        {"scope": scope.value, "hint": token[:HINT_CHARS]},
    )
    return token


def freeze_account(
    session: Session, hsm: HotHsm, account_id: int, reason: str, config: Config | None = None
) -> bool:
    """Freeze locally (no send is accepted from now on), then tell the HSMs.

    Returns whether the HSMs were told; a failure there is logged and reported, the local
    freeze stands either way.
    """
    account = get_account(session, account_id)
    reason = reason.strip() or "frozen by the operator"
    account.status = AccountStatus.FROZEN
    account.frozen_reason = reason
    journal.append(session, journal.JournalKind.ACCOUNT_FROZEN, account_id, {"reason": reason})
    told = True
    try:
        hsm.freeze(account_id, reason)
    except HsmError as exc:
        told = False
        log.warning("account %d frozen locally; HSM not told: %s", account_id, exc.message)
    freezes.record_operator_freeze(session, account_id, reason, told)
    if config is not None:
        raise_alert(
            session,
            config,
            AlertKind.ACCOUNT_FROZEN,
            f"account frozen: {reason}" + ("" if told else " (HSMs NOT told)"),
            account_id,
        )
    return told
