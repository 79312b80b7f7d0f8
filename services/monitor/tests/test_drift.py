"""PSI behaves as a drift score should."""

import numpy as np

from lineloop.monitor.drift import live_accuracy, psi


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(7)
    reference = rng.normal(100, 10, 500)
    assert psi(reference, rng.normal(100, 10, 300)) < 0.1
    assert psi(reference, rng.normal(70, 10, 300)) > 1.0  # a dirty lens halves sharpness-like stats


def test_psi_handles_a_constant_reference():
    assert psi([0.0] * 50, [0.0] * 20) < 1e-6
    assert psi([0.0] * 50, [0.9] * 20) > 1.0


def test_live_accuracy_ignores_frames_without_prediction():
    assert live_accuracy([("ok", "ok"), ("rot", "ok"), ("", "ok")]) == 0.5
    assert live_accuracy([("", "ok")]) is None
