#!/usr/bin/env python3
"""The long fuzz run of `make chaos` (issue 10). The chaos target calls, from the repo root:

    .venv/bin/python tests/fuzz/run_fuzz.py --cases 1000

It runs every fuzz test in tests/fuzz with --cases generated inputs per target (the same
tests `make test` runs on a few dozen derandomized cases), then prints one row per target:
cases run and their outcomes. It exits non-zero when a test failed (a finding: the failing
input is in pytest's output, shrunk by hypothesis) or a target ran fewer than --cases cases.
The end-to-end broker round sends --cases bad records in all (its rows split them by kind).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
E2E = "e2e:"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000, help="generated inputs per target (default 1000)")
    parser.add_argument("-k", dest="select", default="", help="pytest -k expression: run only these fuzz tests")
    parser.add_argument("--report", type=Path, help="also write the tallies here as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lineloop-fuzz-") as tmp:
        report = Path(tmp) / "tally.json"
        env = {**os.environ, "LINELOOP_FUZZ_CASES": str(args.cases), "LINELOOP_FUZZ_REPORT": str(report)}
        command = [sys.executable, "-m", "pytest", "-c", "tests/pytest.ini", "--rootdir=.", "tests/fuzz", "-q",
                   "-p", "no:cacheprovider", "--timeout=3600", "--tb=short"]
        if args.select:
            command += ["-k", args.select]
        print("$", " ".join(command), f"(LINELOOP_FUZZ_CASES={args.cases})", flush=True)
        started = time.monotonic()
        tests = subprocess.run(command, cwd=ROOT, env=env)
        elapsed = time.monotonic() - started
        tally = json.loads(report.read_text()) if report.exists() else {}
    if args.report:
        args.report.write_text(json.dumps(tally, indent=1, sort_keys=True))

    short = print_table(tally, args.cases)
    print(f"\nfuzz: {sum(sum(v.values()) for v in tally.values())} cases in {len(tally)} targets, {elapsed:.0f} s; "
          f"pytest exit {tests.returncode}" + (f"; {len(short)} target(s) under {args.cases} cases" if short else ""))
    for target in short:
        print(f"  under {args.cases}: {target}")
    return tests.returncode or (1 if short or not tally else 0)


def print_table(tally: dict[str, dict[str, int]], minimum: int) -> list[str]:
    """The count table; returns the targets that ran fewer than `minimum` cases."""
    width = max((len(t) for t in tally), default=10)
    print(f"\n{'target':<{width}}  {'cases':>6}  outcomes")
    short = []
    for target in sorted(tally):
        outcomes = tally[target]
        total = sum(outcomes.values())
        shown = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0])))
        print(f"{target:<{width}}  {total:>6}  {shown}")
        if total < minimum and not target.startswith(E2E):
            short.append(target)
    e2e = sum(sum(v.values()) for t, v in tally.items() if t.startswith(E2E) and t != "e2e:broker:good")
    if e2e:
        print(f"{'e2e:broker (bad records, all kinds)':<{width}}  {e2e:>6}")
        if e2e < minimum:
            short.append("e2e:broker")
    return short


if __name__ == "__main__":
    sys.exit(main())
