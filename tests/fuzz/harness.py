"""How every fuzz target runs: a hypothesis profile, a case count per target, a tally of outcomes.

`make test` runs each target on a few dozen derandomized cases (the same ones every run);
`make chaos` runs tests/fuzz/run_fuzz.py, which sets LINELOOP_FUZZ_CASES (1,000 or more)
and LINELOOP_FUZZ_REPORT, a JSON file of the tallies it prints as a table.

A case's outcome is a short label ("applied", "rejected:<reason>", "grpc:NOT_FOUND");
anything else a target raises fails the test with hypothesis's smallest failing input.
Async targets run on the test's event loop, driven from a worker thread, with a timeout
per case: a hang is a failure, not a stuck test run.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TEST_CASES = 30
CASES = int(os.environ.get("LINELOOP_FUZZ_CASES", TEST_CASES))
LONG_RUN = "LINELOOP_FUZZ_CASES" in os.environ
CASE_TIMEOUT_S = 60.0

settings.register_profile(
    "lineloop-fuzz",
    max_examples=CASES,
    deadline=None,  # a slow case on a busy machine is not a failure; a hang is (CASE_TIMEOUT_S)
    derandomize=not LONG_RUN,  # make test: the same cases every run
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example],
)
PROFILE = settings.get_profile("lineloop-fuzz")

TALLY: dict[str, Counter] = {}


def record(target: str, outcome: str) -> None:
    TALLY.setdefault(target, Counter())[outcome] += 1


def run_cases(target: str, strategy: st.SearchStrategy, check: Callable[[object], str], *, cases: int | None = None,
              tally: bool = True) -> None:
    """Run `check` on `cases` drawn inputs; each returns its outcome label (tallied under `target`)."""

    @settings(PROFILE, max_examples=cases or CASES)
    @given(strategy)
    def case(value) -> None:
        outcome = check(value)
        if tally:
            record(target, outcome)

    case()


async def run_cases_async(
    target: str, strategy: st.SearchStrategy, check: Callable[[object], Awaitable[str]], *, cases: int | None = None,
) -> None:
    """`run_cases` for a coroutine `check`, run on this event loop (where the servers under test live)."""
    loop = asyncio.get_running_loop()

    def on_loop(value) -> str:
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(check(value), CASE_TIMEOUT_S), loop)
        return future.result()

    await asyncio.to_thread(run_cases, target, strategy, on_loop, cases=cases)


def write_report() -> None:
    path = os.environ.get("LINELOOP_FUZZ_REPORT")
    if not path or not TALLY:
        return
    report = Path(path)
    existing = json.loads(report.read_text()) if report.exists() and report.stat().st_size else {}
    for target, outcomes in TALLY.items():
        merged = Counter(existing.get(target, {}))
        merged.update(outcomes)
        existing[target] = dict(merged)
    report.write_text(json.dumps(existing, indent=1, sort_keys=True))
