"""Triton with dynamic batching vs a plain one-request-at-a-time HTTP server, same ONNX model.

Both serve the demo model's triton-onnx build (fp32, dynamic batch) with onnxruntime on one
thread: Triton (the embedded stack's, python backend, dynamic batching up to 32 with a
short queue delay) and `plain_server.py` (Flask, threaded=False). The same closed-loop load
(C clients, each sending one frame and waiting for the answer) is swept over C; the
comparison is throughput at equal p99: for each of the plain server's p99 figures, the best
Triton throughput whose p99 is no worse. Ratios are against the plain server in this run.

    .venv/bin/python services/compiler/bench/bench_serving.py [--seconds 4] [--clients 1,4,16,32]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import urllib3

from lineloop.compiler.onnx_builds import fp32_dynamic
from lineloop.compiler.testing import demo_data, train_demo_model
from lineloop.model.export import export_onnx
from lineloop.serving import ServingOptions, TritonControl, open_repository
from lineloop.stack.config import StackConfig, free_ports
from lineloop.stack.embedded import EmbeddedStack

TRITON_MODEL = "bench-demo"


def closed_loop(make_client: Callable[[], Callable[[np.ndarray], object]], image: np.ndarray, clients: int,
                seconds: float) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) of `clients` threads each sending one request at a time."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(index: int) -> None:
        call = make_client()
        call(image)  # connect and warm up outside the window
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t = time.perf_counter()
            try:
                call(image)
                latencies[index].append((time.perf_counter() - t) * 1000)
            except Exception:
                errors[index] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds + 0.5
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    every = np.concatenate([np.array(x) for x in latencies if x]) if any(latencies) else np.array([0.0])
    p50, p99 = np.percentile(every, [50, 99])
    return len(every) / elapsed, float(p50), float(p99), sum(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", default="1,4,16,32")
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=1, help="Triton model instances (each one onnxruntime thread)")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    data = demo_data(frames=300, input_size=96)
    onnx_model = fp32_dynamic(export_onnx(train_demo_model(data, width=16, epochs=3)))
    image = data.images[:1]

    with tempfile.TemporaryDirectory(prefix="lineloop-bench-") as tmp:
        model_path = Path(tmp) / "model.onnx"
        model_path.write_bytes(onnx_model)
        stack = EmbeddedStack(StackConfig.on_free_ports(Path(tmp) / "stack"), die_with_parent=True)
        (port,) = free_ports(1)
        plain = subprocess.Popen([sys.executable, str(Path(__file__).with_name("plain_server.py")), str(model_path), str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            stack.up()
            repository = open_repository(stack.triton_repository, stack.s3_access_key, stack.s3_secret_key)
            repository.write_model_version(
                TRITON_MODEL, 1, model_path, flavour="python",
                options=ServingOptions(max_batch_size=32, instance_count=args.instances, max_queue_delay_us=args.queue_delay_us),
            )
            with TritonControl(stack.triton_grpc) as triton:
                triton.load(TRITON_MODEL)
                triton.wait_ready(TRITON_MODEL, 1)

            def triton_client() -> Callable[[np.ndarray], object]:
                control = TritonControl(stack.triton_grpc)
                return lambda images: control.infer(TRITON_MODEL, images, 1)

            def plain_client() -> Callable[[np.ndarray], object]:
                pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1)
                body = np.ascontiguousarray(image, dtype=np.float32).tobytes()

                def call(_: np.ndarray) -> bytes:
                    response = pool.request("POST", "/predict", body=body,
                                            headers={"Content-Type": "application/octet-stream"})
                    if response.status != 200:
                        raise RuntimeError(response.status)
                    return response.data

                return call

            _wait_http(port)
            results = {"plain (Flask, 1 at a time)": {}, f"Triton (batching ≤32, {args.queue_delay_us} µs, {args.instances} inst)": {}}
            for name, make in zip(results, (plain_client, triton_client)):
                for clients in levels:
                    results[name][clients] = closed_loop(make, image, clients, args.seconds)
        finally:
            plain.terminate()
            plain.wait(10)
            stack.down()

    plain_name, triton_name = list(results)
    print(f"demo model InspectionNet width 16, 96x96, fp32 ONNX; one frame per request; {args.seconds:.0f} s per cell\n")
    header = f"{'server':<42} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    print(header)
    print("-" * len(header))
    for name, rows in results.items():
        for clients, (tput, p50, p99, errors) in rows.items():
            print(f"{name:<42} {clients:>7} {tput:>8.0f} {p50:>8.2f} {p99:>8.2f} {errors:>6}")
    print("\nthroughput at equal p99 (Triton's best throughput with p99 no worse than the plain server's):")
    best = 0.0
    for clients, (tput, _, p99, _) in results[plain_name].items():
        within = [r[0] for r in results[triton_name].values() if r[2] <= p99]
        if within:
            ratio = max(within) / tput
            best = max(best, ratio)
            print(f"  p99 ≤ {p99:7.2f} ms: plain {tput:7.0f} req/s, Triton {max(within):7.0f} req/s  → {ratio:5.2f}×")
        else:
            print(f"  p99 ≤ {p99:7.2f} ms: plain {tput:7.0f} req/s, Triton has no run within this p99")
    print(f"\ntarget ≥ 3×: best ratio reached {best:.2f}×")


def _wait_http(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib3.PoolManager().request("GET", f"http://127.0.0.1:{port}/", retries=False)
            return
        except urllib3.exceptions.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"plain server did not start on port {port}")


if __name__ == "__main__":
    main()
