"""Every parser that takes bytes from another process, fuzzed for a bounded time in the suite.

Each harness (`harnesses.py`) runs under atheris, coverage-guided, in its own process forked by
`run.py --all` (libFuzzer runs one target per process and exits when done), from its valid
seeds with a fixed seed, for `CC_FUZZ_SECONDS` seconds (default 2: about 20 s of CPU in all).
Any exception other than the package's own errors fails the test with the traceback and the
crashing input.

Longer runs: `CC_FUZZ_SECONDS=600 ./scripts/test tests/fuzz -m fuzz`, or one harness with
`.venv/bin/python -m tests.fuzz.run NAME -max_total_time=3600 corpus/NAME`.
Without atheris (no wheel for the platform), or with `CC_FUZZ_ENGINE=hypothesis`, the same
harnesses run under hypothesis, whose coverage guidance is weaker, for `CC_FUZZ_EXAMPLES`
examples each (seeds, random bytes and seeds with random splices).
"""

from __future__ import annotations

import importlib.util
import json
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


@pytest.fixture(scope="module")
def atheris_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every harness fuzzed once (`run.py --all`): one import and instrumentation, one forked
    libFuzzer child per harness. Per-harness results are checked by the tests below."""
    out = tmp_path_factory.mktemp("fuzz")
    cmd = [
        sys.executable,
        "-m",
        "tests.fuzz.run",
        "--all",
        str(out),
        f"-max_total_time={SECONDS}",
        "-seed=1",
        "-timeout=20",
        "-rss_limit_mb=1024",
        "-print_final_stats=1",
    ]
    timeout = len(HARNESSES) * (SECONDS + 30) + 120
    subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=timeout, check=False)
    return out


def _atheris(name: str, out: Path) -> None:
    results = json.loads((out / "results.json").read_text())
    log = (out / f"{name}.log").read_text(errors="replace")
    crashes = sorted(out.glob(f"{name}-crash-*")) + sorted(out.glob(f"{name}-timeout-*"))
    if results[name] != 0 or crashes:
        tail = "\n".join(log.splitlines()[-60:])
        found = [f"{c.name}: {c.read_bytes()!r}" for c in crashes]
        pytest.fail(f"{name}: fuzzer exit {results[name]}\n{tail}\ninputs: {found}")
    assert "stat::number_of_executed_units" in log, log[-2000:]


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
def test_parser_raises_only_its_own_errors(name: str, request: pytest.FixtureRequest) -> None:
    if ENGINE == "atheris":
        _atheris(name, request.getfixturevalue("atheris_run"))
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


def test_the_runner_reports_a_crash_and_passes_domain_errors(tmp_path: Path) -> None:
    """The machinery can fail: a harness whose parser raises IndexError on one input makes the
    runner exit non-zero and write that input; its allowed error on another input does not."""
    if ENGINE != "atheris":
        pytest.skip("atheris is not installed")
    env = {**os.environ, "CC_FUZZ_SELFTEST": "1"}
    cmd = [sys.executable, "-m", "tests.fuzz.run", "--all", str(tmp_path), "--only=selftest,rawtx"]
    cmd += ["-runs=200", "-seed=1"]
    proc = subprocess.run(
        cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert proc.returncode == 1 and results["selftest"] != 0
    assert [c.read_bytes() for c in tmp_path.glob("selftest-crash-*")] == [b"crash"]
    assert "IndexError" in (tmp_path / "selftest.log").read_text()
    assert results["rawtx"] == 0 and not list(tmp_path.glob("rawtx-crash-*"))
