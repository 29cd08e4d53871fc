"""The cold HSM's co-sign pieces that stand alone, without a process or a link: the signing
node (the private account key derived without public keys), `sign_inputs` over it, the payments
rebuilt from a packed request (used without decoding the addresses again) and the policy text
parsed once per text.

Each is checked against the slower general path it replaces: `ExtendedKey` derivation, the
parse of the rebuilt `outs` text, `SpendingPolicy.from_text`.
"""

from __future__ import annotations

import hashlib

import pytest

from cc_common.spending_policy import DEFAULT_POLICY, PolicyFormatError, SpendingPolicy
from hsm_cold import accounts, cosign
from hsm_cold.cosign import CosignRequest, InputRef
from hsm_cold.errors import BadRequest, PrevTxRequired
from hsm_cold.policy import policy_of
from wallet_core import signatures
from wallet_core.addresses import script_to_address
from wallet_core.bip32 import HARDENED, ExtendedKey, PrivateNode
from wallet_core.chaincloud import parse_outs_with_scripts
from wallet_core.errors import DerivationError, WalletError
from wallet_core.networks import Network
from wallet_core.packedtx import pack_tx
from wallet_core.rawtx import TxIn, TxOut, parse_unsigned_tx, serialize_unsigned
from wallet_core.script import (
    p2pkh_script,
    p2sh_script,
    p2wpkh_script,
    p2wsh_script,
)
from wallet_core.secp import pubkey_from_privkey
from wallet_core.sighash import bip143_sighash
from wallet_core.wallets import CHANGE, RECEIVE, FixedKey, HotWallet

NET = Network.REGTEST


def _root(tag: str) -> ExtendedKey:
    return ExtendedKey.from_seed(hashlib.sha256(tag.encode()).digest(), NET)


def _wallet(cold_root: ExtendedKey) -> HotWallet:
    hot = FixedKey(pubkey_from_privkey(hashlib.sha256(b"hot").digest()))
    return accounts.hot_wallet(
        accounts.AccountFacts(
            account=1,
            network=NET,
            hot_pubkey=hot.public_key,
            vdevice_identity=hot.public_key,
            settlement_descriptor="",
            recovery_xpub=accounts.cosigner_key(_root("recovery"), NET).xpub.serialize(),
            recovery_fingerprint=_root("recovery").fingerprint,
        ),
        accounts.cosigner_key(cold_root, NET),
    )


def _request(inputs: list[InputRef]) -> CosignRequest:
    vin = [TxIn(bytes([n + 1]) * 32, n, 0xFFFFFFFD) for n in range(len(inputs))]
    raw = serialize_unsigned(2, vin, [TxOut(10_000, p2wpkh_script(bytes(20)))], 0)
    return CosignRequest(
        account=1,
        tx=parse_unsigned_tx(raw),
        inputs=tuple(inputs),
        change=(),
        user_tx_no="u1",
        is_dynamic_fee=0,
        coin_code="BTC",
        outs="",
        vc_code="",
        c_id="c",
    )


# -- the signing node ---------------------------------------------------------------------------


def test_signing_node_is_the_extended_key_derivation() -> None:
    root = _root("cold")
    node = accounts.cosigner_signing_node(root, NET)
    full = accounts.cosigner_node(root, NET)
    assert (node.key, node.chain_code) == (full.private_key, full.chain_code)
    for chain, index in ((RECEIVE, 0), (CHANGE, 7), (CHANGE, HARDENED - 1)):
        want = full.child(chain).child(index)
        chain_node = node.child(chain, full.public_key)
        got = chain_node.child(index, full.child(chain).public_key)
        assert (got.key, got.chain_code) == (want.private_key, want.chain_code)
    hardened = node.child(HARDENED + 5)
    assert hardened.key == full.child(HARDENED + 5).private_key


def test_signing_node_needs_the_parent_key_for_a_normal_child() -> None:
    node = accounts.cosigner_signing_node(_root("cold"), NET)
    with pytest.raises(DerivationError):
        node.child(0)


def test_sign_inputs_signs_for_the_wallets_cosigner_key() -> None:
    root = _root("cold")
    wallet = _wallet(root)
    req = _request([InputRef(50_000, RECEIVE, 3), InputRef(60_000, CHANGE, 9)])
    scripts = cosign.witness_scripts(req, wallet)
    sigs = cosign.sign_inputs(req, scripts, accounts.cosigner_signing_node(root, NET), wallet)
    assert len(sigs) == 2
    for n, (ref, raw) in enumerate(zip(req.inputs, sigs, strict=True)):
        r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        digest = bip143_sighash(req.tx, n, scripts[n], ref.amount)
        pubkey = wallet.pubkeys(ref.index, ref.chain)[cosign.COSIGNER]
        assert signatures.verify_digest(pubkey, digest, signatures.der_encode(r, s))


def test_sign_inputs_withholds_for_a_wallet_of_another_seed() -> None:
    req = _request([InputRef(50_000, RECEIVE, 3)])
    other = _wallet(_root("other"))
    scripts = cosign.witness_scripts(req, other)
    node = accounts.cosigner_signing_node(_root("cold"), NET)
    with pytest.raises(WalletError, match="not the wallet's cosigner key"):
        cosign.sign_inputs(req, scripts, node, other)


def test_sign_inputs_withholds_when_the_key_does_not_verify() -> None:
    """Same chain code, another key: the child signs, its signature does not verify against
    the wallet's key, and nothing is returned."""
    root = _root("cold")
    wallet = _wallet(root)
    good = accounts.cosigner_signing_node(root, NET)
    forged = PrivateNode(hashlib.sha256(b"not the key").digest(), good.chain_code)
    req = _request([InputRef(50_000, RECEIVE, 3)])
    with pytest.raises(WalletError, match="does not verify"):
        cosign.sign_inputs(req, cosign.witness_scripts(req, wallet), forged, wallet)


# -- payments rebuilt from a packed request -----------------------------------------------------

SCRIPTS = [
    p2pkh_script(bytes(range(20))),
    p2sh_script(bytes(range(1, 21))),
    p2wpkh_script(bytes(range(2, 22))),
    p2wsh_script(bytes(range(32))),
    bytes([0x51, 0x20]) + bytes(range(3, 35)),  # P2TR
]


@pytest.mark.parametrize("script", SCRIPTS, ids=["p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr"])
def test_rebuilt_payments_are_what_parsing_the_text_gives(script: bytes) -> None:
    change_script = p2wsh_script(bytes(32))
    vout = [TxOut(1_000, script), TxOut(5_000, change_script), TxOut(2_100_000_000_000_000, script)]
    text, payments = cosign.rebuilt_payments(vout, {1}, NET)
    assert text == cosign.rebuilt_outs(vout, {1}, NET)
    assert (
        text
        == f"{script_to_address(script, NET)},1000;{script_to_address(script, NET)},{vout[2].value}"
    )
    assert payments is not None
    assert payments == parse_outs_with_scripts(text, NET)
    assert [s for _, s in payments] == [script, script]


def test_rebuilt_payments_leave_to_the_parse_what_it_may_refuse() -> None:
    """A zero value (which `parse_outs` refuses) or a future witness version: no shortcut, so
    the request meets the parse's own refusal."""
    for vout in (
        [TxOut(0, SCRIPTS[2])],
        [TxOut(1_000, bytes([0x52, 0x20]) + bytes(32))],  # witness v2
    ):
        text, payments = cosign.rebuilt_payments(vout, set(), NET)
        assert payments is None
        assert text


def test_rebuilt_payments_refuse_an_output_without_address() -> None:
    with pytest.raises(BadRequest, match="has no address"):
        cosign.rebuilt_payments([TxOut(1_000, b"\x6a\x00")], set(), NET)


# -- the policy text ----------------------------------------------------------------------------


def test_policy_text_parsed_once_per_text() -> None:
    text = DEFAULT_POLICY.to_text()
    first = policy_of(text)
    assert first == SpendingPolicy.from_text(text)
    assert policy_of(text) is first
    with pytest.raises(PolicyFormatError):
        policy_of("not a policy")
    with pytest.raises(PolicyFormatError):  # not remembered as anything
        policy_of("not a policy")


# -- a packed request, unpacked once ------------------------------------------------------------


def _packed(wallet: HotWallet, payee: bytes) -> dict[str, object]:
    vin = [TxIn(bytes([7]) * 32, 1, 0xFFFFFFFD)]
    vout = [TxOut(40_000, payee), TxOut(9_000, b"")]  # the change's script left out
    body = serialize_unsigned(2, vin, vout, 0)[4:-4]  # without version and nLockTime
    return {
        "p": [1, body, [[50_000, CHANGE, 4]], [[1, 6]], "u7", 0, "sig", "c", None, []],
    }


@pytest.mark.parametrize("payee", SCRIPTS[2:4], ids=["p2wpkh", "p2wsh"])
def test_unpacked_request_is_the_parse_of_its_long_form(payee: bytes) -> None:
    wallet = _wallet(_root("cold"))
    unpacked = cosign.unpack_payments(_packed(wallet, payee), wallet)
    req = cosign.decode_request(unpacked.payload, unpacked.tx)
    assert req == cosign.decode_request(unpacked.payload)  # parsed from its bytes
    assert req.tx.vout[1].script_pubkey == wallet.script_pubkey(6, CHANGE)
    assert unpacked.payments == cosign.signed_payments(req, NET)
    assert unpacked.payload == cosign.unpack(_packed(wallet, payee), wallet)


def test_a_parsed_transaction_of_other_bytes_is_not_used() -> None:
    wallet = _wallet(_root("cold"))
    unpacked = cosign.unpack_payments(_packed(wallet, SCRIPTS[2]), wallet)
    other = _request([InputRef(1, RECEIVE, 0)]).tx
    req = cosign.decode_request(unpacked.payload, other)
    assert req.tx == unpacked.tx


# -- the short form ------------------------------------------------------------------------------


def _short(prefixed: bool = True) -> dict[str, object]:
    vin = [TxIn(bytes(range(32)), 1, 0xFFFFFFFD)]
    vout = [TxOut(10_000, SCRIPTS[0]), TxOut(80_000, b"")]
    body = pack_tx(vin, vout, frozenset({0}) if prefixed else frozenset())
    return {"q": [3, body, [[100_000, CHANGE, 4]], [[1, 4]], "u1", 0, bytes(65), "c", None, []]}


def test_a_prefix_resolves_to_exactly_one_verified_output_or_to_730() -> None:
    """The txid comes only from the cold HSM's records, and only when exactly one verified
    output matches: none (never verified, or forgotten once spent) or two (a collision) is
    `previous transaction required`, naming the input, and nothing is built."""
    txid = bytes(range(32)).hex()
    seen: list[tuple[str, int]] = []

    def like(found: list[tuple[str, int, bytes]]) -> cosign.OutputsLike:
        def lookup(prefix: str, vout: int) -> list[tuple[str, int, bytes]]:
            seen.append((prefix, vout))
            return found

        return lookup

    packed = cosign.expand_short(_short(), like([(txid, 100_000, b"")]))
    assert seen == [(txid[:16], 1)]
    full = cosign.expand_short(_short(prefixed=False), like([]))  # no lookup needed
    assert packed == full and seen == [(txid[:16], 1)]
    assert (
        parse_unsigned_tx(b"\x02\x00\x00\x00" + packed["p"][1] + bytes(4)).vin[0].txid.hex() == txid
    )
    for found, what in (
        ([], "no verified output"),
        ([(txid, 1, b""), (txid, 2, b"")], "more than"),
    ):
        with pytest.raises(PrevTxRequired, match=f"input 0 names {what}"):
            cosign.expand_short(_short(), like(found))
