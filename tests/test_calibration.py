"""Calibration: ECE against hand counts and a loop reference, temperature recovery, DP fit's noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar
from scipy.special import expit
from scipy.stats import norm

from privkit import budget, metrics
from privkit.calibration import (
    apply_temperature,
    brier_score,
    confidence_statement,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_dp,
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


def _gaussian_delta(epsilon: float, mu: float) -> float:
    """Exact delta(epsilon) of a Gaussian mechanism with mu = sensitivity / sd (Balle & Wang 2018)."""
    return norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2)


@pytest.mark.parametrize("epsilon, steps", [(0.5, 8), (2.0, 5)])
def test_dp_temperature_spends_what_the_gaussian_closed_form_says(epsilon, steps):
    # k Gaussian queries of sensitivity 1 and sd sigma compose to one with mu = sqrt(k) / sigma.
    y, z = [0, 1] * 300, [-1.0, 1.0] * 300
    fit = fit_temperature_dp(y, z, epsilon=epsilon, delta=1e-5, steps=steps)
    mu = math.sqrt(steps) / fit.noise_multiplier
    exact = brentq(lambda e: _gaussian_delta(e, mu) - 1e-5, 1e-6, 100)
    assert exact <= fit.epsilon <= epsilon  # never under-reported, within the budget
    assert fit.epsilon - exact < 0.02  # the PRV accountant's upper bound is tight
    assert fit.epsilon >= 0.99 * epsilon  # the budget is used, not wasted


def test_dp_temperature_centres_on_the_noiseless_fit_and_is_noisy():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, 500) * 2.0  # over-confident by T = 2
    y = (rng.random(500) < expit(z / 2.0)).astype(int)
    target = fit_temperature(y, z, objective="confidence")
    fits = [
        fit_temperature_dp(y, z, epsilon=1.0, delta=1e-5, randomness="seeded", seed=s).temperature
        for s in range(40)
    ]
    assert np.median(fits) == pytest.approx(target, rel=0.08)
    assert np.std(fits) > 0.01  # noise is there
    sharp = [
        fit_temperature_dp(
            y, z, epsilon=50.0, delta=1e-5, steps=14, randomness="seeded", seed=s
        ).temperature
        for s in range(5)
    ]
    assert sharp == pytest.approx([target] * 5, rel=0.02)


def test_dp_temperature_charges_a_ledger_first(tmp_path):
    ledger = budget.Ledger(tmp_path / "ledger.sqlite")
    ledger.set_budget("dataset:pneumoniamnist", epsilon=1.2, delta=1e-5)
    fit = fit_temperature_dp(
        [0, 1] * 100,
        [-1.0, 1.0] * 100,
        epsilon=1.0,
        delta=1e-5,
        steps=6,
        ledger=ledger,
        scopes=["dataset:pneumoniamnist"],
    )
    (spend,) = ledger.history("dataset:pneumoniamnist")
    assert (spend.noise_multiplier, spend.sample_rate, spend.steps) == (
        fit.noise_multiplier,
        1.0,
        6,
    )
    with pytest.raises(budget.BudgetExceededError):
        fit_temperature_dp(
            [0, 1] * 100,
            [-1.0, 1.0] * 100,
            epsilon=1.0,
            delta=1e-5,
            ledger=ledger,
            scopes=["dataset:pneumoniamnist"],
        )


def test_dp_temperature_refuses_bad_privacy_parameters():
    with pytest.raises(ValueError, match="epsilon=0"):
        fit_temperature_dp([0, 1], [0.0, 1.0], epsilon=0, delta=1e-5)
    with pytest.raises(ValueError, match="delta=0.1 < 1/n"):
        fit_temperature_dp([0, 1] * 10, [0.0, 1.0] * 10, epsilon=1.0, delta=0.1)
    with pytest.raises(ValueError, match="scopes"):
        fit_temperature_dp([0, 1], [0.0, 1.0], epsilon=1.0, delta=1e-5, ledger=object())


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


def test_dp_temperature_noise_has_the_calibrated_scale():
    # One step from bounds (0.5, 2) queries T = 1 only. With 20 cases at logit 1, all
    # pneumonia, the exact sum is 20 (sigmoid(1) - 1) < 0 (under-confident), so the step sharpens
    # (T < 1) unless the noise flips the sign: P(T < 1) = Phi(-sum / sigma).
    y, z = [1] * 20, [1.0] * 20
    fits = [
        fit_temperature_dp(
            y, z, epsilon=1.0, delta=1e-5, steps=1, bounds=(0.5, 2.0), randomness="seeded", seed=s
        )
        for s in range(600)
    ]
    expected = norm.cdf(-20 * (expit(1.0) - 1) / fits[0].noise_multiplier)
    observed = np.mean([f.temperature < 1 for f in fits])
    assert 0.8 < expected < 0.97  # the test can tell the noise's scale apart
    assert observed == pytest.approx(expected, abs=0.04)  # binomial sd ~0.012


def test_dp_temperature_noise_is_secret_unless_seeded():
    # The attacker knows the recorded seed: by default it does not determine the noise.
    y, z = [0, 1] * 200, [-1.0, 1.5] * 200
    run = lambda **kw: fit_temperature_dp(y, z, epsilon=0.5, delta=1e-5, steps=20, **kw).temperature  # noqa: E731
    assert len({run(seed=0) for _ in range(10)}) > 1
    assert len({run(seed=0, randomness="seeded") for _ in range(3)}) == 1
    assert run(seed=0, randomness="seeded") != run(seed=1, randomness="seeded")
