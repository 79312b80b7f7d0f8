"""Drift scores: population stability index of each quality statistic, live accuracy.

PSI compares the current window's distribution with the reference window's,
over bins cut at the reference's deciles: sum((c - r) * ln(c / r)). Below 0.1
is stable, above 0.25 is a shift worth acting on (a dirty lens drops
sharpness, new lighting moves brightness and channel means, a new variety
moves the channel means and the model's confidence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

_EPS = 1e-4


def psi(reference: Sequence[float], current: Sequence[float], max_bins: int = 10) -> float:
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        return 0.0
    # Sampling noise alone adds about (bins - 1) * (1/n_cur + 1/n_ref) to PSI:
    # keep ~20 current samples per bin so small windows do not drift on noise.
    bins = int(np.clip(min(ref.size, cur.size) // 20, 2, max_bins))
    inner = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    if inner.size == 0:  # a constant reference: one edge at its value
        inner = np.array([ref[0]])
    ref_share = np.bincount(np.searchsorted(inner, ref, side="left"), minlength=inner.size + 1) / ref.size
    cur_share = np.bincount(np.searchsorted(inner, cur, side="left"), minlength=inner.size + 1) / cur.size
    ref_share = np.clip(ref_share, _EPS, None)
    cur_share = np.clip(cur_share, _EPS, None)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def feature_scores(reference: Mapping[str, Sequence[float]], current: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {name: psi(reference[name], current[name]) for name in reference}


def live_accuracy(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Share of (predicted, human label) pairs that agree; None without pairs."""
    scored = [(p, t) for p, t in pairs if p]
    if not scored:
        return None
    return sum(p == t for p, t in scored) / len(scored)
