"""Target profiles: what a build is (runtime, precision, shapes, tolerance), read from YAML."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

RUNTIMES = ("onnxruntime", "onnxruntime-cpu", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclasses.dataclass(frozen=True)
class Tolerance:
    min_top1_agreement: float
    max_abs_error: float


@dataclasses.dataclass(frozen=True)
class TargetProfile:
    name: str
    runtime: str
    precision: str
    tolerance: Tolerance
    batch_size: int = 1  # throughput is measured at this batch
    max_batch_size: int = 32  # upper end of the dynamic batch axis (TensorRT optimisation profile)
    calibration_frames: int = 0  # INT8: frames from the training split
    gpu_arch: str = ""  # TensorRT: sm_87, sm_90, ...
    tensorrt_version: str = ""  # TensorRT: major.minor the plan is built with

    @property
    def artifact_name(self) -> str:
        return "model.plan" if self.runtime == "tensorrt" else "model.onnx"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ProfileCatalogue:
    profiles: dict[str, TargetProfile]
    cloud_targets: tuple[str, ...]

    def get(self, name: str) -> TargetProfile:
        try:
            return self.profiles[name]
        except KeyError:
            raise KeyError(f"unknown target profile {name!r}; configured: {', '.join(sorted(self.profiles))}") from None


def load_profiles(path: Path | None = None) -> ProfileCatalogue:
    """Profiles from `path` (YAML), else the packaged embedded default; invalid entries raise ValueError."""
    text = Path(path).read_text() if path else (resources.files("lineloop.compiler") / "profiles.yaml").read_text()
    body = yaml.safe_load(text) or {}
    profiles = {name: _profile(name, spec) for name, spec in (body.get("profiles") or {}).items()}
    cloud = tuple(body.get("cloud_targets") or ())
    unknown = [t for t in cloud if t not in profiles]
    if unknown:
        raise ValueError(f"cloud_targets {unknown} are not defined profiles")
    return ProfileCatalogue(profiles, cloud)


def _profile(name: str, spec: dict[str, Any]) -> TargetProfile:
    if not isinstance(spec, dict):
        raise ValueError(f"profile {name!r} must be a mapping")
    spec = dict(spec)
    runtime, precision = spec.get("runtime"), spec.get("precision")
    if runtime not in RUNTIMES:
        raise ValueError(f"profile {name!r}: runtime {runtime!r} is not one of {RUNTIMES}")
    if precision not in PRECISIONS:
        raise ValueError(f"profile {name!r}: precision {precision!r} is not one of {PRECISIONS}")
    if runtime != "tensorrt" and precision == "fp16":
        raise ValueError(f"profile {name!r}: fp16 is a TensorRT precision here")
    if runtime == "tensorrt" and not (spec.get("gpu_arch") and spec.get("tensorrt_version")):
        raise ValueError(f"profile {name!r}: a TensorRT profile names its gpu_arch and tensorrt_version")
    if precision == "int8" and int(spec.get("calibration_frames", 0)) <= 0:
        raise ValueError(f"profile {name!r}: INT8 needs calibration_frames > 0")
    try:
        tolerance = Tolerance(**spec.pop("tolerance"))
        profile = TargetProfile(name=name, tolerance=tolerance, **spec)
    except (KeyError, TypeError) as err:
        raise ValueError(f"profile {name!r}: {err}") from err
    if not 1 <= profile.batch_size <= profile.max_batch_size:
        raise ValueError(f"profile {name!r}: need 1 <= batch_size <= max_batch_size")
    return profile
