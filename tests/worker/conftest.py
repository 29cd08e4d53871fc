"""The rig the custody worker's tests share: one regtest node per module, and a fresh custody
database per test on SQLite and on PostgreSQL (skipped, with the reason, when PostgreSQL is
not reachable)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from custody.chain.rpc import BitcoinRPC
from tests.node_fixtures import Faucet, NodeProcess, running_node
from tests.worker_fixtures import (
    db_url_for,
    fresh_factory,
    fresh_pg_database,
    node_faucet,
)


@pytest.fixture(scope="module")
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    yield from running_node(tmp_path_factory, f"{name}-node")


@pytest.fixture(scope="module")
def rpc(node: NodeProcess) -> BitcoinRPC:
    return node.rpc()


@pytest.fixture(scope="module")
def faucet(rpc: BitcoinRPC) -> Faucet:
    return node_faucet(rpc)


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    yield from fresh_pg_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return db_url_for(request, tmp_path)


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    yield from fresh_factory(db_url)
