"""Confidence bounds the gate decides on: a proportion, and a difference of two proportions.

Wilson score intervals come from scipy (`binomtest(...).proportion_ci(method="wilson")`).
A difference combines the two Wilson intervals by Newcombe's hybrid score method:

- paired (both models on the same frames, the gate): Newcombe 1998, "Improved confidence
  intervals for the difference between binomial proportions based on paired data", method 10,
  whose correlation term narrows the interval when both models are right and wrong on the same
  frames. Neither scipy nor statsmodels offers a paired interval for a difference (statsmodels'
  paired one is for the risk ratio), so the combination is written out here. It is
  deterministic, and on few frames it stays wide where a bootstrap would collapse to a point
  when both models agree on every frame.
- independent (live accuracy of a canary and of production, on different frames): the same
  formula without the correlation term, which is statsmodels'
  `confint_proportions_2indep(method="newcomb")`; kept here with the paired one rather than
  pulling pandas into the registry for it.

Every bound is one-sided at `confidence`: the two ends of a two-sided interval at
2 * confidence - 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Bounds:
    estimate: float
    lower: float
    upper: float
    frames: int  # observations the bounds rest on (the first sample's, for two independent ones)
    # The bounds on `factor` times the frames with the same shares (how evidence would grow).
    scaled: Callable[[float], Bounds] | None = field(default=None, repr=False, compare=False)

    def decides(self, threshold: float, *, higher_is_better: bool) -> bool:
        if higher_is_better:
            return self.lower >= threshold or self.upper < threshold
        return self.upper <= threshold or self.lower > threshold

    def frames_to_decide(self, threshold: float, *, higher_is_better: bool, most: float = 1e6) -> int | None:
        """Rough frames needed for a decision if the shares seen so far hold; None when there are
        none yet, or not even `most` frames would do (the estimate sits on the threshold)."""
        if self.frames == 0 or self.scaled is None:
            return None
        if self.decides(threshold, higher_is_better=higher_is_better):
            return self.frames
        low, high = 1.0, 2.0
        while not self.scaled(high).decides(threshold, higher_is_better=higher_is_better):
            low, high = high, high * 2
            if high * self.frames > most:
                return None
        while high - low > 0.01 * low:
            mid = (low + high) / 2
            low, high = (low, mid) if self.scaled(mid).decides(threshold, higher_is_better=higher_is_better) else (mid, high)
        return math.ceil(high * self.frames)


def wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    # Imported here, not at module import: scipy.stats costs over a second at every registry
    # start, and only the gate and the canary policy need it (the first call pays it, once).
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=2 * confidence - 1, method="wilson")
    return float(ci.low), float(ci.high)


def proportion(successes: int, n: int, confidence: float) -> Bounds:
    low, high = wilson(successes, n, confidence)
    return Bounds(successes / n if n else 0.0, low, high, n,
                  lambda f: proportion(round(successes * f), round(n * f), confidence))


def _newcombe(p1: float, ci1: tuple[float, float], p2: float, ci2: tuple[float, float], phi: float) -> tuple[float, float]:
    (l1, u1), (l2, u2) = ci1, ci2
    below = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    above = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    d = p1 - p2
    return max(d - below, -1.0), min(d + above, 1.0)


def paired_difference(first: np.ndarray, second: np.ndarray, confidence: float) -> Bounds:
    """Bounds of mean(first) - mean(second) for two success indicators on the same observations."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if first.shape != second.shape:
        raise ValueError(f"paired samples differ in size: {first.shape} vs {second.shape}")
    return paired_table(int(np.sum(first & second)), int(np.sum(first & ~second)), int(np.sum(~first & second)),
                        int(np.sum(~first & ~second)), confidence)


def paired_table(a: int, b: int, c: int, d: int, confidence: float) -> Bounds:
    """As `paired_difference`, from the 2x2 table: a both succeed, b only the first, c only the second, d neither."""
    n = a + b + c + d
    if n == 0:
        return Bounds(0.0, -1.0, 1.0, 0)
    # Newcombe's phi, with his continuity correction of AD - BC; 0 when a margin of the table is empty.
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    if cross > 0:
        cross = max(cross - n / 2, 0.0)
    phi = cross / math.sqrt(margins) if margins else 0.0
    p1, p2 = (a + b) / n, (a + c) / n
    lower, upper = _newcombe(p1, wilson(a + b, n, confidence), p2, wilson(a + c, n, confidence), phi)
    return Bounds(p1 - p2, lower, upper, n,
                  lambda f: paired_table(round(a * f), round(b * f), round(c * f), round(d * f), confidence))


def independent_difference(k1: int, n1: int, k2: int, n2: int, confidence: float) -> Bounds:
    """Bounds of k1/n1 - k2/n2 for two independent samples."""
    if n1 == 0 or n2 == 0:
        return Bounds((k1 / n1 if n1 else 0.0) - (k2 / n2 if n2 else 0.0), -1.0, 1.0, 0)
    lower, upper = _newcombe(k1 / n1, wilson(k1, n1, confidence), k2 / n2, wilson(k2, n2, confidence), 0.0)
    return Bounds(k1 / n1 - k2 / n2, lower, upper, n1,
                  lambda f: independent_difference(round(k1 * f), round(n1 * f), round(k2 * f), round(n2 * f), confidence))


def negated(bounds: Bounds) -> Bounds:
    """Bounds of minus the quantity (an error rate from a success rate, or the difference the other way)."""
    scaled = bounds.scaled
    return Bounds(-bounds.estimate, -bounds.upper, -bounds.lower, bounds.frames,
                  None if scaled is None else lambda f: negated(scaled(f)))


def complement(bounds: Bounds) -> Bounds:
    """Bounds of one minus a proportion."""
    scaled = bounds.scaled
    return Bounds(1.0 - bounds.estimate, 1.0 - bounds.upper, 1.0 - bounds.lower, bounds.frames,
                  None if scaled is None else lambda f: complement(scaled(f)))
