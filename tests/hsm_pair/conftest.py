"""The HSM pair every module of this folder runs against: one deployment per module with
`firmware-sim serve`, `hsm-cold serve` and `hsm-hot serve` (`pair`), custody's own
`HotHsmClient` on the hot RPC (`client`), the regtest node (`node`), and a confirmed
`account`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from custody.chain import BitcoinRPC
from custody.hsm_client import HotHsmClient
from tests.harness import Deployment
from tests.hsm_fixtures import HsmPair
from tests.hsm_pair.rig import LINK_TIMEOUT, Account


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HsmPair]:
    d = Deployment(
        tmp_path_factory.mktemp("hsm-pair"),
        config={
            "hsm_hot": {
                "link_timeout": LINK_TIMEOUT,
                "max_requests_per_minute": 10_000,
                # above the cold ones: the cold refusal is the one seen
                "max_fee_sat": 10_000_000,
                "max_fee_rate": 100_000,
            }
        },
    )
    with d.serving():
        yield HsmPair(d).start()


@pytest.fixture(scope="module")
def client(pair: HsmPair) -> HotHsmClient:
    return pair.client()


@pytest.fixture(scope="module")
def node(pair: HsmPair) -> BitcoinRPC:
    pair.d.start_cli("node", "firmware_sim.cli", "node", timeout=60)
    return BitcoinRPC.from_config(pair.d.config)


@pytest.fixture(scope="module")
def account(pair: HsmPair, client: HotHsmClient) -> Account:
    return Account(client, pair)
