"""torch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8 on the demo model, at batch 1 and 32.

The demo model (lineloop.model's default InspectionNet: width 16, 96x96) is trained here on
synthetic apple frames; the INT8 build is the compiler's own (static, calibrated on the
training split). Every runtime uses the same number of threads and the same test split.
Ratios are against torch eager measured in this run.

    .venv/bin/python services/compiler/bench/bench_runtimes.py [--frames 1000] [--epochs 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lineloop.compiler.onnx_builds import fp32_dynamic, int8_static
from lineloop.compiler.testing import demo_data, train_demo_model
from lineloop.compiler.profiles import load_profiles
from lineloop.compiler.verify import OnnxRunner, compare
from lineloop.model.export import export_onnx


def measure(run, images: np.ndarray, batch: int, seconds: float) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, images/s) of `run` on batches of `batch`, cycling through `images`."""
    batches = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)] or [np.resize(images, (batch, *images.shape[1:]))]
    for b in batches[:3]:
        run(b)
    latencies, done, started = [], 0, time.perf_counter()
    while time.perf_counter() - started < seconds or len(latencies) < 20:
        b = batches[len(latencies) % len(batches)]
        t = time.perf_counter()
        run(b)
        latencies.append((time.perf_counter() - t) * 1000)
        done += len(b)
    elapsed = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99])
    return float(p50), float(p99), done / elapsed


def accuracy(run, images: np.ndarray, labels: np.ndarray) -> float:
    predicted = np.concatenate([run(images[i:i + 32]) for i in range(0, len(images), 32)]).argmax(axis=1)
    return float((predicted == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for every runtime")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window per cell")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = demo_data(frames=args.frames, input_size=96)
    model = train_demo_model(data, width=16, epochs=args.epochs)
    print(f"demo model: InspectionNet width 16, 96x96, {args.frames} synthetic frames, {args.epochs} epochs "
          f"(prepared in {time.perf_counter() - started:.0f} s); {args.threads} thread(s) per runtime")
    source = export_onnx(model)
    train_images, _ = data.split("train")
    test_images, test_labels = data.split("test")
    int8 = int8_static(source, train_images[:128])

    def torch_eager(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(model(torch.from_numpy(images))[0], dim=1).numpy()

    runtimes = {
        "torch eager fp32": torch_eager,
        "onnxruntime fp32": OnnxRunner(fp32_dynamic(source), args.threads),
        "onnxruntime int8": OnnxRunner(int8, args.threads),
    }
    rows = {}
    for name, run in runtimes.items():
        acc = accuracy(run, test_images, test_labels)
        b1 = measure(run, test_images, 1, args.seconds)
        b32 = measure(run, test_images, 32, args.seconds)
        rows[name] = (acc, b1, b32)

    base_acc, base_b1, base_b32 = rows["torch eager fp32"]
    print(f"\ntest split: {len(test_labels)} frames\n")
    header = (f"{'runtime':<18} {'accuracy':>8} {'Δacc pt':>8} | {'b1 p50 ms':>9} {'b1 p99 ms':>9} {'b1 img/s':>9} "
              f"{'×torch':>7} | {'b32 p50 ms':>10} {'b32 p99 ms':>10} {'b32 img/s':>9} {'×torch':>7}")
    print(header)
    print("-" * len(header))
    for name, (acc, (p50, p99, tput), (p50_32, p99_32, tput_32)) in rows.items():
        print(f"{name:<18} {acc:>8.4f} {100 * (acc - base_acc):>+8.2f} | {p50:>9.3f} {p99:>9.3f} {tput:>9.0f} "
              f"{tput / base_b1[2]:>6.2f}× | {p50_32:>10.3f} {p99_32:>10.3f} {tput_32:>9.0f} {tput_32 / base_b32[2]:>6.2f}×")
    reference = np.concatenate([runtimes["onnxruntime fp32"](test_images[i:i + 32]) for i in range(0, len(test_images), 32)])
    quantised = np.concatenate([runtimes["onnxruntime int8"](test_images[i:i + 32]) for i in range(0, len(test_images), 32)])
    tolerance = load_profiles().get("onnxruntime-cpu-int8").tolerance
    agreement, error, failures = compare(reference, quantised, tolerance)
    print(f"\nINT8 vs fp32 on the test split: top-1 agreement {agreement:.4f}, max abs score difference {error:.4f} "
          f"-> default onnxruntime-cpu-int8 profile: {'passes' if not failures else 'rejects (' + '; '.join(failures) + ')'}")
    int8_acc, int8_b1, int8_b32 = rows["onnxruntime int8"]
    print(f"target INT8 ≥ 2× torch eager at ≤ 1 point accuracy loss: batch 1 {int8_b1[2] / base_b1[2]:.2f}×, "
          f"batch 32 {int8_b32[2] / base_b32[2]:.2f}×, accuracy {100 * (int8_acc - base_acc):+.2f} points")


if __name__ == "__main__":
    main()
