"""Evaluation metrics for a classifier on a labelled split (numpy only).

The `ok` false-positive rate is the share of truly `ok` frames predicted as any
defect: every one is good product thrown away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lineloop.v1.common_pb2 import ConfusionRow, EvalMetrics

OK_CLASS = "ok"


@dataclass(frozen=True)
class Evaluation:
    classes: list[str]
    samples: int
    accuracy: float
    ok_false_positive_rate: float
    precision: dict[str, float]
    recall: dict[str, float]
    confusion: list[list[int]]  # [true][predicted], in `classes` order
    loss: float = float("nan")
    extra: dict[str, float] = field(default_factory=dict)
    # Per frame, in the split's order: the label and the prediction. The registry's gate pairs
    # two models' answers frame by frame; kept out of the proto and `as_dict`.
    labels: tuple[str, ...] = ()
    predictions: tuple[str, ...] = ()

    def to_proto(self) -> EvalMetrics:
        msg = EvalMetrics(
            samples=self.samples,
            accuracy=self.accuracy,
            ok_false_positive_rate=self.ok_false_positive_rate,
            loss=0.0 if np.isnan(self.loss) else self.loss,
        )
        msg.precision.update(self.precision)
        msg.recall.update(self.recall)
        for t, row in zip(self.classes, self.confusion, strict=True):
            msg.confusion.append(ConfusionRow(true_class=t, predicted={p: int(n) for p, n in zip(self.classes, row, strict=True)}))
        return msg

    def as_dict(self) -> dict:
        return {
            "samples": self.samples,
            "accuracy": self.accuracy,
            "ok_false_positive_rate": self.ok_false_positive_rate,
            "precision": self.precision,
            "recall": self.recall,
            "confusion": {"classes": self.classes, "matrix": self.confusion},
            "loss": None if np.isnan(self.loss) else self.loss,
        }


def evaluate(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], *, loss: float = float("nan"), ok_class: str = OK_CLASS
) -> Evaluation:
    """Metrics from integer labels and predictions (indices into `classes`)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels {y_true.shape} and predictions {y_pred.shape} differ in shape")
    k = len(classes)
    if y_true.size and (y_true.min() < 0 or y_true.max() >= k or y_pred.min() < 0 or y_pred.max() >= k):
        raise ValueError(f"label or prediction outside 0..{k - 1}")
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    n = int(y_true.size)
    correct = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    precision = {c: float(correct[i] / predicted[i]) if predicted[i] else 0.0 for i, c in enumerate(classes)}
    recall = {c: float(correct[i] / actual[i]) if actual[i] else 0.0 for i, c in enumerate(classes)}
    if ok_class in classes and actual[classes.index(ok_class)]:
        i = classes.index(ok_class)
        ok_fpr = float((actual[i] - confusion[i, i]) / actual[i])
    else:
        ok_fpr = 0.0
    return Evaluation(
        classes=list(classes),
        samples=n,
        accuracy=float(correct.sum() / n) if n else 0.0,
        ok_false_positive_rate=ok_fpr,
        precision=precision,
        recall=recall,
        confusion=confusion.tolist(),
        loss=float(loss),
        labels=tuple(classes[i] for i in y_true.tolist()),
        predictions=tuple(classes[i] for i in y_pred.tolist()),
    )
