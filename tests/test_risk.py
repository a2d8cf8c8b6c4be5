"""Tests for privkit.risk against references that do not come from the code under test: the
Neyman-Pearson test of two Gaussians (and of one subsampled step), the analytic Gaussian
mechanism (Balle & Wang 2018), Google's dp_accounting PLD, and privkit.accounting."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr
from scipy.stats import beta, norm

from privkit import accounting, risk
from privkit.attacks import scores

FPR = np.concatenate([[0.0], np.logspace(-6, 0, 121)])  # (122,) from 0 to 1
PNEUMONIA = dict(noise_multiplier=1.0, sample_rate=256 / 4708, steps=540)  # 30 epochs


def balle_wang_delta(eps: float, sigma: float) -> float:
    """Exact delta(eps) of one Gaussian mechanism, sensitivity 1 (Balle & Wang 2018, Thm 8)."""
    a, b = -eps * sigma + 1 / (2 * sigma), -eps * sigma - 1 / (2 * sigma)
    return ndtr(a) - math.exp(eps + log_ndtr(b))


def balle_wang_epsilon(sigma: float, delta: float) -> float:
    return brentq(lambda e: balle_wang_delta(e, sigma) - delta, 0.0, 100.0, xtol=1e-13)


def np_gaussian_tpr(fpr: np.ndarray, sigma: float) -> np.ndarray:
    """Neyman-Pearson: N(0, s^2) vs N(1, s^2); reject above c with P0(X > c) = fpr."""
    c = sigma * norm.isf(fpr)
    return norm.sf((c - 1) / sigma)


def np_subsampled_tpr(fpr: np.ndarray, sigma: float, q: float) -> np.ndarray:
    """Optimal test of N(0, s^2) vs (1 - q) N(0, s^2) + q N(1, s^2) (one DP-SGD step). The
    likelihood ratio 1 - q + q exp((2x - 1) / (2 s^2)) grows with x: threshold x itself."""
    c = sigma * norm.isf(fpr)
    return (1 - q) * norm.sf(c / sigma) + q * norm.sf((c - 1) / sigma)


# 1. No leak: epsilon = 0 is random guessing.
def test_no_leak_is_random_guessing() -> None:
    np.testing.assert_array_equal(risk.tpr_bound(FPR, epsilon=0.0, delta=0.0), FPR)
    np.testing.assert_array_equal(risk.gaussian_tpr(FPR, mu=0.0), FPR)
    assert isinstance(risk.tpr_bound(0.25, epsilon=0.0, delta=0.0), float)


# 2. Validity: the (eps, delta) the Gaussian mechanism exactly satisfies caps its optimal test.
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-2])
def test_tpr_bound_caps_gaussian_optimal_test(sigma: float, delta: float) -> None:
    eps = balle_wang_epsilon(sigma, delta)
    exact = np_gaussian_tpr(FPR, sigma)
    np.testing.assert_allclose(risk.gaussian_tpr(FPR, mu=1 / sigma), exact, rtol=1e-9, atol=1e-15)
    bound = risk.tpr_bound(FPR, epsilon=eps, delta=delta)
    assert np.all(bound >= exact - 1e-12)
    # tight: the (eps, delta) region touches the exact curve (Dong, Roth & Su 2019, Prop 2.12)
    assert np.min(bound - exact) < 2e-3


@pytest.mark.parametrize("sigma, steps", [(1.0, 1), (2.0, 4), (5.0, 100)])
def test_full_batch_mechanism_is_exact_gaussian(sigma: float, steps: int) -> None:
    kw = dict(noise_multiplier=sigma, sample_rate=1.0, steps=steps)
    sigma_one = sigma / math.sqrt(steps)  # T full-batch steps = one step at sigma / sqrt(T)
    np.testing.assert_allclose(
        risk.tpr_bound_mechanism(FPR, **kw), np_gaussian_tpr(FPR, sigma_one), rtol=1e-9, atol=1e-15
    )
    eps = np.array([0.0, 0.5, 1.0, 3.0])
    expected = [balle_wang_delta(e, sigma_one) for e in eps]
    np.testing.assert_allclose(risk.delta_bound(eps, **kw), expected, rtol=1e-9, atol=1e-15)
    eps_exact = balle_wang_epsilon(sigma_one, 1e-5)
    assert np.all(
        risk.tpr_bound(FPR, epsilon=eps_exact, delta=1e-5)
        >= risk.tpr_bound_mechanism(FPR, **kw) - 1e-12
    )


# 3. Subsampled: one step has a closed-form optimal test; the bound must cap it, closely.
@pytest.mark.parametrize("sigma, q", [(1.0, 0.05), (0.5, 0.1), (2.0, 0.01), (0.7, 0.5)])
def test_one_subsampled_step_caps_exact_trade_off(sigma: float, q: float) -> None:
    exact = np_subsampled_tpr(FPR, sigma, q)
    bound = risk.tpr_bound_mechanism(FPR, noise_multiplier=sigma, sample_rate=q, steps=1)
    assert np.all(bound >= exact - 1e-12)
    assert np.all(bound <= exact * math.exp(0.01) + 1e-8)  # loose by e^0.005 + 1e-9 only


def exact_subsampled_delta(eps: np.ndarray, sigma: float, q: float) -> np.ndarray:
    """delta(eps) = P1(L > eps) - e^eps P0(L > eps) of the same single step, where the
    privacy loss L = log(1 - q + q exp((2x - 1) / (2 s^2))) exceeds eps iff x > x_eps."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(
            np.exp(eps) > 1 - q, sigma**2 * np.log((np.exp(eps) - (1 - q)) / q) + 0.5, -np.inf
        )
    p0 = norm.sf(x / sigma)
    return (1 - q) * p0 + q * norm.sf((x - 1) / sigma) - np.exp(eps) * p0


@pytest.mark.parametrize("sigma, q", [(1.0, 0.05), (0.5, 0.1), (2.0, 0.01), (0.7, 0.5)])
def test_one_step_profile_is_an_upper_bound(sigma: float, q: float) -> None:
    eps = np.linspace(-2, 8, 2001)
    exact = exact_subsampled_delta(eps, sigma, q)
    kw = dict(noise_multiplier=sigma, sample_rate=q, steps=1)
    assert np.all(risk.delta_bound(eps, **kw) >= exact)  # Opacus's bare estimate is not
    assert np.all(risk.delta_bound(eps + 0.01, **kw) <= exact + 2e-9)  # and it is tight


@pytest.mark.parametrize("sigma, q, steps", [(1.0, 256 / 4708, 540), (0.8, 0.05, 500)])
def test_mechanism_is_tighter_than_its_epsilon(sigma: float, q: float, steps: int) -> None:
    kw = dict(noise_multiplier=sigma, sample_rate=q, steps=steps)
    eps = accounting.epsilon(**kw, delta=1e-5)
    tight = risk.tpr_bound_mechanism(FPR, **kw)
    loose = risk.tpr_bound(FPR, epsilon=eps, delta=1e-5)
    assert np.all(tight <= loose + 1e-12)
    assert tight[FPR == 1e-3][0] < 0.2 * loose[FPR == 1e-3][0]  # 7% vs 100% for PNEUMONIA
    assert np.all(tight >= FPR)  # and never below random guessing


def dp_accounting_pld(sigma: float, q: float, steps: int, pessimistic: bool):
    """The 'remove' PLD (P1 = with the patient, P0 = without), the pair risk bounds."""
    pld = pytest.importorskip("dp_accounting").pld.privacy_loss_distribution
    kw = dict(value_discretization_interval=1e-3, sampling_prob=q)
    if not pessimistic:  # optimistic rounding needs privacy buckets; it under-estimates delta
        kw.update(pessimistic_estimate=False, use_connect_dots=False)
    return pld.from_gaussian_mechanism(sigma, **kw).self_compose(steps)._pmf_remove


@pytest.mark.parametrize("sigma, q, steps", [(1.0, 256 / 4708, 540), (0.8, 0.05, 500)])
def test_profile_against_dp_accounting(sigma: float, q: float, steps: int) -> None:
    kw = dict(noise_multiplier=sigma, sample_rate=q, steps=steps)
    grid = np.arange(-3000, 12001) * 1e-3  # every loss value of the PLD in [-3, 12]
    ours = risk.delta_bound(grid, **kw)
    lower = np.asarray(dp_accounting_pld(sigma, q, steps, False).get_delta_for_epsilon(grid))
    upper = np.asarray(dp_accounting_pld(sigma, q, steps, True).get_delta_for_epsilon(grid))
    assert np.all(ours >= lower)  # a valid upper bound: above an optimistic estimate ...
    assert np.all(ours[10:] <= upper[:-10] + 1e-8)  # ... and within 0.01 in epsilon of PLD's
    # Lower reference for the TPR: lines e^l fpr + delta(l) at the optimistic PLD's loss
    # values l; the infimum over all real l is below the true curve, and l outside [-3, 12]
    # gives lines above 1 - e^-3 (from delta(l) >= 1 - e^l) or above e^12 fpr.
    lines = np.exp(grid)[None, :] * FPR[:, None] + lower[None, :]  # (122, 15001)
    reference = np.minimum(lines.min(axis=1), np.minimum(1 - math.exp(-3), math.exp(12) * FPR))
    assert np.all(risk.tpr_bound_mechanism(FPR, **kw) >= reference - 1e-12)


# 3b. Replacing one patient by another (training sets of fixed size).
@pytest.mark.parametrize("sigma, steps", [(1.0, 1), (2.0, 4)])
def test_full_batch_substitution_is_a_gaussian_twice_as_far(sigma: float, steps: int) -> None:
    kw = dict(noise_multiplier=sigma, sample_rate=1.0, steps=steps, neighbours="substitution")
    sigma_one = sigma / math.sqrt(steps)  # the sum moves by 2C: N(0, s^2) vs N(2, s^2)
    np.testing.assert_allclose(
        risk.tpr_bound_mechanism(FPR, **kw),
        np_gaussian_tpr(FPR, sigma_one / 2),
        rtol=1e-9,
        atol=1e-15,
    )


def np_subsampled_reverse_tpr(fpr: np.ndarray, sigma: float, q: float) -> np.ndarray:
    """Optimal test of (1 - q) N(0, s^2) + q N(1, s^2) (H0: with the patient) vs N(0, s^2): the
    likelihood ratio falls with x, so reject below c, where the mixture puts mass fpr."""

    def level(c: float) -> float:
        return (1 - q) * norm.cdf(c / sigma) + q * norm.cdf((c - 1) / sigma)

    def threshold(a: float) -> float:
        return -np.inf if a == 0 else np.inf if a == 1 else brentq(lambda x: level(x) - a, -60, 60)

    c = np.array([threshold(a) for a in np.ravel(fpr)])
    return norm.cdf(c / sigma).reshape(np.shape(fpr))


@pytest.mark.parametrize("sigma, q", [(1.0, 0.05), (0.5, 0.1), (0.7, 0.5)])
def test_one_step_substitution_chains_the_exact_curves(sigma: float, q: float) -> None:
    """Replace k by j through the set with neither (remove k, add j) or with both (add j,
    remove k): the exact one-step curves chained, the lower of both, capped closely: the
    profile's error band (0.005 in epsilon) costs the removal step up to 1 - e^-0.005."""
    add = lambda a: np_subsampled_tpr(a, sigma, q)  # noqa: E731
    remove = lambda a: np_subsampled_reverse_tpr(a, sigma, q)  # noqa: E731
    exact = np.minimum(add(remove(FPR)), remove(add(FPR)))
    band = 1 - math.exp(-0.005)
    banded = np.minimum(add(np.minimum(remove(FPR) + band, 1)), remove(add(FPR)) + band)
    bound = risk.tpr_bound_mechanism(
        FPR, noise_multiplier=sigma, sample_rate=q, steps=1, neighbours="substitution"
    )
    assert np.all(bound >= exact - 1e-12)
    assert np.all(bound <= banded * math.exp(0.01) + 1e-7)
    assert np.all(
        bound >= risk.tpr_bound_mechanism(FPR, noise_multiplier=sigma, sample_rate=q, steps=1)
    )


def dp_accounting_replace_one(sigma: float, q: float, steps: int):
    """dp_accounting's optimistic PLD of replacing one record under Poisson sampling: the pair
    (1 - q) N(0) + q N(1) vs (1 - q) N(0) + q N(-1) composed, which a run attains."""
    pld = pytest.importorskip("dp_accounting").pld.privacy_loss_distribution
    relation = pytest.importorskip(
        "dp_accounting.privacy_accountant"
    ).NeighboringRelation.REPLACE_ONE
    return pld.from_gaussian_mechanism(
        sigma,
        value_discretization_interval=1e-3,
        sampling_prob=q,
        pessimistic_estimate=False,
        use_connect_dots=False,
        neighboring_relation=relation,
    ).self_compose(steps)


@pytest.mark.parametrize("sigma, q, steps", [(0.92, 0.25, 8), (2.0, 0.1, 50)])
def test_substitution_caps_the_worst_replacement_composed(
    sigma: float, q: float, steps: int
) -> None:
    """Two records whose clipped gradients point opposite ways at every step: the bound must
    cap the optimal test of that run (lines at the optimistic PLD's losses, as above)."""
    grid = np.arange(-3000, 15001) * 1e-3
    lower = np.asarray(dp_accounting_replace_one(sigma, q, steps).get_delta_for_epsilon(grid))
    lines = np.exp(grid)[None, :] * FPR[:, None] + lower[None, :]
    reference = np.minimum(lines.min(axis=1), np.minimum(1 - math.exp(-3), math.exp(15) * FPR))
    kw = dict(noise_multiplier=sigma, sample_rate=q, steps=steps)
    bound = risk.tpr_bound_mechanism(FPR, **kw, neighbours="substitution")
    assert np.all(bound >= reference - 1e-12)
    add_remove = risk.tpr_bound_mechanism(FPR, **kw)
    assert bound[FPR == 1e-2][0] > 1.5 * add_remove[FPR == 1e-2][0]  # replacing is far weaker


def test_tpr_against_bound_reads_both_errors() -> None:
    rng = np.random.default_rng(0)
    members = np.repeat([True, False], 1000)
    kw = dict(noise_multiplier=2.0, sample_rate=0.1, steps=50)  # cap 2.7% at FPR 1%
    leaky = rng.normal(0, 1, 2000) + 3.0 * members  # an attack no such mechanism allows
    r = risk.tpr_against_bound(leaky, members, fpr=0.01, **kw)
    fp, tp = round(r["fpr"] * 1000), round(r["tpr"] * 1000)
    assert r["fpr"] <= 0.01 and r["tpr"] == scores.tpr_at_fpr(leaky, members, fpr=0.01)
    assert r["fpr_high"] == pytest.approx(beta.isf(0.025, fp + 1, 1000 - fp))
    assert r["tpr_low"] == pytest.approx(beta.ppf(0.025, tp, 1000 - tp + 1))
    assert r["bound"] == risk.tpr_bound_mechanism(r["fpr_high"], **kw) and r["above_bound"]
    guessing = risk.tpr_against_bound(rng.normal(size=2000), members, fpr=0.01, **kw)
    assert not guessing["above_bound"]
    replaced = risk.tpr_against_bound(leaky, members, fpr=0.01, **kw, neighbours="substitution")
    assert replaced["bound"] == risk.tpr_bound_mechanism(
        r["fpr_high"], **kw, neighbours="substitution"
    )


# 4. Monotone, and the reconstruction bound between the prior and 1.
def test_monotone_in_fpr_and_epsilon() -> None:
    by_eps = np.stack([risk.tpr_bound(FPR, epsilon=e, delta=1e-5) for e in (0, 0.5, 1, 2, 4, 8)])
    assert np.all(np.diff(by_eps, axis=1) >= 0) and np.all(np.diff(by_eps, axis=0) >= 0)
    assert np.all(np.diff(risk.tpr_bound_mechanism(FPR, **PNEUMONIA)) >= 0)
    by_sigma = [
        risk.tpr_bound_mechanism(1e-3, **{**PNEUMONIA, "noise_multiplier": s})
        for s in (0.7, 1.0, 3.0)
    ]
    assert by_sigma == sorted(by_sigma, reverse=True)


@pytest.mark.parametrize("prior", [1 / 4708, 0.5])
def test_reconstruction_between_prior_and_one(prior: float) -> None:
    mech = risk.reconstruction_bound(prior=prior, **PNEUMONIA)
    dp = risk.reconstruction_bound(prior=prior, epsilon=2.0, delta=1e-5)
    assert prior <= mech <= 1 and prior <= dp <= 1
    assert mech == risk.tpr_bound_mechanism(prior, **PNEUMONIA)  # 1 - f(kappa)
    quiet = risk.reconstruction_bound(
        prior=prior, noise_multiplier=1e4, sample_rate=0.05, steps=100
    )
    assert prior <= quiet <= prior * 1.01  # huge noise: no better than guessing
    assert risk.reconstruction_bound(prior=prior, epsilon=0.0, delta=0.0) == pytest.approx(prior)


def test_mu_from_mechanism_matches_opacus_gdp() -> None:
    from opacus.accountants.analysis.gdp import compute_mu_poisson

    expected = compute_mu_poisson(steps=540, noise_multiplier=1.0, sample_rate=256 / 4708)
    assert risk.mu_from_mechanism(**PNEUMONIA) == pytest.approx(expected, rel=1e-12)


# 5. The summary states the computed numbers and what delta is.
def at_most(text: str) -> list[float]:
    return [float(x) / 100 for x in re.findall(r"at most ([0-9.]+)%", text)]


def test_summary_states_the_bounds() -> None:
    eps = accounting.epsilon(**PNEUMONIA, delta=1e-5)
    text = risk.summary(epsilon=eps, delta=1e-5, n_patients=4708, **PNEUMONIA)
    expected = risk.tpr_bound_mechanism(np.array([1e-3, 1e-3, 1 / 4708]), **PNEUMONIA)
    stated = at_most(text)
    assert len(stated) == 3
    assert all(0 <= s - e <= 0.01 for s, e in zip(stated, expected))  # rounded up, never down
    assert "Delta" in text and "1e-05" in text and "4,708" in text and f"{eps:.3g}" in text
    assert f"{math.ceil(math.exp(eps)):,}" in text  # the factor e^epsilon

    plain = risk.summary(epsilon=1.0, delta=1e-5)
    expected = risk.tpr_bound(1e-3, epsilon=1.0, delta=1e-5)
    assert at_most(plain)[0] == pytest.approx(expected, abs=1e-5)
    assert "2.72 times" in plain and "epsilon and delta alone" in plain


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: risk.tpr_bound(1.5, epsilon=1.0, delta=1e-5), "fpr=1.5"),
        (lambda: risk.tpr_bound(np.array([0.1, np.nan]), epsilon=1.0, delta=1e-5), "fpr=nan"),
        (lambda: risk.tpr_bound("x", epsilon=1.0, delta=1e-5), "fpr='x'"),
        (lambda: risk.tpr_bound(0.1, epsilon=-1.0, delta=1e-5), "epsilon=-1.0"),
        (lambda: risk.tpr_bound(0.1, epsilon=1.0, delta=1.0), "delta=1.0"),
        (lambda: risk.gaussian_tpr(0.1, mu=-1.0), "mu=-1.0"),
        (
            lambda: risk.tpr_bound_mechanism(0.1, **{**PNEUMONIA, "noise_multiplier": 0.0}),
            "noise_multiplier=0.0",
        ),
        (
            lambda: risk.tpr_bound_mechanism(0.1, **{**PNEUMONIA, "sample_rate": 0.0}),
            "sample_rate=0.0",
        ),
        (
            lambda: risk.tpr_bound_mechanism(0.1, **{**PNEUMONIA, "sample_rate": 1.5}),
            "sample_rate=1.5",
        ),
        (lambda: risk.tpr_bound_mechanism(0.1, **{**PNEUMONIA, "steps": 0}), "steps=0"),
        (
            lambda: risk.tpr_bound_mechanism(0.1, **PNEUMONIA, neighbours="replace"),
            "neighbours='replace'",
        ),
        (lambda: risk.delta_bound(1.0, **{**PNEUMONIA, "steps": 2.5}), "steps=2.5"),
        (lambda: risk.reconstruction_bound(prior=0.0, epsilon=1.0, delta=1e-5), "prior=0.0"),
        (lambda: risk.reconstruction_bound(prior=1.0, epsilon=1.0, delta=1e-5), "prior=1.0"),
        (lambda: risk.reconstruction_bound(prior=0.1, epsilon=1.0), "got epsilon"),
        (
            lambda: risk.reconstruction_bound(prior=0.1, epsilon=1.0, delta=1e-5, **PNEUMONIA),
            "epsilon and delta",
        ),
        (
            lambda: risk.summary(epsilon=1.0, delta=1e-5, noise_multiplier=1.0),
            "missing sample_rate",
        ),
        (lambda: risk.summary(epsilon=1.0, delta=1e-5, n_patients=0), "n_patients=0"),
        (lambda: risk.summary(epsilon=-1.0, delta=1e-5), "epsilon=-1.0"),
    ],
)
def test_bad_inputs_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(name)):
        call()


def test_weak_privacy_is_refused_not_wrong() -> None:
    with pytest.raises(RuntimeError, match="accountant='rdp'"):
        risk.tpr_bound_mechanism(0.1, noise_multiplier=0.3, sample_rate=0.5, steps=1000)
    weak = dict(noise_multiplier=0.3, sample_rate=0.5, steps=1000)
    text = risk.summary(epsilon=500.0, delta=1e-5, **weak)
    assert "epsilon and delta alone" in text and at_most(text) == [1.0, 1.0]
