"""Human labels that are likely wrong, by confident learning (cleanlab) on out-of-sample predictions.

The probabilities are the ones the frame's stored prediction carries: ingest scored the frame
with the model served when it arrived, a model trained on a dataset cut before the frame
existed, so the frame cannot have been in its training split (a byte-identical image can; the
caller leaves such frames out). That makes them out-of-fold predictions for free, with no model
trained here. Confident learning then estimates, per class, how sure the model is on frames
truly of that class, and flags labels whose frame another class claims more confidently than
that; mistakes of the model on frames it is unsure of are not flagged, as a plain
"prediction disagrees with the label" rule would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Suspect:
    index: int             # position in the labels given
    label_class: str       # the label under suspicion
    suggested_class: str   # the class the out-of-sample prediction favours
    score: float           # cleanlab's label quality: near 0 surely wrong, near 1 surely right


class NotCheckable(Exception):
    """The labels cannot be checked soundly (the message says why)."""


def flag_label_issues(
    labels: Sequence[str], scores: Sequence[Mapping[str, float]], classes: Sequence[str], *, min_frames: int = 50,
    filter_by: str = "prune_by_class",
) -> list[Suspect]:
    """Labels likely wrong, most likely first. `scores[i]`: class -> probability for frame i,
    from a model that did not train on frame i. Raises NotCheckable with too little to go on.

    `filter_by`: cleanlab's rule for how many to flag. "prune_by_class" (per class, the frames
    confident learning counts as off-diagonal, least self-confident first) had the best recall at
    a 2-5 % error rate for the same precision in services/labeling/bench/bench_label_issues.py."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} predictions")
    if len(labels) < min_frames:
        raise NotCheckable(f"{len(labels)} labelled frames with an out-of-sample prediction, fewer than {min_frames}")
    # Only classes someone labelled: cleanlab estimates a threshold per class from its labelled
    # frames, and a column without any would have none (the rows are renormalised below).
    present = [c for c in classes if c in set(labels)]
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"labels of unknown classes {unknown}")
    if len(present) < 2:
        raise NotCheckable(f"only one class labelled ({present[0] if present else 'none'})")

    # Imported here, not at module level: cleanlab pulls in scikit-learn and pandas, which would
    # add seconds to every labeling start for a check that runs once per cut.
    import numpy as np
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    index = {c: i for i, c in enumerate(present)}
    y = np.array([index[label] for label in labels])
    probs = np.array([[max(0.0, float(s.get(c, 0.0))) for c in present] for s in scores], dtype=float)
    # A tiny floor keeps a row the model put entirely on unlabelled classes defined (uniform).
    probs = probs + 1e-9
    probs /= probs.sum(axis=1, keepdims=True)
    # A model no better than always answering the commonest class knows nothing about these
    # frames: confident learning on it flags a third of them (measured on the simulator), so
    # nothing is claimed rather than flooding the queue.
    agreement = float(np.mean(probs.argmax(axis=1) == y))
    majority = float(np.bincount(y).max() / len(y))
    if agreement <= majority:
        raise NotCheckable(f"the predictions agree with {agreement:.0%} of the labels, no more than always "
                           f"answering {present[int(np.bincount(y).argmax())]!r} would ({majority:.0%})")
    # n_jobs=1: the service's event loop runs this; no worker processes behind its back.
    issues = find_label_issues(labels=y, pred_probs=probs, filter_by=filter_by, n_jobs=1)
    quality = get_label_quality_scores(y, probs, method="self_confidence")
    flagged = [int(i) for i in np.flatnonzero(issues)]
    flagged.sort(key=lambda i: (quality[i], i))
    return [Suspect(i, labels[i], present[int(np.argmax(probs[i]))], float(quality[i])) for i in flagged]


def disagreements(labels: Sequence[str], scores: Sequence[Mapping[str, float]]) -> list[int]:
    """The rule a user would reach for first: frames whose predicted class is not their label
    (the baseline the bench compares confident learning with)."""
    return [i for i, (label, s) in enumerate(zip(labels, scores, strict=True)) if max(s, key=s.get) != label]
