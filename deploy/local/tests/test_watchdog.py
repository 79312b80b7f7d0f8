"""The stack's watchdog (`EmbeddedStack.heal`): a dead server and a store that runs but refuses
writes are restarted by the stack itself; `up` starts the watchdog process and `down` stops it."""

import os
import signal

import pytest

from lineloop.stack.embedded import S3_REFUSALS_TO_RESTART, WATCHDOG, EmbeddedStack
from lineloop.stack.process import ManagedProcess


def pid_of(stack: EmbeddedStack, name: str) -> int:
    return next(s.pid for s in stack.status() if s.name == name)


@pytest.mark.parametrize("own_stack", [{"watchdog": True}], indirect=True)
def test_a_dead_server_and_a_store_refusing_writes_are_restarted(own_stack):
    own_stack.write_probe_timeout_s = 1.0
    watchdog = ManagedProcess(WATCHDOG, own_stack.config.run_dir, own_stack.config.logs_dir / f"{WATCHDOG}.log")
    assert watchdog.running() is not None  # `up` started it
    watchdog.stop()  # the passes below are this test's own, not raced by the process's
    assert own_stack.heal() == []  # all well: nothing restarted

    # kill -9 of Triton: restarted at the next pass.
    os.killpg(pid_of(own_stack, "triton"), signal.SIGKILL)
    reported: list[str] = []
    assert own_stack.heal(reported.append) == ["triton"]
    assert any("triton: not running: restarting" in line for line in reported), reported
    assert all(s.healthy for s in own_stack.status())

    # The store hangs (its process runs, every write fails): restarted after the third refused probe.
    store = pid_of(own_stack, "s3")
    os.killpg(store, signal.SIGSTOP)
    try:
        for _ in range(S3_REFUSALS_TO_RESTART - 1):
            assert own_stack.heal() == []  # not yet: one refused probe is not a dead store
        assert own_stack.heal(reported.append) == ["s3"]
    finally:
        try:
            os.killpg(store, signal.SIGCONT)
        except ProcessLookupError:
            pass  # the restart has killed it
    assert any(f"s3: running but refused {S3_REFUSALS_TO_RESTART} writes in a row: restarting" in line
               for line in reported), reported
    assert pid_of(own_stack, "s3") != store and own_stack.heal() == []  # writes again

    own_stack.up()  # starts the watchdog again (every server runs)
    assert watchdog.running() is not None
    own_stack.down()
    assert watchdog.running() is None  # `down` stopped it first
