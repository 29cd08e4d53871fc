"""The V-device rig shared by its test modules: a module's `firmware-sim serve` (`sim`) and
`make_rig`, a factory of provisioned V-devices (`Rig`) with their stand-ins.

Registered for every test by `pytest_plugins` in tests/conftest.py, so test modules ask for
`sim` and `make_rig` by name; a module may still define its own `sim`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest

from cc_common.deployment import COLD_NUMBERS, OWNER_NUMBER, VDEVICE_NUMBER
from cc_common.fingerprint import fingerprint
from cc_common.sms.modem import GsmModem
from cc_common.spending_policy import DEFAULT_POLICY, SpendingPolicy
from tests.firmware_fixtures import FirmwareSim, firmware_sims
from tests.harness import TestProcess, wait_until
from tests.vdevice_fixtures import (
    HOT_TOKEN,
    SITE_TOKEN,
    VTEST_PASSWORD,
    ColdStandIn,
    WebStandIn,
    status_file,
)
from vdevice.state import new_key


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirmwareSim]:
    with firmware_sims(tmp_path_factory) as start:
        yield start("vdev")


@dataclass
class Rig:
    """One V-device under test with its stand-ins; `start()` runs `vdevice run`."""

    sim: FirmwareSim
    web: WebStandIn
    cold: ColdStandIn
    identity: bytes
    proc: TestProcess | None = None
    totp_secret: str = ""  # the owner's authenticator, from `vdevice provision`'s output
    last_step: int = 0

    def owner_code(self) -> str:
        """A code the owner's authenticator shows, for a time step not used yet (each code
        is good once: a second command within 30 s takes the next step's code)."""
        step = max(int(time.time() // 30), self.last_step + 1)
        wait_until(lambda: int(time.time() // 30) + 1 >= step, 35, "the next TOTP step")
        self.last_step = step
        return pyotp.TOTP(self.totp_secret).at(step * 30)

    @property
    def d(self) -> Any:
        return self.sim.deployment

    def start(self, wait: bool = True) -> TestProcess:
        self.proc = self.d.start_cli("vdevice", "vdevice.cli", "run", wait=wait, timeout=30)
        return self.proc

    def status(self) -> dict[str, Any]:
        return status_file(self.d.run_dir)() or {}

    def wait_status(self, check: Callable[[dict[str, Any]], Any], what: str, timeout: float = 15):
        def probe() -> Any:
            if self.proc is not None:
                self.proc.assert_running()
            return check(self.status())

        return wait_until(probe, timeout, what)

    def wait_channel(self, timeout: float = 15.0) -> str:
        def live() -> str | None:
            ch = self.status().get("channel")
            if ch and ch["live"] and any(c.c_id == ch["c_id"] for c in self.cold.live_channels()):
                return ch["c_id"]
            return None

        return self.wait_status(lambda s: live(), "a live channel", timeout)

    def owner_texts(self) -> list[str]:
        return [m["text"] for m in self.sim.control.inbox(OWNER_NUMBER)]

    def wait_owner(self, needle: str, timeout: float = 15.0) -> list[str]:
        return self.wait_status(
            lambda s: [t for t in self.owner_texts() if needle in t],
            f"{needle!r} in the owner's inbox",
            timeout,
        )

    def owner_says(self, text: str) -> None:
        self.sim.control.inject_sms(VDEVICE_NUMBER, text, sender=OWNER_NUMBER)


POLICY_KEYS = set(SpendingPolicy.__dataclass_fields__)


def totp_secret_of(provision_output: str) -> str:
    """The secret inside the otpauth URI `vdevice provision` shows once."""
    (uri,) = [line for line in provision_output.splitlines() if line.startswith("otpauth://")]
    return parse_qs(urlparse(uri).query)["secret"][0]


def _vdevice_cli(sim: FirmwareSim, *args: str, check: bool = True) -> Any:
    return sim.deployment.cli(
        *args, "--dir", str(sim.deployment.data_dir), module="vdevice.cli", check=check
    )


@pytest.fixture
def make_rig(sim: FirmwareSim, request: pytest.FixtureRequest) -> Iterator[Callable[..., Rig]]:
    """Factory: a fresh V-device state, stand-ins, provisioning; `**vdevice` overrides config."""
    made: list[Rig] = []
    sim.clean_carrier()

    def make(cold_kwargs: dict[str, Any] | None = None, **vdevice: Any) -> Rig:
        web = WebStandIn()
        name = request.node.name.replace("[", "-").replace("]", "")
        config = {
            "state_dir": f"vdevice-{name}",
            "merchant_url": web.site_url,
            "merchant_token": SITE_TOKEN,
            "vtest_password": VTEST_PASSWORD,
            "poll_interval": 0.2,
            "wait_for_provisioning": False,
            "sms_reply_timeout": 2.0,
            "sms_max_attempts": 4,
            "stall_retry": 2.0,
            "tx_poll_max_interval": 0.5,
            "low_balance_sat": 0,
        }
        policy = {k: vdevice.pop(k) for k in list(vdevice) if k in POLICY_KEYS}
        config.update(vdevice)
        sim.deployment.configure({"vdevice": {**config, "policy": policy}})
        identity = bytes.fromhex(_vdevice_cli(sim, "init").stdout.splitlines()[0])
        cold_priv, cold_pub = new_key()
        modems = {
            number: GsmModem(
                str(sim.modem_link(name)), own_number=number, name=name, poll_interval=0.1
            )
            for number, name in zip(COLD_NUMBERS, ("cold-a", "cold-b"), strict=True)
        }
        cold = ColdStandIn(
            modems,
            identity,
            cold_priv,
            policy=SpendingPolicy.from_mapping(policy, DEFAULT_POLICY),
            **(cold_kwargs or {}),
        )
        bundle = {
            "account_id": 1,
            "cold_identity": cold_pub.hex(),
            "cold_numbers": list(COLD_NUMBERS),
            "hot_token": HOT_TOKEN,
            "custody_url": web.custody_url,
        }
        path = sim.deployment.data_dir / f"bundle-{name}.json"
        path.write_text(json.dumps({"vdevice_bundle": bundle}))
        out = _vdevice_cli(
            sim, "provision", "--bundle", str(path), "--cold-fingerprint", fingerprint(cold_pub)
        ).stdout
        sim.control.inbox(OWNER_NUMBER, clear=True)
        rig = Rig(sim, web, cold, identity, totp_secret=totp_secret_of(out))
        made.append(rig)
        return rig

    yield make
    problems: list[str] = []
    for rig in made:
        if rig.proc is not None:
            problems += rig.proc.stop()
        rig.cold.close()
        rig.web.close()
    sim.clean_carrier()
    assert not problems, problems
