"""Run one fuzz harness under atheris (libFuzzer, coverage-guided), for as long as you like.

    .venv/bin/python -m tests.fuzz.run NAME [libFuzzer options] [corpus dirs]
    .venv/bin/python -m tests.fuzz.run --list

Examples: `-max_total_time=600` (seconds), `-runs=100000`, `-seed=1` (deterministic), a corpus
directory to keep what the fuzzer finds between runs. The harness's seeds are always added.
A crash prints the traceback and writes the input to `crash-<sha1>` (see `-artifact_prefix`);
turn it into a regression test in `tests/fuzz/test_crashes.py`. The suite runs every harness
briefly (`tests/fuzz/test_fuzz.py`, `CC_FUZZ_SECONDS` each).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.fuzz.harnesses import HARNESSES, INSTRUMENTED


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] in ("-h", "--help", "--list"):
        print(__doc__.strip() if len(argv) < 2 or argv[1] != "--list" else "\n".join(HARNESSES))
        return
    name = argv[1]
    if name not in HARNESSES:
        sys.exit(f"unknown harness {name!r}; one of: {', '.join(HARNESSES)}")
    import atheris

    with atheris.instrument_imports(include=list(INSTRUMENTED[name])):
        harness = HARNESSES[name]()
    seeds = Path(tempfile.mkdtemp(prefix=f"cc-fuzz-{name}-"))
    for n, seed in enumerate(harness.seeds):
        (seeds / f"seed-{n}").write_bytes(seed)
    options = [a for a in argv[2:] if a.startswith("-")]
    corpora = [a for a in argv[2:] if not a.startswith("-")]
    # libFuzzer writes new inputs into the first corpus directory: the user's, if given.
    atheris.Setup([argv[0], *options, *corpora, str(seeds)], harness.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
