"""`lineloop up/down`: the stack plus the six services, and nothing left behind. The stack runs
with LINELOOP_STACK_AUTH=required here (one boot for both): it issues its own tokens and
requires them."""

import json
import urllib.request

import pytest

from lineloop.stack.probes import port_open
from lineloop.stack.services import SERVICE_PORTS

from .conftest import processes_under, run


@pytest.mark.slow  # boots every service (training imports torch)
def test_up_serves_six_services_with_metrics_and_down_leaves_nothing(cli_env):
    config, env = cli_env
    env = {**env, "LINELOOP_STACK_AUTH": "required"}
    env.pop("LINELOOP_TOKEN", None)
    env.pop("LINELOOP_TOKEN_FILE", None)
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

    _calls_need_a_token_of_a_role_that_may_make_them(config, env, up.stdout)

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


def _calls_need_a_token_of_a_role_that_may_make_them(config, env, up_output: str) -> None:
    tokens = config.state_dir / "auth" / "tokens"
    assert f"export LINELOOP_TOKEN_FILE={tokens / 'admin.jwt'}" in " ".join(up_output.split())
    registry = ["--target", f"127.0.0.1:{env['LINELOOP_REGISTRY_GRPC_PORT']}"]

    anonymous = run(env, "models", "list", "--json", *registry)
    assert anonymous.returncode == 1 and "UNAUTHENTICATED" in anonymous.stderr
    assert "set LINELOOP_TOKEN or LINELOOP_TOKEN_FILE" in anonymous.stderr
    admin = run({**env, "LINELOOP_TOKEN_FILE": str(tokens / "admin.jwt")}, "models", "list", "--json", *registry)
    assert admin.returncode == 0, admin.stderr
    assert json.loads(admin.stdout) == []
    # the services' own token (what training and the registry send each other) is accepted for reads
    service = run({**env, "LINELOOP_TOKEN_FILE": str(config.state_dir / "auth" / "service" / "token")},
                  "models", "list", "--json", *registry)
    assert service.returncode == 0, service.stderr
    annotator = run({**env, "LINELOOP_TOKEN_FILE": str(tokens / "annotator.jwt")},
                    "models", "rollback", "apples", *registry)
    assert annotator.returncode == 1 and "PERMISSION_DENIED" in annotator.stderr and "release-manager" in annotator.stderr
