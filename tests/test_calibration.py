"""Calibration: ECE against hand counts and a loop reference, temperature recovery (the DP fit:
tests/test_private_calibration.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import expit

from privkit import metrics
from privkit.calibration import (
    apply_temperature,
    brier_score,
    confidence_statement,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)


def _reference_ece(y, p, n_bins=15):
    """Guo et al.'s loop: bins (lower, upper] of the top-label confidence, written independently."""
    conf = np.maximum(p, 1 - p)
    correct = (p >= 0.5) == (y == 1)
    ece = 0.0
    for lower, upper in zip(np.linspace(0, 1, n_bins + 1)[:-1], np.linspace(0, 1, n_bins + 1)[1:]):
        inside = (conf > lower) & (conf <= upper)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return ece


def test_ece_of_a_perfectly_calibrated_predictor_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(200_000) < p).astype(int)  # y ~ Bernoulli(p): calibrated by construction
    assert expected_calibration_error(y, p) < 0.005
    assert expected_calibration_error(y, p, binning="equal-mass") < 0.005
    assert expected_calibration_error(y, p, view="positive-class") < 0.005


def test_ece_of_a_known_miscalibration_equals_the_hand_value():
    # 10 cases at p = 0.9 of which 7 are pneumonia (90% sure, 70% right) and 10 cases at
    # p = 0.3, i.e. "normal, 70% sure", of which 5 are normal (50% right).
    p = np.r_[np.full(10, 0.9), np.full(10, 0.3)]
    y = np.r_[np.ones(7), np.zeros(3), np.ones(5), np.zeros(5)].astype(int)
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.2 + 0.5 * 0.2)
    # Positive-class view: at p = 0.9 the pneumonia rate is 0.7, at p = 0.3 it is 0.5.
    assert expected_calibration_error(y, p, view="positive-class") == pytest.approx(
        0.5 * 0.2 + 0.5 * 0.2
    )
    # One bin: mean confidence 0.8, accuracy 12/20.
    assert expected_calibration_error(y, p, n_bins=1) == pytest.approx(abs(0.8 - 12 / 20))


def test_ece_equals_guos_loop_on_random_data():
    rng = np.random.default_rng(1)
    p = rng.beta(0.7, 0.7, 5000)
    y = (rng.random(5000) < p**1.5).astype(int)
    for n_bins in (1, 10, 15):
        assert expected_calibration_error(y, p, n_bins=n_bins) == pytest.approx(
            _reference_ece(y, p, n_bins)
        )


def test_equal_width_bins_are_right_closed_and_equal_mass_bins_split_evenly():
    bins = reliability_bins([1, 1, 1, 1], [2 / 3, 0.7, 1.0, 0.5], n_bins=3, view="positive-class")
    assert bins["n"].tolist() == [0, 2, 2]  # 0.5 in (1/3, 2/3], 2/3 too; 0.7 and 1.0 in (2/3, 1]
    mass = reliability_bins(
        [0, 1, 0, 1, 1],
        [0.1, 0.2, 0.3, 0.4, 0.9],
        n_bins=2,
        binning="equal-mass",
        view="positive-class",
    )
    assert mass["n"].tolist() == [3, 2]
    assert mass["confidence"].tolist() == pytest.approx([0.2, 0.65])
    assert mass["accuracy"].tolist() == pytest.approx([1 / 3, 1.0])


def test_brier_score_by_hand_and_reexported_by_metrics():
    assert brier_score([1, 0, 1], [0.8, 0.4, 1.0]) == pytest.approx((0.04 + 0.16 + 0) / 3)
    assert metrics.brier_score is brier_score
    assert metrics.expected_calibration_error is expected_calibration_error


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
@pytest.mark.parametrize("objective", ["nll", "confidence"])
def test_temperature_scaling_recovers_a_known_temperature(true_temperature, objective):
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, 40_000)  # calibrated logits
    y = (rng.random(40_000) < expit(z)).astype(int)
    fitted = fit_temperature(y, z * true_temperature, objective=objective)  # mis-scaled by T
    assert fitted == pytest.approx(true_temperature, rel=0.04)
    calibrated = apply_temperature(z * true_temperature, fitted)
    assert expected_calibration_error(y, calibrated) < 0.01
    assert expected_calibration_error(y, expit(z * true_temperature)) > 0.05


def test_nll_temperature_is_the_minimiser_found_by_a_generic_optimiser():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 500)
    y = (rng.random(500) < expit(0.6 * z + 0.3)).astype(int)  # not a pure temperature family
    best = minimize_scalar(
        lambda t: negative_log_likelihood(y, z, temperature=t),
        bounds=(0.05, 20),
        method="bounded",
        options={"xatol": 1e-8},
    )
    assert fit_temperature(y, z) == pytest.approx(best.x, rel=1e-4)


def test_temperature_changes_probabilities_not_predictions_or_auc():
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, 300)
    y = (rng.random(300) < expit(z)).astype(int)
    before, after = expit(z), apply_temperature(z, 3.0)
    assert np.array_equal(before >= 0.5, after >= 0.5)
    assert metrics.evaluate(y, before, task="binary")["auc"] == pytest.approx(
        metrics.evaluate(y, after, task="binary")["auc"]
    )


def test_temperature_stops_at_its_bounds_for_separable_data():
    assert fit_temperature([0, 0, 1, 1], [-3.0, -1.0, 1.0, 2.0]) == 0.05
    # Logits that are always wrong: the best positive temperature is the largest allowed.
    assert fit_temperature([1, 1, 0, 0], [-3.0, -1.0, 1.0, 2.0], bounds=(0.5, 4.0)) == 4.0


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.934, "pneumonia, 93% confident"),
        (0.07, "normal, 93% confident"),
        (0.5, "pneumonia, 50% confident"),
        (0.994, "pneumonia, 99% confident"),
        (0.996, "pneumonia, more than 99% confident"),  # rounding would claim certainty
        (0.004, "normal, more than 99% confident"),
        (1.0, "pneumonia, more than 99% confident"),
    ],
)
def test_confidence_statement(p, expected):
    assert confidence_statement(p) == expected


def test_confidence_statement_names_and_threshold():
    assert (
        confidence_statement(0.4, class_names=("benign", "malignant"), threshold=0.3)
        == "malignant, 40% confident"
    )
    with pytest.raises(ValueError, match="probability=1.2"):
        confidence_statement(1.2)
