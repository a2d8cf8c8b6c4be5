"""Tests for privkit.accounting against references that do not come from the code under test:
the closed-form privacy profile of the Gaussian mechanism, Google's dp_accounting, and a
value from dp_accounting's own test suite."""

from __future__ import annotations

import functools
import math
import warnings

import pytest
from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr

from privkit.accounting import (
    ACCOUNTANTS,
    MAX_NOISE_MULTIPLIER,
    calibrate_noise,
    compose,
    epsilon,
    upper_bound,
)
from privkit.mechanism import plan

GDP_WARNING = "ignore:accountant='gdp'"  # filter for tests that use gdp on purpose
RDP_ORDER_WARNING = "ignore:Optimal order"  # Opacus: the best RDP order is 1.1 or 63
SETTINGS = {  # name: (sample_rate, noise_multiplier, steps); typical DP-SGD runs
    "mnist_60_epochs": (256 / 60000, 1.1, 60 * 60000 // 256),
    "q0.05_500_steps": (0.05, 0.8, 500),
    "pneumonia_20_epochs": (256 / 4708, 1.0, 370),
}


def exact_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact epsilon of one Gaussian mechanism, sensitivity 1 (Balle & Wang 2018, Thm 8):
    delta(eps) = Phi(-eps sigma + 1/(2 sigma)) - e^eps Phi(-eps sigma - 1/(2 sigma))."""

    def excess_delta(eps: float) -> float:
        a, b = -eps * sigma + 1 / (2 * sigma), -eps * sigma - 1 / (2 * sigma)
        return ndtr(a) - math.exp(eps + log_ndtr(b)) - delta

    return brentq(excess_delta, 0.0, 100.0, xtol=1e-12)


@functools.cache  # a pure function of its arguments; PLD costs ~0.3 s a call
def dp_accounting_epsilon(kind: str, q: float, sigma: float, steps: int, delta: float) -> float:
    dp_accounting = pytest.importorskip("dp_accounting")
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    if kind == "pld":
        accountant = dp_accounting.pld.PLDAccountant()
    else:
        accountant = dp_accounting.rdp.RdpAccountant()  # same default orders as Opacus
    accountant.compose(event)
    return accountant.get_epsilon(delta)


# 1. The plain Gaussian mechanism (sample_rate=1, one step) has a closed-form profile.
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-6])
def test_single_gaussian_against_closed_form(sigma: float, delta: float) -> None:
    exact = exact_gaussian_epsilon(sigma, delta)
    kw = dict(noise_multiplier=sigma, sample_rate=1.0, steps=1, delta=delta)
    prv, rdp = epsilon(**kw, accountant="prv"), epsilon(**kw, accountant="rdp")
    assert exact <= prv <= 1.02 * exact  # tight: estimate + 0.01 error band
    assert exact <= rdp <= 1.15 * exact  # a valid but looser bound (6-10% here)


# 2. Google's dp_accounting as an independent implementation.
@pytest.mark.parametrize("name", SETTINGS)
def test_against_dp_accounting(name: str) -> None:
    q, sigma, steps = SETTINGS[name]
    kw = dict(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5)
    prv, rdp = epsilon(**kw, accountant="prv"), epsilon(**kw, accountant="rdp")
    pld = dp_accounting_epsilon("pld", q, sigma, steps, 1e-5)
    assert prv == pytest.approx(pld, rel=0.01)  # observed: 0.1-0.4% apart
    # dp_accounting 0.6 over-estimates RDP at fractional orders (Opacus matches an mpmath
    # integral there), so ours may only be lower: by 0.5% at most in these settings.
    dp_rdp = dp_accounting_epsilon("rdp", q, sigma, steps, 1e-5)
    assert dp_rdp * (1 - 0.01) <= rdp <= dp_rdp * (1 + 1e-9)
    assert rdp > prv  # RDP is the looser bound


@pytest.mark.filterwarnings(GDP_WARNING)
def test_gdp_under_reports_where_the_warning_says() -> None:
    q, sigma, steps = SETTINGS["pneumonia_20_epochs"]  # 370 steps at q = 0.054
    gdp = epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5, accountant="gdp")
    assert gdp < 0.95 * dp_accounting_epsilon("pld", q, sigma, steps, 1e-5)  # ~10% low


# 3. A reference value: dp_accounting's test_compute_epsilon_delta_gaussian states that
# sigma = 4.530877117 gives exactly (1, 1e-6)-DP for one Gaussian under RDP (orders 1 to
# 100 in steps of 0.001); our coarser orders may only be slightly looser.
def test_rdp_reference_value_from_dp_accounting() -> None:
    eps = epsilon(
        noise_multiplier=4.530877117, sample_rate=1.0, steps=1, delta=1e-6, accountant="rdp"
    )
    assert 1.0 - 1e-6 <= eps <= 1.01


# 4. Calibration round trip.
@pytest.mark.filterwarnings(GDP_WARNING)
@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_calibration_round_trip(accountant: str) -> None:
    setting = dict(sample_rate=256 / 4708, steps=370)
    sigmas = []
    for target in (1.0, 3.0):
        sigma = calibrate_noise(
            target_epsilon=target, target_delta=1e-5, accountant=accountant, **setting
        )
        eps = epsilon(noise_multiplier=sigma, delta=1e-5, accountant=accountant, **setting)
        assert 0.99 * target <= eps <= target
        sigmas.append(sigma)
    assert sigmas[0] > sigmas[1] > 0  # a larger budget needs less noise


@pytest.mark.parametrize("tolerance", [0.001, 0.2])
def test_calibration_tolerance(tolerance: float) -> None:
    setting = dict(sample_rate=256 / 4708, steps=370)
    sigma = calibrate_noise(
        target_epsilon=3.0, target_delta=1e-5, accountant="rdp", tolerance=tolerance, **setting
    )
    eps = epsilon(noise_multiplier=sigma, delta=1e-5, accountant="rdp", **setting)
    assert (1 - tolerance) * 3.0 <= eps <= 3.0


def test_calibration_infinite_budget_means_no_noise() -> None:
    assert (
        calibrate_noise(target_epsilon=math.inf, target_delta=1e-5, sample_rate=0.1, steps=10)
        == 0.0
    )


def test_calibration_unreachable_target() -> None:
    # Opacus's RDP orders stop at 63, so epsilon stays above ~0.1 at delta=1e-5.
    with pytest.raises(
        ValueError,
        match=rf"target_epsilon=0\.05.*{MAX_NOISE_MULTIPLIER:g}|"
        rf"{MAX_NOISE_MULTIPLIER:g}.*target_epsilon=0\.05",
    ):
        calibrate_noise(
            target_epsilon=0.05, target_delta=1e-5, sample_rate=0.01, steps=100, accountant="rdp"
        )


# 5. Monotonicity and limits.
@pytest.mark.filterwarnings(GDP_WARNING, RDP_ORDER_WARNING)
@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_monotone(accountant: str) -> None:
    def eps(sigma: float = 1.0, q: float = 0.01, steps: int = 100) -> float:
        return epsilon(
            noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5, accountant=accountant
        )

    by_sigma = [eps(sigma=s) for s in (1.0, 1.5, 2.0, 3.0)]
    by_steps = [eps(steps=n) for n in (10, 100, 300)]
    by_rate = [eps(q=q) for q in (0.003, 0.01, 0.03, 0.1)]
    assert by_sigma == sorted(by_sigma, reverse=True) and len(set(by_sigma)) == 4
    assert by_steps == sorted(by_steps) and len(set(by_steps)) == 3
    assert by_rate == sorted(by_rate) and len(set(by_rate)) == 4


@pytest.mark.filterwarnings(GDP_WARNING)
@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_no_noise_and_no_steps(accountant: str) -> None:
    kw = dict(sample_rate=0.1, delta=1e-5, accountant=accountant)
    assert epsilon(noise_multiplier=0.0, steps=10, **kw) == math.inf
    assert epsilon(noise_multiplier=1.0, steps=0, **kw) == 0.0


def test_pure_no_hidden_state() -> None:
    a = dict(noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=1e-5)
    b = dict(noise_multiplier=0.8, sample_rate=0.05, steps=50, delta=1e-6)
    first = epsilon(**a)
    epsilon(**b)
    calibrate_noise(
        target_epsilon=1.0, target_delta=1e-5, sample_rate=0.01, steps=100, accountant="rdp"
    )
    assert epsilon(**a) == first


@pytest.mark.filterwarnings(RDP_ORDER_WARNING)
def test_prv_refuses_a_grid_that_would_exhaust_memory() -> None:
    # Opacus would allocate ~3.5e9 points here; we fail fast and point to rdp.
    with pytest.raises(RuntimeError, match="accountant='rdp'"):
        epsilon(noise_multiplier=0.01, sample_rate=0.01, steps=100, delta=1e-5)
    assert (
        epsilon(noise_multiplier=0.01, sample_rate=0.01, steps=100, delta=1e-5, accountant="rdp")
        > 1e5
    )


# 6. Bad input: the message names the argument and the value.
GOOD_EPSILON = dict(noise_multiplier=1.0, sample_rate=0.01, steps=10, delta=1e-5)
GOOD_CALIBRATE = dict(target_epsilon=1.0, target_delta=1e-5, sample_rate=0.01, steps=10)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("noise_multiplier", -1.0, r"noise_multiplier=-1\.0 in \[0, inf\)"),
        ("noise_multiplier", math.inf, r"noise_multiplier=inf"),
        ("noise_multiplier", math.nan, r"noise_multiplier=nan"),
        ("sample_rate", 0.0, r"sample_rate=0\.0 in \(0, 1\]"),
        ("sample_rate", 1.5, r"sample_rate=1\.5"),
        ("steps", -1, r"steps=-1 to be an integer >= 0"),
        ("steps", 2.5, r"steps=2\.5"),
        ("steps", True, r"steps=True"),
        ("delta", 0.0, r"delta=0\.0 in \(0, 1\)"),
        ("delta", 1.0, r"delta=1\.0"),
        ("accountant", "moments", r"accountant='moments'; expected one of: prv, rdp, gdp"),
    ],
)
def test_epsilon_rejects(name: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        epsilon(**{**GOOD_EPSILON, name: value})


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("target_epsilon", 0.0, r"target_epsilon=0\.0 > 0"),
        ("target_epsilon", -1.0, r"target_epsilon=-1\.0"),
        ("target_delta", 0.0, r"target_delta=0\.0 in \(0, 1\)"),
        ("sample_rate", 0.0, r"sample_rate=0\.0"),
        ("steps", 0, r"steps=0 to be an integer >= 1"),
        ("accountant", "moments", r"accountant='moments'"),
        ("tolerance", 0.0, r"tolerance=0\.0 in \(0, 1\)"),
        ("tolerance", 1.0, r"tolerance=1\.0"),
    ],
)
def test_calibrate_rejects(name: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        calibrate_noise(**{**GOOD_CALIBRATE, name: value})


# 7. gdp warns every time; prv and rdp do not.
def test_gdp_warns() -> None:
    with pytest.warns(UserWarning, match="gdp.*under-report"):
        epsilon(**GOOD_EPSILON, accountant="gdp")
    with pytest.warns(UserWarning, match="gdp.*under-report"):
        calibrate_noise(**GOOD_CALIBRATE, accountant="gdp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        epsilon(**GOOD_EPSILON, accountant="prv")
        epsilon(**GOOD_EPSILON, accountant="rdp")


@pytest.mark.filterwarnings("ignore:Optimal order:UserWarning")
def test_upper_bound_falls_back_to_rdp_only_where_the_prv_cannot():
    weak = (0.01, 0.01, 1000)  # epsilon in the millions: the PRV gives up
    with pytest.raises(RuntimeError, match="PRV"):
        epsilon(noise_multiplier=0.01, sample_rate=0.01, steps=1000, delta=1e-5)
    rdp = epsilon(noise_multiplier=0.01, sample_rate=0.01, steps=1000, delta=1e-5, accountant="rdp")
    assert upper_bound([weak], delta=1e-5) == (rdp, "rdp") and rdp > 1e5
    strong = (1.0, 0.05, 50)
    prv = epsilon(noise_multiplier=1.0, sample_rate=0.05, steps=50, delta=1e-5)
    assert upper_bound([strong], delta=1e-5) == (prv, "prv")  # never the looser one needlessly
    assert upper_bound([strong, strong], delta=1e-5, accountant="rdp")[1] == "rdp"
    with pytest.raises(ValueError, match="accountant='gdp'"):
        upper_bound([strong], delta=1e-5, accountant="gdp")  # an approximation, not a bound


def test_a_mechanism_names_the_accountant_that_certified_it():
    m = plan(noise_multiplier=0.01, sample_rate=0.01, steps=1000, delta=1e-5)
    assert m.accountant == "rdp" and m.epsilon > 1e5
    assert compose([m.event], delta=1e-5, accountant="rdp") == m.epsilon
    assert compose([m, m], delta=1e-5, accountant="rdp") == compose(
        [m.event] * 2, delta=1e-5, accountant="rdp"
    )
