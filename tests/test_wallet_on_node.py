"""The wallet core's 2-of-3 hot-wallet spends, judged by the independent regtest node.

wallet_core builds the PSBT, two different signers sign it (one of them an external signer
that answers raw, high-S r||s, as a PKCS#11 token does half of the time), wallet_core
finalizes and extracts; the node (python-bitcointx's interpreter, no code shared with
wallet_core) must accept and mine the good spend, and refuse each tampered variant with
Bitcoin Core's error code and message. The variants are made from the wallet's own final
witness, so what is refused is exactly what the wallet would have broadcast, altered once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bitcointx.core import CMutableTransaction, CTransaction, CTxOut

from custody.chain import BitcoinRPC, TxRejected
from tests.node_fixtures import (
    Key,
    NodeProcess,
    hex_of,
    running_node,
    to_high_s,
    txid_hex,
    with_witness,
)
from wallet_core.addresses import address_to_script
from wallet_core.bip32 import ExtendedKey
from wallet_core.networks import Network
from wallet_core.psbt import Psbt, PsbtInput, PsbtOutput
from wallet_core.signatures import SoftwareSigner
from wallet_core.wallets import AccountKey, FixedKey, HotWallet, bip48_account_path

NET = Network.REGTEST
COIN = 100_000_000
SUBSIDY = 50 * COIN
FEE = 20_000
EVAL_FALSE = (
    "mandatory-script-verify-flag-failed (Script evaluated without error but finished with a "
    "false/empty top stack element)"
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    yield from running_node(tmp_path_factory, "wallet-on-node")


@pytest.fixture(scope="module")
def rpc(node: NodeProcess) -> BitcoinRPC:
    return node.rpc()


class Wallet:
    """A deployed-shape hot wallet (fixed hot key + two derived cosigners) with its signers."""

    def __init__(self) -> None:
        self.hot_signer = SoftwareSigner(b"\x11" * 32, high_s=True)  # like CKM_ECDSA's raw r||s
        self.cold_root = ExtendedKey.from_seed(b"\x22" * 32, NET)
        recovery_root = ExtendedKey.from_seed(b"\x33" * 32, NET)
        path = bip48_account_path(NET, 0)
        self.wallet = HotWallet(
            (
                FixedKey(self.hot_signer.public_key),
                AccountKey.from_root(self.cold_root, path),
                AccountKey.from_root(recovery_root, path),
            ),
            NET,
        )

    def spend_psbt(self, coin: tuple[str, int, int], index: int, to: bytes, value: int) -> Psbt:
        txid, vout, amount = coin
        change = amount - value - FEE
        return Psbt.create(
            [
                PsbtInput(
                    txid,
                    vout,
                    amount,
                    self.wallet.script_pubkey(index),
                    self.wallet.witness_script(index),
                    self.wallet.origins(index),
                )
            ],
            [
                PsbtOutput(to, value),
                PsbtOutput(
                    self.wallet.script_pubkey(index, 1),
                    change,
                    self.wallet.origins(index, 1),
                    self.wallet.witness_script(index, 1),
                ),
            ],
        )

    def sign_by_two(self, psbt: Psbt) -> bytes:
        """The hot signer and the cold root sign separate copies; combine, finalize, extract."""
        hot_copy, cold_copy = psbt.copy(), psbt.copy()
        assert hot_copy.sign(self.hot_signer, self.hot_signer.public_key) == 1
        assert cold_copy.sign_with_root(self.cold_root) == 1
        final = hot_copy.combine(cold_copy)
        final.finalize()
        return final.extract()


@pytest.fixture(scope="module")
def hot() -> Wallet:
    return Wallet()


def fund(rpc: BitcoinRPC, hot: Wallet, index: int, *, mature: bool = True) -> tuple[str, int, int]:
    """Mine a coinbase to hot address `index` (and 100 more blocks when it must be spendable)."""
    [block] = rpc.generate_to_address(1, hot.wallet.address(index))
    coinbase = rpc.get_block(block, 1)["tx"][0]
    if mature:
        rpc.generate_to_address(100, Key.from_seed("miner").address)
    return coinbase, 0, SUBSIDY


def rejected(rpc: BitcoinRPC, raw: bytes | str) -> tuple[int, str]:
    with pytest.raises(TxRejected) as info:
        rpc.send_raw_transaction(raw if isinstance(raw, str) else raw.hex())
    return info.value.rpc_code, info.value.reason


def restack(raw: bytes, stack: list[bytes]) -> str:
    return hex_of(with_witness(CTransaction.deserialize(raw), [stack]))


def test_two_signers_spend_is_accepted_and_mined(rpc: BitcoinRPC, hot: Wallet) -> None:
    coin = fund(rpc, hot, 3)
    dest = Key.from_seed("merchant-dest")
    raw = hot.sign_by_two(hot.spend_psbt(coin, 3, bytes(dest.script), 7 * COIN))
    txid = rpc.send_raw_transaction(raw.hex())
    assert txid == txid_hex(CTransaction.deserialize(raw))
    [block] = rpc.generate_to_address(1, Key.from_seed("miner").address)
    assert txid in rpc.get_block(block, 1)["tx"]
    mined = rpc.get_raw_transaction(txid, True, block)
    assert mined["confirmations"] == 1
    paid = {o["scriptPubKey"]["address"]: o["value"] for o in mined["vout"]}
    assert paid[dest.address] == 7
    change_addr = hot.wallet.address(3, 1)
    assert round(paid[change_addr] * COIN) == SUBSIDY - 7 * COIN - FEE


def test_every_tampered_variant_is_refused_with_cores_reason(rpc: BitcoinRPC, hot: Wallet) -> None:
    coin = fund(rpc, hot, 4)
    to = bytes(Key.from_seed("merchant-dest").script)
    raw = hot.sign_by_two(hot.spend_psbt(coin, 4, to, COIN))
    stack = list(CTransaction.deserialize(raw).wit.vtxinwit[0].scriptWitness.stack)
    dummy, sig_a, sig_b, ws = stack
    assert dummy == b"" and ws == hot.wallet.witness_script(4)

    flipped = bytearray(sig_a)
    flipped[12] ^= 0x01
    assert rejected(rpc, restack(raw, [dummy, bytes(flipped), sig_b, ws])) == (-26, EVAL_FALSE)
    assert rejected(rpc, restack(raw, [dummy, sig_a, ws])) == (
        -26,
        "mandatory-script-verify-flag-failed (Operation not valid with the current stack size)",
    )
    assert rejected(rpc, restack(raw, [dummy, sig_b, sig_a, ws])) == (-26, EVAL_FALSE)
    high = to_high_s(sig_a[:-1]) + sig_a[-1:]
    assert rejected(rpc, restack(raw, [dummy, high, sig_b, ws])) == (
        -26,
        "non-mandatory-script-verify-flag-failed "
        "(Non-canonical signature: S value is unnecessarily high)",
    )
    changed = CMutableTransaction.from_tx(CTransaction.deserialize(raw))
    changed.vout[0] = CTxOut(changed.vout[0].nValue - 1, changed.vout[0].scriptPubKey)
    assert rejected(rpc, hex_of(CTransaction.from_tx(changed))) == (-26, EVAL_FALSE)

    # the untouched spend is good; once mined, another spend of the same coin is refused
    rpc.send_raw_transaction(raw.hex())
    rpc.generate_to_address(1, Key.from_seed("miner").address)
    other = hot.sign_by_two(hot.spend_psbt(coin, 4, to, 2 * COIN))
    assert rejected(rpc, other) == (-25, "bad-txns-inputs-missingorspent")


def test_immature_coinbase_spend_is_refused(rpc: BitcoinRPC, hot: Wallet) -> None:
    coin = fund(rpc, hot, 5, mature=False)
    raw = hot.sign_by_two(hot.spend_psbt(coin, 5, bytes(Key.from_seed("x").script), COIN))
    assert rejected(rpc, raw) == (
        -26,
        "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth 1",
    )


def test_wallet_address_is_what_the_node_pays(rpc: BitcoinRPC, hot: Wallet) -> None:
    """The node decodes the wallet's address to the wallet's own script (bcrt1, P2WSH)."""
    address = hot.wallet.address(9)
    info = rpc.call("validateaddress", address)
    assert info["isvalid"] and info["iswitness"] and info["witness_version"] == 0
    assert bytes.fromhex(info["scriptPubKey"]) == address_to_script(address, NET)
