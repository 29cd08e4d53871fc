"""The cold HSM on SMS, as its test modules drive it (`world`): real `firmware-sim serve` and
`hsm-cold serve`, the test playing the hot HSM on the serial line and the V-device on its own
modem port (`cc_common.sms.GsmModem` and the channel codec, never `vdevice/`).

Registered for every test by `pytest_plugins` in tests/conftest.py, so test modules ask for
`world` by name.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import coincurve
import pytest

from cc_common.deployment import COLD_NUMBERS, OWNER_NUMBER, VDEVICE_NUMBER
from cc_common.link import LinkRemoteError
from cc_common.sms import channel_messages as cm
from cc_common.sms.channel_messages import (
    AddressesProof,
    AddressType,
    ChannelOk,
    OpenReply,
    OpenRequest,
    VerifyAddresses,
)
from cc_common.sms.modem import GsmModem, IncomingSms
from firmware_sim.control import ControlClient
from tests import cold_rig
from tests.cold_rig import Account
from tests.harness import Deployment, wait_until
from tests.hsm_fixtures import ColdHsm, random_address

TIMEOUT = 20.0
LIFETIME = 8  # seconds: channels expire within the test
MIN_LOOSEN_DELAY = 2  # seconds: [hsm_cold] min_loosen_delay, so a loosening is waited out quickly
COLD_A, COLD_B = COLD_NUMBERS
ATTACKER = "+15556660666"
MAIN = 1  # the account whose V-device is the test's modem


def _key(tag: str) -> coincurve.PrivateKey:
    return coincurve.PrivateKey(hashlib.sha256(tag.encode()).digest())


def _pub(key: coincurve.PrivateKey) -> bytes:
    return key.public_key.format(compressed=True)


# -- the world ---------------------------------------------------------------------------------


class VPhone:
    """The V-device's modem, as the test drives it."""

    def __init__(self, modem: GsmModem) -> None:
        self.modem = modem
        self.pending: list[IncomingSms] = []

    def send(self, msg: cm.Message | str, to: str = COLD_A) -> None:
        self.modem.send(to, msg if isinstance(msg, str) else cm.format(msg))

    def expect(self, match: Callable[[IncomingSms], bool], what: str) -> IncomingSms:
        deadline = time.monotonic() + TIMEOUT
        while True:
            for sms in self.pending:
                if match(sms):
                    self.pending.remove(sms)
                    return sms
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no SMS {what}; got {[m.text for m in self.pending]}")
            self.pending += self.modem.wait_for_messages(min(left, 1.0))


@dataclass
class Channel:
    c_id: str
    v_key: coincurve.PrivateKey
    cold_pub: bytes
    expiry: int
    qh_text: str
    reply_from: str


@dataclass
class World:
    cold: ColdHsm
    link: Any
    control: ControlClient
    v: VPhone
    main: Account

    # the cold state, read-only (counters, channels, outbox), to see what a refusal changed
    def _db(self) -> sqlite3.Connection:
        path = self.cold.section.path("state_dir") / "cold.db"
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def query(self, sql: str, *args: Any) -> list[tuple]:
        db = self._db()
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def counter(self, name: str) -> int:
        rows = self.query("SELECT value FROM sms_counters WHERE name = ?", name)
        return int(rows[0][0]) if rows else 0

    def wait_counter(self, name: str, at_least: int) -> None:
        wait_until(lambda: self.counter(name) >= at_least, TIMEOUT, f"counter {name} >= {at_least}")

    def channels(self, account: int = MAIN) -> dict[str, str]:
        rows = self.query("SELECT c_id, state FROM channels WHERE account = ?", account)
        return dict(rows)

    def outbox(self, number: str) -> list[str]:
        return [r[0] for r in self.query("SELECT purpose FROM sms_outbox WHERE number = ?", number)]

    def sent_by_cold_to(self, number: str) -> int:
        log = self.control.sms_log()
        return sum(
            1
            for e in log
            if e["event"] == "submitted" and e["from"] in COLD_NUMBERS and e["to"] == number
        )

    def wait_inbox(self, number: str, needle: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            hits = [m for m in self.control.inbox(number) if needle in m["text"]]
            return hits[-1] if hits else None

        return wait_until(find, TIMEOUT, f"an SMS with {needle!r} in {number}'s inbox")

    # -- the V-device's side of the protocol ------------------------------------------------

    def open_channel(self, *, to: str = COLD_A, confirm: bool = True) -> Channel:
        v_key = coincurve.PrivateKey()
        h_id = secrets.token_hex(8)
        qh = OpenRequest.signed(
            _pub(v_key), h_id, int(time.time()), self.main.vdevice.identity.secret
        )
        self.v.send(qh, to)
        sms = self.v.expect(lambda m: f":H_ID:{h_id}:" in m.text, f"QC for h_id {h_id}")
        qc = cm.parse(sms.text)
        assert isinstance(qc, OpenReply) and qc.expiry is not None
        assert qc.recover_signer(_pub(v_key)) == self.cold.identity  # bound to our V key
        assert qc.recover_signer(_pub(coincurve.PrivateKey())) != self.cold.identity
        assert abs(qc.expiry - (time.time() + LIFETIME)) < 5
        ch = Channel(qc.c_id, v_key, qc.channel_pubkey, qc.expiry, cm.format(qh), sms.sender)
        if confirm:
            self.confirm(ch, to)
        return ch

    def confirm(self, ch: Channel, to: str = COLD_A) -> None:
        self.v.send(ChannelOk.signed(ch.c_id, ch.v_key.secret), to)
        wait_until(lambda: self.channels().get(ch.c_id) == "live", TIMEOUT, f"{ch.c_id} live")

    def verify(
        self, ch: Channel, kind: AddressType, batch_no: int, *, to: str = COLD_A
    ) -> tuple[VerifyAddresses, AddressesProof, IncomingSms]:
        nonce = secrets.token_hex(8)
        req = VerifyAddresses.signed(kind, batch_no, "BTC", ch.c_id, nonce, ch.v_key.secret)
        self.v.send(req, to)
        sms = self.v.expect(lambda m: m.text.endswith(f":N:{nonce}"), f"proof for {nonce}")
        proof = cm.parse(sms.text)
        assert isinstance(proof, AddressesProof)
        return req, proof, sms

    def cosign(self, ch: Channel, user_tx_no: str, acct: Account | None = None) -> Any:
        acct = acct or self.main
        payload, _ = acct.send(
            [(random_address(), 100_000)], user_tx_no, vc_key=ch.v_key, c_id=ch.c_id
        )
        return self.link.call("cosign", payload, timeout=TIMEOUT)

    def cosign_refused(self, ch: Channel, user_tx_no: str) -> LinkRemoteError:
        with pytest.raises(LinkRemoteError) as info:
            self.cosign(ch, user_tx_no)
        return info.value


def provision(cold: ColdHsm, link: Any, number: int, vdevice_phone: str) -> Account:
    """A confirmed account whose V-device texts from `vdevice_phone` (no channel yet)."""
    phones = {"vdevice_phone": vdevice_phone, "owner_phone": OWNER_NUMBER}
    return cold_rig.provision(
        cold, link, number, register=False, vdevice_seed="sms-vdevice", phones=phones
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = Deployment(
        tmp_path_factory.mktemp("cold-sms"),
        config={
            "hsm_cold": {
                "channel_lifetime": LIFETIME,
                "sms_poll_interval": 0.5,
                "min_loosen_delay": MIN_LOOSEN_DELAY,
            }
        },
    )
    cold = ColdHsm(d)
    modem: GsmModem | None = None
    try:
        d.start_cli("firmware-sim", "firmware_sim.cli", "serve", timeout=60)
        cold.start()
        link = cold.client()
        control = ControlClient(d.config.section("firmware_sim").path("control_socket"))
        modem = GsmModem(
            str(d.data_dir / "dev" / "modem-vdevice"), own_number=VDEVICE_NUMBER, name="v"
        )
        main = provision(cold, link, MAIN, VDEVICE_NUMBER)
        yield World(cold, link, control, VPhone(modem), main)
    except BaseException:
        print(d.log_tails())
        raise
    finally:
        if modem is not None:
            modem.close()
        problems = cold.stop()
        assert not problems, problems
