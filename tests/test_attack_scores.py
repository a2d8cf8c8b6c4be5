"""Attack metrics against brute-force counts and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from privkit.attacks import scores


def _brute_force(s: np.ndarray, m: np.ndarray) -> list[tuple[float, float]]:
    """(FPR, TPR) of "member iff score >= t" for every threshold t, counted one by one."""
    points = [(0.0, 0.0)]
    for t in np.unique(s):
        called = s >= t
        points.append(((called & ~m).sum() / (~m).sum(), (called & m).sum() / m.sum()))
    return points


@pytest.fixture
def attack() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    m = rng.random(400) < 0.5
    s = np.round(rng.normal(size=400) + 0.8 * m, 1)  # rounding makes ties
    return s, m


def test_metrics_match_brute_force(attack):
    s, m = attack
    points = _brute_force(s, m)
    pairs = (s[m][:, None] > s[~m][None, :]).mean() + 0.5 * (s[m][:, None] == s[~m][None, :]).mean()
    out = scores.attack_metrics(s, m, fprs=(0.1, 0.01))
    assert out["auc"] == pytest.approx(pairs)  # Mann-Whitney
    assert out["balanced_accuracy"] == pytest.approx(max((t + 1 - f) / 2 for f, t in points))
    for fpr in (0.1, 0.01):
        best = max(t for f, t in points if f <= fpr)
        assert out[f"tpr_at_fpr_{fpr:g}"] == pytest.approx(best)
        assert scores.tpr_at_fpr(s, m, fpr=fpr) == pytest.approx(best)


def test_metric_names_and_perfect_attack():
    out = scores.attack_metrics([2, 2, 1, 1], [1, 1, 0, 0])
    assert out == {
        "auc": 1.0,
        "balanced_accuracy": 1.0,
        "tpr_at_fpr_0.01": 1.0,
        "tpr_at_fpr_0.001": 1.0,
    }


def test_roc_curve_runs_from_origin_to_corner(attack):
    fpr, tpr, _ = scores.roc_curve(*attack)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()


@pytest.mark.parametrize("n", [1, 7, 100])
def test_clopper_pearson_closed_forms(n):
    low, high = scores.clopper_pearson(0, n, confidence=0.9)
    assert low == 0 and high == pytest.approx(1 - 0.05 ** (1 / n))
    low, high = scores.clopper_pearson(n, n, confidence=0.9)
    assert high == 1 and low == pytest.approx(0.05 ** (1 / n))


@pytest.mark.parametrize("k, n", [(1, 10), (13, 40), (250, 1000)])
def test_clopper_pearson_inverts_the_binomial_test(k, n):
    low, high = scores.clopper_pearson(k, n, confidence=0.95)
    assert binom.sf(k - 1, n, low) == pytest.approx(0.025)  # P[X >= k | p = low]
    assert binom.cdf(k, n, high) == pytest.approx(0.025)  # P[X <= k | p = high]
    assert low < k / n < high


def test_interval_counts_and_report(attack):
    s, m = attack
    r = scores.tpr_at_fpr_interval(s, m, fpr=0.05)
    assert r["fpr"] <= 0.05 and r["tpr"] == scores.tpr_at_fpr(s, m, fpr=0.05)
    tp = round(r["tpr"] * m.sum())
    assert (r["tpr_low"], r["tpr_high"]) == scores.clopper_pearson(tp, int(m.sum()))
    report = scores.attack_report(s, m, fprs=(0.05,))
    assert report["tpr_at_fpr_0.05_low"] == r["tpr_low"]


@pytest.mark.parametrize(
    "args, message",
    [
        (([1, 2], [1]), "equal size"),
        (([1, 2], [1, 1]), "both members and non-members"),
        (([1, math.nan], [1, 0]), "NaN"),
        (([1, 2], [2, 0]), "0/1"),
    ],
)
def test_bad_input_is_named(args, message):
    with pytest.raises(ValueError, match=message):
        scores.attack_metrics(*args)


def test_bad_interval_arguments():
    with pytest.raises(ValueError, match="successes=11"):
        scores.clopper_pearson(11, 10)
    with pytest.raises(ValueError, match="confidence=1"):
        scores.clopper_pearson(1, 10, confidence=1)
    with pytest.raises(ValueError, match="fpr=1.5"):
        scores.tpr_at_fpr([1, 2], [0, 1], fpr=1.5)
