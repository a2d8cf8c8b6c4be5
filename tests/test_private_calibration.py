"""DP temperature scaling: the epsilon it spends against the Gaussian closed form, its noise's
scale and secrecy, the ledger charged first; and calibration.py, below the ledger, importing none."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import norm

from privkit import budget
from privkit.calibration import fit_temperature
from privkit.private_calibration import fit_temperature_dp


def _gaussian_delta(epsilon: float, mu: float) -> float:
    """Exact delta(epsilon) of a Gaussian mechanism with mu = sensitivity / sd (Balle & Wang 2018)."""
    return norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2)


@pytest.mark.parametrize("epsilon, steps", [(0.5, 8), (2.0, 5)])
def test_dp_temperature_spends_what_the_gaussian_closed_form_says(epsilon, steps):
    # k Gaussian queries of sensitivity 1 and sd sigma compose to one with mu = sqrt(k) / sigma.
    y, z = [0, 1] * 300, [-1.0, 1.0] * 300
    fit = fit_temperature_dp(y, z, epsilon=epsilon, delta=1e-5, steps=steps)
    mu = math.sqrt(steps) / fit.mechanism.noise_multiplier
    exact = brentq(lambda e: _gaussian_delta(e, mu) - 1e-5, 1e-6, 100)
    assert exact <= fit.mechanism.epsilon <= epsilon  # never under-reported, within the budget
    assert fit.mechanism.epsilon - exact < 0.02  # the PRV accountant's upper bound is tight
    assert fit.mechanism.epsilon >= 0.99 * epsilon  # the budget is used, not wasted


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
        fit.mechanism.noise_multiplier,
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
    expected = norm.cdf(-20 * (expit(1.0) - 1) / fits[0].mechanism.noise_multiplier)
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


def test_calibration_measures_without_a_ledger_accountant_or_randomness():
    # A base-layer module: importing it must not pull in the ledger (SQLite), the accountant,
    # the randomness of mechanisms or the engine.
    code = (
        "import sys, privkit.calibration; "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in (['privkit', 'budget'], "
        "['privkit', 'accounting'], ['privkit', 'randomness'], ['privkit', 'engine'], "
        "['privkit', 'mechanism'])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
