"""Start-up time of each service, and of all six together (`make up`), against a Python gRPC floor.

Targets (issue: start-up): every service answers gRPC health SERVING within 5 s of its process
start on this box; `make up` (the six started in parallel) within 15 s; only training and the
compiler may import torch, and only when they use it (never at start).

What it does, against one embedded stack (Kafka, S3, Triton) on free ports in a temp state dir:

- each service, `--runs` times: spawns its console script `lineloop-<name>` with the environment
  `ServiceFleet.env(name)` builds (free gRPC/metrics ports, a fresh SQLite under the temp dir,
  so every run is a first start with schemas created), and times spawn -> first health SERVING
  (polled every 50 ms); reads the service's own `startup_s` from its "<name> serving" log line
  (Service.start() only: no interpreter, imports or settings); then SIGTERM and wait for exit.
- import time of `lineloop.<name>.main` in a fresh interpreter (`--runs` times, median), its share
  of the time to SERVING, and whether that import loads torch (`'torch' in sys.modules`); also
  whether torch is mapped in the running service once it is SERVING (/proc/<pid>/maps), and the
  three top-level packages whose own modules take longest to import (`python -X importtime`).
- the floor: the baseline each service is compared with. A process that imports grpc and
  grpc_health, serves health SERVING with grpc.aio on a port, and does nothing else; spawned
  and timed the same way, in the same run. No Python gRPC service starts faster on this box;
  "x floor" is a service's median over the floor's median.
- `make up`: `ServiceFleet(config).up()` of all six (started in parallel), from the call to all
  SERVING, `--runs` times, `fleet.down()` between runs.

A benchmark, not a test: it prints its figures and exits 0 whether or not a target is met.
The stack and every process it started are stopped at the end, even on failure or Ctrl-C.

    .venv/bin/python deploy/local/bench/bench_startup.py [--runs 3] [--services ingest monitor] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from lineloop.contracts.catalogue import CATALOGUE
from lineloop.stack import probes
from lineloop.stack.config import HOST, StackConfig, free_ports
from lineloop.stack.embedded import EmbeddedStack
from lineloop.stack.process import ManagedProcess, marked_processes
from lineloop.stack.servers import scripts_dir
from lineloop.stack.services import ServiceFleet

SERVICE_TARGET_S = 5.0
FLEET_TARGET_S = 15.0
POLL_S = 0.05
READY_TIMEOUT_S = 120.0

# The floor: grpc + grpc_health, health SERVING on argv[1], until SIGTERM. grpc.aio, as the services.
FLOOR_PROGRAM = """
import asyncio, signal, sys
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

async def main():
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)

asyncio.run(main())
"""

# Import of one module in a fresh interpreter: seconds, and whether torch came with it.
IMPORT_PROGRAM = """
import json, sys, time
t = time.perf_counter()
import {module}
print(json.dumps({{"import_s": time.perf_counter() - t, "torch": "torch" in sys.modules}}))
"""


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ---- one process, spawn -> SERVING ----------------------------------------------------


def time_to_serving(process: ManagedProcess, argv: list[str], env: dict[str, str], cwd: Path,
                    grpc_port: int) -> dict:
    """Spawn, poll health every POLL_S until SERVING, then SIGTERM and wait for the exit."""
    address = f"{HOST}:{grpc_port}"
    started = time.monotonic()
    handle = process.start(argv, env, cwd=cwd, die_with_parent=True)
    result: dict = {"pid": handle.pid}
    try:
        while True:
            if probes.grpc_serving(address, timeout=1.0):
                result["serving_s"] = time.monotonic() - started
                result["torch_mapped"] = torch_mapped(handle.pid)
                break
            if exited(handle):
                result["error"] = f"exited before SERVING; log {process.log_file}:\n{process.log_tail(8)}"
                break
            if time.monotonic() - started > READY_TIMEOUT_S:
                result["error"] = f"not SERVING after {READY_TIMEOUT_S:.0f} s; log {process.log_file}:\n{process.log_tail(8)}"
                break
            time.sleep(POLL_S)
    finally:
        stopping = time.monotonic()
        process.stop(timeout=15.0)
        result["stop_s"] = time.monotonic() - stopping
    return result


def exited(handle: psutil.Process) -> bool:
    try:
        return not handle.is_running() or handle.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def torch_mapped(pid: int) -> bool | None:
    """Whether torch's extension is loaded in the process (read from outside, no cooperation)."""
    try:
        return "torch/_C" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None


def logged_startup_s(log_file: Path, name: str) -> float | None:
    """`startup_s` of the runtime's "<name> serving" JSON log line, when there is one."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message") == f"{name} serving" and "startup_s" in record:
            return float(record["startup_s"])
    return None


# ---- imports ---------------------------------------------------------------------------


def import_time(module: str) -> dict:
    out = subprocess.run([sys.executable, "-c", IMPORT_PROGRAM.format(module=module)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def heaviest_imports(module: str, top: int = 3) -> list[tuple[str, float]]:
    """The `top` top-level packages by import time of their own modules (self times summed, so a
    package is not charged for what it imports from others), from `python -X importtime`."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                         capture_output=True, text=True, timeout=300)
    by_package: dict[str, float] = {}
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|", 2)
        package = name.strip().split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(own) / 1e6
    return sorted(by_package.items(), key=lambda r: -r[1])[:top]


# ---- the benchmark ---------------------------------------------------------------------


def service_env(fleet: ServiceFleet, name: str, state_dir: Path, run: int) -> tuple[dict[str, str], int]:
    grpc_port, metrics_port = free_ports(2)
    prefix = CATALOGUE.services[name].settings_prefix
    env = {
        **fleet.env(name),
        prefix + "GRPC_PORT": str(grpc_port),
        prefix + "METRICS_PORT": str(metrics_port),
        prefix + "DATABASE_URL": f"sqlite:///{state_dir / 'db' / f'{name}-{run}.db'}",
        "LINELOOP_MONITOR_HTTP_PORT": "0",  # the dashboard on any free port, never the catalogued one
        "LINELOOP_LOG_FORMAT": "json",  # the "<name> serving" line carries startup_s in JSON only
    }
    return env, grpc_port


def bench_floor(config: StackConfig, runs: int) -> list[dict]:
    results = []
    for run in range(runs):
        (port,) = free_ports(1)
        process = ManagedProcess("bench-floor", config.run_dir, config.logs_dir / f"bench-floor-{run}.log")
        result = time_to_serving(process, [sys.executable, "-c", FLOOR_PROGRAM, str(port)],
                                 dict(os.environ), config.state_dir, port)
        log(f"floor run {run + 1}: " + (f"SERVING in {result['serving_s']:.2f} s" if "serving_s" in result
                                        else result["error"]))
        results.append(result)
    return results


def bench_service(config: StackConfig, fleet: ServiceFleet, name: str, runs: int) -> dict:
    module = f"lineloop.{name}.main"
    spawns, imports = [], []
    for run in range(runs):
        env, grpc_port = service_env(fleet, name, config.state_dir, run)
        process = ManagedProcess(f"bench-{name}", config.run_dir, config.logs_dir / f"bench-{name}-{run}.log")
        result = time_to_serving(process, [str(scripts_dir() / f"lineloop-{name}")], env, config.state_dir, grpc_port)
        result["startup_s"] = logged_startup_s(process.log_file, name)
        spawns.append(result)
        log(f"{name} run {run + 1}: " + (
            f"SERVING in {result['serving_s']:.2f} s (its own startup_s {result['startup_s']}), "
            f"stopped in {result['stop_s']:.2f} s" if "serving_s" in result else result["error"]))
        imports.append(import_time(module))
    heaviest = heaviest_imports(module)
    serving = [r["serving_s"] for r in spawns if "serving_s" in r]
    import_s = [r["import_s"] for r in imports if "import_s" in r]
    med, imp = median(serving), median(import_s)
    return {
        "name": name,
        "runs": spawns,
        "failed_runs": sum("serving_s" not in r for r in spawns),
        "median_s": med,
        "max_s": max(serving) if serving else None,
        "startup_s_median": median([r["startup_s"] for r in spawns if r.get("startup_s") is not None]),
        "import_s": imp,
        "import_share": imp / med if med and imp is not None else None,
        "import_errors": [i["error"] for i in imports if "error" in i],
        "torch_on_import": any(i.get("torch") for i in imports) if import_s else None,
        "torch_when_serving": any(r.get("torch_mapped") for r in spawns) if serving else None,
        "heaviest_imports": heaviest,
    }


def bench_fleet(config: StackConfig, runs: int) -> list[dict]:
    """`make up`: all six in parallel, call -> all SERVING; ports and databases via os.environ,
    where ServiceFleet reads them."""
    environ_before = dict(os.environ)
    fleet = ServiceFleet(config, ready_timeout=READY_TIMEOUT_S, die_with_parent=True)
    results = []
    try:
        for run in range(runs):
            ports = free_ports(2 * len(CATALOGUE.services))
            for i, (name, entry) in enumerate(CATALOGUE.services.items()):
                os.environ[entry.settings_prefix + "GRPC_PORT"] = str(ports[2 * i])
                os.environ[entry.settings_prefix + "METRICS_PORT"] = str(ports[2 * i + 1])
                os.environ[entry.settings_prefix + "DATABASE_URL"] = \
                    f"sqlite:///{config.state_dir / 'db' / f'fleet-{name}-{run}.db'}"
            os.environ["LINELOOP_MONITOR_HTTP_PORT"] = "0"
            try:
                started = time.monotonic()
                up = fleet.up()
                elapsed = time.monotonic() - started
            finally:
                stopping = time.monotonic()
                fleet.down()
                stop_s = time.monotonic() - stopping
            failed = {r.name: f"{r.state}: {r.detail.splitlines()[0] if r.detail else ''}"
                      for r in up if r.state != "started"}
            result = {"up_s": elapsed, "down_s": stop_s, "failed": failed,
                      "per_service_s": {r.name: r.seconds for r in up}}
            log(f"make up run {run + 1}: all SERVING in {elapsed:.2f} s, down in {stop_s:.2f} s"
                + (f"; not started: {failed}" if failed else ""))
            results.append(result)
    finally:
        os.environ.clear()
        os.environ.update(environ_before)
    return results


# ---- report ----------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def report(floor: list[dict], services: list[dict], fleet: list[dict], runs: int) -> dict:
    floor_s = [r["serving_s"] for r in floor if "serving_s" in r]
    floor_med = median(floor_s)
    print(f"\nhost: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {runs} run(s) each, "
          f"spawn -> gRPC health SERVING (polled every {POLL_S * 1000:.0f} ms)")
    print(f"floor (grpc + grpc_health, health SERVING, nothing else): median {fmt(floor_med)} s, "
          f"max {fmt(max(floor_s) if floor_s else None)} s\n")
    header = (f"{'service':<10} {'median s':>8} {'max s':>6} {'own s':>6} {'import s':>8} {'import %':>8} "
              f"{'torch@import':>12} {'torch@SERVING':>13} {'x floor':>7}  {'<= 5 s?':<7}")
    print(header)
    print("-" * len(header))
    for s in services:
        ratio = s["median_s"] / floor_med if s["median_s"] and floor_med else None
        s["ratio_to_floor"] = ratio
        s["target_met"] = s["failed_runs"] == 0 and s["max_s"] is not None and s["max_s"] <= SERVICE_TARGET_S
        met = "yes" if s["target_met"] else ("FAILED" if s["failed_runs"] else "no")
        print(f"{s['name']:<10} {fmt(s['median_s']):>8} {fmt(s['max_s']):>6} {fmt(s['startup_s_median']):>6} "
              f"{fmt(s['import_s']):>8} {fmt(None if s['import_share'] is None else 100 * s['import_share'], '.0f'):>8} "
              f"{str(s['torch_on_import']).lower():>12} {str(s['torch_when_serving']).lower():>13} "
              f"{fmt(ratio, '.1f'):>7}  {met:<7}")
    print("\nmedian/max s: spawn -> SERVING; own s: the service's logged startup_s (Service.start() only); "
          "import s: `import lineloop.<name>.main` in a fresh interpreter; <= 5 s?: the max of the runs")
    print("heaviest imports, by top-level package (python -X importtime, self times summed, s):")
    for s in services:
        print(f"  {s['name']:<10} " + ", ".join(f"{n} {t:.2f}" for n, t in s["heaviest_imports"]))
        for error in s["import_errors"][:1]:
            print(f"  {'':<10} import failed: {error}")
        for r in s["runs"]:
            if "error" in r:
                print(f"  {'':<10} run failed: {r['error'].splitlines()[0]}")
    up_s = [r["up_s"] for r in fleet if not r["failed"]]
    fleet_failed = [r["failed"] for r in fleet if r["failed"]]
    fleet_med, fleet_max = median(up_s), (max(up_s) if up_s else None)
    fleet_met = not fleet_failed and fleet_max is not None and fleet_max <= FLEET_TARGET_S
    print(f"\nmake up (all six in parallel, call -> all SERVING): median {fmt(fleet_med)} s, max {fmt(fleet_max)} s "
          f"over {len(fleet)} run(s); target {FLEET_TARGET_S:.0f} s: {'met' if fleet_met else 'NOT met'}"
          + (f"; failed runs: {fleet_failed}" if fleet_failed else ""))
    if fleet:
        slowest = {name: max((r["per_service_s"].get(name) or 0) for r in fleet) for name in CATALOGUE.services}
        print("  per service within it (max s): " + ", ".join(f"{n} {t:.2f}" for n, t in slowest.items()))
    return {
        "host_cores": os.cpu_count(),
        "runs": runs,
        "floor": {"median_s": floor_med, "max_s": max(floor_s) if floor_s else None, "runs": floor},
        "services": services,
        "service_target_s": SERVICE_TARGET_S,
        "make_up": {"median_s": fleet_med, "max_s": fleet_max, "target_s": FLEET_TARGET_S,
                    "target_met": fleet_met, "runs": fleet},
    }


def interrupted(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def leftover_processes(config: StackConfig) -> list[int]:
    return [p.pid for p in marked_processes(run_dir=config.run_dir)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="spawns per service, floor and `make up` (default 3)")
    parser.add_argument("--services", nargs="+", choices=list(CATALOGUE.services), default=list(CATALOGUE.services))
    parser.add_argument("--no-fleet", action="store_true", help="skip the `make up` figure")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON object, last")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    # SIGTERM (a CI timeout, `kill`) unwinds through the finally below like Ctrl-C does.
    signal.signal(signal.SIGTERM, interrupted)
    with tempfile.TemporaryDirectory(prefix="lineloop-bench-startup-") as tmp:
        config = StackConfig.on_free_ports(Path(tmp) / "state")
        (config.state_dir / "db").mkdir(parents=True)
        stack = EmbeddedStack(config, die_with_parent=True, ready_timeout=READY_TIMEOUT_S)
        fleet = ServiceFleet(config)
        try:
            t0 = time.monotonic()
            stack.up()
            log(f"embedded stack up in {time.monotonic() - t0:.1f} s ({config.state_dir})")
            floor = bench_floor(config, args.runs)
            services = [bench_service(config, fleet, name, args.runs) for name in args.services]
            fleet_runs = [] if args.no_fleet else bench_fleet(config, args.runs)
        finally:
            # Whatever an interruption left: a `make up` run half-way, a spawn before its own stop.
            ServiceFleet(config).down()
            for name in ["bench-floor", *(f"bench-{n}" for n in CATALOGUE.services)]:
                ManagedProcess(name, config.run_dir, config.logs_dir / f"{name}.log").stop(timeout=5.0)
            stack.down()
            left = leftover_processes(config)
            if left:
                log(f"WARNING: processes left behind under {config.state_dir}: {left}")
        figures = report(floor, services, fleet_runs, args.runs)
    if args.json:
        print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
