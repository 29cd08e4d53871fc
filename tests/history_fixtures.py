"""A node with history, mined once per session in the background and copied for each use.

Mining 1,000 blocks with unrelated payments (`cc_demo.history.make_history`) costs the story
deployment of tests/test_e2e.py most of its setup. The chain depends only on the generator's
parameters (the block count; the network is regtest everywhere), not on the deployment that
will use it: no key of the deployment is in it. So it is mined once per session, in a
throwaway deployment of its own, from the moment collection finishes (in a thread: most of the
suite waits on processes, and the node does the work in its own process), while the earlier
tests run; a test asks for `node_history(blocks)` and gets the node's data directory copied
into its deployment, which then starts against a node without txindex that has that history,
exactly as after `make_history`. Nothing of it is kept after the session.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cc_common.config import Config
from cc_demo.history import make_history
from cc_demo.support import DEMO_CONFIG
from firmware_sim.node.rpc_server import COOKIE_FILENAME
from tests.harness import Deployment

FIXTURE = "node_history"
# The block counts the selected tests ask for; mined ahead when one of them is selected.
HISTORIES = (1000,)
BUILD_TIMEOUT = 600.0


class _Build:
    """One history being mined in its own thread, into its own throwaway deployment."""

    def __init__(self, root: Path, blocks: int) -> None:
        self.blocks = blocks
        self.root = root
        self.deployment: Deployment | None = None
        self.summary: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"history-{blocks}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.deployment = Deployment(self.root, f"history-{self.blocks}", config=DEMO_CONFIG)
            self.summary = make_history(
                self.deployment.config, self.blocks, env=self.deployment.env
            )
        except BaseException as exc:  # re-raised in the test that needs this history
            self.error = exc

    def node_dir(self) -> Path:
        """The mined node's data directory, once the node has stopped."""
        self._thread.join(BUILD_TIMEOUT)
        if self._thread.is_alive():
            raise AssertionError(f"the {self.blocks}-block history not mined in time")
        if self.error is not None or self.deployment is None:
            raise AssertionError(
                f"mining the history failed: {self.error!r}; see {self.root}/*/logs"
            )
        return _node_dir(self.deployment.config)

    def wait(self) -> None:
        self._thread.join(BUILD_TIMEOUT)


def _node_dir(config: Config) -> Path:
    return config.section("firmware_sim.node").path("datadir")


class HistoryCache:
    """The session's histories by block count, each mined at most once."""

    def __init__(self) -> None:
        self._root: Path | None = None
        self._builds: dict[int, _Build] = {}
        self._lock = threading.Lock()

    def start(self, blocks: int) -> _Build:
        with self._lock:
            if blocks not in self._builds:
                if self._root is None:
                    self._root = Path(tempfile.mkdtemp(prefix="cc-history-"))
                self._builds[blocks] = _Build(self._root, blocks)
            return self._builds[blocks]

    def copy_into(self, config: Config, blocks: int) -> str:
        """Copy the node of a `blocks`-block history into the (stopped) node of `config`;
        returns what `make_history` said of the chain."""
        build = self.start(blocks)
        source = build.node_dir()
        target = _node_dir(config)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(COOKIE_FILENAME))
        assert build.summary is not None
        return build.summary

    def close(self) -> None:
        for build in self._builds.values():
            build.wait()  # its node stopped before its directory goes
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)


_CACHE = pytest.StashKey[HistoryCache]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_CACHE] = HistoryCache()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start mining as soon as a selected test will need a history."""
    if any(FIXTURE in getattr(item, "fixturenames", ()) for item in session.items):
        for blocks in HISTORIES:
            session.config.stash[_CACHE].start(blocks)


def pytest_unconfigure(config: pytest.Config) -> None:
    config.stash[_CACHE].close()


@pytest.fixture(scope="session")
def node_history(request: pytest.FixtureRequest) -> Iterator[Callable[[Config, int], str]]:
    """`node_history(config, blocks)`: the node of `config` (not running) gets a copy of the
    session's `blocks`-block history; returns `make_history`'s line about the chain."""
    yield request.config.stash[_CACHE].copy_into
