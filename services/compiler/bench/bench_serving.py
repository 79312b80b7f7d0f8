"""Serving: Triton vs the same ONNX model under gunicorn + Flask, and Triton vs raw onnxruntime.

Both servers get the same core budget, one onnxruntime thread per core: Triton (the embedded
stack's, python backend, one model instance per core, dynamic batching up to 32 with a short
queue delay) and `plain_server.py` under gunicorn with one worker per core, which is what a
team without Triton would deploy. The same closed-loop load (C clients, each sending one
frame and waiting for the answer) is swept over C. Reported, all measured in this run:

- Triton vs the baseline at equal p99: for each p99 budget from 10 to 100 ms, the best
  throughput of each whose p99 stays within it, and the ratio (Triton over HTTP with the same
  client as the baseline's; Triton's gRPC client, heavier in Python, is shown beside it);
- serving efficiency: Triton's best images/s ÷ raw onnxruntime's images/s at its best batch
  size (one session per core, in this process, no server and no network): what serving costs.

    .venv/bin/python services/compiler/bench/bench_serving.py [--seconds 4] [--clients 1,2,4,8,16,32]
"""

from __future__ import annotations

import argparse
import json
import os
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


def raw_onnxruntime(model_path: Path, image: np.ndarray, workers: int, batches: list[int],
                    seconds: float) -> dict[int, float]:
    """images/s of `workers` threads each running its own one-thread session on batches of each size
    (onnxruntime releases the GIL while it runs): the floor of what any server around it can reach."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
                for _ in range(workers)]
    rates = {}
    for batch in batches:
        images = np.ascontiguousarray(np.repeat(image, batch, axis=0), dtype=np.float32)
        done = [0] * workers

        def run(index: int, until: float) -> None:
            while time.perf_counter() < until:
                sessions[index].run(["probabilities", "embedding"], {"images": images})
                done[index] += batch

        for session in sessions:
            session.run(["probabilities", "embedding"], {"images": images})  # warm up outside the window
        until = time.perf_counter() + seconds
        threads = [threading.Thread(target=run, args=(i, until)) for i in range(workers)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rates[batch] = sum(done) / (time.perf_counter() - began)
    return rates


def best_within(rows: dict[int, tuple[float, float, float, int]], p99_budget_ms: float) -> float | None:
    """The best throughput among the runs without errors whose p99 is within the budget."""
    within = [tput for tput, _, p99, errors in rows.values() if p99 <= p99_budget_ms and not errors]
    return max(within) if within else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", default="1,2,4,8,16,32")
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                        help="the core budget: Triton instances = gunicorn workers = raw sessions")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    data = demo_data(frames=300, input_size=96)
    onnx_model = fp32_dynamic(export_onnx(train_demo_model(data, width=16, epochs=3)))
    image = data.images[:1]

    with tempfile.TemporaryDirectory(prefix="lineloop-bench-") as tmp:
        model_path = Path(tmp) / "model.onnx"
        model_path.write_bytes(onnx_model)
        raw = raw_onnxruntime(model_path, image, args.cores, [1, 2, 4, 8, 16, 32], args.seconds)
        stack = EmbeddedStack(StackConfig.on_free_ports(Path(tmp) / "stack"), die_with_parent=True)
        (port,) = free_ports(1)
        baseline = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(args.cores), "--bind", f"127.0.0.1:{port}",
             "--chdir", str(Path(__file__).parent), "--log-level", "error", f"plain_server:create_app({str(model_path)!r})"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            stack.up()
            repository = open_repository(stack.triton_repository, stack.s3_access_key, stack.s3_secret_key)
            repository.write_model_version(
                TRITON_MODEL, 1, model_path, flavour="python",
                options=ServingOptions(max_batch_size=32, instance_count=args.cores, max_queue_delay_us=args.queue_delay_us),
            )
            with TritonControl(stack.triton_grpc) as triton:
                triton.load(TRITON_MODEL)
                triton.wait_ready(TRITON_MODEL, 1)

            def triton_client() -> Callable[[np.ndarray], object]:
                control = TritonControl(stack.triton_grpc)
                return lambda images: control.infer(TRITON_MODEL, images, 1)

            def triton_http_client() -> Callable[[np.ndarray], object]:
                # KServe v2 over HTTP with the binary-tensor extension: the same client library and
                # connection handling as the baseline's, so the comparison is of the servers.
                host, http_port = stack.triton_http.rsplit(":", 1)
                pool = urllib3.HTTPConnectionPool(host, int(http_port), maxsize=1)
                tensor = np.ascontiguousarray(image, dtype=np.float32).tobytes()
                header = json.dumps({
                    "inputs": [{"name": "images", "shape": list(image.shape), "datatype": "FP32",
                                "parameters": {"binary_data_size": len(tensor)}}],
                    "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in ("probabilities", "embedding")],
                }).encode()
                headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}

                def call(_: np.ndarray) -> bytes:
                    response = pool.request("POST", f"/v2/models/{TRITON_MODEL}/versions/1/infer", body=header + tensor,
                                            headers=headers)
                    if response.status != 200:
                        raise RuntimeError(f"{response.status}: {response.data[:200]!r}")
                    return response.data

                return call

            def baseline_client() -> Callable[[np.ndarray], object]:
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
            results = {f"gunicorn + Flask ({args.cores} workers, HTTP)": {},
                       f"Triton HTTP ({args.cores} inst, batch ≤32, {args.queue_delay_us} µs)": {},
                       "Triton gRPC (tritonclient), same model": {}}
            for name, make in zip(results, (baseline_client, triton_http_client, triton_client)):
                for clients in levels:
                    results[name][clients] = closed_loop(make, image, clients, args.seconds)
        finally:
            baseline.terminate()
            baseline.wait(10)
            stack.down()

    baseline_name = next(iter(results))
    print(f"demo model InspectionNet width 16, 96x96, fp32 ONNX; one frame per request; {args.seconds:.0f} s per cell; "
          f"core budget {args.cores}\n")
    header = f"{'server':<50} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    print(header)
    print("-" * len(header))
    for name, rows in results.items():
        for clients, (tput, p50, p99, errors) in rows.items():
            print(f"{name:<50} {clients:>7} {tput:>8.0f} {p50:>8.2f} {p99:>8.2f} {errors:>6}")

    print("\nbest throughput within each p99 budget (req/s; target: Triton ahead at every budget):")
    ahead = True
    for budget in (10, 20, 50, 100):
        base = best_within(results[baseline_name], budget)
        triton = max((best_within(rows, budget) or 0.0 for name, rows in results.items() if name != baseline_name), default=0.0)
        ratio = f"{triton / base:5.2f}×" if base and triton else "  n/a"
        ahead &= bool(triton) and (not base or triton > base)
        print(f"  p99 ≤ {budget:3d} ms: baseline {base or 0:7.0f}, Triton {triton or 0:7.0f}  → {ratio}")
    print(f"  Triton ahead at every budget: {'yes' if ahead else 'NO'}")

    best_batch = max(raw, key=raw.get)
    triton_best = max(tput for name in results if name != baseline_name for tput, *_ in results[name].values())
    print("\nraw onnxruntime, images/s by batch size (" + ", ".join(f"{b}: {r:.0f}" for b, r in raw.items()) + ")")
    print(f"serving efficiency = Triton's best {triton_best:.0f} images/s ÷ raw {raw[best_batch]:.0f} images/s "
          f"(batch {best_batch}) = {triton_best / raw[best_batch]:.2f} (target ≥ 0.80)")


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
