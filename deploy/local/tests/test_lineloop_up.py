"""`lineloop up/down`: the stack plus the six services, and nothing left behind."""

import json

import pytest

from lineloop.stack.probes import port_open
from lineloop.stack.services import SERVICE_PORTS

from .conftest import processes_under, run


@pytest.mark.slow  # boots every service that exists (training imports torch)
def test_up_starts_available_services_and_down_leaves_nothing(cli_env):
    config, env = cli_env
    up = run(env, "up")
    outcome = {}
    for line in up.stdout.splitlines():
        for name in SERVICE_PORTS:
            for state in ("SERVING", "unavailable", "failed"):
                if line.lstrip("✓✗ ").startswith(f"{name}: {state}"):
                    outcome[name] = state
    # Every service is accounted for: serving, or reported with the reason it is not.
    assert set(outcome) == set(SERVICE_PORTS), up.stdout
    assert up.returncode == (1 if "failed" in outcome.values() else 0), up.stdout + up.stderr
    status = json.loads(run(env, "stack", "status", "--json").stdout)
    serving = {row["name"] for row in status["services"] if row["serving"]}
    assert serving == {name for name, state in outcome.items() if state == "SERVING"}

    down = run(env, "down")
    assert down.returncode == 0, down.stderr
    assert processes_under(config.state_dir) == []
    assert not any(port_open("127.0.0.1", port) for port in config.all_ports().values())
    assert not any(row["running"] for row in json.loads(run(env, "stack", "status", "--json").stdout)["services"])
