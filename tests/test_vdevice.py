"""The V-device (`vdevice run`) as a real process, against a real `firmware-sim serve`.

The cold HSM's SMS side, the merchant site and the custody API are played by in-test stand-ins
that speak the real interfaces (`tests/vdevice_fixtures.py`): a `GsmModem` on the cold HSM's
simulated modems, and one werkzeug server for both HTTP services. The owner is a plain phone
of the simulator: its inbox is read, and its commands are injected through the carrier.
Every wait polls with a deadline.
"""

from __future__ import annotations

import json
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from cc_common.config import Config
from cc_common.deployment import COLD_NUMBERS, OWNER_NUMBER, VDEVICE_NUMBER
from cc_common.errors import ConfigError
from cc_common.fingerprint import fingerprint
from cc_common.sms import channel_messages as cm
from tests.firmware_fixtures import FirmwareSim
from tests.harness import wait_until
from tests.vdevice_fixtures import (
    HOT_TOKEN,
    batch_addresses,
    encrypted,
    regtest_address,
    site_batch,
    tx_hash_for,
)
from tests.vdevice_rig import Rig, _vdevice_cli
from vdevice.batches import check_shape
from vdevice.errors import ProvisioningError
from vdevice.sends import user_tx_no_for
from vdevice.settings import DEFAULT_MAX_IN_FLIGHT, MAX_IN_FLIGHT, Settings, load_settings
from vdevice.state import Provisioning, new_key
from wallet_core.chaincloud import (
    send_refused_statement,
    send_request_string,
    send_signed_statement,
)
from wallet_core.messages import recover_pubkey, sign_message
from wallet_core.secp import compress_pubkey

COLD = cm.AddressType.COLD
HOT = cm.AddressType.HOT
DEST_A = regtest_address("dest-a")
DEST_B = regtest_address("dest-b")


# -- set-up and the command line ---------------------------------------------------------------


def test_cli_init_provision_refusals_and_status(sim: FirmwareSim, tmp_path: Path) -> None:
    """`init` is idempotent and keeps the key in a 0600 file; `run` refuses unprovisioned."""
    d = sim.deployment
    d.configure({"vdevice": {"state_dir": "vdevice-cli", "wait_for_provisioning": False}})
    out = _vdevice_cli(sim, "init").stdout
    first = out.splitlines()[0]
    assert len(bytes.fromhex(first)) == 33
    assert f"fingerprint {fingerprint(bytes.fromhex(first))}" in out
    assert _vdevice_cli(sim, "init").stdout == out
    db = d.data_dir / "vdevice-cli" / "vdevice.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600

    refused = _vdevice_cli(sim, "run", check=False)
    assert refused.returncode == 2
    assert "not provisioned" in refused.stderr and "vdevice provision" in refused.stderr

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"account_id": 1, "cold_identity": "02" + "00" * 32}))
    result = _vdevice_cli(
        sim, "provision", "--bundle", str(bad), "--cold-fingerprint", "0" * 25, check=False
    )
    assert result.returncode == 2 and "error:" in result.stderr

    text = _vdevice_cli(sim, "status").stdout
    assert "provisioned" in text and "no" in text
    data = json.loads(_vdevice_cli(sim, "status", "--json").stdout)
    assert data["provisioned"] is False and data["identity"] == first
    assert "priv" not in json.dumps(data)


# -- the channel -------------------------------------------------------------------------------


def test_channel_refuses_forged_replies_and_uses_the_second_number(
    make_rig: Callable[..., Rig],
) -> None:
    """The first cold number is silent, so the V-device turns to the second. The first `QH`
    there is answered only by a QC signed by a wrong identity key and a QC bound to another V
    key: both are ignored although their h_id is outstanding. The next `QH` gets the genuine
    QC. A replayed QC and a QC from a spoofed number change nothing."""
    rig = make_rig(cold_kwargs={"silent": {COLD_NUMBERS[0]}, "forge_first": True})
    log_path = rig.d.log_dir / "vdevice.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    rig.start()
    c_id = rig.wait_channel(timeout=25)
    assert rig.cold.channel_oks == [c_id]
    asked = [to for to, _, text in rig.cold.received if text.startswith("CC:QH:")]
    assert asked == [COLD_NUMBERS[0], COLD_NUMBERS[1], COLD_NUMBERS[0], COLD_NUMBERS[1]]
    log = log_path.read_text()[offset:]
    assert log.count("not signed by the cold identity key for our key") == 2
    assert "forged" not in json.dumps(rig.status())
    assert rig.wait_owner("refused an open reply not signed by the cold HSM")

    # Replays: the genuine QC again (from its number), and from a spoofed number.
    ch = rig.cold.channels[c_id]
    replay = cm.format(
        cm.OpenReply.signed(ch.cold_pub, c_id, ch.h_id, ch.v_pub, ch.expiry, rig.cold.identity_priv)
    )
    rig.sim.control.inject_sms(VDEVICE_NUMBER, replay, sender=COLD_NUMBERS[1])
    rig.sim.control.inject_sms(VDEVICE_NUMBER, replay, sender="+19995550123")
    rig.wait_status(
        lambda s: "not outstanding" in (rig.d.log_dir / "vdevice.log").read_text(),
        "the replayed QC to be ignored",
    )
    assert rig.status()["channel"]["c_id"] == c_id
    assert rig.cold.channel_oks == [c_id]
    assert rig.cold.refused == []


def test_channel_is_renewed_before_expiry(make_rig: Callable[..., Rig]) -> None:
    """A short-lived channel is replaced by a new one (fresh key, fresh c_id) before it ends."""
    rig = make_rig(cold_kwargs={"lifetime": 6})
    rig.start()
    first = rig.wait_channel()
    second = rig.wait_status(
        lambda s: s.get("channel") and s["channel"]["c_id"] != first and s["channel"]["c_id"],
        "a renewed channel",
        timeout=15,
    )
    old, new = rig.cold.channels[first], rig.cold.channels[second]
    assert old.v_pub != new.v_pub and new.expiry > old.expiry
    wait_until(lambda: len(rig.cold.channel_oks) >= 2, 5, "CHANNEL_OK of the new channel")
    assert rig.cold.channel_oks[:2] == [first, second]


# -- batches -----------------------------------------------------------------------------------


def test_batches_verified_and_substituted(make_rig: Callable[..., Rig]) -> None:
    """Cold batch 0 as the cold HSM derives it -> status 2 to the site and to custody; hot
    batch 1 with one address substituted at the site -> status 3 to both and an owner alert."""
    rig = make_rig()
    cold0 = batch_addresses(COLD, 0)
    hot1 = batch_addresses(HOT, 1)
    rig.cold.batches = {(2, 0): cold0, (1, 1): hot1}
    tampered = list(hot1)
    tampered[5] = regtest_address("attacker")
    rig.web.batches = [site_batch(COLD, 0, cold0), site_batch(HOT, 1, tampered)]
    rig.start()
    rig.wait_status(lambda s: len(rig.web.custody_batch_reports) >= 2, "two verdicts", 30)
    assert rig.web.batch_reports == [
        {"batch_no": "0", "status": "2", "type": "2"},
        {"batch_no": "1", "status": "3", "type": "1"},
    ]
    assert rig.web.custody_batch_reports == [
        (0, {"status": "2", "type": "2"}),
        (1, {"status": "3", "type": "1"}),
    ]
    assert rig.wait_owner("address batch 1 failed verification")
    assert not [t for t in rig.owner_texts() if "batch 0" in t]
    assert [(v.batch_no, v.address_type) for v in rig.cold.verifies] == [(0, COLD), (1, HOT)]
    # the status file is written at the end of each pass: wait for the pass that reported
    rig.wait_status(
        lambda s: s["last_batch"]["state"] == "failed" and s["last_batch"]["reported"],
        "the failed batch 1 reported in the status",
    )


def test_malformed_batch_fails_without_asking(make_rig: Callable[..., Rig]) -> None:
    """A batch of 999 entries is failed at once: no SMS, status 3, an alert."""
    rig = make_rig()
    short = site_batch(COLD, 2, batch_addresses(COLD, 2)[:999])
    rig.web.batches = [short]
    rig.start()
    rig.wait_status(lambda s: rig.web.custody_batch_reports, "the verdict", 20)
    assert rig.web.batch_reports == [{"batch_no": "2", "status": "3", "type": "2"}]
    assert rig.wait_owner("address batch 2 failed verification")
    assert rig.cold.verifies == []


# -- sends -------------------------------------------------------------------------------------


def _check_vc_code(rig: Rig, form: dict[str, str]) -> None:
    """vc_code is by the V channel key of `c_id`, over the canonical request string."""
    text = send_request_string(
        form["outs"], form["user_tx_no"], is_dynamic_fee=int(form["is_dynamic_fee"])
    )
    signer = compress_pubkey(recover_pubkey(text, form["vc_code"]))
    assert signer == rig.cold.channels[form["c_id"]].v_pub


def test_valid_send_is_signed_posted_and_reported(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(low_balance_sat=50_000)
    rig.web.balance = 40_000
    outs = f"{DEST_A},15000;{DEST_B},25000"
    rig.web.add_vtest("order-1", encrypted(outs, dynamic=1))
    rig.start()
    c_id = rig.wait_channel()
    rig.wait_status(lambda s: rig.web.reports_for("order-1"), "the site's report", 20)
    (form,) = rig.web.tx_requests
    assert form == {
        "coin_code": "BTC",
        "user_tx_no": "order-1",
        "outs": outs,
        "is_dynamic_fee": "1",
        "vc_code": form["vc_code"],
        "c_id": c_id,
    }
    _check_vc_code(rig, form)
    assert rig.web.reports_for("order-1") == [
        {"vtest_id": "order-1", "tx_hash": tx_hash_for("order-1")}
    ]
    assert rig.wait_owner("balance low")
    rig.wait_status(lambda s: s["last_send"]["state"] == "reported", "the send reported")
    assert rig.status()["last_send"]["tx_hash"] == tx_hash_for("order-1")


def _statement(priv: bytes, user_tx_no: str, *, txid: str = "", code: int = 0) -> dict:
    if txid:
        text = send_signed_statement(1, txid, user_tx_no)
        return {"state": "signed", "txid": txid, "signature": sign_message(priv, text)}
    text = send_refused_statement(1, code, user_tx_no)
    return {"state": "refused", "code": code, "signature": sign_message(priv, text)}


def test_failed_is_reported_only_with_the_cold_hsms_proof(make_rig: Callable[..., Rig]) -> None:
    """A hacked custody says "failed": the site hears it only with the cold HSM's signed
    "refused"; with its "signed txid T" the site hears T; otherwise nothing (owner alerted)."""
    rig = make_rig()
    cold = rig.cold.identity_priv
    rig.web.outcomes = {"lied": "failed", "signed": "failed", "forged": "failed"}
    txid = "ab" * 32
    rig.web.statements = {
        "signed": _statement(cold, "signed", txid=txid),
        "forged": _statement(b"\x07" * 32, "forged", code=706),  # not the cold identity key
    }
    rig.web.add_vtest("lied", encrypted(f"{DEST_A},1000"))
    rig.start()
    rig.wait_channel()
    rig.wait_owner("send lied: custody: insufficient funds, without the cold HSM's proof")
    rig.wait_status(lambda s: len(rig.web.statement_posts) >= 2, "the V-device to ask again", 20)
    assert rig.web.reports_for("lied") == []
    # the cold HSM's refusal (a statement for another number does not count)
    rig.web.statements["lied"] = _statement(cold, "other", code=712)
    polls = len(rig.web.tx_polls)
    rig.wait_status(lambda s: len(rig.web.tx_polls) >= polls + 2, "the V-device to look again", 20)
    assert rig.web.reports_for("lied") == []
    rig.web.statements["lied"] = _statement(cold, "lied", code=712)
    rig.wait_status(lambda s: rig.web.reports_for("lied"), "the failure reported", 20)
    assert rig.web.reports_for("lied") == [{"vtest_id": "lied", "tx_hash": ""}]
    # custody says failed, the cold HSM says it signed: the site hears the txid
    rig.web.add_vtest("signed", encrypted(f"{DEST_A},1000"))
    rig.wait_status(lambda s: rig.web.reports_for("signed"), "the txid reported", 20)
    assert rig.web.reports_for("signed") == [{"vtest_id": "signed", "tx_hash": txid}]
    # a statement not by the cold identity key proves nothing
    rig.web.add_vtest("forged", encrypted(f"{DEST_A},1000"))
    rig.wait_owner("send forged: custody: insufficient funds, without the cold HSM's proof")
    assert rig.web.reports_for("forged") == []


def test_channel_not_live_yet_at_custody_is_retried(make_rig: Callable[..., Rig]) -> None:
    """Custody refuses with "unknown channel" while the cold HSM has not yet taken our
    CHANNEL_OK: the V-device sends it again and posts the same request later."""
    rig = make_rig()
    rig.web.unknown_channel_posts = 2
    rig.web.add_vtest("early", encrypted(f"{DEST_A},1000"))
    rig.start()
    c_id = rig.wait_channel()
    rig.wait_status(lambda s: rig.web.reports_for("early"), "the send reported", 20)
    assert rig.web.reports_for("early") == [{"vtest_id": "early", "tx_hash": tx_hash_for("early")}]
    assert len(rig.web.tx_requests) == 3
    assert len({f["vc_code"] for f in rig.web.tx_requests}) == 1  # one signature, re-posted
    assert rig.cold.channel_oks.count(c_id) >= 2


def test_refusals_invalid_outputs_and_policies(make_rig: Callable[..., Rig]) -> None:
    """Invalid address, negative value, not whitelisted, over the per-send limit: each is
    reported failed with an owner alert and never reaches custody; a good one after them does."""
    rig = make_rig(whitelist=[DEST_A, DEST_B], max_send_sat=50_000)
    rig.web.add_vtest("bad-addr", encrypted("notanaddress,1000"))
    rig.web.add_vtest("bad-value", encrypted(f"{DEST_A},-5"))
    rig.web.add_vtest("not-listed", encrypted(f"{regtest_address('elsewhere')},1000"))
    rig.web.add_vtest("too-much", encrypted(f"{DEST_A},40000;{DEST_B},20000"))
    rig.web.add_vtest("fine", encrypted(f"{DEST_A},40000", dynamic=0))
    rig.start()
    rig.wait_status(lambda s: rig.web.reports_for("fine"), "the last vtest reported", 30)
    for vid in ("bad-addr", "bad-value", "not-listed", "too-much"):
        assert rig.web.reports_for(vid) == [{"vtest_id": vid, "tx_hash": ""}]
    texts = rig.owner_texts()
    assert sum("tx out invalid" in t for t in texts) == 2
    assert any("not whitelisted" in t for t in texts)
    assert any("per-send limit" in t for t in texts)
    assert [f["user_tx_no"] for f in rig.web.tx_requests] == ["fine"]
    assert rig.web.tx_requests[0]["is_dynamic_fee"] == "0"
    _check_vc_code(rig, rig.web.tx_requests[0])


def test_wrong_password_stops_the_loop_until_the_owner_restarts_it(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.web.add_vtest("hacked", encrypted(f"{DEST_A},1000", password="not-the-password"))
    rig.web.add_vtest("later", encrypted(f"{DEST_A},1000"))
    rig.start()
    assert rig.wait_owner("AES decrypt error")
    rig.wait_status(lambda s: s["loop"] == "stopped", "the loop to stop")
    assert rig.web.reports_for("hacked") == [{"vtest_id": "hacked", "tx_hash": ""}]
    assert rig.status()["loop_reason"] == "AES decrypt error"
    # Stopped: the next vtest waits (a second of passes, to be sure nothing moves).
    calls = len(rig.web.calls)
    since = rig.status()["time"]
    rig.wait_status(lambda s: s["time"] != since, "passes of the stopped loop")
    assert len(rig.web.calls) == calls
    assert rig.web.reports_for("later") == [] and rig.web.tx_requests == []

    rig.owner_says(f"CC:START_LOOP:{rig.owner_code()}")
    rig.wait_owner("CC:LOOP:RUNNING")
    rig.wait_status(lambda s: rig.web.reports_for("later"), "the next vtest handled", 20)
    assert [f["user_tx_no"] for f in rig.web.tx_requests] == ["later"]


@pytest.mark.slow
def test_crash_between_posting_and_reporting(make_rig: Callable[..., Rig]) -> None:
    """kill -9 once custody has the request but before the site has the outcome: after the
    restart the very same request is posted again (code 3), and the site is told once."""
    rig = make_rig()
    rig.web.hold = True
    rig.web.add_vtest("crash-1", encrypted(f"{DEST_A},30000"))
    proc = rig.start()
    rig.wait_status(lambda s: rig.web.tx_polls, "custody polled for the send", 20)
    proc.kill()
    proc.expected_returncodes.add(-signal.SIGKILL)
    assert rig.web.vtest_reports == []
    rig.web.hold = False
    rig.start()
    rig.wait_status(lambda s: rig.web.reports_for("crash-1"), "the report after restart", 20)
    first, second = rig.web.tx_requests
    assert first == second  # the same signature, the same channel: nothing signed twice
    assert rig.web.reports_for("crash-1") == [
        {"vtest_id": "crash-1", "tx_hash": tx_hash_for("crash-1")}
    ]
    rig.wait_status(lambda s: s["last_send"]["state"] == "reported", "the send reported")
    assert len(rig.web.tx_requests) == 2 and len(rig.web.vtest_reports) == 1


def test_sends_in_flight_together_reach_custody_before_any_report(
    make_rig: Callable[..., Rig],
) -> None:
    """With max_in_flight > 1 the next withdrawal is signed and posted while the first still
    waits for custody's outcome (so custody can batch them); each is reported once."""
    rig = make_rig(max_in_flight=3)
    rig.web.hold = True
    for n in (1, 2):
        rig.web.add_vtest(f"fly-{n}", encrypted(f"{DEST_A},{10000 + n}"))
    rig.start()
    rig.wait_status(lambda s: len(rig.web.sends) == 2, "both sends posted to custody", 20)
    assert rig.web.vtest_reports == []
    rig.web.hold = False
    for n in (1, 2):
        rig.wait_status(lambda s, n=n: rig.web.reports_for(f"fly-{n}"), f"fly-{n} reported", 20)
    rig.wait_status(lambda s: s["last_send"]["state"] == "reported", "the sends reported")
    assert sorted(f["user_tx_no"] for f in rig.web.tx_requests) == ["fly-1", "fly-2"]
    assert sorted(r["vtest_id"] for r in rig.web.vtest_reports) == ["fly-1", "fly-2"]


def test_a_site_ignoring_skip_never_gets_an_in_flight_send_reported_twice(
    make_rig: Callable[..., Rig],
) -> None:
    """A site without `?skip=` offers the in-flight send again: the phone waits on it (no
    early, empty report), then takes the next once the first is reported."""
    rig = make_rig(max_in_flight=3)
    rig.web.hold = True
    rig.web.ignore_skip = True
    for n in (1, 2):
        rig.web.add_vtest(f"noskip-{n}", encrypted(f"{DEST_A},{20000 + n}"))
    rig.start()
    rig.wait_status(lambda s: len(rig.web.tx_polls) >= 3, "custody polled a few times", 20)
    assert [f["user_tx_no"] for f in rig.web.tx_requests] == ["noskip-1"]
    assert rig.web.vtest_reports == []
    rig.web.hold = False
    rig.wait_status(lambda s: rig.web.reports_for("noskip-2"), "noskip-2 reported", 20)
    assert rig.web.vtest_reports == [
        {"vtest_id": f"noskip-{n}", "tx_hash": tx_hash_for(f"noskip-{n}")} for n in (1, 2)
    ]


# -- the owner ---------------------------------------------------------------------------------


def test_owner_commands(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.start()
    rig.owner_says("CC:TIME")
    (reply,) = rig.wait_owner("CC:V:")
    assert isinstance(cm.parse(reply), cm.TimeReply)
    rig.owner_says("CC:PING")
    rig.wait_owner("CC:PONG")
    rig.owner_says("CC:LAUNCH_MISSILES")
    rig.wait_owner(cm.FORMAT_ERROR_TEXT)
    rig.owner_says(f"CC:STOP_LOOP:{rig.owner_code()}")
    rig.wait_owner("CC:LOOP:STOPPED")
    rig.wait_status(lambda s: s["loop"] == "stopped", "the loop stopped")
    # A stranger's command is ignored: no answer to anyone, the loop stays stopped.
    code = rig.owner_code()
    rig.sim.control.inject_sms(VDEVICE_NUMBER, f"CC:START_LOOP:{code}", sender="+19995550123")
    rig.sim.control.inject_sms(VDEVICE_NUMBER, "CC:TIME", sender="+19995550123")
    rig.owner_says(f"CC:START_LOOP:{code}")
    rig.wait_owner("CC:LOOP:RUNNING")
    texts = rig.owner_texts()
    assert len(texts) == 5
    log = (rig.d.log_dir / "vdevice.log").read_text()
    assert log.count("sms from unknown number +19995550123: ignored") >= 2
    assert "CC:TIME" not in log and "LAUNCH" not in log  # bodies stay out of the log


# -- the carrier losing messages ---------------------------------------------------------------


@pytest.mark.slow
def test_sms_loss_retries_within_bounds_nothing_twice(make_rig: Callable[..., Rig]) -> None:
    """SMS segments to the phone lost (30%), and texts duplicated both ways, while a
    channel opens and a batch is verified: the V-device retries with fresh ids and nonces
    (alternating the cold numbers), and the verdict is reported exactly once.

    Loss is per segment and `QC`s take two segments, so loss is set on the phone's network
    only (the recipient's network decides): at 30% a two-segment round trip fails about half
    the time, so retries are exercised, while 12 attempts all failing (~0.02% per round trip;
    8 gave ~0.4%, over the several round trips of a run about one run in 100) stays rare."""
    rig = make_rig(sms_reply_timeout=1.5, sms_max_attempts=12, stall_retry=1.0)
    cold0 = batch_addresses(COLD, 0)
    rig.cold.batches = {(2, 0): cold0}
    rig.web.batches = [site_batch(COLD, 0, cold0)]
    rig.web.add_vtest("lossy-1", encrypted(f"{DEST_A},12345"))
    rig.sim.control.set_carrier(duplicate=0.3)
    rig.sim.control.set_carrier("gamma", loss=0.3)
    rig.start()
    rig.wait_status(lambda s: rig.web.batch_reports, "the batch verdict", 60)
    rig.sim.control.set_carrier(loss=0.0, duplicate=0.0)
    rig.wait_status(lambda s: rig.web.reports_for("lossy-1"), "the send reported", 20)
    assert rig.web.batch_reports == [{"batch_no": "0", "status": "2", "type": "2"}]
    assert rig.web.custody_batch_reports == [(0, {"status": "2", "type": "2"})]
    assert [f["user_tx_no"] for f in rig.web.tx_requests] == ["lossy-1"]
    assert len(rig.web.vtest_reports) == 1
    # The carrier duplicated some texts (the cold side refuses those as replays), yet exactly
    # one channel was confirmed per open and one proof request was answered per verdict.
    assert len(rig.cold.verifies) == len(rig.cold.nonces)
    assert not [t for t in rig.owner_texts() if "failed" in t]


# -- pure checks (no process) ------------------------------------------------------------------


def test_max_in_flight_is_checked(tmp_path: Path) -> None:
    def settings(**extra: object) -> Settings:
        vdevice = {"state_dir": "v", "modem_port": "/dev/null", "number": VDEVICE_NUMBER}
        vdevice |= {"merchant_url": "http://127.0.0.1:1", "vtest_password": "pw", **extra}
        raw = {"vdevice": vdevice, "phones": {"owner": OWNER_NUMBER}, "deployment": {}}
        return load_settings(Config(data_dir=tmp_path, path=tmp_path / "c.toml", raw=raw))

    assert settings().max_in_flight == DEFAULT_MAX_IN_FLIGHT
    assert settings(max_in_flight=1).max_in_flight == 1
    for bad in (0, MAX_IN_FLIGHT + 1):
        with pytest.raises(ConfigError, match=r"\[vdevice\] max_in_flight must be 1 to 50"):
            settings(max_in_flight=bad)


def test_batch_shape_checks() -> None:
    good = site_batch(COLD, 3, batch_addresses(COLD, 3))
    batch_no, kind, addresses = check_shape(good)
    assert (batch_no, kind, len(addresses)) == (3, COLD, 1000)
    shuffled = dict(good, address_list=list(reversed(good["address_list"])))
    assert check_shape(shuffled)[2] == addresses  # index order, not list order
    for broken, why in [
        (dict(good, address_list=good["address_list"][:999]), "exactly 1000"),
        (dict(good, batch_no=2), "indices are not 2000..2999"),
        (dict(good, address_type=3), "address_type"),
        (
            dict(good, address_list=[good["address_list"][0]] * 1000),
            "appears twice",
        ),
    ]:
        with pytest.raises(ValueError, match=why):
            check_shape(broken)


def test_user_tx_no_is_a_fixed_function_of_the_vtest_id() -> None:
    assert user_tx_no_for("w0123abcd") == "w0123abcd"
    long_id = "x" * 80
    assert user_tx_no_for(long_id) == user_tx_no_for(long_id)
    assert len(user_tx_no_for(long_id)) == 64 and user_tx_no_for(long_id).startswith("vt-")
    assert user_tx_no_for('a"b') != 'a"b'


def test_bundle_checks() -> None:
    _, pub = new_key()
    bundle = {
        "account_id": 7,
        "cold_identity": pub.hex(),
        "cold_numbers": list(COLD_NUMBERS),
        "hot_token": HOT_TOKEN,
        "custody_url": "http://127.0.0.1:1/api/v1/open/",
    }
    prov = Provisioning.from_bundle({"vdevice_bundle": bundle}, OWNER_NUMBER)
    assert prov.custody_url.endswith("/open") and prov.owner_number == OWNER_NUMBER
    assert Provisioning.from_json(prov.to_json()) == prov
    for key, value, why in [
        ("cold_identity", "04" + "00" * 64, "33-byte"),
        ("cold_numbers", [], "non-empty"),
        ("hot_token", "short", "hot_token"),
        ("account_id", True, "account_id"),
    ]:
        with pytest.raises(ProvisioningError, match=why):
            Provisioning.from_bundle(dict(bundle, **{key: value}), OWNER_NUMBER)
