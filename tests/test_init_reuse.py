"""`custody init --force` never touches a deployment in use; PINs change only inside the token.

Re-initializing a used deployment used to replace every PIN while the tokens kept the old
ones (the next start burnt PIN tries). Now init refuses and says what it found; an HSM's PINs
change with its own explicit command, which changes them in the token first.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from cc_common.config import load_config
from cc_common.token.errors import PinIncorrect
from cc_common.token.hsm_token import HsmToken


def _pins(d: Any, section: str) -> tuple[str, str]:
    raw = tomllib.loads(d.config_path.read_text())
    return raw[section]["user_pin"], raw[section]["so_pin"]


def test_init_force_on_a_fresh_deployment_still_regenerates(deployment: Any) -> None:
    d = deployment()
    before = _pins(d, "hsm_hot")
    d.cli("init", "--dir", str(d.data_dir), "--force")
    assert _pins(d, "hsm_hot") != before


def test_init_force_refuses_a_used_deployment_and_says_what_it_found(deployment: Any) -> None:
    d = deployment()
    d.cli("init", "--dir", str(d.data_dir), module="hsm_cold.cli")
    d.cli("db", "upgrade", "--dir", str(d.data_dir))
    config_before = d.config_path.read_bytes()
    out = d.cli("init", "--dir", str(d.data_dir), "--force", check=False)
    assert out.returncode == 2 and out.stdout == ""
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"error: refusing to overwrite {d.config_path}")
    assert f"the cold HSM token is initialized ({d.data_dir / 'hsm-cold' / 'tokens'})" in line
    assert "cold HSM state exists" in line and "hsm-cold change-pin" in line
    assert "custody database" not in line  # migrated but empty: no data yet
    assert d.config_path.read_bytes() == config_before, "nothing changed"


@pytest.mark.parametrize(
    ("module", "section"), [("hsm_cold.cli", "hsm_cold"), ("hsm_hot.cli", "hsm_hot")]
)
def test_change_pin_changes_the_token_then_the_config(
    deployment: Any, module: str, section: str
) -> None:
    d = deployment()
    if module != "hsm_cold.cli":
        d.cli("init", "--dir", str(d.data_dir), module="hsm_cold.cli")  # the pairing file
    d.cli("init", "--dir", str(d.data_dir), module=module)
    old_user, old_so = _pins(d, section)
    out = d.cli("change-pin", "--dir", str(d.data_dir), module=module)
    assert "user and SO PINs" in out.stdout and "changed inside the token" in out.stdout
    new_user, new_so = _pins(d, section)
    assert new_user != old_user and new_so != old_so
    assert old_user not in out.stdout + out.stderr and new_user not in out.stdout + out.stderr
    assert (d.config_path.stat().st_mode & 0o777) == 0o600

    config = load_config(d.data_dir, environ={})
    with HsmToken.open(config.section(section)) as token:  # the new PIN logs in
        assert token.label
    # The token refuses the old PIN (one counted try; the retry guard stays below its limit).
    d.configure({section: {"user_pin": old_user}})
    with pytest.raises(PinIncorrect):
        HsmToken.open(load_config(d.data_dir, environ={}).section(section))
    d.configure({section: {"user_pin": new_user}})
    HsmToken.reset_pin_lock(load_config(d.data_dir, environ={}).section(section), new_so)

    d.cli("change-pin", "--dir", str(d.data_dir), "--user-only", module=module)
    assert _pins(d, section)[1] == new_so and _pins(d, section)[0] != new_user
