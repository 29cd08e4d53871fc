"""The custody-host attacker: what a root shell on the custody server holds, and no more.

It has custody's configuration (so the hot HSM's RPC secret: it talks to `hsm-hot serve`
directly, past every check custody makes), custody's database (every genuine V-device-signed
send request with its `vc_code`, every PSBT, the funding transactions), and the node. It has
no HSM key, no channel key, no access to the cold console. `HostAttack` runs the real
firmware-sim (serial line, carrier), `hsm-cold serve`, `hsm-hot serve` and the regtest node,
and gives the attack tests their tools: genuine requests to abuse, coins funded on the node,
and the checks every attack test ends with (nothing reached the node, frozen, alerted).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from embit.transaction import Transaction

from cc_common.deployment import OPERATOR_NUMBER
from custody.chain import BitcoinRPC
from custody.hsm_client import HotHsmClient, HsmRefused, ProvisionedAccount
from tests.harness import Deployment, wait_until
from tests.hsm_fixtures import (
    PHONES,
    Coin,
    HsmPair,
    VDevice,
    build_send_psbt,
    confirm_account,
    hot_wallet,
    random_address,
    send_request,
    settlement_descriptor,
)
from wallet_core.psbt import Psbt, PsbtOutput
from wallet_core.wallets import CHANGE, RECEIVE, HotWallet

COIN = 100_000_000
_numbers = itertools.count(500)


@dataclass(frozen=True)
class ChainState:
    """The node's tip and mempool: an attack must leave both as they were."""

    tip: str
    mempool: tuple[str, ...]


@dataclass
class Victim:
    """A provisioned account with a live channel; its V-device signs only genuine requests."""

    id: int
    prov: ProvisionedAccount
    vdev: VDevice
    c_id: str
    wallet: HotWallet = field(init=False)

    def __post_init__(self) -> None:
        self.wallet = hot_wallet(self.prov)

    def genuine(self, payments: list[tuple[str, int]], user_tx_no: str) -> dict[str, Any]:
        """A request the V-device really signed (custody's database holds it)."""
        request = send_request(payments, user_tx_no)
        return {
            "account": self.id,
            "request": request,
            "vc_code": self.vdev.vc_code(request),
            "c_id": self.c_id,
        }


class HostAttack:
    """The real processes, and the custody-host attacker's view of them."""

    def __init__(self, deployment: Deployment) -> None:
        self.d = deployment
        self.pair = HsmPair(deployment)

    def start(self) -> HostAttack:
        self.pair.start()
        self.d.start_cli("node", "firmware_sim.cli", "node", timeout=60)
        self.node = BitcoinRPC.from_config(self.d.config)
        self.node.generate_to_address(1, random_address())
        return self

    @property
    def hot(self) -> HotHsmClient:
        """hsm-hot's RPC with the secret from custody's configuration."""
        return self.pair.client()

    def victim(self) -> Victim:
        number = next(_numbers)
        vdev = VDevice(f"victim-{number}")
        prov = self.hot.provision_account(
            number, "regtest", vdev.identity_hex, settlement_descriptor(number), **PHONES
        )
        confirm_account(self.d, number, vdev.identity_hex)  # the officer, out of band
        c_id = f"ch-{number}"
        self.hot.register_channel(**vdev.channel_registration(number, c_id))
        return Victim(number, prov, vdev, c_id)

    # -- the node -------------------------------------------------------------------------------

    def fund(self, script_address: str) -> Coin:
        """A coinbase paying `script_address` (its block hash is what custody records)."""
        [block] = self.node.generate_to_address(1, script_address)
        coinbase = self.node.get_block(block, 2)["tx"][0]
        value = int(Decimal(str(coinbase["vout"][0]["value"])) * COIN)
        raw = bytes.fromhex(self.node.get_raw_transaction(coinbase["txid"], False, block))
        return Coin(coinbase["txid"], 0, value, RECEIVE, -1, raw)

    def hot_coin(self, victim: Victim, index: int) -> Coin:
        c = self.fund(victim.wallet.address(index, RECEIVE))
        return Coin(c.txid, c.vout, c.value, RECEIVE, index, c.prev_tx)

    def mature(self) -> None:
        self.node.generate_to_address(100, random_address())

    def chain(self) -> ChainState:
        return ChainState(
            self.node.get_best_block_hash(), tuple(sorted(self.node.get_raw_mempool()))
        )

    # -- outcomes ---------------------------------------------------------------------------------

    def refused(self, code: int, rpc: str, **params: Any) -> HsmRefused:
        """Call the hot RPC client's `rpc` method; it must be refused with `code`."""
        try:
            getattr(self.hot, rpc)(**params)
        except HsmRefused as exc:
            assert exc.code == code, (exc.code, exc.message)
            return exc
        raise AssertionError(f"{rpc} was not refused (expected code {code})")

    def frozen_reason(self, victim: Victim) -> str | None:
        return dict(self.hot.cold_status()["frozen"]).get(victim.id)

    def assert_frozen_and_alerted(self, victim: Victim, words: str) -> None:
        """Frozen for `words`, an `account_frozen` alert recorded, the operator texted."""
        reason = self.frozen_reason(victim)
        assert reason is not None and words in reason, reason
        alerts = self.hot.take_alerts()
        assert any(
            a["account"] == victim.id and a["kind"] == "account_frozen" and words in a["message"]
            for a in alerts
        ), alerts
        needle = f"account {victim.id} frozen by cold HSM"
        wait_until(
            lambda: any(needle in m["text"] for m in self.control_inbox(OPERATOR_NUMBER)),
            30.0,
            f"the operator's SMS about account {victim.id}",
        )

    def control_inbox(self, number: str) -> list[dict[str, Any]]:
        return self.pair.control.inbox(number)

    def hot_signed(self, prefix: str) -> list[str]:
        """user_tx_nos the hot HSM's audit log shows it signed, among those with `prefix`."""
        return [
            e["user_tx_no"]
            for e in self.pair.audit()
            if e["event"] == "sign_send" and str(e.get("user_tx_no", "")).startswith(prefix)
        ]


def split_psbt(
    wallet: HotWallet,
    coins: list[Coin],
    stated: list[int],
    payments: list[tuple[str, int]],
    change: tuple[int, int],
    *,
    prev_txs: list[bool],
) -> Psbt:
    """A send whose inputs state `stated` amounts (not the coins' true values), with each
    input's funding transaction attached where `prev_txs` says so."""
    lied = [
        Coin(c.txid, c.vout, amount, c.chain, c.index)
        for c, amount in zip(coins, stated, strict=True)
    ]
    psbt = build_send_psbt(wallet, lied, payments, change=change)
    for n, (c, attach) in enumerate(zip(coins, prev_txs, strict=True)):
        if attach and c.prev_tx is not None:
            _attach_unchecked(psbt, n, c.prev_tx)
    return psbt


def _attach_unchecked(psbt: Psbt, n: int, raw: bytes) -> None:
    """Attach a funding transaction without `Psbt.set_prev_tx`'s check (an attacker's PSBT)."""
    psbt._p.inputs[n].non_witness_utxo = Transaction.parse(raw)


def change_output(wallet: HotWallet, index: int, value: int) -> PsbtOutput:
    return PsbtOutput(
        wallet.script_pubkey(index, CHANGE),
        value,
        wallet.origins(index, CHANGE),
        wallet.witness_script(index, CHANGE),
    )


def fresh_tag() -> str:
    return os.urandom(4).hex()
