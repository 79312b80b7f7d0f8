"""One build: source model -> target artifact -> verification -> signed manifest in S3.

Blocking and CPU-heavy: the worker runs it in a thread, outside any transaction. Every build
is verified against the torch model, whose weights, like the ONNX file and the dataset
manifest, are read where the `ModelRegistered` event's references say. Layout
under `lineloop-builds/<model>/<version>/<target>/`: the artifact (`model.onnx` or
`model.plan`), `verification.json` (also for rejected builds, so the numbers can be
inspected), `manifest.json` and `manifest.sig` (only for builds that passed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from lineloop.compiler.frames import DatasetFrames, FramesUnavailable
from lineloop.compiler.onnx_builds import BuildError, fp32_dynamic, int8_static
from lineloop.compiler.profiles import TargetProfile
from lineloop.compiler.signing import Signer
from lineloop.compiler.tensorrt_builds import PlanRunner, build_plan, capability
from lineloop.compiler.verify import OnnxRunner, Runner, TorchRunner, verify
from lineloop.contracts.catalogue import bucket
from lineloop.edge.manifest import Artifact, BuildManifest, sha256_hex
from lineloop.storage.objects import ObjectStore, ObjectStoreError
from lineloop.v1.events_pb2 import (
    BUILD_STATUS_FAILED,
    BUILD_STATUS_OK,
    BUILD_STATUS_REJECTED,
    BUILD_STATUS_UNAVAILABLE,
    ModelCompiled,
    ModelRegistered,
)

log = logging.getLogger(__name__)

BUILDS_BUCKET = bucket("builds")


@dataclasses.dataclass(frozen=True)
class BuildEnvironment:
    objects: ObjectStore
    signer: Signer
    work_dir: Path  # frame cache, TensorRT timing caches
    verification_frames: int = 256
    threads: int = 1


def build_prefix(model_name: str, version: str, target: str) -> str:
    return f"{model_name}/{version}/{target}/"


def run_build(env: BuildEnvironment, model: ModelRegistered, profile: TargetProfile, build_id: str) -> ModelCompiled:
    """Build, verify and publish one target of a registered model; never raises for a bad model."""
    result = ModelCompiled(
        model_name=model.model_name, version=model.version, target=profile.name, build_id=build_id,
        runtime=profile.runtime, precision=profile.precision,
    )
    result.built_at.CopyFrom(_now())
    if profile.runtime == "tensorrt":
        can = capability(profile)
        if not can.available:
            result.status, result.reason = BUILD_STATUS_UNAVAILABLE, can.reason
            return result
    try:
        for ref, what in ((model.onnx, "ONNX file"), (model.weights, "weights"), (model.dataset_manifest, "dataset manifest")):
            if not ref.bucket or not ref.key:
                raise BuildError(f"the registered model carries no {what} reference")
        source = env.objects.get_bytes(model.onnx.bucket, model.onnx.key, model.onnx.sha256 or None)
        weights = env.objects.get_bytes(model.weights.bucket, model.weights.key, model.weights.sha256 or None)
        frames = DatasetFrames(env.objects, env.work_dir / "frames", model.dataset_manifest, model.input_size,
                               name=f"{model.dataset} {model.dataset_version}")
        held_out = frames.split("test", "val", limit=env.verification_frames)
        calibration = frames.split("train", limit=profile.calibration_frames) if profile.precision == "int8" else None
        reference = TorchRunner.from_checkpoint(weights)
        artifact, candidate = _compile(env, model, profile, source, calibration)
    except (FramesUnavailable, BuildError, ObjectStoreError) as err:
        result.status, result.reason = BUILD_STATUS_FAILED, str(err)
        return result
    except Exception as err:  # onnx/onnxruntime/TensorRT raise their own types for a model they cannot take
        log.exception("build %s failed", build_id)
        result.status, result.reason = BUILD_STATUS_FAILED, f"{type(err).__name__}: {err}"
        return result

    checked = verify(reference, candidate, held_out, profile.tolerance, profile.batch_size)
    result.verification.CopyFrom(checked.to_proto())
    prefix = build_prefix(model.model_name, model.version, profile.name)
    env.objects.put_bytes(
        BUILDS_BUCKET, prefix + "verification.json",
        json.dumps({"build_id": build_id, "profile": profile.as_dict(), **checked.as_dict()}, indent=2).encode(),
        "application/json",
    )
    if not checked.passed:
        result.status = BUILD_STATUS_REJECTED
        result.reason = "verification outside tolerance: " + "; ".join(checked.failures)
        log.warning("build %s rejected: %s", build_id, result.reason)
        return result

    stored = env.objects.put_bytes(BUILDS_BUCKET, prefix + profile.artifact_name, artifact, "application/octet-stream")
    manifest = BuildManifest(
        build_id=build_id, model_name=model.model_name, version=model.version, target=profile.name,
        runtime=profile.runtime, precision=profile.precision, profile=profile.as_dict(),
        source={
            "onnx": {"bucket": model.onnx.bucket, "key": model.onnx.key, "sha256": model.onnx.sha256},
            # the verification reference
            "weights": {"bucket": model.weights.bucket, "key": model.weights.key, "sha256": sha256_hex(weights)},
            "run_id": model.run_id, "dataset": model.dataset, "dataset_version": model.dataset_version,
        },
        classes=tuple(model.classes), input_size=model.input_size,
        artifacts=(Artifact(profile.artifact_name, stored.bucket, stored.key, stored.sha256, stored.size_bytes),),
        verification=checked.as_dict(), built_at=result.built_at.ToJsonString(), key_id=env.signer.key_id,
    )
    manifest_bytes = manifest.to_bytes()
    signature = env.signer.sign(manifest_bytes)
    manifest_ref = env.objects.put_bytes(BUILDS_BUCKET, prefix + "manifest.json", manifest_bytes, "application/json")
    env.objects.put_bytes(BUILDS_BUCKET, prefix + "manifest.sig", signature, "application/octet-stream")
    result.status = BUILD_STATUS_OK
    result.manifest.CopyFrom(manifest_ref.to_proto())
    result.signature = signature
    result.key_id = env.signer.key_id
    result.artifacts.append(stored.to_proto())
    return result


def _compile(env: BuildEnvironment, model: ModelRegistered, profile: TargetProfile, source: bytes,
             calibration: np.ndarray | None) -> tuple[bytes, Runner]:
    if profile.runtime == "tensorrt":
        cache = env.work_dir / "tensorrt" / f"{profile.gpu_arch}-trt{profile.tensorrt_version}.timing-cache"
        plan = build_plan(fp32_dynamic(source), profile, model.input_size, calibration, cache)
        return plan, PlanRunner(plan)
    if profile.precision == "int8":
        assert calibration is not None
        built = int8_static(source, calibration)
    else:
        built = fp32_dynamic(source)
    return built, OnnxRunner(built, env.threads)


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp

