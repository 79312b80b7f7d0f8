"""The six lineloop services as processes against an embedded stack (`lineloop up/down`).

Each runs its console script `lineloop-<name>` (entry point `lineloop.<name>.main:main`)
with the stack's environment and its own ports, logs to the state directory, and counts as
up when its grpc.health.v1 check answers SERVING.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from lineloop.contracts.catalogue import CATALOGUE
from lineloop.stack import probes
from lineloop.stack.config import HOST, StackConfig
from lineloop.stack.process import ManagedProcess, port_holders, state_lock, wait_until
from lineloop.stack.servers import scripts_dir

# name: (gRPC port, metrics port), from the service catalogue (lineloop.contracts services.toml).
SERVICE_PORTS = {name: (entry.grpc_port, entry.metrics_port) for name, entry in CATALOGUE.services.items()}

Report = Callable[[str], None]


@dataclasses.dataclass
class ServiceResult:
    name: str
    state: str  # started | running | unavailable | failed | stopped | not running
    detail: str = ""
    seconds: float | None = None


def entry_point_problem(name: str) -> str | None:
    """Why `lineloop-<name>` cannot run, or None when it can.

    Only looked up, not imported: importing a service (torch, for training) takes seconds;
    one that crashes on start is reported with its log instead.
    """
    module = f"lineloop.{name}.main"
    if not (scripts_dir() / f"lineloop-{name}").exists():
        return f"console script lineloop-{name} is not installed (run `make install`)"
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        found = None
    if found is None:
        return f"{module} does not exist yet"
    return None


class ServiceFleet:
    def __init__(self, config: StackConfig, ready_timeout: float = 60.0, die_with_parent: bool = False) -> None:
        self.config = config
        self.ready_timeout = ready_timeout
        self.die_with_parent = die_with_parent

    def grpc_address(self, name: str) -> str:
        return f"{HOST}:{self._ports(name)[0]}"

    def _ports(self, name: str) -> tuple[int, int]:
        grpc_port, metrics_port = SERVICE_PORTS[name]
        prefix = f"LINELOOP_{name.upper()}_"
        return (
            int(os.environ.get(prefix + "GRPC_PORT", grpc_port)),
            int(os.environ.get(prefix + "METRICS_PORT", metrics_port)),
        )

    def env(self, name: str) -> dict[str, str]:
        grpc_port, metrics_port = self._ports(name)
        prefix = f"LINELOOP_{name.upper()}_"
        # Every peer's address where this fleet runs it (`LINELOOP_REGISTRY_MONITOR_GRPC`, ...):
        # a service's setting for a peer defaults to the catalogue's port, which is wrong once
        # the fleet moves ports (tests, `make chaos`). Settings read only the variables they
        # have a field for, so the ones no service calls are ignored.
        peers = {f"{prefix}{peer.upper()}_GRPC": self.grpc_address(peer) for peer in SERVICE_PORTS if peer != name}
        return {
            **os.environ,
            **self.config.env(),
            **peers,
            prefix + "GRPC_PORT": str(grpc_port),
            prefix + "METRICS_PORT": str(metrics_port),
        }

    def _process(self, name: str) -> ManagedProcess:
        return ManagedProcess(f"service-{name}", self.config.run_dir, self.config.logs_dir / f"{name}.log")

    def up(self, names: list[str] | None = None, report: Report = lambda line: None) -> list[ServiceResult]:
        """Start every service not running, then wait for each to answer SERVING.

        A service whose entry point does not exist yet is reported, not fatal.
        """
        with state_lock(self.config.run_dir):
            return self._up(names, report)

    def _up(self, names: list[str] | None, report: Report) -> list[ServiceResult]:
        results: dict[str, ServiceResult] = {}
        launched: dict[str, tuple[float, object]] = {}
        for name in names or list(SERVICE_PORTS):
            process = self._process(name)
            if process.running() is not None:
                results[name] = ServiceResult(name, "running", "already running")
                report(f"{name}: already running")
                continue
            problem = entry_point_problem(name)
            if problem is not None:
                results[name] = ServiceResult(name, "unavailable", problem)
                report(f"{name}: not started: {problem}")
                continue
            grpc_port, metrics_port = self._ports(name)
            busy = [p for p in (grpc_port, metrics_port) if probes.port_open(HOST, p)]
            if busy:
                detail = "port(s) in use: " + "; ".join(
                    f"{p} is held by {port_holders(p) or 'a process that has just exited'}" for p in busy
                )
                results[name] = ServiceResult(name, "failed", detail)
                report(f"{name}: not started: {detail}")
                continue
            script = scripts_dir() / f"lineloop-{name}"
            handle = process.start([str(script)], self.env(name), cwd=self.config.state_dir,
                                   die_with_parent=self.die_with_parent)
            launched[name] = (time.monotonic(), handle)
            report(f"{name}: starting")
        for name, (since, handle) in launched.items():
            address = self.grpc_address(name)
            try:
                wait_until(lambda: probes.grpc_serving(address), self.ready_timeout, interval=0.2, proc=handle)
            except (TimeoutError, RuntimeError) as err:
                process = self._process(name)
                results[name] = ServiceResult(name, "failed", f"{err}; log {process.log_file}:\n{process.log_tail(10)}")
                report(f"{name}: failed: {err} (log {process.log_file})")
                process.stop(timeout=10.0)
                continue
            seconds = time.monotonic() - since
            results[name] = ServiceResult(name, "started", address, seconds)
            report(f"{name}: SERVING on {address} in {seconds:.2f} s")
        return [results[name] for name in names or list(SERVICE_PORTS)]

    def down(self, report: Report = lambda line: None) -> list[ServiceResult]:
        def stop(name: str) -> ServiceResult:
            stopped = self._process(name).stop(timeout=15.0)
            if stopped:
                report(f"{name}: stopped")
            return ServiceResult(name, "stopped" if stopped else "not running")

        with state_lock(self.config.run_dir), ThreadPoolExecutor(max_workers=len(SERVICE_PORTS)) as pool:
            return list(pool.map(stop, SERVICE_PORTS))

    def status(self) -> list[dict]:
        rows = []
        for name in SERVICE_PORTS:
            proc = self._process(name).running()
            address = self.grpc_address(name)
            rows.append(
                {
                    "name": name,
                    "running": proc is not None,
                    "serving": proc is not None and probes.grpc_serving(address),
                    "pid": None if proc is None else proc.pid,
                    "grpc": address,
                    "log": str(self._process(name).log_file),
                }
            )
        return rows
