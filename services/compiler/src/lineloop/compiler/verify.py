"""Verification of a build against the torch model on held-out frames, and its timing.

The reference is the trained torch model itself (eager, CPU), not the ONNX export: a build
derived from a broken export would otherwise agree with its own source and pass.

Agreement and error are measured on the same frames for both models; latency is measured
at batch 1 (p50/p99 over single-frame runs) and throughput at the profile's batch size, on
the host that built it. A build outside the profile's tolerance is rejected with the numbers.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from lineloop.compiler.profiles import Tolerance
from lineloop.v1.events_pb2 import VerificationReport

if TYPE_CHECKING:
    from lineloop.model.net import InspectionNet

# images [N,3,S,S] -> probabilities [N,C]
Runner = Callable[[np.ndarray], np.ndarray]


class OnnxRunner:
    """An ONNX model (serving contract) on onnxruntime's CPU provider."""

    def __init__(self, model: bytes, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["probabilities"], {"images": np.ascontiguousarray(images, dtype=np.float32)})[0]


class TorchRunner:
    """The torch model (eager, CPU) under the serving contract: the reference for every build.

    torch is imported by the first build (in the build's thread), not at the service's start.
    """

    def __init__(self, model: InspectionNet) -> None:
        from lineloop.model.export import Serving
        self.model = Serving(model).eval()

    @classmethod
    def from_checkpoint(cls, weights: bytes) -> TorchRunner:
        from lineloop.model.net import load_checkpoint
        return cls(load_checkpoint(weights))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch
        with torch.inference_mode():
            probabilities, _ = self.model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        return probabilities.numpy()


@dataclasses.dataclass(frozen=True)
class Verification:
    samples: int
    top1_agreement: float
    max_abs_error: float
    latency_p50_ms: float
    latency_p99_ms: float
    throughput_per_s: float
    batch_size: int
    host: str
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_proto(self) -> VerificationReport:
        return VerificationReport(
            samples=self.samples, top1_agreement=self.top1_agreement, max_abs_error=self.max_abs_error,
            latency_p50_ms=self.latency_p50_ms, latency_p99_ms=self.latency_p99_ms,
            throughput_per_s=self.throughput_per_s, batch_size=self.batch_size, host=self.host,
        )

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed, "failures": list(self.failures)}


def compare(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> tuple[float, float, list[str]]:
    """(top-1 agreement, max abs score difference, the tolerance checks that failed)."""
    if reference.shape != candidate.shape:
        return 0.0, float("inf"), [f"output shape {candidate.shape} differs from the reference's {reference.shape}"]
    agreement = float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean())
    error = float(np.abs(reference - candidate).max()) if np.isfinite(candidate).all() else float("inf")
    failures = []
    if agreement < tolerance.min_top1_agreement:
        failures.append(f"top-1 agreement {agreement:.4f} < {tolerance.min_top1_agreement}")
    if not error <= tolerance.max_abs_error:
        failures.append(f"max abs score difference {error:.6f} > {tolerance.max_abs_error}")
    return agreement, error, failures


def timing(run: Runner, frames: np.ndarray, batch_size: int, *, single_runs: int = 100,
           batch_runs: int = 20) -> tuple[float, float, float]:
    """(p50 ms, p99 ms) at batch 1 and images/s at `batch_size`."""
    single = frames[:1]
    run(single)  # warm-up: first runs allocate
    latencies = []
    for index in range(single_runs):
        image = frames[index % len(frames)][None]
        started = time.perf_counter()
        run(image)
        latencies.append((time.perf_counter() - started) * 1000.0)
    batch = np.resize(frames, (batch_size, *frames.shape[1:])) if len(frames) < batch_size else frames[:batch_size]
    run(batch)
    started = time.perf_counter()
    for _ in range(batch_runs):
        run(batch)
    elapsed = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99])
    return float(p50), float(p99), batch_size * batch_runs / elapsed


def verify(reference: Runner, candidate: Runner, frames: np.ndarray, tolerance: Tolerance, batch_size: int,
           *, single_runs: int = 100, batch_runs: int = 20) -> Verification:
    """Check `candidate` against `reference` on `frames` [N,3,S,S] and time it."""
    if len(frames) == 0:
        raise ValueError("verification needs held-out frames")
    expected = _batched(reference, frames, batch_size)
    try:
        got = _batched(candidate, frames, batch_size)
    except Exception as err:  # a broken build may fail at run time: that is a rejection, not a crash
        return Verification(len(frames), 0.0, float("inf"), 0.0, 0.0, 0.0, batch_size, platform.node(),
                            (f"build does not run: {err}",))
    agreement, error, failures = compare(expected, got, tolerance)
    p50, p99, throughput = timing(candidate, frames, batch_size, single_runs=single_runs, batch_runs=batch_runs)
    return Verification(len(frames), agreement, error, p50, p99, throughput, batch_size, platform.node(), tuple(failures))


def _batched(run: Runner, frames: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([run(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)])
