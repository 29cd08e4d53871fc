"""The HSM pair end to end: every part its own OS process.

`firmware-sim serve` carries the serial line, `hsm-cold serve` and `hsm-hot serve` run on their
own SoftHSM tokens (never loaded in this process), `firmware-sim node` validates and mines.
Custody's own `HotHsmClient` drives the hot RPC. One deployment per module; tests that need a
fresh account provision one, so their order does not matter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

import pytest

from cc_common.link import LinkAuthError, LinkClient, LinkConfig, LinkTimeout, MemoryCounterStore
from custody.chain import BitcoinRPC
from custody.hsm_client import HotHsmClient, HsmRefused
from hsm_hot.compact import compact_request, plan_cosign
from tests.harness import Deployment, wait_until
from tests.hsm_fixtures import (
    NETWORK,
    Coin,
    HsmPair,
    SerialTap,
    build_send_psbt,
    funded_coin,
    psbt_input,
    random_address,
    settlement_descriptor,
)
from tests.hsm_pair.rig import (
    CHANNEL_EXPIRED,
    COIN,
    COLD_UNREACHABLE,
    EXTRA,
    FEE,
    FORGED,
    FROZEN,
    LINK_TIMEOUT,
    MISMATCH,
    NOT_DERIVABLE,
    PHONES,
    POLICY_REFUSED,
    REUSED,
    SEND_CLOSED,
    UNKNOWN_CHANNEL,
    Account,
    refused,
)
from wallet_core import messages
from wallet_core.addresses import address_to_script
from wallet_core.chaincloud import SendVerdict, channel_key_statement, verify_send_statement
from wallet_core.psbt import Psbt, PsbtOutput
from wallet_core.wallets import CHANGE, RECEIVE


def signed_txids(pair: HsmPair) -> list[str]:
    return [e["user_tx_no"] for e in pair.audit() if e["event"] == "sign_send"]


# -- provisioning and keys ---------------------------------------------------------------------


def test_health_and_provisioning(pair: HsmPair, client: HotHsmClient, account: Account) -> None:
    health = client.health()
    assert health["paired"] and health["cold_reachable"] and health["accounts"] >= 1
    again = client.provision_account(
        account.id,
        "regtest",
        account.vdev.identity_hex,
        settlement_descriptor(account.id),
        **PHONES,
    )
    assert again == account.prov
    status = client.cold_status()
    assert account.id in status["accounts"]


def test_hot_key_cannot_be_read(pair: HsmPair, account: Account) -> None:
    """A process with the hot token's configuration and PIN still cannot read the key."""
    pair.stop_hot()
    try:
        probe = subprocess.run(
            [sys.executable, "-m", "tests.hsm_fixtures", "probe", str(pair.d.data_dir)],
            env={**pair.d.env, "PROBE_LABEL": f"hot/{account.id}"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert probe.returncode == 0, probe.stderr
        result = json.loads(probe.stdout)
        assert result == {
            "value": "KeyProtected",
            "sensitive": True,
            "extractable": False,
            "public_key": account.prov.hot_pubkey,
        }
    finally:
        pair.start_hot()


def test_wrong_pin_is_refused_and_the_limit_locks(pair: HsmPair) -> None:
    pair.stop_hot()
    limit = pair.hot_section.int("pin_retry_limit")
    try:
        for left in range(limit - 1, -1, -1):
            out = pair.serve_once({"CC__HSM_HOT__USER_PIN": "wrong-pin-123456"})
            assert out.returncode == 2
            assert "user PIN incorrect" in out.stderr
            assert ("token locked" if left == 0 else f"{left} tries left") in out.stderr
            assert "wrong-pin-123456" not in out.stderr
        locked = pair.serve_once({})
        assert locked.returncode == 2 and "token locked" in locked.stderr
        bad_unlock = pair.unlock("not-the-so-pin")
        assert bad_unlock.returncode == 2 and "so PIN incorrect" in bad_unlock.stderr
        assert pair.serve_once({}).returncode == 2
    finally:
        ok = pair.unlock(pair.hot_section.str("so_pin"))
        assert ok.returncode == 0, ok.stderr
        assert "cleared" in ok.stdout
        pair.start_hot()
    assert pair.client(5.0).health()["cold_reachable"]


# -- a real send, mined --------------------------------------------------------------------------


@pytest.mark.slow
def test_send_signed_by_both_is_mined(
    pair: HsmPair, client: HotHsmClient, node: BitcoinRPC, account: Account
) -> None:
    funding = account.wallet.address(0, RECEIVE)
    [block] = node.generate_to_address(1, funding)
    node.generate_to_address(100, random_address())
    coinbase = node.get_block(block, 2)["tx"][0]
    value = int(Decimal(str(coinbase["vout"][0]["value"])) * COIN)
    raw = bytes.fromhex(node.get_raw_transaction(coinbase["txid"], False, block))
    coin = Coin(coinbase["txid"], 0, value, RECEIVE, 0, raw)
    payments = [(random_address(), 1 * COIN), (random_address(), 25_000_000)]
    fee = 20_000
    psbt = build_send_psbt(
        account.wallet, [coin], payments, change=(0, value - sum(v for _, v in payments) - fee)
    )
    signed = Psbt.from_base64(client.sign_send(**account.params(psbt, payments, "mined-1")))
    hot_pub = bytes.fromhex(account.prov.hot_pubkey)
    sigs = signed.partial_signatures(0)
    assert hot_pub in sigs and len(sigs) == 2
    signed.finalize()
    txid = node.send_raw_transaction(signed.extract_hex())
    assert txid == psbt.txid
    [mined] = node.generate_to_address(1, random_address())
    tx = node.get_raw_transaction(txid, True, mined)
    assert tx["confirmations"] == 1
    change_script = account.wallet.script_pubkey(0, CHANGE).hex()
    assert tx["vout"][2]["scriptPubKey"]["hex"] == change_script
    entry = [e for e in pair.audit() if e.get("user_tx_no") == "mined-1"]
    assert len(entry) == 1 and entry[0]["txid"] == txid
    assert entry[0]["amount"] == sum(v for _, v in payments) and entry[0]["fee"] == fee


# -- refusals ------------------------------------------------------------------------------------


def test_cold_refusals_have_distinct_codes(pair: HsmPair, client: HotHsmClient) -> None:
    pay = [(random_address(), 100_000)]
    change = (3, 500_000 - 100_000 - 1_000)

    # Not what the V-device signed: refused and frozen, so each on an account of its own.
    # one satoshi more in the transaction than the V-device signed
    acct = Account(client, pair)
    coins = [acct.coin(500_000, 4)]
    psbt = build_send_psbt(acct.wallet, coins, [(pay[0][0], 100_001)], change=(3, change[1] - 1))
    refused(client.sign_send, MISMATCH, **acct.params(psbt, pay, "r-1sat", outs=pay))
    refused(client.sign_send, FROZEN, **acct.send("r-after"))
    # an output nobody signed for
    acct = Account(client, pair)
    coins = [acct.coin(500_000, 4)]
    psbt = build_send_psbt(
        acct.wallet, coins, pay, change=(3, change[1] - 1000), extra_outputs=[(_script(), 1000)]
    )
    refused(client.sign_send, EXTRA, **acct.params(psbt, pay, "r-extra"))
    # "change" claimed at this wallet's change path, paying a script it does not derive
    acct = Account(client, pair)
    w = acct.wallet
    coins = [acct.coin(500_000, 4)]
    psbt = build_send_psbt(w, coins, pay)
    bogus = PsbtOutput(_script(), change[1], w.origins(3, CHANGE))
    psbt = Psbt.create(
        [psbt_input(w, c, prev_tx=False) for c in coins],
        [*psbt.outputs, bogus],
    )
    refused(client.sign_send, NOT_DERIVABLE, **acct.params(psbt, pay, "r-change"))
    frozen = [a for a, _ in client.cold_status()["frozen"]]
    assert acct.id in frozen and acct.id - 1 in frozen and acct.id - 2 in frozen

    # Refusals that freeze nothing, on one account.
    acct = Account(client, pair)
    w = acct.wallet
    # a fee above the cold policy (max_fee_sat)
    big = [acct.coin(3_000_000, 5)]
    psbt = build_send_psbt(w, big, pay)  # fee 2.9 M sat
    refused(client.sign_send, FEE, **acct.params(psbt, pay, "r-fee"))
    # unknown and expired channels
    refused(client.sign_send, UNKNOWN_CHANNEL, **acct.send("r-chan", c_id="nope"))
    client.register_channel(
        **acct.vdev.channel_registration(acct.id, "old", expires_at=int(time.time()) - 1)
    )
    refused(client.sign_send, CHANNEL_EXPIRED, **acct.send("r-old", c_id="old"))
    # a reused user_tx_no (a different transaction under a number already co-signed): the
    # cold HSM signs one transaction per user_tx_no, and anything else freezes
    client.sign_send(**acct.send("r-used"))
    refused(client.sign_send, REUSED, **acct.send("r-used"))
    assert acct.id in [a for a, _ in client.cold_status()["frozen"]]
    # nothing of the above got a hot signature
    assert [t for t in signed_txids(pair) if t.startswith("r-")] == ["r-used"]


def test_a_large_funding_transaction_travels_in_parts(pair: HsmPair, client: HotHsmClient) -> None:
    """A first spend from a 25 KB batch payout: more than a link frame, so hsm-hot teaches
    the cold HSM the funding transaction in parts before the co-sign request."""
    acct = Account(client, pair)
    coin = funded_coin(acct.wallet, 500_000, RECEIVE, 7, 0, os.urandom(8).hex(), filler=600)
    assert len(coin.prev_tx or b"") > 20_000
    pay = [(random_address(), 100_000)]
    psbt = build_send_psbt(acct.wallet, [coin], pay, change=(2, 500_000 - 100_000 - 2_000))
    Psbt.from_base64(client.sign_send(**acct.params(psbt, pay, "big-1"))).finalize()


def test_forged_vc_code_freezes_the_account(pair: HsmPair, client: HotHsmClient) -> None:
    acct = Account(client, pair)
    client.take_alerts()
    refused(client.sign_send, FORGED, **acct.send("f-1", forge=True))
    refused(client.sign_send, FROZEN, **acct.send("f-2"))
    status = client.cold_status()
    assert acct.id in [a for a, _ in status["frozen"]]
    alerts = client.take_alerts()
    assert any(a["account"] == acct.id and "forged" in a["message"] for a in alerts)
    assert not [t for t in signed_txids(pair) if t.startswith("f-")]


def test_channel_key_lets_custody_refuse_a_forged_vc_code(
    pair: HsmPair, client: HotHsmClient
) -> None:
    """Custody learns the channel key from the cold HSM, vouched by its identity key, and
    refuses a forgery itself: the cold HSM never sees it, the account stays live."""
    from custody.errors import ForgedVcCode  # noqa: PLC0415
    from custody.vc_check import check_vc_code  # noqa: PLC0415

    acct = Account(client, pair)
    answer = client.channel_key(acct.id, acct.c_id)
    assert answer["channel_pubkey"] == acct.vdev.channel_hex
    statement = channel_key_statement(
        acct.id, acct.c_id, bytes.fromhex(acct.vdev.channel_hex), answer["expires_at"]
    )
    assert messages.verify_message_pubkey(
        bytes.fromhex(acct.prov.cold_identity), statement, answer["signature"]
    )
    refused(client.channel_key, UNKNOWN_CHANNEL, acct.id, "nope")
    genuine = acct.send("k-1")
    check_vc_code(client, acct.id, acct.prov.cold_identity, **_vc_args(genuine))
    forged = acct.send("k-2", forge=True)
    with pytest.raises(ForgedVcCode):
        check_vc_code(client, acct.id, acct.prov.cold_identity, **_vc_args(forged))
    assert acct.id not in [a for a, _ in client.cold_status()["frozen"]]
    client.sign_send(**genuine)  # the account still signs


def test_send_statements_are_final(pair: HsmPair, client: HotHsmClient) -> None:
    """'signed txid T' for a co-signed number; 'refused with code C' closes a number for good,
    so a V-device that reports 'failed' on it can never be contradicted by a later signing."""
    acct = Account(client, pair)
    identity = bytes.fromhex(acct.prov.cold_identity)
    params = acct.send("s-ok")
    signed = Psbt.from_base64(client.sign_send(**params))
    verdict = verify_send_statement(
        identity, acct.id, "s-ok", client.send_statement(acct.id, "s-ok")
    )
    assert verdict is not None and verdict.signed and verdict.txid == signed.txid
    # refused for its fee, then closed: the statement names the refusal's code
    big = [acct.coin(3_000_000, 5)]
    pay = [(random_address(), 50_000)]
    refused(
        client.sign_send, FEE, **acct.params(build_send_psbt(acct.wallet, big, pay), pay, "s-fee")
    )
    answer = client.send_statement(acct.id, "s-fee")
    assert verify_send_statement(identity, acct.id, "s-fee", answer) == SendVerdict(False, code=FEE)
    # never asked before: closed now; a co-sign request afterwards is refused, nothing signed
    answer = client.send_statement(acct.id, "s-later")
    assert verify_send_statement(identity, acct.id, "s-later", answer) == SendVerdict(
        False, code=SEND_CLOSED
    )
    refused(client.sign_send, SEND_CLOSED, **acct.send("s-later"))
    again = client.send_statement(acct.id, "s-later")  # the same word again
    assert verify_send_statement(identity, acct.id, "s-later", again) == SendVerdict(
        False, code=SEND_CLOSED
    )
    assert "s-later" not in signed_txids(pair)
    refused(client.send_statement, 904, acct.id, "bad\nnumber")  # the hot side refuses it
    assert acct.id not in [a for a, _ in client.cold_status()["frozen"]]


def _vc_args(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in ("request", "vc_code", "c_id")}


def test_hot_policy_refuses_without_link_traffic(pair: HsmPair, account: Account) -> None:
    client = pair.client()
    limit = pair.hot_section.int("max_send_sat")
    coins = [account.coin(limit + 100_000, 6)]
    pay = [(random_address(), limit + 1)]
    psbt = build_send_psbt(account.wallet, coins, pay)
    before = pair.settled_wire_bytes()
    refused(client.sign_send, POLICY_REFUSED, **account.params(psbt, pay, "p-big"))
    assert pair.settled_wire_bytes() == before


# -- the link under faults -----------------------------------------------------------------------


FAULTS = [
    ("flip", {"count": 3, "direction": "hot-to-cold"}),
    ("flip", {"count": 3, "direction": "cold-to-hot"}),
    ("drop", {"count": 20, "direction": "both"}),
    ("garbage", {"count": 64, "direction": "both"}),
    ("cut", {"seconds": LINK_TIMEOUT + 2, "direction": "cold-to-hot"}),
    ("cut", {"seconds": LINK_TIMEOUT + 2, "direction": "hot-to-cold"}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "args"), FAULTS, ids=[f"{k}-{a['direction']}" for k, a in FAULTS])
def test_link_faults_during_cosigning(
    pair: HsmPair, client: HotHsmClient, kind: str, args: dict[str, Any]
) -> None:
    """Each call answers or fails cleanly with 906; a retry then succeeds, signed once."""
    account = Account(client, pair)  # its own: the reuse at the end freezes it
    client = pair.client()
    tag = f"lf-{kind}-{args['direction']}"
    params = account.send(tag)
    counter = {"flip": "flipped_bits", "drop": "dropped", "garbage": "garbage", "cut": "cut_lost"}
    before = pair.line_counter(counter[kind])
    pair.control.fault(kind, **args)
    try:
        first: str | None = client.sign_send(**params)
    except HsmRefused as exc:
        assert exc.code == COLD_UNREACHABLE, (exc.code, exc.message)
        first = None
    finally:
        pair.control.clear_faults()
    assert pair.line_counter(counter[kind]) > before  # the fault did hit this exchange
    second = wait_until(lambda: _try_sign(client, params), 30.0, "a retry to succeed")
    if first is not None:
        assert first == second
    final = Psbt.from_base64(second)
    final.finalize()  # both signatures valid
    assert signed_txids(pair).count(tag) == 1
    # the cold side recorded this user_tx_no for this transaction only (another one freezes)
    refused(client.sign_send, REUSED, **account.send(tag))
    assert account.id in [a for a, _ in client.cold_status()["frozen"]]


def _try_sign(client: HotHsmClient, params: dict[str, Any]) -> str | None:
    try:
        return client.sign_send(**params)
    except HsmRefused as exc:
        assert exc.code == COLD_UNREACHABLE, (exc.code, exc.message)
        return None


# -- helpers -------------------------------------------------------------------------------------


def _script() -> bytes:
    return address_to_script(random_address(), NETWORK)


# -- another program on the line -----------------------------------------------------------------


@pytest.mark.slow
def test_another_program_on_the_line_gets_nothing_signed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A wrong-key link client, garbage and replayed frames: the cold HSM executes none."""
    d = Deployment(
        tmp_path_factory.mktemp("hsm-intruder"), config={"hsm_hot": {"link_timeout": 4.0}}
    )
    pair = HsmPair(d)
    tap: SerialTap | None = None
    try:
        pair.start_sim()
        pair.init()
        pair.start_cold()
        tap = SerialTap(d.config.section("firmware_sim").section("serial").path("hot_link"))
        d.set_env("serial", "hot_port", tap.path)
        pair.start_hot()
        client = pair.client()
        wait_until(lambda: client.health()["cold_reachable"], 30.0, "the cold HSM via the tap")
        acct = Account(client, pair)
        tap.record()
        client.sign_send(**acct.send("i-legit"))
        captured = tap.recorded()
        assert len(captured) > 100
        pair.stop_hot()

        # a program with a link key of its own
        intruder = LinkClient.open(
            tap.path, os.urandom(32), MemoryCounterStore(), LinkConfig(), name="intruder"
        )
        try:
            forged = acct.send("i-intruder")
            for command, payload in [
                ("freeze", {"account": acct.id, "reason": "intruder"}),
                ("cosign", _compact(acct, forged)),
            ]:
                with pytest.raises((LinkAuthError, LinkTimeout)):
                    intruder.call(command, payload, timeout=5.0)
        finally:
            intruder.close()
        # garbage, then the captured bytes of the legitimate co-sign, replayed: once to the
        # running cold HSM (its framer drops frames it has seen) and once after a restart
        # (its persisted counters refuse them)
        tap.inject(os.urandom(3000))
        tap.inject(captured)
        assert pair.cold is not None
        assert not pair.cold.stop()
        pair.start_cold()
        tap.inject(captured)

        pair.start_hot()
        wait_until(lambda: client.health()["cold_reachable"], 30.0, "the cold HSM again")
        status = client.cold_status()
        assert status["frozen"] == []
        refusals = status["link_refusals"]
        assert refusals.get("replayed", 0) + refusals.get("stale", 0) >= 1, refusals
        # the intruder's user_tx_no was never co-signed: the real one goes through
        Psbt.from_base64(client.sign_send(**acct.send("i-intruder"))).finalize()
        assert sorted(t for t in signed_txids(pair) if t.startswith("i-")) == [
            "i-intruder",
            "i-legit",
        ]
    except BaseException:
        print(d.log_tails())
        raise
    finally:
        problems = d.stop()
        if tap is not None:
            tap.close()
        assert not problems, problems


def _compact(acct: Account, params: dict[str, Any]) -> dict[str, Any]:
    plan = plan_cosign(Psbt.from_base64(params["psbt"]), acct.wallet)
    return compact_request(acct.id, plan, params["request"], params["vc_code"], params["c_id"])
