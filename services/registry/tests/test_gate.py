"""The gate's rule on constructed evaluations: pass, fail and "not enough evidence".

No stack needed: `decide` sees two models' answers on the same frames, built here frame by
frame, so the margin between one frame and two thousand is exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from lineloop.model.metrics import evaluate
from lineloop.registry.evidence import independent_difference, paired_difference
from lineloop.registry.gate import lacking_classes, decide
from lineloop.registry.settings import RegistrySettings
from lineloop.v1.events_pb2 import GateOutcome

CLASSES = ["bruise", "ok", "rot"]
PASSED, FAILED, NEE = (GateOutcome.GATE_OUTCOME_PASSED, GateOutcome.GATE_OUTCOME_FAILED,
                       GateOutcome.GATE_OUTCOME_NOT_ENOUGH_EVIDENCE)


def settings(**overrides) -> RegistrySettings:
    return RegistrySettings(**{"database_url": "sqlite://", "floor_accuracy": 0.8, "floor_ok_false_positive_rate": 0.1,
                               **overrides})


def split(n: int) -> np.ndarray:
    """n labels: half ok, a quarter each bruise and rot."""
    labels = np.full(n, CLASSES.index("ok"))
    labels[: n // 4] = CLASSES.index("bruise")
    labels[n // 4: n // 2] = CLASSES.index("rot")
    return labels


def answers(labels: np.ndarray, wrong: list[int]) -> np.ndarray:
    """Right on every frame but those in `wrong`, where it answers the next class."""
    pred = labels.copy()
    pred[wrong] = (pred[wrong] + 1) % len(CLASSES)
    return pred


def judge(labels, cand_pred, base_pred, **overrides):
    candidate = evaluate(labels, cand_pred, CLASSES)
    baseline = None if base_pred is None else evaluate(labels, base_pred, CLASSES)
    return decide(candidate, baseline, settings(**overrides), baseline_version="" if base_pred is None else "1",
                  dataset_version="apples/v0002")


def test_one_frame_of_twenty_is_not_enough_evidence_but_two_thousand_frames_decide():
    # Production right on every frame, the candidate wrong on one bruise frame: on 20 frames the
    # bounds cannot tell whether it is worse; it is held, and the reason names what to label.
    labels = split(20)
    decision = judge(labels, answers(labels, [0]), labels)
    assert decision.outcome == NEE and not decision.passed
    checks = {c.name: c for c in decision.checks}
    assert checks["accuracy"].outcome == NEE and checks["accuracy"].lower < -0.02 < checks["accuracy"].upper
    assert checks["recall:bruise"].frames == 5 and checks["recall:bruise"].more_frames_needed > 0
    assert decision.reason.startswith("not enough evidence at 95% confidence: ")
    assert "class bruise: 5 labelled test frames, about" in decision.reason
    assert "bruise" in lacking_classes(decision) and decision.confidence == pytest.approx(0.95)

    # The same 1-in-20 shortfall on 2000 frames (100 wrong bruise frames): a 5-point drop on
    # accuracy and 20 on bruise recall is beyond the margins: failed.
    labels = split(2000)
    decision = judge(labels, answers(labels, list(range(100))), labels)
    assert decision.outcome == FAILED and not decision.passed
    checks = {c.name: c for c in decision.checks}
    assert checks["accuracy"].outcome == FAILED and checks["accuracy"].upper < -0.02
    assert checks["recall:bruise"].outcome == FAILED and checks["recall:rot"].outcome == PASSED
    assert decision.reason.startswith("failed: accuracy 0.9500 vs production 1.0000 (worse by more than the margin")

    # One frame in 2000 worse, two others better: non-inferior beyond doubt: passed.
    base = answers(labels, [1, 2])
    decision = judge(labels, answers(labels, [0]), base)
    assert decision.outcome == PASSED and decision.passed, decision.reason
    assert all(c.outcome == PASSED and c.passed for c in decision.checks)
    assert decision.reason == "passed: not worse than production version 1 beyond the margins at 95% confidence"


def test_identical_answers_on_few_frames_are_not_evidence_and_a_class_without_frames_is_named():
    # Both models agree on every frame: on 12 frames the difference could still be large.
    labels = split(12)
    assert judge(labels, labels, labels).outcome == NEE
    # A class both models know but the split has no frames of cannot be judged at all.
    labels = split(2000)
    labels[labels == CLASSES.index("rot")] = CLASSES.index("ok")
    decision = judge(labels, labels, labels)
    assert decision.outcome == NEE
    assert "class rot: no labelled test frames" in decision.reason and lacking_classes(decision) == ["rot"]


def test_bootstrap_floors_are_judged_by_the_bounds_not_the_point_estimate():
    labels = split(20)
    # 19 of 20 right (0.95 >= floor 0.85), but the lower bound on 20 frames is below the floor;
    # no false positive on 10 ok frames (0 <= 0.1), but the upper bound is above it.
    decision = judge(labels, answers(labels, [0]), None, floor_accuracy=0.85)
    assert decision.outcome == NEE and decision.baseline_version == ""
    checks = {c.name: c for c in decision.checks}
    floor = checks["floor:accuracy"]
    assert floor.candidate == pytest.approx(0.95, abs=1e-6) and floor.lower < 0.85 < floor.upper
    assert checks["floor:ok_false_positive_rate"].outcome == NEE and checks["floor:ok_false_positive_rate"].upper > 0.1
    # 400 frames at 0.95: the lower bound clears the floor.
    labels = split(400)
    decision = judge(labels, answers(labels, list(range(20))), None)
    assert decision.outcome == PASSED, decision.reason
    # 400 frames at 0.5: the upper bound is below the floor: failed.
    decision = judge(labels, answers(labels, list(range(200))), None)
    assert decision.outcome == FAILED and "floor:accuracy 0.5000 vs floor 0.8000" in decision.reason
    # A lower confidence needs fewer frames: 19 of 20 passes at 60%.
    labels = split(20)
    assert judge(labels, answers(labels, [0]), None, floor_accuracy=0.85, gate_confidence=0.6).outcome == PASSED


def test_the_intervals_match_newcombes_published_examples():
    # Newcombe 1998, Stat Med 17:873 (independent, method 10) and 17:2635 (paired, method 10): 95% two-sided.
    b = independent_difference(56, 70, 48, 80, 0.975)
    assert (round(b.lower, 4), round(b.upper, 4)) == (0.0524, 0.3339)
    first = np.array([1] * 36 + [1] * 12 + [0] * 2, dtype=bool)
    second = np.array([1] * 36 + [0] * 12 + [1] * 2, dtype=bool)
    b = paired_difference(first, second, 0.975)
    assert (round(b.lower, 4), round(b.upper, 4)) == (0.0569, 0.3404)
