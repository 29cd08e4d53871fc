"""What a deployment takes from its network besides address formats (`wallet_core.networks`):
Bitcoin Core's default RPC port and the fee floor of sends.

`custody init --network NAME` writes these into the new configuration; the address prefixes
and the BIP44 coin type follow from `[deployment] network` wherever keys are derived.
"""

from __future__ import annotations

from dataclasses import dataclass

from wallet_core.networks import Network


@dataclass(frozen=True)
class NetworkDefaults:
    rpc_port: int  # Bitcoin Core's -rpcport default
    fee_floor_sat_vb: float  # the lowest fee rate a send uses
    simulated_node: bool  # the demo's simulated node serves this network


DEFAULTS: dict[Network, NetworkDefaults] = {
    Network.MAINNET: NetworkDefaults(8332, 2.0, False),
    Network.TESTNET: NetworkDefaults(18332, 1.0, False),
    Network.SIGNET: NetworkDefaults(38332, 1.0, False),
    Network.REGTEST: NetworkDefaults(18443, 1.0, True),
}


def defaults(network: Network) -> NetworkDefaults:
    return DEFAULTS[network]
