"""`lineloop stack up/status/down` and `lineloop up/down`: idempotent, and nothing left behind."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from lineloop.stack.config import StackConfig
from lineloop.stack.probes import port_open
from lineloop.stack.services import SERVICE_PORTS

LINELOOP = str(Path(sys.executable).parent / "lineloop")


def stack_env(config: StackConfig, service_ports: list[int]) -> dict[str, str]:
    env = {**os.environ, **config.env(), "LINELOOP_STACK_TRITON_METRICS_PORT": str(config.triton_metrics_port)}
    for field, port in vars(config.weed).items():
        env[f"LINELOOP_STACK_WEED_{field.upper()}_PORT"] = str(port)
    for index, name in enumerate(SERVICE_PORTS):
        env[f"LINELOOP_{name.upper()}_GRPC_PORT"] = str(service_ports[2 * index])
        env[f"LINELOOP_{name.upper()}_METRICS_PORT"] = str(service_ports[2 * index + 1])
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINELOOP, *args], env=env, capture_output=True, text=True, timeout=120)


def processes_under(state_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if str(state_dir) in " ".join(proc.info["cmdline"] or []) or proc.info["cwd"] == str(state_dir):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def leftover_sockets(config: StackConfig) -> list[Path]:
    ports = {config.weed.master_grpc, config.weed.volume_grpc, config.weed.filer_grpc,
             config.weed.s3_grpc, config.weed.admin_grpc}
    return [p for p in Path(tempfile.gettempdir()).glob("seaweedfs-*-grpc-*.sock")
            if int(p.stem.rsplit("-", 1)[1]) in ports]


@pytest.fixture
def cli_env(tmp_path):
    from lineloop.stack.config import free_ports

    config = StackConfig.on_free_ports(tmp_path / "state")
    env = stack_env(config, free_ports(2 * len(SERVICE_PORTS)))
    yield config, env
    # Whatever a failed assertion left running: stop it through the CLI under test.
    run(env, "down")


def test_stack_up_status_down_is_idempotent(cli_env):
    config, env = cli_env
    first = run(env, "stack", "up")
    assert first.returncode == 0, first.stderr
    for server in ("s3", "kafka", "triton"):
        assert f"{server}: ready in" in first.stdout

    status = json.loads(run(env, "stack", "status", "--json").stdout)
    pids = {s["name"]: s["pid"] for s in status["servers"]}
    assert all(s["running"] and s["healthy"] for s in status["servers"]), status

    again = run(env, "stack", "up")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already running") == 3
    assert {s["name"]: s["pid"] for s in json.loads(run(env, "stack", "status", "--json").stdout)["servers"]} == pids

    down = run(env, "stack", "down")
    assert down.returncode == 0 and "stopped: kafka" in down.stdout
    assert run(env, "stack", "down").stdout.strip() == "nothing was running"
    assert processes_under(config.state_dir) == []
    assert not any(port_open("127.0.0.1", port) for port in config.all_ports().values())
    assert leftover_sockets(config) == []
    after = json.loads(run(env, "stack", "status", "--json").stdout)
    assert not any(s["running"] for s in after["servers"])


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
