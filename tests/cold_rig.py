"""The cold HSM's module rig, shared by its test modules: a module's `hsm-cold serve` on a pty
(`cold`), the hot side of its serial line (`link`), and accounts provisioned through it.

Registered for every test by `pytest_plugins` in tests/conftest.py, so test modules ask for
`cold` and `link` by name; a module that needs another policy defines its own `cold`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import coincurve
import pytest
from embit.psbt import PSBT as EmbitPsbt

from cc_common.link import LinkRemoteError
from tests.hsm_fixtures import (
    PHONES,
    Coin,
    ColdHsm,
    VDevice,
    build_send_psbt,
    funded_coin,
    running_cold_hsm,
    send_request,
)
from wallet_core import signatures
from wallet_core.bip32 import ExtendedKey, parse_xpub
from wallet_core.descriptors import parse_descriptor
from wallet_core.networks import Network
from wallet_core.psbt import Psbt
from wallet_core.wallets import (
    RECEIVE,
    AccountKey,
    ColdWallet,
    FixedKey,
    HotWallet,
    bip48_account_path,
    bip84_account_path,
)

NET = Network.REGTEST
TIMEOUT = 30.0
MAX_FEE_SAT = 100_000
MAX_FEE_RATE = 50
FEE = 5_000
SETTLEMENT = parse_descriptor(
    ColdWallet.from_root(ExtendedKey.from_seed(b"settlement wallet seed!!", NET), NET)
    .descriptor(RECEIVE)
    .to_string()
)


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ColdHsm]:
    yield from running_cold_hsm(
        tmp_path_factory.mktemp("cold"),
        {"hsm_cold": {"max_fee_sat": MAX_FEE_SAT, "max_fee_rate": MAX_FEE_RATE}},
    )


@pytest.fixture
def link(cold: ColdHsm) -> Iterator[Any]:
    client = cold.client()
    yield client
    client.close()


def refused(client: Any, command: str, payload: dict[str, Any]) -> LinkRemoteError:
    with pytest.raises(LinkRemoteError) as info:
        client.call(command, payload, timeout=TIMEOUT)
    return info.value


def _key(tag: str) -> coincurve.PrivateKey:
    return coincurve.PrivateKey(hashlib.sha256(tag.encode()).digest())


def unsigned_tx(psbt: Psbt) -> bytes:
    return EmbitPsbt.parse(psbt.to_bytes()).tx.serialize()


@dataclass
class Account:
    """One provisioned account, seen from the hot side (public material only)."""

    number: int
    answer: dict[str, Any]
    hot: coincurve.PrivateKey
    vdevice: VDevice
    c_id: str = "c1"
    coin_no: int = field(default=0)

    @property
    def hot_pub(self) -> bytes:
        return self.hot.public_key.format(compressed=True)

    @property
    def wallet(self) -> HotWallet:
        path = bip48_account_path(NET, 0)
        a = self.answer
        return HotWallet(
            (
                FixedKey(self.hot_pub),
                AccountKey(
                    parse_xpub(a["cosigner_xpub"]), bytes.fromhex(a["cosigner_fingerprint"]), path
                ),
                AccountKey(
                    parse_xpub(a["recovery_xpub"]), bytes.fromhex(a["recovery_fingerprint"]), path
                ),
            ),
            NET,
        )

    @property
    def cold_wallet(self) -> ColdWallet:
        a = self.answer
        key = AccountKey(
            parse_xpub(a["receiving_xpub"]),
            bytes.fromhex(a["receiving_fingerprint"]),
            bip84_account_path(NET, 0),
        )
        return ColdWallet(key, NET)

    def coin(self, value: int, chain: int = RECEIVE, index: int | None = None) -> Coin:
        """A coin of the hot wallet with a funding transaction the cold HSM can verify."""
        self.coin_no += 1
        where = self.coin_no if index is None else index
        tag = f"{self.number}/{self.coin_no}"
        return funded_coin(self.wallet, value, chain, where, self.coin_no % 3, tag)

    def send(
        self,
        payments: Sequence[tuple[str, int]],
        user_tx_no: str,
        *,
        coins: Sequence[Coin] | None = None,
        change: tuple[int, int] | None | str = "auto",
        signed_payments: Sequence[tuple[str, int]] | None = None,
        extra_outputs: Sequence[tuple[bytes, int]] = (),
        declared_change: list[list[int]] | None = None,
        inputs: list[list[int]] | None = None,
        vc_key: coincurve.PrivateKey | None = None,
        c_id: str | None = None,
        prev_txs: bool = True,
    ) -> tuple[dict[str, Any], Psbt]:
        """A PSBT built with wallet_core and its compact co-sign request, V-device signed."""
        coins = list(coins) if coins is not None else [self.coin(1_000_000)]
        if change == "auto":  # the rest back to change 0, less a modest fee
            change = (0, sum(c.value for c in coins) - sum(v for _, v in payments) - FEE)
        psbt = build_send_psbt(
            self.wallet, coins, payments, change=change, extra_outputs=extra_outputs
        )
        request = send_request(signed_payments or payments, user_tx_no)
        if declared_change is None:
            declared_change = [] if change is None else [[len(payments), change[0]]]
        payload = {
            "account": self.number,
            "tx": unsigned_tx(psbt),
            "inputs": inputs or [[c.value, c.chain, c.index] for c in coins],
            "change": declared_change,
            **request,
            "vc_code": self.vdevice.vc_code(request, vc_key),
            "c_id": c_id or self.c_id,
        }
        if prev_txs:
            payload["prev_txs"] = list(dict.fromkeys(c.prev_tx for c in coins if c.prev_tx))
        return payload, psbt


def provision(
    cold: ColdHsm,
    client: Any,
    number: int,
    *,
    register: bool = True,
    confirm: bool = True,
    vdevice_seed: str = "vdevice",
    phones: dict[str, str] = PHONES,
) -> Account:
    """Account `number` provisioned over the link (confirmed at the console and with channel
    `c1` registered unless told otherwise)."""
    hot = _key(f"hot/{number}")
    vdevice = VDevice(seed=f"{vdevice_seed}/{number}")
    answer = client.call(
        "provision_account",
        {
            "account": number,
            "network": "regtest",
            "hot_pubkey": hot.public_key.format(compressed=True).hex(),
            "vdevice_identity": vdevice.identity_hex,
            "settlement_descriptor": SETTLEMENT.to_string(),
            **phones,
        },
        timeout=TIMEOUT,
    )
    acct = Account(number, answer, hot, vdevice)
    if confirm:  # the officer at the cold console, with the fingerprint from the phone
        cold.confirm(number, vdevice.identity_hex)
    if register:
        client.call("register_channel", vdevice.channel_registration(number, "c1"), timeout=TIMEOUT)
    return acct


def check_cold_signatures(
    acct: Account, psbt: Psbt, coins: Sequence[Coin], sigs: list[bytes]
) -> None:
    """Each 64-byte r||s is low-S and verifies for the cold child key the test derives."""
    assert len(sigs) == len(coins)
    for i, (coin, sig) in enumerate(zip(coins, sigs, strict=True)):
        assert isinstance(sig, bytes) and len(sig) == 64
        r, s = signatures.raw_to_rs(sig)
        assert signatures.is_low_s(s)
        cold_pub = acct.wallet.pubkeys(coin.index, coin.chain)[1]
        assert signatures.verify_digest(cold_pub, psbt.sighash(i), signatures.der_encode(r, s))


def frozen_for(link: Any, account: int) -> str | None:
    """The freeze reason of `account`, or None if it is not frozen."""
    frozen = dict(link.call("status", {}, timeout=TIMEOUT)["frozen"])
    return frozen.get(account)
