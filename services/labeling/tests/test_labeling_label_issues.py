"""Confident learning on out-of-sample predictions: a seeded synthetic dataset whose wrong labels are known."""

from __future__ import annotations

import math
import random

import pytest

from lineloop.labeling.label_issues import NotCheckable, disagreements, flag_label_issues

CLASSES = ["ok", "bruise", "rot", "scab"]


def synthetic(frames: int, error_rate: float, seed: int, sureness: float = 3.5):
    """(labels, per-frame scores, indices labelled wrong): a model right about 95 % of the time,
    and labels flipped to another class at `error_rate`, as `lineloop labels simulate-qa` does."""
    rng = random.Random(seed)
    labels, scores, wrong = [], [], set()
    for i in range(frames):
        truth = rng.choice(CLASSES)
        logits = {c: rng.gauss(0, 1) + (sureness if c == truth else 0.0) for c in CLASSES}
        total = sum(math.exp(v) for v in logits.values())
        scores.append({c: math.exp(v) / total for c, v in logits.items()})
        label = truth
        if rng.random() < error_rate:
            label = rng.choice([c for c in CLASSES if c != truth])
            wrong.add(i)
        labels.append(label)
    return labels, scores, wrong


@pytest.mark.parametrize("error_rate", [0.02, 0.05])
def test_flags_most_wrong_labels_and_few_right_ones(error_rate):
    labels, scores, wrong = synthetic(1000, error_rate, seed=11)
    suspects = flag_label_issues(labels, scores, CLASSES)
    flagged = {s.index for s in suspects}
    precision = len(flagged & wrong) / len(flagged)
    recall = len(flagged & wrong) / len(wrong)
    assert precision >= 0.6 and recall >= 0.8, (precision, recall, len(flagged), len(wrong))
    # The naive rule flags every frame the model gets wrong: far less precise on the same data.
    naive = set(disagreements(labels, scores))
    assert len(naive & wrong) / len(naive) < precision
    # Most likely wrong first; the suggestion is the prediction's favourite, never the label.
    assert [s.score for s in suspects] == sorted(s.score for s in suspects)
    assert all(s.suggested_class != s.label_class and s.label_class == labels[s.index] for s in suspects)


def test_refuses_to_check_with_too_little_to_go_on():
    labels, scores, _ = synthetic(40, 0.05, seed=3)
    with pytest.raises(NotCheckable, match="fewer than 50"):
        flag_label_issues(labels, scores, CLASSES)
    with pytest.raises(NotCheckable, match="only one class"):
        flag_label_issues(["ok"] * 60, [{"ok": 0.9, "rot": 0.1}] * 60, CLASSES)


def test_a_class_nobody_labelled_does_not_stop_the_check():
    labels, scores, wrong = synthetic(600, 0.05, seed=5)
    kept = [i for i, label in enumerate(labels) if label != "scab"]
    suspects = flag_label_issues([labels[i] for i in kept], [scores[i] for i in kept], CLASSES)
    assert suspects and all(s.suggested_class in {"ok", "bruise", "rot"} for s in suspects)
    assert {kept[s.index] for s in suspects} & wrong


def test_a_model_that_only_knows_the_commonest_class_is_not_used():
    """What a first model trained on 70 % "ok" frames became on the simulator: "ok" for everything."""
    rng = random.Random(2)
    labels = [rng.choices(CLASSES, weights=[0.7, 0.1, 0.1, 0.1])[0] for _ in range(300)]
    scores = [{"ok": 0.7 + rng.uniform(-0.05, 0.05), "bruise": 0.1, "rot": 0.1, "scab": 0.1} for _ in labels]
    with pytest.raises(NotCheckable, match="no more than always answering 'ok' would"):
        flag_label_issues(labels, scores, CLASSES)
