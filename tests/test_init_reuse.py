"""`custody init --force` never touches a deployment in use; PINs change only inside the token.

Re-initializing a used deployment used to replace every PIN while the tokens kept the old
ones (the next start burnt PIN tries). Now init refuses and says what it found; an HSM's PINs
change with its own explicit command, which changes them in the token first.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from typing import Any

import pytest

LOGIN = """
import sys
from cc_common.config import load_config
from cc_common.token.errors import TokenError
from cc_common.token.hsm_token import HsmToken
section = load_config(sys.argv[1], environ={}, role="*").section(sys.argv[2])
try:
    if len(sys.argv) > 3:
        HsmToken.reset_pin_lock(section, sys.argv[3])
    else:
        HsmToken.open(section).close()
    print("ok")
except TokenError as exc:
    print(type(exc).__name__)
"""


def _login(d: Any, section: str, so_pin: str | None = None) -> str:
    """Log in to the token in a process of its own (SoftHSM loads once per process)."""
    args = [str(d.data_dir), section] + ([so_pin] if so_pin else [])
    out = subprocess.run(
        [sys.executable, "-c", LOGIN, *args], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def _pins(d: Any, section: str) -> tuple[str, str]:
    role_file = d.data_dir / f"{section.replace('_', '-')}.toml"  # the HSM's own secrets
    raw = tomllib.loads(role_file.read_text())
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

    assert _login(d, section) == "ok"  # the new PINs log in, as user and as SO
    assert _login(d, section, so_pin=new_so) == "ok"
    # The token refuses the old ones (counted tries, below the retry limit).
    d.configure({section: {"user_pin": old_user}})
    assert _login(d, section) == "PinIncorrect"
    d.configure({section: {"user_pin": new_user}})
    assert _login(d, section, so_pin=old_so) == "PinIncorrect"
    assert _login(d, section, so_pin=new_so) == "ok"  # clears the counted tries

    d.cli("change-pin", "--dir", str(d.data_dir), "--user-only", module=module)
    assert _pins(d, section)[1] == new_so and _pins(d, section)[0] != new_user
