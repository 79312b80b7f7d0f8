"""Helpers for driving the `lineloop` command against a stack of its own on free ports."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from lineloop.stack.config import StackConfig, free_ports
from lineloop.stack.embedded import EmbeddedStack
from lineloop.stack.process import marked_processes
from lineloop.stack.services import SERVICE_PORTS

LINELOOP = str(Path(sys.executable).parent / "lineloop")


@pytest.fixture
def own_stack(tmp_path, request):
    """A stack of its own (killing or restarting the session stack's servers would disturb other
    tests); `@pytest.mark.parametrize("own_stack", [{"watchdog": True}], indirect=True)` for options."""
    embedded = EmbeddedStack(StackConfig.on_free_ports(tmp_path / "stack"), die_with_parent=True,
                             **getattr(request, "param", {}))
    try:
        embedded.up()
        yield embedded
    finally:
        embedded.down()


def stack_env(config: StackConfig, service_ports: list[int]) -> dict[str, str]:
    env = {**os.environ, **config.env(), "LINELOOP_STACK_TRITON_METRICS_PORT": str(config.triton_metrics_port)}
    for field, port in vars(config.weed).items():
        env[f"LINELOOP_STACK_WEED_{field.upper()}_PORT"] = str(port)
    for index, name in enumerate(SERVICE_PORTS):
        env[f"LINELOOP_{name.upper()}_GRPC_PORT"] = str(service_ports[2 * index])
        env[f"LINELOOP_{name.upper()}_METRICS_PORT"] = str(service_ports[2 * index + 1])
    env["LINELOOP_MONITOR_HTTP_PORT"] = "0"  # the dashboard on any free port: never the catalogued 8106 of a real stack
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINELOOP, *args], env=env, capture_output=True, text=True, timeout=120)


def processes_under(state_dir: Path) -> list[psutil.Process]:
    """Processes naming the state directory in their command line, running in it, or carrying
    the stack's marker for it in their environment."""
    found = {proc.pid: proc for proc in marked_processes(run_dir=state_dir / "run")}
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if str(state_dir) in " ".join(proc.info["cmdline"] or []) or proc.info["cwd"] == str(state_dir):
                found[proc.pid] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def leftover_sockets(config: StackConfig) -> list[Path]:
    ports = {config.weed.master_grpc, config.weed.volume_grpc, config.weed.filer_grpc,
             config.weed.s3_grpc, config.weed.admin_grpc}
    return [p for p in Path(tempfile.gettempdir()).glob("seaweedfs-*-grpc-*.sock")
            if int(p.stem.rsplit("-", 1)[1]) in ports]


@pytest.fixture
def cli_env(tmp_path):
    config = StackConfig.on_free_ports(tmp_path / "state")
    env = stack_env(config, free_ports(2 * len(SERVICE_PORTS)))
    yield config, env
    # Whatever a failed assertion left running: stop it through the CLI under test.
    run(env, "down")
