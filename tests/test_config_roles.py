"""Secrets per machine role: which secret each role's file holds, and that no other file
(nor the shared map) holds it; every file 0600 from its creation, every directory 0700; each
process reads the map and its own role's file only."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from cc_common.config import ALL_ROLES, CONFIG_FILENAME, ROLES, load_config
from cc_common.deployment import ROLE_SECRETS, init_deployment

# What each machine needs, written out (not derived from ROLE_SECRETS, which it checks).
EXPECTED = {
    "custody": {
        "custody.secret_key",
        "custody.database_url",
        "operator.token",
        "hsm_hot.rpc_secret",
        "twilio.account_sid",
        "twilio.auth_token",
        "node.rpc_user",
        "node.rpc_password",
    },
    "hsm-hot": {"hsm_hot.so_pin", "hsm_hot.user_pin", "hsm_hot.rpc_secret"},
    "hsm-cold": {"hsm_cold.so_pin", "hsm_cold.user_pin"},
    "vdevice": {"vdevice.vtest_password", "vdevice.merchant_token"},
    "merchant-site": {
        "merchant_site.vtest_password",
        "merchant_site.vdevice_token",
        "merchant_site.database_url",
    },
    "firmware-sim": {
        "firmware_sim.twilio_gateway.account_sid",
        "firmware_sim.twilio_gateway.auth_token",
        "firmware_sim.node.rpc_user",
        "firmware_sim.node.rpc_password",
    },
}
# The secrets two roles share by design (the two ends of one link), and no third role has.
PAIRS = (
    {"custody", "hsm-hot"},  # the hot HSM's RPC secret
    {"merchant-site", "vdevice"},  # the vtest password and the site's header token
    {"custody", "firmware-sim"},  # the node's RPC login and Twilio's (the simulated world)
)


def _leaves(table: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_leaves(value, name + "."))
        else:
            out[name] = value
    return out


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    init_deployment(tmp_path / "d")
    return tmp_path / "d"


def test_each_role_file_holds_exactly_its_secrets(deployment: Path) -> None:
    assert {r: {f"{s}.{k}" for s, k in keys} for r, keys in ROLE_SECRETS.items()} == EXPECTED
    files = {r: _leaves(tomllib.loads((deployment / f"{r}.toml").read_text())) for r in ROLES}
    shared_map = (deployment / CONFIG_FILENAME).read_text()
    holders: dict[str, set[str]] = {}
    for role, leaves in files.items():
        assert set(leaves) == EXPECTED[role], role
        for value in leaves.values():
            holders.setdefault(str(value), set()).add(role)
    for value, roles in holders.items():
        assert value not in shared_map
        assert len(roles) == 1 or roles in PAIRS, roles


def test_modes_from_the_start(deployment: Path) -> None:
    for path in [deployment / CONFIG_FILENAME, *(deployment / f"{r}.toml" for r in ROLES)]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for sub in (deployment, *(p for p in deployment.iterdir() if p.is_dir())):
        assert stat.S_IMODE(sub.stat().st_mode) == 0o700, sub
    assert not list(deployment.glob(".*.tmp"))


def test_a_process_reads_the_map_and_its_own_secrets_only(deployment: Path) -> None:
    cold = load_config(deployment, environ={}, role="hsm-cold")
    assert cold.section("hsm_cold").secret("user_pin")
    assert not cold.section("hsm_hot").has("user_pin")
    assert not cold.section("merchant_site").has("vtest_password")
    assert not cold.section("custody").has("secret_key")
    phone = load_config(deployment, environ={}, role="vdevice")
    everyone = load_config(deployment, environ={}, role=ALL_ROLES)
    assert phone.section("vdevice").secret("vtest_password") == everyone.section(
        "merchant_site"
    ).secret("vtest_password")
    assert not phone.section("merchant_site").has("vtest_password")
    hot = load_config(deployment, environ={}, role="hsm-hot")
    assert hot.section("hsm_hot").secret("rpc_secret") == everyone.section("hsm_hot").secret(
        "rpc_secret"
    )
    assert not hot.section("hsm_cold").has("so_pin")
    nobody = load_config(deployment, environ={})
    assert not nobody.section("hsm_cold").has("user_pin")


def test_env_overrides_still_win(deployment: Path) -> None:
    cfg = load_config(
        deployment, environ={"CC__HSM_COLD__USER_PIN": "from-the-env-123"}, role="hsm-cold"
    )
    assert cfg.section("hsm_cold").secret("user_pin") == "from-the-env-123"


def test_a_key_in_the_map_wins_over_the_role_file(deployment: Path) -> None:
    path = deployment / CONFIG_FILENAME
    text = path.read_text().replace("[vdevice]\n", '[vdevice]\nvtest_password = "set-by-hand-1"\n')
    path.write_text(text)
    cfg = load_config(deployment, environ={}, role="vdevice")
    assert cfg.section("vdevice").secret("vtest_password") == "set-by-hand-1"
