"""A new deployment's configuration for its bitcoin network (`custody init --network`).

Regtest (the default) runs the simulated node; the other networks point `[node]` at the
operator's Bitcoin Core on its default RPC port, with a placeholder password that the
services refuse until it is set. The fee floor follows the network too.
"""

from __future__ import annotations

from typing import Any

from wallet_core.network_defaults import defaults
from wallet_core.networks import Network

NODE_PASSWORD_PLACEHOLDER = "change-me"  # noqa: S105 (refused by Section.secret)


def apply_network(raw: dict[str, Any], network: Network) -> dict[str, Any]:
    """Adapt `custody init`'s generated configuration `raw` to `network` (in place)."""
    d = defaults(network)
    raw.setdefault("deployment", {})["network"] = network.value
    raw.setdefault("custody", {})["fee_floor_sat_vb"] = d.fee_floor_sat_vb
    if d.simulated_node:
        return raw
    raw.get("firmware_sim", {}).pop("node", None)
    node = raw.setdefault("node", {})
    node["rpc_url"] = f"http://127.0.0.1:{d.rpc_port}"
    node["rpc_user"] = "custody"
    node["rpc_password"] = NODE_PASSWORD_PLACEHOLDER
    return raw


def runs_simulated_node(network: Network) -> bool:
    return defaults(network).simulated_node
