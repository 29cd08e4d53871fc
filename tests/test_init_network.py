"""`custody init --network`: everything network-specific follows from the one choice."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cc_common.config import ALL_ROLES, load_config
from cc_common.errors import ConfigError
from custody import supervisor as sv
from custody.admin_cli import deployment_network
from custody.chain.rpc import BitcoinRPC
from custody.cli import main as custody_main
from custody.supervisor_cli import without_simulated_node
from custody.watcher import WatcherSettings
from wallet_core.networks import Network
from wallet_core.wallets import bip84_account_path


@pytest.mark.parametrize(
    ("network", "port", "floor", "coin_type", "hrp"),
    [
        ("mainnet", 8332, 2.0, 0, "bc"),
        ("testnet", 18332, 1.0, 1, "tb"),
        ("signet", 38332, 1.0, 1, "tb"),
        ("regtest", None, 1.0, 1, "bcrt"),
    ],
)
def test_network_decides_ports_fees_prefixes_and_coin_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], network: str, port, floor, coin_type, hrp
) -> None:
    assert custody_main(["init", "--dir", str(tmp_path), "--network", network]) == 0
    assert f"for {network}" in capsys.readouterr().out
    raw = tomllib.loads((tmp_path / "chaincloud.toml").read_text())
    config = load_config(tmp_path, environ={}, role=ALL_ROLES)
    net = deployment_network(config)
    assert net is Network.from_name(network) and net.hrp == hrp
    assert bip84_account_path(net, 0)[1] == coin_type | 0x80000000
    assert raw["custody"]["fee_floor_sat_vb"] == floor
    specs = without_simulated_node(config, sv.plan(config))
    if port is None:  # regtest: the simulated node on a free port
        assert "node" in raw["firmware_sim"]
        assert "node" in [s.name for s in specs]
        assert raw["node"]["rpc_url"].endswith(str(raw["firmware_sim"]["node"]["port"]))
    else:
        assert "node" not in raw["firmware_sim"]
        assert raw["node"]["rpc_url"] == f"http://127.0.0.1:{port}"
        assert "node" not in [s.name for s in specs]
        assert "the simulated node is regtest only" in capsys.readouterr().out
        with pytest.raises(ConfigError, match="rpc_password"):  # until the operator sets it
            BitcoinRPC.from_config(config)
    assert WatcherSettings.from_config(config).start_height == -1


def test_unknown_network_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        custody_main(["init", "--dir", str(tmp_path), "--network", "litecoin"])
    assert "invalid choice: 'litecoin'" in capsys.readouterr().err
    assert not (tmp_path / "chaincloud.toml").exists()
