"""The short chaos run in `make test`: a small loop (stack + ingest, monitor, labeling as
processes), a gateway run, one fault each, and the checker's proof that no frame was lost
or counted twice. The full set of faults is `make chaos` (tests/chaos/run_chaos.py).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaoslib import Checker, Loop, Traffic, read_ledger  # noqa: E402

# What a stopping service may take: gRPC grace (5 s), the consumers' in-flight batch, the
# outbox flushed, the stop hooks. Kubernetes' default terminationGracePeriodSeconds is 30.
SIGTERM_BOUND_S = 30.0
CONSUMERS = ["ingest", "monitor", "labeling"]  # what the checker reads; the rest play no part
FRAMES = 120  # 12 s of traffic: both faults land while frames flow
RATE = 10.0


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    environ = dict(os.environ)
    small = Loop(tmp_path_factory.mktemp("chaos") / "state")
    try:
        small.up(CONSUMERS)
        yield small
    finally:
        small.down()
    # The loop's environment (its stack's addresses, its policies) must not outlive it.
    assert dict(os.environ) == environ


def _run_with(loop: Loop, tmp_path: Path, seed: int, fault) -> tuple[list[dict], object]:
    ledger = tmp_path / "ledger.jsonl"
    traffic = Traffic(loop, ledger, line=f"short-{seed}", frames=FRAMES, rate=RATE, seed=seed).start()
    time.sleep(FRAMES / RATE / 4)  # frames are in flight in every consumer
    outcome = fault()
    traffic.join(timeout=300)
    entries = read_ledger(ledger)
    checker = Checker(loop)
    waited = checker.wait_caught_up({e["frame_id"] for e in entries}, timeout=180)
    verdict = checker.check(entries)
    assert waited is not None, f"frames not in effect after 180 s: {dict(verdict.details)}"
    return entries, verdict, outcome


def _assert_kept(entries, verdict) -> None:
    assert len(entries) == FRAMES
    assert verdict.lost == 0, dict(verdict.details)
    assert verdict.duplicates_in_effect == 0, dict(verdict.details)
    assert verdict.orphans == 0 and verdict.missing_objects == 0, dict(verdict.details)
    assert verdict.sha_mismatches == 0 and not verdict.inconsistent, (dict(verdict.details), verdict.inconsistent)


def test_sigterm_then_kill9_of_ingest_mid_stream_exit_cleanly_and_lose_and_duplicate_nothing(loop, tmp_path):
    # Ingest holds the most in flight (fetch, decode, store, score). One gateway run takes both
    # faults in turn: a SIGTERM (must exit 0 within the bound), then a SIGKILL after the restart.
    # Every service and the other faults: `make chaos`, where the time is.
    def terminate_restart_kill_restart():
        proc = loop.process("ingest")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=SIGTERM_BOUND_S)  # our child: wait() gives its exit code
        except psutil.TimeoutExpired:
            proc.kill()
            pytest.fail(f"ingest still running {SIGTERM_BOUND_S:.0f} s after SIGTERM")
        seconds = time.monotonic() - started
        loop.restart("ingest")
        time.sleep(1.0)  # frames in flight again
        loop.kill9("ingest")
        time.sleep(2.0)
        loop.restart("ingest")
        return code, seconds

    entries, verdict, (code, seconds) = _run_with(loop, tmp_path, seed=11, fault=terminate_restart_kill_restart)
    assert code == 0, f"ingest exited {code} on SIGTERM"
    assert seconds < SIGTERM_BOUND_S
    _assert_kept(entries, verdict)
