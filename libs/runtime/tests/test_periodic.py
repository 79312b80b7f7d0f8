"""A background pass that fails is logged and runs again; stop() ends it."""

import asyncio

from lineloop.runtime.periodic import Periodic


async def test_a_failed_pass_is_logged_and_the_next_one_runs(caplog):
    passes = []

    async def work():
        passes.append(len(passes))
        if len(passes) == 1:
            raise RuntimeError("the database is away")

    periodic = Periodic("test-pass", work, interval_s=0.01)
    await periodic.start()
    async with asyncio.timeout(5):
        while len(passes) < 3:
            await asyncio.sleep(0.01)
    await periodic.stop()
    stopped_at = len(passes)
    await asyncio.sleep(0.05)
    assert len(passes) == stopped_at  # nothing runs after stop()
    assert any("test-pass failed; next try in 0 s" in r.getMessage() for r in caplog.records)
