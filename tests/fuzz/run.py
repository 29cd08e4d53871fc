"""Run fuzz harnesses under atheris (libFuzzer, coverage-guided).

    .venv/bin/python -m tests.fuzz.run NAME [libFuzzer options] [corpus dirs]
    .venv/bin/python -m tests.fuzz.run --all OUTDIR [--only=NAME,...] [libFuzzer options]
    .venv/bin/python -m tests.fuzz.run --list

One harness, for as long as you like: `-max_total_time=600` (seconds), `-runs=100000`,
`-seed=1` (deterministic), a corpus directory to keep what the fuzzer finds between runs. The
harness's seeds are always added. A crash prints the traceback and writes the input to
`crash-<sha1>` (see `-artifact_prefix`); keep it as a regression in `tests/fuzz/test_crashes.py`.

`--all` runs every harness with the same options, one child per core at a time, forked after the
code under test was imported and instrumented once (libFuzzer runs one target per process and
exits when done). Per harness it writes `OUTDIR/NAME.log` and crashing inputs as
`OUTDIR/NAME-crash-<sha1>`, and all exit codes to `OUTDIR/results.json`. The suite uses it
(`tests/fuzz/test_fuzz.py`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.fuzz.harnesses import HARNESSES, INSTRUMENTED, Harness


def _seed_dir(name: str, harness: Harness) -> str:
    seeds = Path(tempfile.mkdtemp(prefix=f"cc-fuzz-{name}-"))
    for n, seed in enumerate(harness.seeds):
        (seeds / f"seed-{n}").write_bytes(seed)
    return str(seeds)


def _fuzz(atheris: Any, argv0: str, harness: Harness, args: list[str], seeds: str) -> None:
    """Never returns: libFuzzer exits the process when it is done or found a crash."""
    options = [a for a in args if a.startswith("-")]
    corpora = [a for a in args if not a.startswith("-")]
    # libFuzzer writes new inputs into the first corpus directory: the user's, if given.
    atheris.Setup([argv0, *options, *corpora, seeds], harness.check)
    atheris.Fuzz()


def run_one(name: str, args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=list(INSTRUMENTED[name])):
        harness = HARNESSES[name]()
    _fuzz(atheris, sys.argv[0], harness, args, _seed_dir(name, harness))


def run_all(outdir: Path, names: list[str], args: list[str]) -> int:
    import atheris

    modules = sorted({m for name in names for m in INSTRUMENTED[name]})
    with atheris.instrument_imports(include=modules):
        harnesses = {name: HARNESSES[name]() for name in names}
    outdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, int] = {}
    running: dict[int, str] = {}
    jobs = max(1, os.cpu_count() or 1)  # children fuzz side by side, one per core

    def reap() -> None:
        pid, status = os.wait()
        name = running.pop(pid)
        results[name] = os.waitstatus_to_exitcode(status)
        print(f"{name}: exit {results[name]}", flush=True)

    for name, harness in harnesses.items():
        seeds = _seed_dir(name, harness)
        while len(running) >= jobs:
            reap()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: libFuzzer's output into the harness's log
            log = os.open(outdir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            prefix = f"-artifact_prefix={outdir}/{name}-"
            # A crash leaves as an uncaught exception: the interpreter's exit runs libFuzzer's
            # exit hook, which writes the input. Catching it here would lose the input.
            _fuzz(atheris, sys.argv[0], harness, [*args, prefix], seeds)
            os._exit(70)  # only if libFuzzer returned, which it does not
        running[pid] = name
    while running:
        reap()
    (outdir / "results.json").write_text(json.dumps(results, indent=1))
    return 0 if not any(results.values()) else 1


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
    elif argv[1] == "--list":
        print("\n".join(HARNESSES))
    elif argv[1] == "--all":
        if len(argv) < 3:
            sys.exit("--all needs an output directory")
        only = [a for a in argv[3:] if a.startswith("--only=")]
        names = only[-1].removeprefix("--only=").split(",") if only else list(HARNESSES)
        unknown = [n for n in names if n not in HARNESSES]
        if unknown:
            sys.exit(f"unknown harness(es) {', '.join(unknown)}")
        sys.exit(run_all(Path(argv[2]), names, [a for a in argv[3:] if a not in only]))
    elif argv[1] not in HARNESSES:
        sys.exit(f"unknown harness {argv[1]!r}; one of: {', '.join(HARNESSES)}")
    else:
        run_one(argv[1], argv[2:])


if __name__ == "__main__":
    main(sys.argv)
