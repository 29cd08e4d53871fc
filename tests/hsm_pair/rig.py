"""What the HSM-pair tests share besides the fixtures: the refusal codes as custody sees them
through the hot RPC, `Account` (a provisioned account with a live V-device channel) and
`refused`.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from custody.hsm_client import HotHsmClient, HsmRefused, ProvisionedAccount
from tests.hsm_fixtures import (
    PHONES,
    Coin,
    HsmPair,
    VDevice,
    build_send_psbt,
    confirm_account,
    funded_coin,
    hot_wallet,
    random_address,
    send_request,
    settlement_descriptor,
)
from wallet_core.psbt import Psbt
from wallet_core.wallets import RECEIVE, HotWallet

COIN = 100_000_000
LINK_TIMEOUT = 6.0
COLD_UNREACHABLE = 906
POLICY_REFUSED = 901
# the cold HSM's refusal codes (hsm_cold/errors.py), as custody sees them through the hot RPC
FROZEN, UNKNOWN_CHANNEL, CHANNEL_EXPIRED, FORGED = 703, 704, 705, 706
REUSED, MISMATCH, EXTRA, NOT_DERIVABLE, FEE = 707, 708, 709, 710, 712
SEND_CLOSED = 741

_accounts = iter(range(100, 10_000))


class Account:
    """A provisioned account with a live V-device channel."""

    def __init__(self, client: HotHsmClient, pair: HsmPair) -> None:
        self.id = next(_accounts)
        self.vdev = VDevice(f"vdev-{self.id}")
        self.client = client
        self.prov: ProvisionedAccount = client.provision_account(
            self.id, "regtest", self.vdev.identity_hex, settlement_descriptor(self.id), **PHONES
        )
        confirm_account(pair.d, self.id, self.vdev.identity_hex)
        self.wallet: HotWallet = hot_wallet(self.prov)
        self.c_id = f"ch-{self.id}"
        client.register_channel(**self.vdev.channel_registration(self.id, self.c_id))

    def params(
        self,
        psbt: Psbt,
        payments: list[tuple[str, int]],
        user_tx_no: str,
        *,
        outs: list[tuple[str, int]] | None = None,
        c_id: str | None = None,
        forge: bool = False,
    ) -> dict[str, Any]:
        request = send_request(outs or payments, user_tx_no)
        key = VDevice("forger").channel if forge else None
        return {
            "account": self.id,
            "psbt": psbt.to_base64(),
            "request": request,
            "vc_code": self.vdev.vc_code(request, key),
            "c_id": c_id or self.c_id,
        }

    def coin(self, value: int, index: int) -> Coin:
        """A made-up coin with its funding transaction (co-signing needs no chain)."""
        return funded_coin(self.wallet, value, RECEIVE, index, 0, os.urandom(8).hex())

    def send(self, user_tx_no: str, pay: int = 50_000, **kw: Any) -> dict[str, Any]:
        """A valid send from a made-up coin."""
        coins = [self.coin(300_000, 2)]
        payments = [(random_address(), pay)]
        psbt = build_send_psbt(self.wallet, coins, payments, change=(1, 300_000 - pay - 1_000))
        return self.params(psbt, payments, user_tx_no, **kw)


def refused(call: Any, code: int, *args: Any, **kwargs: Any) -> HsmRefused:
    with pytest.raises(HsmRefused) as info:
        call(*args, **kwargs)
    assert info.value.code == code, (info.value.code, info.value.message)
    return info.value
