"""TensorRT plans (fp16, int8) with the TensorRT Python API, on a GPU that matches the profile.

A plan runs only on the GPU architecture and TensorRT version it was built with, so a
worker builds a profile only when `capability(profile)` says this host matches; otherwise
the target is reported unavailable with the reason (never faked). Device buffers are torch
CUDA tensors, so no extra CUDA binding is needed beside TensorRT itself.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from lineloop.compiler.profiles import TargetProfile
from lineloop.serving import INPUT

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class Capability:
    available: bool
    reason: str  # "unavailable: ..." when not available
    gpu_arch: str = ""
    tensorrt_version: str = ""


def capability(profile: TargetProfile) -> Capability:
    """Whether this host can build (and verify) `profile`. Asked by the build worker at start, so it
    loads neither torch nor CUDA: the GPU's architecture comes from the driver (nvidia-smi), the
    TensorRT version from the installed package's metadata."""
    arch, why_not = gpu_arch()
    if not arch:
        return Capability(False, f"unavailable: no CUDA device ({why_not})")
    version = tensorrt_version()
    if not version:
        return Capability(False, "unavailable: TensorRT is not installed", gpu_arch=arch)
    if arch != profile.gpu_arch:
        return Capability(False, f"unavailable: GPU is {arch}, profile needs {profile.gpu_arch}", arch, version)
    if version != profile.tensorrt_version and not version.startswith(f"{profile.tensorrt_version}."):
        return Capability(
            False, f"unavailable: TensorRT is {version}, profile needs {profile.tensorrt_version}", arch, version
        )
    return Capability(True, "", arch, version)


def gpu_arch() -> tuple[str, str]:
    """("sm_XY" of the first GPU, "") from the driver's nvidia-smi, or ("", why not)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "", "no NVIDIA driver: nvidia-smi not found"
    try:
        done = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as err:
        return "", f"nvidia-smi failed: {err}"
    first = done.stdout.strip().splitlines()[0].strip() if done.returncode == 0 and done.stdout.strip() else ""
    major, _, minor = first.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        return "", f"nvidia-smi reports no GPU (exit {done.returncode}: {(done.stderr or done.stdout).strip()[:200]})"
    return f"sm_{major}{minor}", ""


def tensorrt_version() -> str:
    """The installed TensorRT's version without importing it ("" when not installed)."""
    for name in ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_libs"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


def build_plan(onnx_model: bytes, profile: TargetProfile, input_size: int, calibration: np.ndarray | None,
               timing_cache: Path) -> bytes:
    """Parse the ONNX model and build a serialized plan for the profile's precision and batch range."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)

    shape = (3, input_size, input_size)
    optimisation = builder.create_optimization_profile()
    optimisation.set_shape(INPUT, (1, *shape), (profile.batch_size, *shape), (profile.max_batch_size, *shape))
    config.add_optimization_profile(optimisation)

    if profile.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif profile.precision == "int8":
        if calibration is None or not len(calibration):
            raise RuntimeError("INT8 needs calibration frames")
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers INT8 cannot run fall back to fp16, not fp32
        config.int8_calibrator = _entropy_calibrator(trt, calibration, profile.batch_size)
        config.set_calibration_profile(optimisation)

    # The timing cache makes rebuilds for the same GPU fast; shared per (arch, TensorRT version).
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the plan (see the worker log)")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _entropy_calibrator(trt: Any, frames: np.ndarray, batch_size: int) -> Any:
    import torch

    class FramesCalibrator(trt.IInt8EntropyCalibrator2):
        """Hands TensorRT the calibration frames, one device batch at a time."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = [frames[i:i + batch_size] for i in range(0, len(frames) - batch_size + 1, batch_size)]
            self.index = 0
            self.device = torch.empty((batch_size, *frames.shape[1:]), dtype=torch.float32, device="cuda")
            self.cache: bytes | None = None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(self.batches):
                return None
            self.device.copy_(torch.from_numpy(np.ascontiguousarray(self.batches[self.index])))
            self.index += 1
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return self.cache

        def write_calibration_cache(self, cache: Any) -> None:
            self.cache = bytes(cache)

    return FramesCalibrator()


class PlanRunner:
    """A plan executed with TensorRT on the current CUDA device: images -> probabilities."""

    def __init__(self, plan: bytes) -> None:
        import tensorrt as trt
        import torch

        self.trt, self.torch = trt, torch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the plan")
        self.context = self.engine.create_execution_context()
        self.outputs = [
            name for name in (self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT
        ]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        torch = self.torch
        device_input = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).cuda()
        self.context.set_input_shape(INPUT, tuple(device_input.shape))
        self.context.set_tensor_address(INPUT, device_input.data_ptr())
        buffers = {}
        for name in self.outputs:
            buffers[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, buffers[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return buffers["probabilities"].cpu().numpy()
