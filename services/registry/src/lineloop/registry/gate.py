"""The champion/challenger gate.

Both the candidate and the production model are run by the registry itself, with
onnxruntime on their ONNX files (the artifact that is actually served), on the
same frames: the human-labelled test split of the newest version of the candidate's
dataset that any version of the model was trained on (usually the candidate's own; a
run started by hand on an older version is still judged on the newest frames). Numbers a
training run reports about itself are recorded but never trusted for the decision.

The decision is statistical (`decide`): each check is a one-sided confidence bound, paired
frame by frame, so a promotion never hinges on one frame: too few frames to tell is its own
outcome, "not enough evidence", and such a candidate is held.
"""

from __future__ import annotations

import asyncio

import numpy as np

from lineloop.model.dataset import DatasetSplits, load_images
from lineloop.model.manifest import FrameCache, ManifestEntry
from lineloop.model.metrics import OK_CLASS, Evaluation
from lineloop.model.onnx_eval import evaluate_onnx
from lineloop.registry.evidence import Bounds, complement, negated, paired_difference, proportion
from lineloop.registry.settings import RegistrySettings
from lineloop.runtime.cpu import available_cpus
from lineloop.storage.objects import ObjectStore
from lineloop.v1.common_pb2 import EvalMetrics, ObjectRef
from lineloop.v1.events_pb2 import GateCheck, GateDecision, GateOutcome


class GateError(Exception):
    """The gate could not be run (manifest, frames or model unreadable)."""


PASSED, FAILED, NOT_ENOUGH_EVIDENCE = (GateOutcome.GATE_OUTCOME_PASSED, GateOutcome.GATE_OUTCOME_FAILED,
                                       GateOutcome.GATE_OUTCOME_NOT_ENOUGH_EVIDENCE)


def outcome_of(decision: GateDecision) -> int:
    """A decision's outcome; one recorded before outcomes existed only has `passed`."""
    if decision.outcome != GateOutcome.GATE_OUTCOME_UNSPECIFIED:
        return decision.outcome
    return PASSED if decision.passed else FAILED


def judge(bounds: Bounds, threshold: float, *, higher_is_better: bool) -> tuple[int, int]:
    """(outcome, rough frames still needed) of bounds against a threshold (a floor, or minus a margin)."""
    if higher_is_better:
        verdict = PASSED if bounds.lower >= threshold else FAILED if bounds.upper < threshold else NOT_ENOUGH_EVIDENCE
    else:
        verdict = PASSED if bounds.upper <= threshold else FAILED if bounds.lower > threshold else NOT_ENOUGH_EVIDENCE
    if verdict != NOT_ENOUGH_EVIDENCE:
        return verdict, 0
    needed = bounds.frames_to_decide(threshold, higher_is_better=higher_is_better)
    return verdict, max(needed - bounds.frames, 1) if needed is not None else 0


def _check(name: str, candidate: float, baseline: float, bounds: Bounds, threshold: float, margin: float, *,
           higher_is_better: bool) -> GateCheck:
    verdict, more = judge(bounds, threshold, higher_is_better=higher_is_better)
    return GateCheck(name=name, candidate=candidate, baseline=baseline, passed=verdict == PASSED, lower=bounds.lower,
                     upper=bounds.upper, margin=margin, frames=bounds.frames, outcome=verdict, more_frames_needed=more,
                     lacking_class=_class_judged(name) if verdict == NOT_ENOUGH_EVIDENCE else "")


def _class_judged(check_name: str) -> str:
    """The class whose frames a check rests on: a defect's recall on its frames, the ok false-positive
    rate on ok frames; "" for accuracy (every frame)."""
    if check_name.startswith("recall:"):
        return check_name.removeprefix("recall:")
    if check_name.endswith("ok_false_positive_rate"):
        return OK_CLASS
    return ""


def _correct(evaluation: Evaluation) -> np.ndarray:
    if len(evaluation.labels) != evaluation.samples or len(evaluation.predictions) != evaluation.samples:
        raise GateError("the evaluation kept no per-frame answers to judge on")
    return np.array([p == t for t, p in zip(evaluation.labels, evaluation.predictions, strict=True)], dtype=bool)


def decide(
    candidate: Evaluation, baseline: Evaluation | None, settings: RegistrySettings, *, baseline_version: str,
    dataset_version: str,
) -> GateDecision:
    """Pass, fail or "not enough evidence", from one-sided confidence bounds (see evidence.py).

    Against production every check is paired on the same test frames: accuracy on all of
    them, the recall of each defect class on that class's frames, the ok false-positive rate
    on the ok frames (the ok class's recall is one minus it, so it is not checked twice). A
    class any model knows but the split has no labelled frames of cannot be judged: not
    enough evidence. With no production yet the candidate's own bounds meet the floors.
    """
    conf = settings.gate_confidence
    labels = np.array(candidate.labels)
    cand_right = _correct(candidate)
    ok_frames = labels == OK_CLASS
    ok_kept = int(np.sum(cand_right & ok_frames))
    checks: list[GateCheck] = []
    if baseline is None:
        checks.append(_check("floor:accuracy", candidate.accuracy, settings.floor_accuracy,
                             proportion(int(cand_right.sum()), len(cand_right), conf), settings.floor_accuracy, 0.0,
                             higher_is_better=True))
        fpr = complement(proportion(ok_kept, int(ok_frames.sum()), conf))  # 1 - the share of ok frames kept
        checks.append(_check("floor:ok_false_positive_rate", candidate.ok_false_positive_rate,
                             settings.floor_ok_false_positive_rate, fpr, settings.floor_ok_false_positive_rate, 0.0,
                             higher_is_better=False))
    else:
        if tuple(baseline.labels) != tuple(candidate.labels):
            raise GateError("candidate and production were not evaluated on the same frames")
        base_right = _correct(baseline)
        m = settings.gate_margin_accuracy
        checks.append(_check("accuracy", candidate.accuracy, baseline.accuracy,
                             paired_difference(cand_right, base_right, conf), -m, m, higher_is_better=True))
        m = settings.gate_margin_class
        # candidate minus production false-positive rate: minus the difference in ok frames kept
        fpr = negated(paired_difference(cand_right[ok_frames], base_right[ok_frames], conf))
        checks.append(_check("ok_false_positive_rate", candidate.ok_false_positive_rate,
                             baseline.ok_false_positive_rate, fpr, m, m, higher_is_better=False))
        for cls in sorted((set(candidate.classes) | set(baseline.classes)) - {OK_CLASS}):
            frames = labels == cls
            checks.append(_check(f"recall:{cls}", candidate.recall.get(cls, 0.0), baseline.recall.get(cls, 0.0),
                                 paired_difference(cand_right[frames], base_right[frames], conf), -m, m,
                                 higher_is_better=True))
    outcomes = {c.outcome for c in checks}
    outcome = FAILED if FAILED in outcomes else NOT_ENOUGH_EVIDENCE if NOT_ENOUGH_EVIDENCE in outcomes else PASSED
    against = "floor" if baseline is None else "production"
    at = f"at {conf:.0%} confidence"
    if outcome == FAILED:
        reason = "failed: " + "; ".join(
            f"{c.name} {c.candidate:.4f} vs {against} {c.baseline:.4f}"
            + (f" (worse by more than the margin {c.margin:.2f} {at} on {c.frames} frames)" if baseline is not None
               else f" (beyond the floor {at} on {c.frames} frames)")
            for c in checks if c.outcome == FAILED)
    elif outcome == NOT_ENOUGH_EVIDENCE:
        reason = f"not enough evidence {at}: " + "; ".join(
            f"{_lacking(c)}: "
            + (f"{c.frames} labelled test frames, about {c.more_frames_needed} more needed" if c.more_frames_needed
               else f"{c.frames} labelled test frames, the estimates sit on the margin" if c.frames
               else "no labelled test frames")
            + f" ({c.name} {c.candidate:.4f} vs {against} {c.baseline:.4f})"
            for c in checks if c.outcome == NOT_ENOUGH_EVIDENCE)
        reason += "; held: neither promoted nor rejected until a decision is possible or a person decides"
    elif baseline is None:
        reason = f"passed: meets the bootstrap floors {at} (no production version yet)"
    else:
        reason = f"passed: not worse than production version {baseline_version} beyond the margins {at}"
    return GateDecision(
        passed=outcome == PASSED, outcome=outcome, confidence=conf, reason=reason, baseline_version=baseline_version,
        dataset_version=dataset_version, candidate=candidate.to_proto(),
        baseline=baseline.to_proto() if baseline is not None else EvalMetrics(), checks=checks,
    )


def _lacking(check: GateCheck) -> str:
    """The frames a check needs more of: a class's, or any class's."""
    return f"class {check.lacking_class}" if check.lacking_class else "all classes"


def lacking_classes(decision: GateDecision) -> list[str]:
    """The classes whose labelled test frames are too few for a decision ("*": any class, for accuracy)."""
    return sorted({c.lacking_class or "*" for c in decision.checks if c.outcome == NOT_ENOUGH_EVIDENCE})


class Evaluator:
    """Loads test splits and model files from S3 and scores models with onnxruntime."""

    def __init__(self, store: ObjectStore, settings: RegistrySettings) -> None:
        self.store = store
        self.cache = FrameCache(settings.frame_cache_dir, store)
        self.threads = settings.eval_threads or available_cpus()  # the container's CPU quota, not the node's cores

    async def test_split(self, dataset: str, version: str, manifest: ObjectRef) -> list[ManifestEntry]:
        """The human-labelled test frames of the manifest the training event named (its bucket, key, sha256)."""
        try:
            test = (await DatasetSplits.aread(self.store, manifest)).split("test")
        except Exception as err:
            raise GateError(f"manifest of {dataset} {version} unusable: {err}") from err
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
            images = load_images(self.cache, test, input_size)
            return evaluate_onnx(model, classes, images, [e.label for e in test], threads=self.threads)
        except Exception as err:
            raise GateError(f"evaluation failed: {err}") from err
