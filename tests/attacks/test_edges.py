"""Attacks at the edges of custody, each through the real processes.

One deployment under `custody up` (every part its own OS process), set up by the demo's own
steps (account, SMS channel, verified batches, hot funding). Each test holds exactly what its
attacker holds (a stolen hot token; custody's database and config; the carrier's log; the
command line of a host), attacks, and checks what the design promises: the refusal code,
nothing new on the node, no freeze where none is due, the alert where one is due.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update

from cc_common.sms import channel_messages as cm
from cc_demo import scenario as demo
from cc_demo.steps_edges import (
    fake_failure,
    newest_send_id,
    rewrite_send,
    wait_posted,
    wait_refused,
)
from cc_demo.support import (
    HttpFailed,
    carrier,
    cold_console,
    cold_view,
    custody_db,
    inbox_texts,
    mempool,
    random_address,
    wait_for,
)
from custody.models import Address, Chain, Send, SendStatus, Wallet
from tests.conftest import DEPLOYMENTS
from tests.test_e2e import Rig
from wallet_core.chaincloud import send_request_string
from wallet_core.messages import sign_message

pytestmark = pytest.mark.slow

SETUP = ("status", "account", "channel", "batches", "hot-funding")
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE
ATTACK_SAT = 5_000_000


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = Rig(tmp_path_factory.mktemp("attacks-edges"), {"vdevice": {"sms_reply_timeout": 3.0}})
    try:
        r.start()
        r.run_steps(list(SETUP))
        for name in SETUP:
            r.result(name)  # fails every test of the module if the setup did not pass
        yield r
    finally:
        r.stop()


@pytest.fixture(autouse=True)
def _log_tails_on_failure(request: pytest.FixtureRequest, rig: Rig) -> None:
    request.node.stash[DEPLOYMENTS] = [rig.deployment]


def node_state(rig: Rig) -> tuple[set[str], int]:
    return mempool(rig.ctx.rpc), rig.ctx.rpc.get_block_count()


def assert_nothing_reached_the_node(rig: Rig, before: tuple[set[str], int], payee: str) -> None:
    """Mempool and chain unchanged, and nothing pays `payee`."""
    pool, height = before
    assert mempool(rig.ctx.rpc) == pool
    assert rig.ctx.rpc.get_block_count() == height
    demo.expect_no_spend(rig.ctx, pool, height, payee)


def assert_not_frozen(rig: Rig) -> None:
    account = rig.ctx.need("account_id")
    assert account not in cold_view(rig.ctx.config).frozen
    assert rig.ctx.custody("hot").get("/user").get("status") != "frozen"


def hot_api_error(rig: Rig, path: str, form: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    with pytest.raises(HttpFailed) as info:
        rig.ctx.custody("hot").post(path, form)
    body = info.value.body
    assert isinstance(body, dict), body
    return info.value.status, body


def sends_count(rig: Rig) -> int:
    with custody_db(rig.ctx.config)() as s:
        return len(s.execute(select(Send.id)).all())


# -- stolen hot token ------------------------------------------------------------------------------


def test_stolen_hot_token_cannot_freeze_the_account_with_a_forged_vc_code(rig: Rig) -> None:
    """The thief holds the hot token and knows the live c_id, not the V-device's key."""
    ctx = rig.ctx
    c_id = ctx.need("c_id")
    payee = random_address(ctx.network)
    outs = f"{payee},{ATTACK_SAT}"
    user_tx_no = f"thief-{secrets.token_hex(4)}"
    forged = sign_message(secrets.token_bytes(32), send_request_string(outs, user_tx_no))
    before, sends = node_state(rig), sends_count(rig)
    operator_seen = len(inbox_texts(ctx.carrier, ctx.operator_number))
    alerts_before = cold_view(ctx.config).counters
    status, body = hot_api_error(
        rig,
        "/tx/request",
        {"user_tx_no": user_tx_no, "outs": outs, "is_dynamic_fee": 1, "vc_code": forged,
         "c_id": c_id},
    )  # fmt: skip
    assert (status, body["code"]) == (400, 40), body
    assert "nothing frozen" in body["message"]
    # an unknown channel is its own refusal, and freezes nothing either
    status, body = hot_api_error(
        rig,
        "/tx/request",
        {"user_tx_no": user_tx_no, "outs": outs, "vc_code": forged, "c_id": "0123456789abcdef"},
    )
    assert (status, body["code"]) == (400, 41), body
    assert sends_count(rig) == sends
    assert_not_frozen(rig)
    assert len(inbox_texts(ctx.carrier, ctx.operator_number)) == operator_seen
    assert cold_view(ctx.config).counters == alerts_before
    assert_nothing_reached_the_node(rig, before, payee)


# -- "failed" needs the cold proof -----------------------------------------------------------------


def test_custody_cannot_make_the_site_believe_a_send_failed_and_sign_it_later(rig: Rig) -> None:
    """The attacker holds custody's database: it marks a genuine send failed, then tries to
    get it signed after the site was told. The site hears "failed" only on the cold HSM's
    signed refusal, which closes the number: the later signing is refused, nothing moves."""
    ctx = rig.ctx
    account = ctx.need("account_id")
    payee = random_address(ctx.network)
    factory = custody_db(ctx.config)
    before = node_state(rig)
    with demo.worker_paused(ctx):
        vtest_id, send, w = fake_failure(ctx, factory, account, payee, ATTACK_SAT, "the attacker")
        assert w["status"] == "failed" and not w["tx_hash"], w
        state = demo.send_state(ctx, send.user_tx_no)
        assert state["cold_statement"]["state"] == "refused", state
        assert state["cold_statement"]["code"] == 741  # closed: never co-signed
        # now the attacker wants the send signed after all
        rewrite_send(factory, send.id, status=SendStatus.PENDING, failure_reason="", attempts=0)
    reason = wait_refused(factory, send.id)
    assert "code 741" in reason, reason
    assert_nothing_reached_the_node(rig, before, payee)
    assert_not_frozen(rig)


def test_custody_saying_failed_after_signing_gets_the_txid_reported(rig: Rig) -> None:
    """The attacker holds custody's host: it has a genuine send signed by both HSMs (custody's
    own worker code, the hot HSM's RPC), keeps the transaction and says "failed". The cold
    HSM's statement says it signed that txid, so the site is told the txid, not "failed": a
    merchant re-queuing the withdrawal (and paying twice) never hears of a failure."""
    from custody.chain.rpc import BitcoinRPC  # noqa: PLC0415
    from custody.hsm_client import HotHsmClient  # noqa: PLC0415
    from custody.sends import SendSettings, SendWorker  # noqa: PLC0415

    ctx = rig.ctx
    account = ctx.need("account_id")
    payee = random_address(ctx.network)
    config = ctx.config
    factory = custody_db(config)
    last_id = newest_send_id(factory)
    with demo.worker_paused(ctx):
        vtest_id = demo.merchant_withdrawal(ctx, [(payee, ATTACK_SAT)])
        send = wait_posted(factory, account, last_id, vtest_id)
        worker = SendWorker(
            factory,
            BitcoinRPC.from_config(config),
            HotHsmClient.from_config(config),
            SendSettings.from_config(config),
            owner="attacker",
        )
        assert send.id in worker.claim()
        assert worker.advance(send.id) is SendStatus.BUILT
        assert worker.advance(send.id) is SendStatus.SIGNED
        with factory() as s, s.begin():
            row = s.get(Send, send.id)
            assert row is not None and row.txid and row.tx_hex
            txid, tx_hex = row.txid, row.tx_hex
            row.status = SendStatus.FAILED
            row.failure_reason = "made up by the attacker"
        w = demo.wait_site_finished(ctx, vtest_id)
        assert w["status"] == "sent" and w["tx_hash"] == txid, w
    # whenever the attacker broadcasts it, it is the one payment the site knows of
    ctx.rpc.send_raw_transaction(tx_hex)
    height, _ = demo.check_paid(ctx, txid, [(payee, ATTACK_SAT)])
    assert height > 0
    assert_not_frozen(rig)


# -- hot funding addresses are verified ------------------------------------------------------------


def test_substituted_hot_funding_address_is_refused_by_the_site(rig: Rig) -> None:
    """The attacker holds custody's database and rewrites the next hot receiving address;
    the merchant site checks it against the hot batch the V-device verified and refuses."""
    ctx = rig.ctx
    account = ctx.need("account_id")
    attacker = random_address(ctx.network)
    factory = custody_db(ctx.config)
    with factory() as s:
        row = s.execute(
            select(Address)
            .where(
                Address.account_id == account,
                Address.wallet == Wallet.HOT,
                Address.chain == Chain.RECEIVE,
                Address.handed_out_at.is_(None),
            )
            .order_by(Address.index)
            .limit(1)
        ).scalar_one()
        genuine, index = row.address, row.index
    with factory() as s, s.begin():
        s.execute(update(Address).where(Address.id == row.id).values(address=attacker))
    try:
        with pytest.raises(HttpFailed) as info:
            ctx.site.post("/merchant/funding-address", {})
        assert info.value.status == 409 and "not in a verified hot batch" in str(info.value.body)
    finally:
        with factory() as s, s.begin():
            s.execute(
                update(Address)
                .where(Address.id == row.id)
                .values(address=genuine, handed_out_at=None)
            )
    got = ctx.site.post("/merchant/funding-address", {})
    assert got["address"] != attacker and int(got["index"]) >= index


# -- batch proofs bind what they prove -------------------------------------------------------------


def test_batch_proof_replayed_for_another_batch_type_account_or_channel_fails(rig: Rig) -> None:
    """The attacker reads the carrier's log: the cold HSM's proof of cold batch 0 by SMS.
    Replayed as a proof of another batch number, type, account or channel, it does not
    verify: those are inside what the cold channel key signed."""
    ctx = rig.ctx
    account = ctx.need("account_id")
    cold_numbers = set(ctx.cold_numbers)
    texts = [
        e["body"]
        for e in carrier(ctx.config).sms_log()
        if e.get("from") in cold_numbers
        and str(e.get("body", "")).startswith("CC:COLD_ADDRESSES:0:")
    ]
    assert texts, "no proof of cold batch 0 in the carrier's log"
    proof = cm.parse(texts[0])
    assert isinstance(proof, cm.AddressesProof) and proof.nonce is not None
    addresses = [a["address"] for a in ctx.custody("cold").get("/address/batch/0")]
    with cold_console(ctx.config) as store:
        cold_key = next(c.cold_pubkey for c in store.list_channels() if c.c_id == proof.c_id)
    assert proof.recover_signer(addresses, account) == cold_key  # the genuine proof
    replays = [
        cm.AddressesProof(cm.AddressType.COLD, 1, proof.sig, proof.c_id, "BTC", proof.nonce),
        cm.AddressesProof(cm.AddressType.HOT, 0, proof.sig, proof.c_id, "BTC", proof.nonce),
        cm.AddressesProof(cm.AddressType.COLD, 0, proof.sig, "f" * 16, "BTC", proof.nonce),
    ]
    for replay in replays:
        assert replay.recover_signer(addresses, account) != cold_key, cm.format(replay)
    assert proof.recover_signer(addresses, account + 1) != cold_key


# -- user_tx_no, control and bidi characters -------------------------------------------------------


def test_control_and_bidi_characters_are_refused_at_every_boundary(rig: Rig) -> None:
    """HTTP (custody, merchant site), SMS (the cold HSM's SIM) and the command line refuse
    them with a clear error; none reaches a log."""
    ctx = rig.ctx
    payee = random_address(ctx.network)
    before, sends = node_state(rig), sends_count(rig)
    for user_tx_no, needle in (
        ("order-9\n", "control or bidi"),
        (f"order{RLO}9", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("order 9", "printable ASCII except space"),
    ):
        status, body = hot_api_error(
            rig,
            "/tx/request",
            {"user_tx_no": user_tx_no, "outs": f"{payee},{ATTACK_SAT}", "vc_code": "A" * 88,
             "c_id": ctx.need("c_id")},
        )  # fmt: skip
        assert status == 400 and body["code"] == 2 and needle in body["message"], body
    assert sends_count(rig) == sends
    # the merchant site
    with pytest.raises(HttpFailed) as info:
        ctx.site.post("/merchant/withdrawals", {"outs": f"{payee},1000{RLO}", "dynamic": 1})
    assert info.value.status == 400 and "U+202E" in str(info.value.body)
    # an SMS to the cold HSM's SIM from the V-device's number
    control = ctx.carrier
    seen = len(control.sms_log())
    control.inject_sms(
        ctx.cold_numbers[0], f"CC:VERIFY_COLD_ADDRESSES:0{RLO}:BTC:", ctx.vdevice_number
    )
    wait_for(
        lambda: any(
            e.get("from") == ctx.cold_numbers[0] and e.get("body") == cm.FORMAT_ERROR_TEXT
            for e in control.sms_log()[seen:]
        ),
        demo.SMS_TIMEOUT,
        "the cold HSM to answer 'sms format is error'",
    )
    # the command line of every process
    for module in ("custody.cli", "hsm_cold.cli", "vdevice.cli", "examples.merchant_site.cli"):
        done = subprocess.run(
            [sys.executable, "-m", module, "status", f"x{RLO}"],
            capture_output=True,
            text=True,
            env=rig.deployment.env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2 and "U+202E" in done.stderr, (module, done.stderr)
    # no log line of ours holds the raw character (the simulated carrier's own recording,
    # bodies included for the demo, is the outside world's)
    for path in rig.deployment.log_files():
        if not path.name.startswith("carrier"):
            assert RLO not in path.read_text(errors="replace"), path
    assert_nothing_reached_the_node(rig, before, payee)
    assert_not_frozen(rig)
