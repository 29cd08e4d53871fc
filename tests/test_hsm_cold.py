"""The cold HSM as a real process on a pseudo-terminal, with the test playing the hot HSM.

`hsm-cold init` makes its SoftHSM token (in its own process), `hsm-cold serve` answers over a
`SerialLine`; the test holds the other end with a `LinkClient` keyed from the pairing file. Every
account, PSBT and V-device signature is built here with wallet_core, independently of the cold
code: provisioning proofs and batch proofs are verified against the pinned identity key, co-sign
signatures against keys the test derives from the returned xpubs (and, with a software hot key,
the finished 2-of-3 spend through python-bitcointx's script interpreter), and each refusal by
its own code and message. The two-HSM tests with the regtest node are in tests/hsm_pair/.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from bitcointx.core import CTransaction

from cc_common.link import LinkAuthError, codec
from firmware_sim.node.validation import Coin as NodeCoin
from firmware_sim.node.validation import verify_scripts
from hsm_cold.cosign import decode_tx
from hsm_cold.errors import BadRequest, ColdErrorCode
from tests.cold_rig import (
    FEE,
    MAX_FEE_RATE,
    MAX_FEE_SAT,
    NET,
    PHONES,
    SETTLEMENT,
    TIMEOUT,
    Account,
    _key,
    check_cold_signatures,
    frozen_for,
    provision,
    refused,
    unsigned_tx,
)
from tests.harness import Deployment
from tests.hsm_fixtures import Coin, ColdHsm, VDevice, build_send_psbt, funded_coin, random_address
from wallet_core import messages, signatures
from wallet_core.addresses import address_to_script
from wallet_core.bip32 import ExtendedKey, parse_xpub
from wallet_core.chaincloud import batch_content, batch_statement
from wallet_core.descriptors import parse_descriptor
from wallet_core.keys import master_key
from wallet_core.packedtx import pack_tx
from wallet_core.prevtx import parse_prev_tx
from wallet_core.rawtx import TxOut, parse_unsigned_tx, serialize_unsigned
from wallet_core.wallets import (
    CHANGE,
    RECEIVE,
    AccountKey,
    FixedKey,
    HotWallet,
    batch_addresses,
    bip48_account_path,
)

# -- pairing, provisioning, proofs ---------------------------------------------------------------


def test_hello_gives_the_paired_identity(cold: ColdHsm, link: Any) -> None:
    hello = link.call("hello", {}, timeout=TIMEOUT)
    assert hello["identity_pubkey"] == cold.identity
    assert hello["network"] == "regtest"


def test_init_again_keeps_keys_and_writes_no_pairing_file(cold: ColdHsm) -> None:
    out = cold.init()
    assert cold.identity.hex() in out
    assert "already paired" in out
    assert not cold.section.path("pairing_file").exists()
    for secret in ("so_pin", "user_pin"):
        assert cold.section.str(secret) not in out


def test_provision_answers_xpubs_with_a_proof_and_is_idempotent(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 1, register=False)
    a = acct.answer
    for key in ("receiving_xpub", "cosigner_xpub", "recovery_xpub"):
        assert not parse_xpub(a[key]).is_private
    statement = (
        f"CC:PROVISION:1:regtest:{a['receiving_xpub']}:{a['cosigner_xpub']}:"
        f"{a['recovery_xpub']}:{acct.hot_pub.hex()}"
    )
    assert messages.verify_message_pubkey(cold.identity, statement, a["proof"])
    acct.wallet.address(0)  # the three keys make a 2-of-3

    again = provision(cold, link, 1, register=False, confirm=False).answer
    assert {k: v for k, v in again.items() if k != "proof"} == {
        k: v for k, v in a.items() if k != "proof"
    }
    assert messages.verify_message_pubkey(cold.identity, statement, again["proof"])

    other = {
        "account": 1,
        "network": "regtest",
        "hot_pubkey": _key("someone else").public_key.format(compressed=True).hex(),
        "vdevice_identity": acct.vdevice.identity_hex,
        "settlement_descriptor": SETTLEMENT.to_string(),
        **PHONES,
    }
    err = refused(link, "provision_account", other)
    assert err.code == ColdErrorCode.ACCOUNT_EXISTS and "other parameters" in err.message
    err = refused(link, "provision_account", {**other, "account": 2, "network": "mainnet"})
    assert err.code == ColdErrorCode.WRONG_NETWORK and "not mainnet" in err.message
    # the phones are pinned too: another owner phone is another account
    same = {**other, "hot_pubkey": acct.hot_pub.hex()}
    err = refused(link, "provision_account", {**same, "owner_phone": "+15550000999"})
    assert err.code == ColdErrorCode.ACCOUNT_EXISTS
    err = refused(link, "provision_account", {**same, "account": 2, "vdevice_phone": "555-0100"})
    assert err.code == ColdErrorCode.BAD_REQUEST and "E.164" in err.message


def test_recovery_key_is_exported_once_to_paper_only(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 3, register=False, confirm=False)
    export = cold.section.path("export_dir") / "account-3-recovery.txt"
    assert export.stat().st_mode & 0o777 == 0o600
    fields = dict(
        line.split(": ", 1) for line in export.read_text().splitlines() if not line.startswith("#")
    )
    root = ExtendedKey.parse(fields["master_xprv"])
    assert root.is_private
    assert (
        root.derive(bip48_account_path(NET, 0)).to_public().serialize()
        == (acct.answer["recovery_xpub"])
    )
    assert root.fingerprint.hex() == acct.answer["recovery_fingerprint"]
    receive = parse_descriptor(fields["hot_wallet_receive"])
    assert receive.script_pubkey(5) == acct.wallet.script_pubkey(5, RECEIVE)

    # nowhere else: not in the cold state, its logs, nor its token directory
    secret_forms = [
        fields["master_xprv"].encode(),
        root.private_key,
        root.private_key.hex().encode(),
    ]
    for base in (
        cold.section.path("state_dir"),
        cold.d.log_dir,
        cold.section.path("token_dir"),
    ):
        for path in base.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(s in data for s in secret_forms), path


def test_seeds_at_rest_are_sealed(cold: ColdHsm, link: Any) -> None:
    """No file of the state dir holds an xprv; no 32 bytes of a sealed blob are a seed."""
    acct = provision(cold, link, 4, register=False, confirm=False)
    state = cold.section.path("state_dir")
    for path in list(state.rglob("*")) + list(cold.d.log_dir.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            assert b"tprv" not in data and b"xprv" not in data, path
    db = sqlite3.connect(state / "cold.db")
    try:
        blobs = db.execute(
            "SELECT receiving_seed, cosigner_seed FROM accounts WHERE account = 4"
        ).fetchone()
    finally:
        db.close()
    fingerprints = {acct.answer["receiving_fingerprint"], acct.answer["cosigner_fingerprint"]}
    db_bytes = (state / "cold.db").read_bytes()
    for raw in blobs:
        blob = bytes(raw)
        assert len(blob) > 32  # version, nonce, ciphertext, tag
        for start in range(len(blob) - 31):
            window = blob[start : start + 32]
            assert master_key(window, NET).fingerprint.hex() not in fingerprints
            assert window.hex().encode() not in db_bytes


@pytest.mark.parametrize("kind", ["cold", "hot"])
def test_prove_batch_signs_the_addresses_the_test_derives(
    cold: ColdHsm, link: Any, kind: str
) -> None:
    acct = provision(cold, link, 5, register=False)
    wallet = acct.cold_wallet if kind == "cold" else acct.wallet
    answer = link.call("prove_batch", {"account": 5, "wallet": kind, "batch_no": 2}, timeout=60)
    addresses = [a for _, a in batch_addresses(wallet, 2)]
    assert len(addresses) == 1000
    content = batch_statement(kind, 5, 2, addresses)
    assert messages.recover_pubkey(content, answer["signature"]) == cold.identity
    assert messages.verify_message_pubkey(cold.identity, content, answer["signature"])
    # bound: the same addresses as another batch number, wallet or account do not verify
    for other in (
        batch_statement(kind, 5, 3, addresses),
        batch_statement("hot" if kind == "cold" else "cold", 5, 2, addresses),
        batch_statement(kind, 6, 2, addresses),
        batch_content(addresses),
    ):
        assert not messages.verify_message_pubkey(cold.identity, other, answer["signature"])


def test_register_channel_needs_the_vdevice_identity(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 6, register=False)
    impostor = VDevice(seed="impostor")
    forged = impostor.channel_registration(6, "c9")
    err = refused(link, "register_channel", forged)
    assert err.code == ColdErrorCode.BAD_IDENTITY_SIGNATURE
    assert "V-device identity key" in err.message
    link.call("register_channel", acct.vdevice.channel_registration(6, "c9"), timeout=TIMEOUT)


def alter_recovery_xpub(cold: ColdHsm, account: int, seed: bytes) -> None:
    """An attacker's recovery xpub written over the account's in the cold state."""
    xpub = ExtendedKey.from_seed(seed, NET).derive(bip48_account_path(NET, 0)).to_public()
    db = sqlite3.connect(cold.section.path("state_dir") / "cold.db")
    try:
        sql = "UPDATE accounts SET recovery_xpub = ? WHERE account = ?"
        db.execute(sql, (xpub.serialize(), account))
        db.commit()
    finally:
        db.close()


def test_altered_account_facts_make_the_seed_unopenable(cold: ColdHsm, link: Any) -> None:
    """The seeds' AAD binds the account's public facts: editing one in the state is refused."""
    provision(cold, link, 7, register=False)
    alter_recovery_xpub(cold, 7, b"attacker recovery seed")
    err = refused(link, "prove_batch", {"account": 7, "wallet": "hot", "batch_no": 0})
    assert err.code == ColdErrorCode.STATE_DAMAGED and "state was altered" in err.message


def test_altered_facts_are_refused_after_the_wallet_was_cached(cold: ColdHsm, link: Any) -> None:
    """The cold side keeps each account's public hot wallet between commands: an edit of the
    state afterwards is still refused (the cache is keyed by the record) and signs nothing."""
    acct = provision(cold, link, 77)
    payload, _ = acct.send([(random_address(), 50_000)], "tx-77-1")
    link.call("cosign", payload, timeout=TIMEOUT)  # the wallet is now cached
    alter_recovery_xpub(cold, 77, b"attacker recovery seed 77")
    payload, _ = acct.send([(random_address(), 50_000)], "tx-77-2")
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.STATE_DAMAGED and "state was altered" in err.message
    err = refused(link, "prove_batch", {"account": 77, "wallet": "hot", "batch_no": 0})
    assert err.code == ColdErrorCode.STATE_DAMAGED


def test_a_proven_batch_is_refused_again_after_the_facts_were_altered(
    cold: ColdHsm, link: Any
) -> None:
    """The cold side keeps the addresses of the batches it derived (the V-device's SMS check
    follows each proof): proving one again after an edit of the state is still refused."""
    acct = provision(cold, link, 78, register=False)
    for kind, wallet in (("cold", acct.cold_wallet), ("hot", acct.wallet)):
        content = batch_statement(kind, 78, 0, [a for _, a in batch_addresses(wallet, 0)])
        params = {"account": 78, "wallet": kind, "batch_no": 0}
        for _ in range(2):  # derived, then kept
            sig = link.call("prove_batch", params, timeout=60)["signature"]
            assert messages.verify_message_pubkey(cold.identity, content, sig)
    alter_recovery_xpub(cold, 78, b"attacker recovery seed 78")
    for kind in ("cold", "hot"):
        err = refused(link, "prove_batch", {"account": 78, "wallet": kind, "batch_no": 0})
        assert err.code == ColdErrorCode.STATE_DAMAGED and "state was altered" in err.message


# -- co-signing ----------------------------------------------------------------------------------


def test_valid_cosign_signs_a_spend_the_script_interpreter_accepts(
    cold: ColdHsm, link: Any
) -> None:
    acct = provision(cold, link, 10)
    coins = [acct.coin(600_000), acct.coin(500_000, chain=CHANGE, index=7)]
    payments = [(random_address(), 300_000), (random_address(), 200_000)]
    payload, psbt = acct.send(payments, "tx-10-1", coins=coins, change=(3, 590_000))
    sigs = link.call("cosign", payload, timeout=TIMEOUT)["signatures"]
    check_cold_signatures(acct, psbt, coins, sigs)

    # a lost answer: the same request again gets the same signatures
    assert link.call("cosign", payload, timeout=TIMEOUT)["signatures"] == sigs

    # with the hot signature the spend is complete and valid
    for i, (coin, sig) in enumerate(zip(coins, sigs, strict=True)):
        psbt.add_signature(i, acct.wallet.pubkeys(coin.index, coin.chain)[1], sig)
        psbt.add_signature(
            i, acct.hot_pub, signatures.sign_digest(acct.hot.secret, psbt.sighash(i))
        )
    psbt.finalize()
    tx = CTransaction.deserialize(psbt.extract())
    spent = [
        NodeCoin(c.value, acct.wallet.script_pubkey(c.index, c.chain), 1, False) for c in coins
    ]
    verify_scripts(tx, spent, policy=True)


def test_refusal_of_one_satoshi_more_in_an_output(cold: ColdHsm, link: Any) -> None:
    """Not what the V-device signed: refused, and the account is frozen (reference section 3)."""
    acct = provision(cold, link, 11)
    pay = random_address()
    payload, _ = acct.send([(pay, 100_001)], "t1", signed_payments=[(pay, 100_000)])
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.OUTPUT_MISMATCH
    assert "pays 100001 sat" in err.message and "says 100000 sat" in err.message
    assert "account 11 frozen" in err.message
    reason = frozen_for(link, 11)
    assert reason is not None and "output mismatch" in reason and "'t1'" in reason
    # frozen: even the honest request is refused until the console unfreezes
    payload, psbt = acct.send([(pay, 100_000)], "t1")
    assert refused(link, "cosign", payload).code == ColdErrorCode.ACCOUNT_FROZEN


def packed(payload: dict[str, Any], *, outs: bool = False, keep_change: bool = False) -> dict:
    """The packed form of a long-form request, built here byte by byte (docs/hsm-pair.md)."""
    tx = parse_unsigned_tx(payload["tx"])
    blank = set() if keep_change else {vout for vout, _ in payload["change"]}
    vout = [TxOut(o.value, b"") if n in blank else o for n, o in enumerate(tx.vout)]
    body = serialize_unsigned(tx.version, tx.vin, vout, tx.locktime)[4:-4]
    fields = ("inputs", "change", "user_tx_no", "is_dynamic_fee", "vc_code", "c_id")
    return {
        "p": [
            payload["account"],
            body,
            *(payload[k] for k in fields),
            payload["outs"] if outs else None,
            payload.get("prev_txs", []),
        ]
    }


def test_packed_request_signs_what_the_long_form_signs(cold: ColdHsm, link: Any) -> None:
    """The cold HSM fills in the change script, version, nLockTime and `outs` itself: the
    packed request gets the long form's signatures (one digest), at ~60% of its bytes."""
    acct = provision(cold, link, 150)
    coins = [acct.coin(600_000)]
    payload, psbt = acct.send([(random_address(), 300_000)], "p1", coins=coins)
    small = packed(payload)
    assert len(codec.encode(small)) < len(codec.encode(payload)) * 0.7
    sigs = link.call("cosign", small, timeout=TIMEOUT)["signatures"]
    check_cold_signatures(acct, psbt, coins, sigs)
    assert link.call("cosign", payload, timeout=TIMEOUT)["signatures"] == sigs
    assert link.call("cosign", packed(payload, outs=True), timeout=TIMEOUT)["signatures"] == sigs


def test_packed_request_with_a_tampered_output_freezes(cold: ColdHsm, link: Any) -> None:
    """The `outs` the cold HSM writes out from the outputs is not what the V-device signed:
    the forged-`vc_code` refusal and freeze, nothing signed."""
    acct = provision(cold, link, 151)
    pay = random_address()
    payload, _ = acct.send([(pay, 100_001)], "p1", signed_payments=[(pay, 100_000)])
    err = refused(link, "cosign", packed(payload))
    assert err.code == ColdErrorCode.FORGED_VC_CODE and "account 151 frozen" in err.message
    assert frozen_for(link, 151) is not None


def test_packed_request_names_change_never_its_script(cold: ColdHsm, link: Any) -> None:
    """A packed request that carries a change script (which the cold HSM would overwrite) is
    malformed: refused, nothing frozen."""
    acct = provision(cold, link, 152)
    payload, _ = acct.send([(random_address(), 100_000)], "p1")
    err = refused(link, "cosign", packed(payload, keep_change=True))
    assert err.code == ColdErrorCode.BAD_REQUEST and "leaves its script out" in err.message
    assert frozen_for(link, 152) is None
    bad = packed(payload)
    bad["p"] = bad["p"][:-1]
    assert refused(link, "cosign", bad).code == ColdErrorCode.BAD_REQUEST


def short(payload: dict[str, Any], prefixed: frozenset[int] | None = None) -> dict:
    """The short form of a long-form request (docs/hsm-pair.md): the packed form's fields,
    the transaction by `wallet_core.packedtx` with the inputs in `prefixed` (all if None) by
    their txid's first 8 bytes."""
    fields = packed(payload)["p"]
    tx = parse_unsigned_tx(payload["tx"])
    blank = {vout for vout, _ in payload["change"]}
    vout = [TxOut(o.value, b"") if n in blank else o for n, o in enumerate(tx.vout)]
    by_prefix = frozenset(range(len(tx.vin))) if prefixed is None else prefixed
    return {"q": [fields[0], pack_tx(tx.vin, vout, by_prefix), *fields[2:]]}


def test_short_request_signs_what_the_long_form_signs(cold: ColdHsm, link: Any) -> None:
    """Verified inputs named by txid prefix, the transaction written short: the cold HSM
    fills in the txid from its own records and signs exactly what the long form gets (one
    digest), answering the signatures one after another. Once it signed the spend it forgets
    the outpoint: a retry in the short form is refused with 730 (nothing changed), the packed
    form gets the same signatures."""
    acct = provision(cold, link, 153)
    coins = [acct.coin(600_000), acct.coin(400_000)]
    pay = [(random_address(), 100_000)]
    payload, psbt = acct.send(pay, "s1", coins=coins, prev_txs=False)
    err = refused(link, "cosign", short(payload))  # never verified: 730, as the long form
    assert err.code == ColdErrorCode.PREV_TX_REQUIRED and "send it in full" in err.message
    link.call("learn_prev_tx", _whole(coins[0].prev_tx), timeout=TIMEOUT)
    # one input by prefix, the other by full txid with its funding transaction inline
    mixed = short({**payload, "prev_txs": [coins[1].prev_tx]}, frozenset({0}))
    answer = link.call("cosign", mixed, timeout=TIMEOUT)
    assert set(answer) == {"s"} and len(answer["s"]) == 128
    sigs = [answer["s"][:64], answer["s"][64:]]
    check_cold_signatures(acct, psbt, coins, sigs)
    assert link.call("cosign", packed(payload), timeout=TIMEOUT)["signatures"] == sigs
    assert refused(link, "cosign", short(payload)).code == ColdErrorCode.PREV_TX_REQUIRED
    assert len(codec.encode(short(payload))) < len(codec.encode(packed(payload))) - 50
    assert frozen_for(link, 153) is None


def _whole(raw: bytes | None) -> dict[str, Any]:
    assert raw is not None
    txid = parse_prev_tx(raw).txid
    return {"txid": txid, "offset": 0, "total": len(raw), "data": raw}


def test_short_request_with_a_lying_amount_freezes(cold: ColdHsm, link: Any) -> None:
    """The short form still states every amount: one that is not the verified amount of the
    outpoint named by prefix is refused and freezes, as in the long form (731)."""
    acct = provision(cold, link, 154)
    coin = acct.coin(600_000)
    link.call("learn_prev_tx", _whole(coin.prev_tx), timeout=TIMEOUT)
    payload, _ = acct.send([(random_address(), 100_000)], "s2", coins=[coin], prev_txs=False)
    lying = short(payload)
    lying["q"][2] = [[1, *lying["q"][2][0][1:]]]
    err = refused(link, "cosign", lying)
    assert err.code == ColdErrorCode.AMOUNT_MISMATCH and "account 154 frozen" in err.message


def test_malformed_short_requests_are_refused_and_change_nothing(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 155)
    coin = acct.coin(600_000)
    link.call("learn_prev_tx", _whole(coin.prev_tx), timeout=TIMEOUT)
    payload, _ = acct.send([(random_address(), 100_000)], "s3", coins=[coin], prev_txs=False)
    good = short(payload)
    for bad, why in (
        ({"q": good["q"][:-1]}, "a short request has 10 fields"),
        ({"q": [good["q"][0], good["q"][1] + b"\0", *good["q"][2:]]}, "1 trailing bytes"),
        ({"q": [good["q"][0], b"\x01\x10", *good["q"][2:]]}, "unknown flags"),
        ({"q": [good["q"][0], "text", *good["q"][2:]]}, "tx"),
    ):
        err = refused(link, "cosign", bad)
        assert err.code == ColdErrorCode.BAD_REQUEST and why in err.message, err.message
    assert frozen_for(link, 155) is None
    answer = link.call("cosign", good, timeout=TIMEOUT)  # nothing of them was kept
    assert len(answer["s"]) == 64


def test_refusal_of_an_extra_output(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 12)
    pay = random_address()
    thief = acct.wallet.script_pubkey(0, RECEIVE)[:2] + os.urandom(32)
    payload, _ = acct.send([(pay, 100_000)], "t1", extra_outputs=[(thief, 5_000)])
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.EXTRA_OUTPUT
    assert "output 2 is not in the signed request" in err.message
    assert "extra output" in (frozen_for(link, 12) or "")


def test_refusal_of_change_the_cold_side_cannot_derive(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 13)
    pay = random_address()
    stranger = address_to_script(random_address(), NET)
    payload, _ = acct.send(
        [(pay, 100_000)],
        "t1",
        change=None,
        extra_outputs=[(stranger, 1_000_000 - 100_000 - FEE)],
        declared_change=[[1, 4]],
    )
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.CHANGE_NOT_DERIVABLE
    assert "not the hot wallet's change address 4" in err.message
    assert "change not derivable" in (frozen_for(link, 13) or "")


def test_refusal_of_a_foreign_input(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 14)
    coin = acct.coin(1_000_000)
    payload, _ = acct.send(
        [(random_address(), 100_000)], "t1", coins=[coin], inputs=[[coin.value, 5, 0]]
    )
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.FOREIGN_INPUT
    assert "not a path of the account's hot wallet" in err.message
    assert "foreign input" in (frozen_for(link, 14) or "")


@pytest.mark.parametrize(
    ("fee", "code", "why"),
    [
        (MAX_FEE_SAT + 1, ColdErrorCode.FEE_ABOVE_POLICY, f"{MAX_FEE_SAT} sat per send"),
        (60 * 200, ColdErrorCode.FEE_RATE_ABOVE_POLICY, f"{MAX_FEE_RATE} sat/vB"),
    ],
)
def test_refusal_of_a_fee_above_policy(
    cold: ColdHsm, link: Any, fee: int, code: int, why: str
) -> None:
    acct = provision(cold, link, 15)
    coin = acct.coin(1_000_000)
    payload, _ = acct.send(
        [(random_address(), 100_000)], f"fee-{fee}", coins=[coin], change=(0, 900_000 - fee)
    )
    err = refused(link, "cosign", payload)
    assert err.code == code
    assert why in err.message and f"fee {fee} sat" in err.message
    assert frozen_for(link, 15) is None  # a policy refusal, not a forgery: no freeze


def test_refusal_of_a_reused_user_tx_no(cold: ColdHsm, link: Any) -> None:
    """One user_tx_no, one signing: an identical retry gets the same signatures (without the
    previous transaction: the outpoint is verified now), anything else freezes."""
    acct = provision(cold, link, 16)
    payload, _ = acct.send([(random_address(), 100_000)], "once")
    first = link.call("cosign", payload, timeout=TIMEOUT)
    retry = {k: v for k, v in payload.items() if k != "prev_txs"}
    assert link.call("cosign", retry, timeout=TIMEOUT) == first
    payload, _ = acct.send([(random_address(), 100_000)], "once")
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.USER_TX_NO_REUSED
    assert "'once' was co-signed for" in err.message and "frozen" in err.message
    assert "user_tx_no reused" in (frozen_for(link, 16) or "")


def test_amounts_are_verified_from_the_previous_transaction(cold: ColdHsm, link: Any) -> None:
    """The first spend of an outpoint needs its funding transaction (hash-checked); the
    outputs of a co-signed send are known after it, so spending its change needs none."""
    acct = provision(cold, link, 40)
    coins = [acct.coin(600_000), acct.coin(400_000)]
    pay = [(random_address(), 100_000)]
    payload, _ = acct.send(pay, "v1", coins=coins, prev_txs=False)
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.PREV_TX_REQUIRED
    assert f"{coins[0].txid}:{coins[0].vout}" in err.message
    assert frozen_for(link, 40) is None  # changed nothing: the same request with them will do
    wrong = {**payload, "prev_txs": [coins[1].prev_tx, coins[1].prev_tx[:-1] + b"\1"]}
    err = refused(link, "cosign", wrong)  # a tx that is not the one spent proves nothing
    assert err.code == ColdErrorCode.PREV_TX_REQUIRED
    err = refused(link, "cosign", {**payload, "prev_txs": [b"\0" * 10]})
    assert err.code == ColdErrorCode.BAD_PREV_TX
    payload, psbt = acct.send(pay, "v1", coins=coins)
    link.call("cosign", payload, timeout=TIMEOUT)
    change = Coin(psbt.txid, 1, 895_000, CHANGE, 0)  # the signed send's own change output
    payload, _ = acct.send(pay, "v2", coins=[change], change=(1, 790_000), prev_txs=False)
    assert "prev_txs" not in payload
    link.call("cosign", payload, timeout=TIMEOUT)


def test_a_large_funding_transaction_is_taught_in_parts(cold: ColdHsm, link: Any) -> None:
    """A funding transaction too large for a request frame (a batch payout) is sent ahead in
    `learn_prev_tx` parts; the cold HSM computes its txid itself before it trusts it."""
    acct = provision(cold, link, 46)
    coin = funded_coin(acct.wallet, 1_000_000, RECEIVE, 3, 0, "batch payout", filler=600)
    raw = coin.prev_tx or b""
    assert len(raw) > 20_000  # more than one 16 KiB link frame
    parts = [raw[i : i + 8192] for i in range(0, len(raw), 8192)]

    def part(n: int, data: bytes, txid: str = coin.txid) -> dict[str, Any]:
        return {"txid": txid, "offset": 8192 * n, "total": len(raw), "data": data}

    err = refused(link, "learn_prev_tx", part(1, parts[1]))  # not in order
    assert err.code == ColdErrorCode.BAD_REQUEST and "does not follow" in err.message
    wrong = "00" * 32
    for n, data in enumerate(parts[:-1]):
        assert link.call("learn_prev_tx", part(n, data, wrong), timeout=TIMEOUT)["have"]
    err = refused(link, "learn_prev_tx", part(len(parts) - 1, parts[-1], wrong))
    assert err.code == ColdErrorCode.BAD_PREV_TX and coin.txid in err.message
    payload, _ = acct.send([(random_address(), 100_000)], "big", coins=[coin], prev_txs=False)
    assert refused(link, "cosign", payload).code == ColdErrorCode.PREV_TX_REQUIRED
    for n, data in enumerate(parts):
        answer = link.call("learn_prev_tx", part(n, data), timeout=TIMEOUT)
    assert answer == {"have": len(raw), "outputs": 601}
    link.call("cosign", payload, timeout=TIMEOUT)


def test_a_lying_amount_is_refused_and_freezes(cold: ColdHsm, link: Any) -> None:
    """The amount split: one input stated as 1 sat. Refused, frozen, alerted."""
    acct = provision(cold, link, 41)
    coins = [acct.coin(600_000), acct.coin(400_000)]
    pay = [(random_address(), 100_000)]
    stated = [[600_000, RECEIVE, coins[0].index], [1, RECEIVE, coins[1].index]]
    payload, _ = acct.send(pay, "split", coins=coins, change=(0, 500_000 - 2), inputs=stated)
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.AMOUNT_MISMATCH
    assert "input 1 is stated as 1 sat; its verified amount is 400000 sat" in err.message
    assert "amount mismatch" in (frozen_for(link, 41) or "")


@pytest.mark.parametrize(
    ("offset", "value", "code"),
    [
        (0, (1).to_bytes(4, "little"), ColdErrorCode.BAD_TX_VERSION),
        (-4, (800_000).to_bytes(4, "little"), ColdErrorCode.BAD_LOCKTIME),
        (42, (0x10).to_bytes(4, "little"), ColdErrorCode.BAD_SEQUENCE),  # BIP68: 16 blocks
    ],
)
def test_transaction_shape_is_strict(
    cold: ColdHsm, link: Any, offset: int, value: bytes, code: int
) -> None:
    """Version 2, nLockTime 0, final or BIP125 sequences: nothing that delays a signed send."""
    number = 42 + {0: 0, -4: 1, 42: 2}[offset]
    acct = provision(cold, link, number)
    payload, _ = acct.send([(random_address(), 100_000)], "shape")
    tx = bytearray(payload["tx"])
    end = offset + 4 if offset != -4 else None
    tx[offset:end] = value
    err = refused(link, "cosign", {**payload, "tx": bytes(tx)})
    assert err.code == code and "frozen" in err.message
    assert frozen_for(link, number) is not None


def test_change_index_within_the_gap(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 45)
    payload, _ = acct.send([(random_address(), 100_000)], "far", change=(1000, 895_000))
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.CHANGE_BEYOND_GAP and "index 1000" in err.message
    payload, _ = acct.send([(random_address(), 100_000)], "near", change=(999, 895_000))
    link.call("cosign", payload, timeout=TIMEOUT)
    payload, _ = acct.send([(random_address(), 100_000)], "next", change=(1999, 895_000))
    link.call("cosign", payload, timeout=TIMEOUT)  # 1000 past the highest co-signed one
    assert frozen_for(link, 45) is None


def test_refusal_of_unknown_and_expired_channels(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 17)
    payload, _ = acct.send([(random_address(), 100_000)], "t1", c_id="nope")
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.UNKNOWN_CHANNEL and "'nope'" in err.message

    old = acct.vdevice.channel_registration(17, "old", expires_at=int(time.time()) - 60)
    link.call("register_channel", old, timeout=TIMEOUT)
    payload, _ = acct.send([(random_address(), 100_000)], "t2", c_id="old")
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.CHANNEL_EXPIRED and "expired" in err.message
    assert 17 not in [a for a, _ in link.call("status", {}, timeout=TIMEOUT)["frozen"]]


def test_forged_vc_code_freezes_until_the_console_unfreezes(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 18)
    pay = random_address()
    payload, _ = acct.send([(pay, 100_000)], "t1", vc_key=_key("not the channel key"))
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.FORGED_VC_CODE
    assert "account 18 frozen" in err.message

    coins = [acct.coin(1_000_000)]
    honest, psbt = acct.send([(pay, 100_000)], "t1", coins=coins)
    err = refused(link, "cosign", honest)
    assert err.code == ColdErrorCode.ACCOUNT_FROZEN and "forged vc_code" in err.message
    status = link.call("status", {}, timeout=TIMEOUT)
    assert [18, err.message.split(": ", 1)[1]] in status["frozen"]
    alerts = [
        a for a in link.call("take_alerts", {}, timeout=TIMEOUT)["alerts"] if a["account"] == 18
    ]
    assert [a["kind"] for a in alerts] == ["account_frozen"]
    assert "forged vc_code" in alerts[0]["message"] and isinstance(alerts[0]["at"], int)
    assert not [
        a for a in link.call("take_alerts", {}, timeout=TIMEOUT)["alerts"] if a["account"] == 18
    ]  # handed over once

    # nothing on the link unfreezes; the console does, with the token's user PIN
    table = cold.cold_cli("status").stdout
    assert "18" in table and "forged vc_code" in table
    wrong = cold.cold_cli("unfreeze", "18", "--pin-stdin", stdin="wrong-pin-123\n")
    assert wrong.returncode == 2 and "PIN incorrect" in wrong.stderr
    assert refused(link, "cosign", honest).code == ColdErrorCode.ACCOUNT_FROZEN
    pin = cold.section.str("user_pin")
    ok = cold.cold_cli("unfreeze", "18", "--pin-stdin", stdin=pin + "\n")
    assert ok.returncode == 0, ok.stderr
    assert "account 18 unfrozen" in ok.stdout and pin not in ok.stdout + ok.stderr
    sigs = link.call("cosign", honest, timeout=TIMEOUT)["signatures"]
    check_cold_signatures(acct, psbt, coins, sigs)
    assert "account_unfrozen" in cold.cold_cli("alerts").stdout
    listed = __import__("json").loads(cold.cold_cli("alerts", "--json").stdout)
    assert any(a["account"] == 18 and a["kind"] == "account_unfrozen" for a in listed)


def test_freeze_from_the_hot_side(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 19)
    link.call("freeze", {"account": 19, "reason": "operator request"}, timeout=TIMEOUT)
    payload, _ = acct.send([(random_address(), 100_000)], "t1")
    err = refused(link, "cosign", payload)
    assert err.code == ColdErrorCode.ACCOUNT_FROZEN and "operator request" in err.message
    err = refused(link, "freeze", {"account": 999, "reason": "x"})
    assert err.code == ColdErrorCode.UNKNOWN_ACCOUNT


def test_wrong_link_key_gets_nothing_executed(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 20)
    payload, psbt = acct.send([(random_address(), 100_000)], "t1")
    before = link.call("status", {}, timeout=TIMEOUT)["link_refusals"].get("bad_mac", 0)
    link.close()

    intruder = cold.client(link_key=os.urandom(32))
    for command, body in (("cosign", payload), ("freeze", {"account": 20, "reason": "x"})):
        with pytest.raises(LinkAuthError):
            intruder.call(command, body, timeout=TIMEOUT)
    intruder.close()

    good = cold.client()
    status = good.call("status", {}, timeout=TIMEOUT)
    assert status["link_refusals"]["bad_mac"] >= before + 2
    assert 20 not in [a for a, _ in status["frozen"]]
    sigs = good.call("cosign", payload, timeout=TIMEOUT)["signatures"]  # not marked used
    assert len(sigs) == 1
    good.close()


# -- sweeps --------------------------------------------------------------------------------------


def sweep_coins(acct: Account, *where: tuple[int, int, int]) -> tuple[list[Coin], list[dict]]:
    """Cold-wallet coins (value, chain, index) with funding transactions, and their utxos."""
    coins = []
    for value, chain, index in where:
        acct.coin_no += 1
        tag = f"cold/{acct.number}/{acct.coin_no}"
        coins.append(funded_coin(acct.cold_wallet, value, chain, index, acct.coin_no % 2, tag))
    utxos = [
        {"txid": c.txid, "vout": c.vout, "amount": c.value, "chain": c.chain, "index": c.index}
        for c in coins
    ]
    return coins, utxos


def test_sweep_pays_the_settlement_descriptor(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 30, register=False)
    coins, utxos = sweep_coins(acct, (200_000, RECEIVE, 3), (300_000, CHANGE, 1))
    prev = [c.prev_tx for c in coins]
    err = refused(link, "sweep", {"account": 30, "utxos": utxos, "fee_rate": 5})
    assert err.code == ColdErrorCode.PREV_TX_REQUIRED and coins[0].txid in err.message
    request = {"account": 30, "utxos": utxos, "fee_rate": 5, "prev_txs": prev}
    answer = link.call("sweep", request, timeout=TIMEOUT)
    assert link.call("sweep", request, timeout=TIMEOUT) == answer  # identical retry
    tx = CTransaction.deserialize(bytes.fromhex(answer["tx"]))
    assert [o.scriptPubKey for o in tx.vout] == [SETTLEMENT.script_pubkey(0)]
    assert tx.vout[0].nValue == 500_000 - answer["fee"] and 0 < answer["fee"] <= 5 * 250
    assert tx.GetTxid()[::-1].hex() == answer["txid"]
    spent = [
        NodeCoin(c.value, acct.cold_wallet.script_pubkey(c.index, c.chain), 1, False) for c in coins
    ]
    verify_scripts(tx, spent, policy=True)

    # each outpoint is swept once; refusals do not move the settlement index
    err = refused(link, "sweep", {"account": 30, "utxos": utxos[:1], "fee_rate": 1})
    assert err.code == ColdErrorCode.ALREADY_SWEPT and answer["txid"] in err.message
    more, more_utxos = sweep_coins(acct, (100_000, RECEIVE, 4))
    err = refused(link, "sweep", {"account": 30, "utxos": more_utxos, "fee_rate": MAX_FEE_RATE + 1})
    assert err.code == ColdErrorCode.FEE_RATE_ABOVE_POLICY
    bad = [{**more_utxos[0], "chain": 9}]
    err = refused(link, "sweep", {"account": 30, "utxos": bad, "fee_rate": 1})
    assert err.code == ColdErrorCode.FOREIGN_INPUT
    again = link.call(
        "sweep",
        {"account": 30, "utxos": more_utxos, "fee_rate": 1, "prev_txs": [more[0].prev_tx]},
        timeout=TIMEOUT,
    )
    assert again["settlement_index"] == 1
    assert frozen_for(link, 30) is None


def test_sweep_with_a_lying_amount_freezes(cold: ColdHsm, link: Any) -> None:
    acct = provision(cold, link, 31, register=False)
    coins, utxos = sweep_coins(acct, (200_000, RECEIVE, 0), (300_000, RECEIVE, 1))
    utxos[1]["amount"] = 1  # the split: the fee would burn the true amount
    request = {"account": 31, "utxos": utxos, "fee_rate": 1, "prev_txs": [c.prev_tx for c in coins]}
    err = refused(link, "sweep", request)
    assert err.code == ColdErrorCode.AMOUNT_MISMATCH and "holds 300000 sat" in err.message
    assert "amount mismatch in a sweep" in (frozen_for(link, 31) or "")


@pytest.mark.parametrize(
    ("descriptor", "why"),
    [
        (SETTLEMENT.to_string().replace("/*", "/7"), "not ranged"),
        (f"wpkh({'02' + '11' * 32})", "plain public key"),
    ],
)
def test_settlement_descriptor_must_be_ranged_with_origins(
    link: Any, descriptor: str, why: str
) -> None:
    hot = _key("hot/unranged")
    err = refused(
        link,
        "provision_account",
        {
            "account": 32,
            "network": "regtest",
            "hot_pubkey": hot.public_key.format(compressed=True).hex(),
            "vdevice_identity": VDevice(seed="v32").identity_hex,
            "settlement_descriptor": descriptor.split("#")[0],
            **PHONES,
        },
    )
    assert err.code == ColdErrorCode.BAD_SETTLEMENT_DESCRIPTOR and why in err.message


# -- the process ---------------------------------------------------------------------------------


def test_serve_has_no_network_socket(cold: ColdHsm) -> None:
    assert cold.process is not None
    fds = Path(f"/proc/{cold.process.pid}/fd")
    links = [os.readlink(p) for p in fds.iterdir() if p.is_symlink()]
    assert links and not [x for x in links if x.startswith("socket:")], links


def test_serve_refuses_unpaired_or_placeholder_pins(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    unpaired = d.cli("serve", "--dir", str(d.data_dir), module="hsm_cold.cli", check=False)
    assert unpaired.returncode == 2 and "init" in unpaired.stderr
    d.set_env("hsm_cold", "user_pin", "change-me")
    placeholder = d.cli("serve", "--dir", str(d.data_dir), module="hsm_cold.cli", check=False)
    assert placeholder.returncode == 2 and "placeholder" in placeholder.stderr


def test_the_raw_tx_parser_refuses_what_it_does_not_sign() -> None:

    psbt = build_send_psbt(
        HotWallet(
            (
                FixedKey(_key("a").public_key.format()),
                AccountKey(ExtendedKey.from_seed(b"b" * 32, NET).to_public(), b"\0" * 4, ()),
                AccountKey(ExtendedKey.from_seed(b"c" * 32, NET).to_public(), b"\1" * 4, ()),
            ),
            NET,
        ),
        [Coin("11" * 32, 0, 5000, 0, 0)],
        [(random_address(), 4000)],
    )
    raw = unsigned_tx(psbt)
    assert decode_tx(raw).txid == psbt.txid
    for bad in (raw + b"\0", raw[:-1], raw[:4] + b"\0\1" + raw[4:]):
        with pytest.raises(BadRequest) as refused:
            decode_tx(bad)
        assert refused.value.code == ColdErrorCode.BAD_REQUEST
        assert refused.value.message.startswith("tx: ")


def test_no_pin_or_link_key_in_logs_or_output(cold: ColdHsm) -> None:
    """Runs last: everything the cold processes printed or logged so far is free of secrets."""
    secrets = [cold.section.str("user_pin"), cold.section.str("so_pin"), cold.link_key.hex()]
    texts = [p.read_text(errors="replace") for p in cold.d.log_dir.rglob("*") if p.is_file()]
    assert texts
    for text in texts:
        assert not [s for s in secrets if s in text]
    raw = [p.read_bytes() for p in cold.d.log_dir.rglob("*") if p.is_file()]
    assert not [r for r in raw if cold.link_key in r]
