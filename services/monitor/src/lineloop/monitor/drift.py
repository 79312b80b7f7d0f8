"""Drift scores: population stability index of each quality statistic, live accuracy.

PSI compares the current window's distribution with the reference window's,
over bins cut at the reference's deciles: sum((c - r) * ln(c / r)). Below 0.1
is stable, above 0.25 is a shift worth acting on (a dirty lens drops
sharpness, new lighting moves brightness and channel means, a new variety
moves the channel means and the model's confidence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

def psi(reference: Sequence[float], current: Sequence[float], max_bins: int = 10) -> float:
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        return 0.0
    bins = _bins(ref.size, cur.size, max_bins)
    inner = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    if inner.size == 0:  # a constant reference: one edge at its value
        inner = np.array([ref[0]])
    # Half a count in every bin (Jeffreys smoothing): an empty bin in a small window is
    # likely by chance, and a floor like 1e-4 would make ln(c / r) explode on it.
    ref_share = _shares(np.searchsorted(inner, ref, side="left"), inner.size + 1)
    cur_share = _shares(np.searchsorted(inner, cur, side="left"), inner.size + 1)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def _shares(bin_of: np.ndarray, bins: int) -> np.ndarray:
    return (np.bincount(bin_of, minlength=bins) + 0.5) / (bin_of.size + 0.5 * bins)


def _bins(n_ref: int, n_cur: int, max_bins: int) -> int:
    # Sampling noise alone adds about (bins - 1) * (1/n_cur + 1/n_ref) to PSI:
    # keep ~20 current samples per bin so small windows do not drift on noise.
    return int(np.clip(min(n_ref, n_cur) // 20, 2, max_bins))


def noise_floor(n_ref: int, n_cur: int, tail: float, max_bins: int = 10) -> float:
    """The PSI that sampling noise alone exceeds in a share `tail` of windows of these sizes.

    Under no drift PSI / (1/n_ref + 1/n_cur) is about chi-square with bins - 1 degrees of
    freedom; its upper `tail` quantile by the Wilson-Hilferty approximation. Bins a reference
    squeezes together by ties (a feature that is mostly 0) make PSI noisier than the mean
    suggests, which is what a floor on small windows guards against.
    """
    z = NormalDist().inv_cdf(1.0 - tail)
    df = _bins(n_ref, n_cur, max_bins) - 1
    chi2 = df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3
    return float((1 / n_ref + 1 / n_cur) * chi2)


def tail_per_test(false_alarms_per_frame: float, evaluate_every: int, features: int) -> float:
    """The noise floor's tail that keeps a steady line's false drift reports at `false_alarms_per_frame`.

    A line is judged every `evaluate_every` frames on each of `features` statistics, and any one
    above its threshold is a drift: a Bonferroni share of the budget per test. Overlapping windows
    make the tests correlated, so the real rate is lower than the budget, never higher.
    """
    return false_alarms_per_frame * evaluate_every / features


def feature_scores(reference: Mapping[str, Sequence[float]], current: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {name: psi(reference[name], current[name]) for name in reference}


def live_accuracy(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Share of (predicted, human label) pairs that agree; None without pairs."""
    scored = [(p, t) for p, t in pairs if p]
    if not scored:
        return None
    return sum(p == t for p, t in scored) / len(scored)
