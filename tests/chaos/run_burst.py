"""Back-pressure: a 10x burst of frames while ingest's object store answers slowly.

Ingest reaches S3 through a relay that delays every request chunk (--delay-s). The gateway
sends --rate frames/s, then a burst at 10x that rate. Consumers must slow down (lag grows in
the broker, where it is durable) instead of buffering without bound in memory: the peak RSS
of every service during the burst and its catch-up stays under --rss-bound-mb, and the checker
proves every frame was kept once. Exit 1 otherwise.

    .venv/bin/python tests/chaos/run_burst.py --rate 4 --burst-frames 400 --delay-s 0.2
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaoslib import SERVICES, Checker, DelayRelay, Loop, Traffic, read_ledger  # noqa: E402

log = logging.getLogger("chaos")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=4.0, help="steady frames/s; the burst is 10x")
    p.add_argument("--steady-frames", type=int, default=80)
    p.add_argument("--burst-frames", type=int, default=400)
    p.add_argument("--delay-s", type=float, default=0.2, help="delay per request chunk to the object store")
    p.add_argument("--rss-bound-mb", type=float, default=1024.0, help="per service (a 1 GiB pod)")
    p.add_argument("--catch-up-timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    started = time.monotonic()
    state_dir = Path(tempfile.mkdtemp(prefix="lineloop-burst-")) / "state"
    loop = Loop(state_dir)
    ledger = state_dir.parent / "ledger.jsonl"
    host, port = "127.0.0.1", loop.config.s3_port
    with DelayRelay(host, port, args.delay_s) as relay:
        original_env = loop.fleet.env

        def env(name: str) -> dict[str, str]:  # only ingest's object store is slow
            e = original_env(name)
            if name == "ingest":
                e["LINELOOP_S3_ENDPOINT"] = f"http://127.0.0.1:{relay.port}"
            return e

        loop.fleet.env = env
        peaks: dict[str, float] = {}
        baseline: dict[str, float] = {}
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                for name, mb in loop.rss_mb().items():
                    peaks[name] = max(peaks.get(name, 0.0), mb)
                time.sleep(0.25)

        try:
            loop.up()
            checker = Checker(loop)
            Traffic(loop, ledger, line="burst-line", frames=args.steady_frames, rate=args.rate, seed=1).start().join(600)
            checker.wait_caught_up({e["frame_id"] for e in read_ledger(ledger)}, args.catch_up_timeout)
            baseline = loop.rss_mb()
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            burst = Traffic(loop, ledger, line="burst-line", frames=args.burst_frames, rate=10 * args.rate, seed=2).start()
            burst.join(1200)
            sent_s = time.monotonic() - burst.started_at
            waited = checker.wait_caught_up({e["frame_id"] for e in read_ledger(ledger)}, args.catch_up_timeout)
            sampling.set()
            sampler.join(5)
            verdict = checker.check(read_ledger(ledger))
        finally:
            loop.down()
    print(f"\nburst of {args.burst_frames} frames at {10 * args.rate:g}/s (sent in {sent_s:.0f} s), object store delayed "
          f"{args.delay_s:g} s per request chunk for ingest; caught up "
          f"{'NEVER' if waited is None else f'{waited:.0f} s after the last frame'}")
    print(f"{'service':<10} {'RSS before MB':>14} {'peak RSS MB':>12}")
    for name in SERVICES:
        print(f"{name:<10} {baseline.get(name, 0):>14.0f} {peaks.get(name, 0):>12.0f}")
    print(f"checker: sent {verdict.sent}, lost {verdict.lost}, duplicates {verdict.duplicates_in_effect}, "
          f"orphans {verdict.orphans}, missing {verdict.missing_objects}; {(time.monotonic() - started) / 60:.1f} min")
    over = {n: p for n, p in peaks.items() if p > args.rss_bound_mb}
    if over:
        print(f"over the {args.rss_bound_mb:g} MB bound: {over}")
    return 0 if verdict.ok and waited is not None and not over else 1


if __name__ == "__main__":
    sys.exit(main())
