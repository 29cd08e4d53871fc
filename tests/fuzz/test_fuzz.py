"""Every parser that takes bytes from another process, fuzzed for a bounded time in the suite.

Each harness (`harnesses.py`) runs under atheris, coverage-guided, in its own process (libFuzzer
runs one target per process and exits when done), from its valid seeds with a fixed seed, for
`CC_FUZZ_SECONDS` seconds (default 2: the whole set stays under a minute). Any exception other
than the package's own errors fails the test with the traceback and the crashing input.

Longer runs: `CC_FUZZ_SECONDS=600 ./scripts/test tests/fuzz -m fuzz`, or one harness with
`.venv/bin/python -m tests.fuzz.run NAME -max_total_time=3600 corpus/NAME`.
Without atheris (no wheel for the platform), or with `CC_FUZZ_ENGINE=hypothesis`, the same
harnesses run under hypothesis, whose coverage guidance is weaker, for `CC_FUZZ_EXAMPLES`
examples each (seeds, random bytes and seeds with random splices).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.fuzz.harnesses import HARNESSES

ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("CC_FUZZ_SECONDS", "2"))
EXAMPLES = int(os.environ.get("CC_FUZZ_EXAMPLES", "300"))
ENGINE = os.environ.get("CC_FUZZ_ENGINE") or (
    "atheris" if importlib.util.find_spec("atheris") is not None else "hypothesis"
)

pytestmark = pytest.mark.fuzz


def _atheris(name: str, workdir: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "tests.fuzz.run",
        name,
        f"-max_total_time={SECONDS}",
        "-seed=1",
        "-timeout=20",
        "-rss_limit_mb=1024",
        "-print_final_stats=1",
        f"-artifact_prefix={workdir}/",
        str(workdir / "corpus"),
    ]
    (workdir / "corpus").mkdir()
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120, check=False
    )
    crashes = sorted(workdir.glob("crash-*")) + sorted(workdir.glob("timeout-*"))
    if proc.returncode != 0 or crashes:
        tail = "\n".join(proc.stderr.splitlines()[-60:])
        found = [f"{c.name}: {c.read_bytes()!r}" for c in crashes]
        pytest.fail(f"{name}: fuzzer exit {proc.returncode}\n{tail}\ninputs: {found}")
    assert "stat::number_of_executed_units" in proc.stderr, proc.stderr[-2000:]


def _hypothesis(name: str) -> None:
    harness = HARNESSES[name]()
    inputs = st.sampled_from(harness.seeds) | st.binary(max_size=4096)
    mutated = st.tuples(st.sampled_from(harness.seeds), st.binary(max_size=64), st.integers(0))

    def splice(args: tuple[bytes, bytes, int]) -> bytes:
        base, patch, at = args
        at %= len(base) + 1
        return base[:at] + patch + base[at + len(patch) :]

    @seed(1)
    @settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(inputs | mutated.map(splice))
    def fuzz(data: bytes) -> None:
        harness.check(data)

    fuzz()


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_parser_raises_only_its_own_errors(name: str, tmp_path: Path) -> None:
    if ENGINE == "atheris":
        _atheris(name, tmp_path)
    else:
        _hypothesis(name)


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_seeds_are_valid_inputs(name: str) -> None:
    """The first seed passes every check (the fuzzer starts from an input that reaches the
    deepest code, not one refused at the first check); the others at least end normally."""
    harness = HARNESSES[name]()
    harness.run(harness.seeds[0])  # no error at all, not even an allowed one
    for data in harness.seeds:
        harness.check(data)
