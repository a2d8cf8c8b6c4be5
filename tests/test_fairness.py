"""Subgroup reports: hand-counted gaps, AUC against scikit-learn, CI coverage in simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from privkit import metrics
from privkit.fairness import class_groups, confidence_interval, subgroup_report, weighted_auc


def _values(report):
    return report.set_index(["kind", "group", "metric"])["value"]


def _constructed():
    """Group A: 10 positives (8 caught), 10 negatives (6 cleared); group B: 5 pos (2), 15 neg (15)."""
    labels = [1] * 10 + [0] * 10 + [1] * 5 + [0] * 15
    scores = (
        ([0.9] * 8 + [0.2] * 2) + ([0.1] * 6 + [0.7] * 4) + ([0.6] * 2 + [0.4] * 3) + [0.3] * 15
    )
    groups = ["A"] * 20 + ["B"] * 20
    return np.array(labels), np.array(scores), np.array(groups)


def test_gaps_of_a_constructed_predictor_equal_hand_counts():
    y, p, g = _constructed()
    v = _values(subgroup_report(y, p, g, n_bootstrap=50))
    assert v["group", "A", "sensitivity"] == pytest.approx(0.8)
    assert v["group", "A", "specificity"] == pytest.approx(0.6)
    assert v["group", "A", "accuracy"] == pytest.approx(14 / 20)
    assert v["group", "B", "sensitivity"] == pytest.approx(0.4)
    assert v["group", "B", "specificity"] == pytest.approx(1.0)
    assert v["group", "B", "accuracy"] == pytest.approx(17 / 20)
    # Gaps are B minus the reference A (first in sorted order).
    assert v["gap", "B", "sensitivity"] == pytest.approx(0.4 - 0.8)
    assert v["gap", "B", "specificity"] == pytest.approx(1.0 - 0.6)
    assert v["gap", "B", "accuracy"] == pytest.approx(17 / 20 - 14 / 20)
    # AUC of A: positives 0.9 (x8) beat all 10 negatives; 0.2 (x2) beat the six 0.1's: (80 + 12) / 100.
    # AUC of B: positives 0.6, 0.4 all beat the 15 negatives at 0.3: 1.
    assert v["group", "A", "auc"] == pytest.approx(0.92)
    assert v["group", "B", "auc"] == pytest.approx(1.0)
    assert v["gap", "B", "auc"] == pytest.approx(0.08)


def test_reference_can_be_chosen_and_flips_the_sign():
    y, p, g = _constructed()
    v = _values(subgroup_report(y, p, g, n_bootstrap=20, reference="B"))
    assert v["gap", "A", "accuracy"] == pytest.approx(14 / 20 - 17 / 20)


def test_class_as_group_reports_recall_and_nan_where_undefined():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 + 0.35 * y + rng.normal(0, 0.25, 300), 0, 1)
    report = subgroup_report(y, p, class_groups(y), n_bootstrap=50)
    v = _values(report)
    overall = metrics.evaluate(y, p, task="binary")
    assert v["group", "pneumonia", "accuracy"] == pytest.approx(overall["sensitivity"])
    assert v["group", "normal", "accuracy"] == pytest.approx(overall["specificity"])
    assert v["gap", "pneumonia", "accuracy"] == pytest.approx(
        overall["sensitivity"] - overall["specificity"]
    )
    for kind, group, metric in [
        ("group", "normal", "sensitivity"),
        ("group", "pneumonia", "specificity"),
        ("group", "normal", "auc"),
        ("group", "pneumonia", "auc"),
        ("gap", "pneumonia", "auc"),
        ("gap", "pneumonia", "sensitivity"),
    ]:
        assert math.isnan(v[kind, group, metric])
    undefined = report[report["value"].isna()]
    assert undefined[["ci_low", "ci_high"]].isna().all().all()


def test_weighted_auc_equals_scikit_learn_with_ties_and_replicated_examples():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(y, 1.0), 1)  # rounding makes ties
    assert weighted_auc(np.ones((1, 200)), y, s)[0] == pytest.approx(roc_auc_score(y, s))
    counts = rng.multinomial(200, np.full(200, 1 / 200), size=5)  # bootstrap resamples
    for row, auc in zip(counts, weighted_auc(counts.astype(float), y, s)):
        idx = np.repeat(np.arange(200), row)
        assert auc == pytest.approx(roc_auc_score(y[idx], s[idx]))


def test_several_models_average_each_metric():
    y, p, g = _constructed()
    q = np.where(p > 0.5, 0.95, 0.05)  # same predictions, different AUC ties
    both = _values(subgroup_report(y, np.c_[p, q], g, n_bootstrap=20))
    one, two = (
        _values(subgroup_report(y, p, g, n_bootstrap=20)),
        _values(subgroup_report(y, q, g, n_bootstrap=20)),
    )
    for key in [("group", "A", "auc"), ("group", "B", "sensitivity"), ("gap", "B", "auc")]:
        assert both[key] == pytest.approx((one[key] + two[key]) / 2)


def test_bootstrap_is_seeded():
    y, p, g = _constructed()
    a = subgroup_report(y, p, g, n_bootstrap=100, seed=3)
    b = subgroup_report(y, p, g, n_bootstrap=100, seed=3)
    c = subgroup_report(y, p, g, n_bootstrap=100, seed=4)
    assert a.equals(b)
    assert not a["ci_low"].equals(c["ci_low"])


def _coverage(method: str, confidence: float, sims: int = 120) -> float:
    """Share of CIs that cover the true sensitivity (0.8) and AUC of a binormal model."""
    rng = np.random.default_rng(7)
    true_auc = stats.norm.cdf(1.2 / math.sqrt(2))  # scores N(0,1) vs N(1.2,1): Phi(d / sqrt 2)
    hits = []
    for sim in range(sims):
        y = np.r_[np.zeros(60, int), np.ones(60, int)]
        caught = rng.random(60) < 0.8
        z = np.r_[rng.normal(0, 1, 60), rng.normal(1.2, 1, 60)]
        p = 1 / (1 + np.exp(-z))
        # Thresholded metric: predictions set so the true sensitivity is exactly 0.8.
        p_thr = np.r_[np.full(60, 0.2), np.where(caught, 0.9, 0.1)]
        r = subgroup_report(
            y,
            np.c_[p],
            np.zeros(120),
            n_bootstrap=300,
            method=method,
            confidence=confidence,
            seed=sim,
        ).set_index("metric")
        s = subgroup_report(
            y, p_thr, np.zeros(120), n_bootstrap=300, method=method, confidence=confidence, seed=sim
        ).set_index("metric")
        hits.append(r.loc["auc", "ci_low"] <= true_auc <= r.loc["auc", "ci_high"])
        hits.append(s.loc["sensitivity", "ci_low"] <= 0.8 <= s.loc["sensitivity", "ci_high"])
    return float(np.mean(hits))


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_intervals_cover_the_truth_at_about_the_nominal_rate(method):
    # 240 intervals: binomial sd of the coverage ~0.014 at 95%, ~0.026 at 80%; the percentile
    # bootstrap of a proportion from 60 cases is known to undercover a little.
    assert 0.90 <= _coverage(method, 0.95) <= 0.99
    assert 0.70 <= _coverage(method, 0.80) <= 0.88


def test_bca_interval_matches_scipy_for_a_skewed_mean():
    rng = np.random.default_rng(5)
    x = rng.exponential(1.0, 40)
    boot = rng.choice(x, size=(20000, 40)).mean(axis=1)
    jack = (x.sum() - x) / 39
    ours = confidence_interval(boot, x.mean(), method="bca", jackknife=jack)
    ref = stats.bootstrap(
        (x,), np.mean, method="BCa", n_resamples=20000, random_state=1
    ).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.02)
    pct = confidence_interval(boot, x.mean(), method="percentile")
    assert ours[1] - pct[1] > 0.01  # BCa shifts a right-skewed mean's interval to the right


def test_bad_input_is_named():
    y, p, g = _constructed()
    with pytest.raises(ValueError, match="reference='C'"):
        subgroup_report(y, p, g, reference="C")
    with pytest.raises(ValueError, match="groups.shape"):
        subgroup_report(y, p, g[:-1])
    with pytest.raises(ValueError, match="method='student'"):
        subgroup_report(y, p, g, method="student")
    with pytest.raises(ValueError, match="probabilities"):
        subgroup_report(y, p * 3, g)
    with pytest.raises(ValueError, match="n_bootstrap=0"):
        subgroup_report(y, p, g, n_bootstrap=0)
