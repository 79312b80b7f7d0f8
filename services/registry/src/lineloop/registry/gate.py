"""The champion/challenger gate.

Both the candidate and the production model are run by the registry itself, with
onnxruntime on their ONNX files (the artifact that is actually served), on the
same frames: the human-labelled test split of the newest version of the candidate's
dataset that any version of the model was trained on (usually the candidate's own; a
run started by hand on an older version is still judged on the newest frames). Numbers a
training run reports about itself are recorded but never trusted for the decision.
"""

from __future__ import annotations

import asyncio

import numpy as np

from lineloop.model.manifest import DATASETS_BUCKET, FrameCache, ManifestEntry, manifest_key, parse_manifest
from lineloop.model.metrics import Evaluation
from lineloop.model.onnx_eval import evaluate_onnx
from lineloop.model.preprocess import frame_input
from lineloop.registry.settings import RegistrySettings
from lineloop.runtime.cpu import available_cpus
from lineloop.storage.objects import ObjectStore
from lineloop.v1.common_pb2 import EvalMetrics
from lineloop.v1.events_pb2 import GateCheck, GateDecision


class GateError(Exception):
    """The gate could not be run (manifest, frames or model unreadable)."""


def decide(
    candidate: Evaluation, baseline: Evaluation | None, settings: RegistrySettings, *, baseline_version: str,
    dataset_version: str,
) -> GateDecision:
    checks: list[GateCheck] = []
    if baseline is None:
        checks.append(GateCheck(name="floor:accuracy", candidate=candidate.accuracy, baseline=settings.floor_accuracy,
                                tolerance=0.0, passed=candidate.accuracy >= settings.floor_accuracy))
        checks.append(GateCheck(name="floor:ok_false_positive_rate", candidate=candidate.ok_false_positive_rate,
                                baseline=settings.floor_ok_false_positive_rate, tolerance=0.0,
                                passed=candidate.ok_false_positive_rate <= settings.floor_ok_false_positive_rate))
    else:
        t = settings.tolerance_accuracy
        checks.append(GateCheck(name="accuracy", candidate=candidate.accuracy, baseline=baseline.accuracy, tolerance=t,
                                passed=candidate.accuracy >= baseline.accuracy - t - 1e-9))
        t = settings.tolerance_ok_false_positive_rate
        checks.append(GateCheck(name="ok_false_positive_rate", candidate=candidate.ok_false_positive_rate,
                                baseline=baseline.ok_false_positive_rate, tolerance=t,
                                passed=candidate.ok_false_positive_rate <= baseline.ok_false_positive_rate + t + 1e-9))
        t = settings.tolerance_recall
        for i, cls in enumerate(baseline.classes):
            if sum(baseline.confusion[i]):  # only classes the test split has frames of
                c, b = candidate.recall.get(cls, 0.0), baseline.recall[cls]
                checks.append(GateCheck(name=f"recall:{cls}", candidate=c, baseline=b, tolerance=t, passed=c >= b - t - 1e-9))
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = "; ".join(
            f"{c.name} {c.candidate:.4f} vs {'floor' if c.name.startswith('floor:') else 'production'} {c.baseline:.4f}"
            + (f" (tolerance {c.tolerance:.4f})" if c.tolerance else "") for c in failed)
        reason = f"failed: {reason}"
    elif baseline is None:
        reason = "passed: meets the bootstrap floors (no production version yet)"
    else:
        reason = f"passed: not worse than production version {baseline_version}"
    return GateDecision(
        passed=not failed, reason=reason, baseline_version=baseline_version, dataset_version=dataset_version,
        candidate=candidate.to_proto(), baseline=baseline.to_proto() if baseline is not None else EvalMetrics(),
        checks=checks,
    )


class Evaluator:
    """Loads test splits and model files from S3 and scores models with onnxruntime."""

    def __init__(self, store: ObjectStore, settings: RegistrySettings) -> None:
        self.store = store
        self.cache = FrameCache(settings.frame_cache_dir, store)
        self.threads = settings.eval_threads or available_cpus()  # the container's CPU quota, not the node's cores

    async def test_split(self, dataset: str, version: str, sha256: str) -> list[ManifestEntry]:
        try:
            data = await self.store.aio.get_bytes(DATASETS_BUCKET, manifest_key(dataset, version), expected_sha256=sha256 or None)
            entries = parse_manifest(data)
        except Exception as err:
            raise GateError(f"manifest of {dataset} {version} unusable: {err}") from err
        test = [e for e in entries if e.split == "test" and e.label_source != "model"]
        if not test:
            raise GateError(f"{dataset} {version} has no human-labelled test frames to judge on")
        return test

    async def evaluate(self, onnx_bucket: str, onnx_key: str, onnx_sha256: str, classes: list[str], input_size: int,
                       test: list[ManifestEntry]) -> Evaluation:
        try:
            model = await self.store.aio.get_bytes(onnx_bucket, onnx_key, expected_sha256=onnx_sha256 or None)
        except Exception as err:
            raise GateError(f"model file {onnx_bucket}/{onnx_key} unreadable: {err}") from err
        return await asyncio.to_thread(self._evaluate, model, classes, input_size, test)

    def _evaluate(self, model: bytes, classes: list[str], input_size: int, test: list[ManifestEntry]) -> Evaluation:
        try:
            paths = self.cache.fetch_all(test)
            images = np.stack([frame_input(p.read_bytes(), input_size) for p in paths])
            return evaluate_onnx(model, classes, images, [e.label for e in test], threads=self.threads)
        except Exception as err:
            raise GateError(f"evaluation failed: {err}") from err
