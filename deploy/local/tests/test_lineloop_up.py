"""`lineloop up/down`: the stack plus the six services, and nothing left behind."""

import json
import urllib.request

import pytest

from lineloop.stack.probes import port_open
from lineloop.stack.services import SERVICE_PORTS

from .conftest import processes_under, run


@pytest.mark.slow  # boots every service (training imports torch)
def test_up_serves_six_services_with_metrics_and_down_leaves_nothing(cli_env):
    config, env = cli_env
    up = run(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    serving = {name for name in SERVICE_PORTS
               if any(line.lstrip("✓✗ ").startswith(f"{name}: SERVING") for line in up.stdout.splitlines())}
    assert serving == set(SERVICE_PORTS), up.stdout
    status = json.loads(run(env, "stack", "status", "--json").stdout)
    assert {row["name"] for row in status["services"] if row["serving"]} == set(SERVICE_PORTS)
    for name in SERVICE_PORTS:  # each serves Prometheus metrics on its own port
        port = env[f"LINELOOP_{name.upper()}_METRICS_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.status == 200 and b"# TYPE" in response.read(), name

    # The services are found without their pidfiles too (by the marker in their environment).
    for pidfile in config.run_dir.glob("service-*.pid"):
        pidfile.unlink()
    down = run(env, "down")
    assert down.returncode == 0, down.stderr
    stopped = " ".join(down.stdout.split()).removeprefix("stopped: ").split(", ")
    assert set(stopped) == {*SERVICE_PORTS, "s3", "kafka", "triton"}, down.stdout
    assert processes_under(config.state_dir) == []
    assert not any(port_open("127.0.0.1", port) for port in config.all_ports().values())
    assert not any(row["running"] for row in json.loads(run(env, "stack", "status", "--json").stdout)["services"])
