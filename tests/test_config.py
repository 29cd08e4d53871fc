"""Configuration: one TOML file per deployment, environment overrides, generated secrets."""

from __future__ import annotations

import stat

import pytest

from cc_common.config import apply_env_overrides, load_config
from cc_common.deployment import init_deployment
from cc_common.errors import ConfigError
from custody.cli import main as custody_main


def test_init_writes_private_config_with_fresh_secrets(tmp_path):
    a = init_deployment(tmp_path / "a")
    b = init_deployment(tmp_path / "b")
    assert stat.S_IMODE(a.path.stat().st_mode) == 0o600
    for section, key in [
        ("hsm_hot", "user_pin"),
        ("hsm_hot", "so_pin"),
        ("hsm_cold", "user_pin"),
        ("hsm_hot", "rpc_secret"),
        ("custody", "secret_key"),
        ("twilio", "auth_token"),
        ("node", "rpc_password"),
    ]:
        va = a.section(section).secret(key)
        vb = b.section(section).secret(key)
        assert va != vb, f"[{section}] {key} must be generated per deployment"
    for d in ("logs", "run", "dev"):
        assert (tmp_path / "a" / d).is_dir()


def test_init_refuses_to_overwrite_without_force(tmp_path):
    init_deployment(tmp_path)
    with pytest.raises(ConfigError, match="already exists"):
        init_deployment(tmp_path)
    init_deployment(tmp_path, force=True)


def test_cli_init_reports_error_cleanly(tmp_path, capsys):
    assert custody_main(["init", "--dir", str(tmp_path)]) == 0
    assert custody_main(["init", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err
    assert "Traceback" not in err


def test_env_overrides_convert_to_the_type_they_replace(tmp_path):
    init_deployment(tmp_path)
    cfg = load_config(
        tmp_path,
        environ={
            "CC__SERIAL__BAUD": "9600",
            "CC__FIRMWARE_SIM__CARRIER__LOSS": "0.5",
            "CC__CUSTODY__HOST": "127.0.0.2",
        },
    )
    assert cfg.section("serial").int("baud") == 9600
    assert cfg.section("firmware_sim.carrier").float("loss") == 0.5
    assert cfg.section("custody").str("host") == "127.0.0.2"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CC__SERIAL__BAUD", "fast", "CC__SERIAL__BAUD must be an integer"),
        ("CC__SERIAL", "x", "must look like CC__SECTION__KEY"),
        ("CC__FIRMWARE_SIM__MODEMS", "x", "overrides a table or list"),
    ],
)
def test_bad_env_override_names_the_variable(tmp_path, name, value, message):
    init_deployment(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path, environ={name: value})


@pytest.mark.parametrize("value", ["", "change-me", "secret", "short"])
def test_placeholder_secret_is_refused(tmp_path, value):
    init_deployment(tmp_path)
    cfg = load_config(tmp_path, environ={"CC__HSM_HOT__USER_PIN": value})
    with pytest.raises(ConfigError, match=r"\[hsm_hot\] user_pin is missing or a placeholder"):
        cfg.section("hsm_hot").secret("user_pin")


def test_missing_config_says_how_to_create_it(tmp_path):
    with pytest.raises(ConfigError, match="custody init"):
        load_config(tmp_path / "nowhere", environ={})


def test_typed_accessors_name_the_key(tmp_path):
    init_deployment(tmp_path)
    serial = load_config(tmp_path, environ={}).section("serial")
    with pytest.raises(ConfigError, match=r"\[serial\] hot_port must be an integer"):
        serial.int("hot_port")
    with pytest.raises(ConfigError, match=r"\[serial\] nope is missing"):
        serial.str("nope")
    assert serial.path("hot_port") == tmp_path.resolve() / "dev" / "serial-hot"
    assert serial.port_url("hot_port").endswith("dev/serial-hot")


def test_env_override_of_table_path_is_rejected():
    raw = {"a": {"b": 1}}
    with pytest.raises(ConfigError, match="is not a table"):
        apply_env_overrides(raw, {"CC__A__B__C": "1"})
