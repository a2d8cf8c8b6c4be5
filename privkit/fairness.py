"""Subgroup reports: sensitivity, specificity, accuracy and AUC per group, their gaps, with CIs.

A model can be accurate on average and still fail one group of patients. For any group labels
(sex or age bands where a dataset records them; for PneumoniaMNIST, which records neither, the
class itself: normal vs pneumonia) :func:`subgroup_report` gives each group's metrics and the
gap of every group to a reference group, each with a seeded bootstrap confidence interval
(Efron & Tibshirani 1993: percentile or BCa). DP-SGD tends to widen such gaps: clipping and
noise hurt the groups that contribute the larger or rarer gradients first (Bagdasaryan et al.
2019, "Differential privacy has disparate impact on model accuracy").

With the class as the group, every group holds one class only, so a group's AUC and its
sensitivity or specificity (whichever needs the absent class) are undefined and reported as
NaN; the group's accuracy is then its class's recall (the normal group's accuracy is the
specificity, the pneumonia group's the sensitivity), and the accuracy gap is the disparity.

All metrics, on the data and on every bootstrap or jackknife replicate, are computed from a
matrix of example weights (one row per replicate), so the bootstrap is a few matrix products.

>>> labels = [0, 0, 0, 0, 1, 1, 1, 1]
>>> scores = [0.1, 0.2, 0.3, 0.7, 0.4, 0.45, 0.8, 0.9]
>>> r = subgroup_report(labels, scores, class_groups(labels), n_bootstrap=200)
>>> v = r.set_index(["kind", "group", "metric"])["value"]
>>> float(v["group", "normal", "specificity"]), float(v["group", "pneumonia", "sensitivity"])
(0.75, 0.5)
>>> float(v["gap", "pneumonia", "accuracy"]), math.isnan(v["group", "normal", "auc"])
(-0.25, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from privkit import _validate
from privkit._arrays import as_array, check_labels, check_scores

METRICS = ("sensitivity", "specificity", "accuracy", "auc")
CI_METHODS = ("percentile", "bca")
CLASS_NAMES = ("normal", "pneumonia")  # PneumoniaMNIST's classes 0 and 1

Stat = Callable[[np.ndarray], dict[str, np.ndarray]]  # weights (R, n) -> metric -> (R,)


def class_groups(labels: Any, names: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """Group names from 0/1 labels: the class itself as the group.

    >>> class_groups([0, 1, 1]).tolist()
    ['normal', 'pneumonia', 'pneumonia']
    """
    if len(names) != 2:
        raise ValueError(f"Expected two class names (class 0, class 1); got names={list(names)}.")
    y = check_labels(as_array(labels).reshape(-1))
    return np.asarray(names, dtype=object)[y]


def weighted_auc(weights: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC under example weights: one AUC per row of ``weights``.

    The weighted Mann-Whitney statistic: the weighted share of (positive, negative) pairs that
    are ordered correctly, ties counting one half (Hanley & McNeil 1982). With weights of
    ones it equals scikit-learn's ``roc_auc_score``; with bootstrap counts, the AUC of the
    resample. NaN in a row whose positives or negatives weigh nothing.

    Args:
        weights: (R, n) non-negative weights.
        labels: (n,) 0/1.
        scores: (n,) scores (any real numbers; only their order matters).

    Returns:
        (R,) AUCs.

    >>> weighted_auc(np.ones((1, 4)), np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    array([0.75])
    """
    order = np.argsort(scores, kind="stable")
    s, y, w = scores[order], labels[order], weights[:, order]  # (n,), (n,), (R, n)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each run of ties
    neg = np.add.reduceat(w * (y == 0), starts, axis=1)  # (R, T): negative weight per tie run
    pos = np.add.reduceat(w * (y == 1), starts, axis=1)  # (R, T)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each tie run
    pairs = pos.sum(axis=1) * neg.sum(axis=1)  # (R,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / pairs, np.nan)


def binary_stat(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> Stat:
    """The per-group metrics as a function of example weights.

    Args:
        labels: (n,) 0/1.
        scores: (n, k) probabilities of ``k`` models (e.g. seeds) for the same examples;
            each metric is averaged over the models.
        threshold: a probability at or above it predicts class 1.

    Returns:
        ``stat(weights (R, n)) -> {metric: (R,)}`` for the metrics in ``METRICS``.
    """
    pred = scores >= threshold  # (n, k)
    pos = (labels == 1)[:, None]  # (n, 1)
    tp, fn = (pred & pos).astype(float), (~pred & pos).astype(float)  # (n, k)
    tn, fp = (~pred & ~pos).astype(float), (pred & ~pos).astype(float)

    def stat(w: np.ndarray) -> dict[str, np.ndarray]:
        TP, FN, TN, FP = w @ tp, w @ fn, w @ tn, w @ fp  # (R, k) weighted counts
        with np.errstate(invalid="ignore", divide="ignore"):
            sens = np.where(TP + FN > 0, TP / (TP + FN), np.nan)
            spec = np.where(TN + FP > 0, TN / (TN + FP), np.nan)
            acc = (TP + TN) / w.sum(axis=1, keepdims=True)
        auc = np.stack(
            [weighted_auc(w, labels, scores[:, j]) for j in range(scores.shape[1])], axis=1
        )
        return {m: v.mean(axis=1) for m, v in zip(METRICS, (sens, spec, acc, auc))}

    return stat


def _in_chunks(
    stat: Stat, weights: np.ndarray, max_cells: int = 4_000_000
) -> dict[str, np.ndarray]:
    """``stat`` over rows of ``weights`` in chunks, so a jackknife of n rows stays in memory."""
    rows = max(1, max_cells // max(1, weights.shape[1]))
    parts = [stat(weights[i : i + rows]) for i in range(0, len(weights), rows)]
    return {m: np.concatenate([p[m] for p in parts]) for m in parts[0]}


def confidence_interval(
    replicates: np.ndarray,
    estimate: float,
    *,
    confidence: float = 0.95,
    method: str = "percentile",
    jackknife: np.ndarray | None = None,
) -> tuple[float, float]:
    """A bootstrap confidence interval from replicates (NaN replicates dropped).

    ``percentile``: the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the replicates.
    ``bca``: bias-corrected and accelerated (Efron 1987; Efron & Tibshirani 1993, 14.3): the
    quantiles at Phi(z0 + (z0 + z) / (1 - a (z0 + z))), where z0 = Phi^-1(share of replicates
    below the estimate, ties counting one half) and the acceleration a = sum(u^3) / (6
    (sum(u^2))^1.5) from the jackknife deviations u = mean(jackknife) - jackknife.

    Returns:
        (low, high); (nan, nan) if the estimate or every replicate is NaN.

    >>> reps = np.arange(1, 100) / 100
    >>> [round(x, 3) for x in confidence_interval(reps, 0.5, confidence=0.9)]
    [0.059, 0.941]
    """
    _validate.one_of(CI_METHODS, method=method)
    _validate.in_range(0, 1, low_inclusive=False, high_inclusive=False, confidence=confidence)
    reps = replicates[~np.isnan(replicates)]
    if len(reps) == 0 or math.isnan(estimate):
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    levels = np.array([alpha, 1 - alpha])
    if method == "bca":
        if jackknife is None:
            raise ValueError("method='bca' needs the jackknife estimates (jackknife=...).")
        share = (np.sum(reps < estimate) + 0.5 * np.sum(reps == estimate)) / len(reps)
        share = np.clip(share, 0.5 / len(reps), 1 - 0.5 / len(reps))
        z0 = norm.ppf(share)
        jk = jackknife[~np.isnan(jackknife)]
        u = jk.mean() - jk if len(jk) else np.zeros(1)
        denom = 6 * np.sum(u**2) ** 1.5
        a = np.sum(u**3) / denom if denom > 0 else 0.0
        z = norm.ppf(levels)
        levels = norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    low, high = np.quantile(reps, levels)
    return float(low), float(high)


def subgroup_report(
    labels: Any,
    scores: Any,
    groups: Any,
    *,
    threshold: float = 0.5,
    reference: str | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    method: str = "percentile",
    seed: int = 0,
) -> pd.DataFrame:
    """Per-group sensitivity, specificity, accuracy and AUC, and each group's gap to a reference.

    Bootstrap: each group is resampled on its own (stratified by group, so group sizes stay as
    observed), ``n_bootstrap`` times, from a seeded generator; the gap's replicates pair the
    groups' replicates. The CIs describe the uncertainty from the finite evaluation set, for
    the given model(s); with several models (seeds) in ``scores``, each metric is their mean
    and all models see the same resamples, so seed-to-seed variation is not in the interval.

    Undefined values are NaN, never an error: a group without positives has no sensitivity,
    one without negatives no specificity, and AUC is reported only for groups where both labels
    occur (with the class as the group, never: use the accuracy, i.e. per-class recall). A gap
    is NaN where either side is.

    Args:
        labels: (n,) or (n, 1) 0/1 ground truth.
        scores: (n,) or (n, 1) predicted probabilities of one model, or (n, k) of k models.
        groups: (n,) a group label per example (strings or numbers), e.g. ``class_groups``.
        threshold: a probability at or above it predicts class 1.
        reference: the group gaps are measured from; default the first in sorted order
            (``"normal"`` for ``class_groups``).
        n_bootstrap: bootstrap replicates, >= 1.
        confidence: the CIs' nominal coverage, in (0, 1).
        method: ``"percentile"`` or ``"bca"`` (see :func:`confidence_interval`).
        seed: seed of the resampling.

    Returns:
        A tidy table, one row per (kind, group, metric) with columns ``kind`` (``"group"`` or
        ``"gap"``), ``group``, ``reference`` (the gap's reference group; empty for a group
        row), ``metric`` (one of ``METRICS``), ``value`` (the metric; for a gap, the group's
        value minus the reference's), ``ci_low``, ``ci_high``, ``n`` and ``n_positive`` (the
        examples behind the row).

    Raises:
        ValueError: shapes that disagree; labels other than 0/1; scores outside [0, 1];
            an unknown ``reference``; a bad ``threshold``, ``n_bootstrap``, ``confidence``
            or ``method``.
    """
    _validate.in_range(0, 1, threshold=threshold)
    _validate.positive_int(n_bootstrap=n_bootstrap)
    _validate.in_range(0, 1, low_inclusive=False, high_inclusive=False, confidence=confidence)
    _validate.one_of(CI_METHODS, method=method)
    y = as_array(labels)
    y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    p = as_array(scores)
    p = p[:, None] if p.ndim == 1 else p  # (n, k)
    g = as_array(groups)
    if y.ndim != 1 or p.ndim != 2 or len(p) != len(y) or g.shape != y.shape or len(y) == 0:
        raise ValueError(
            f"Expected labels (n,), scores (n,) or (n, k) and groups (n,) with n >= 1; got "
            f"labels.shape={as_array(labels).shape}, scores.shape={as_array(scores).shape}, "
            f"groups.shape={g.shape}."
        )
    y = check_labels(y)
    check_scores(p)
    names = sorted(set(g.tolist()), key=str)
    if reference is None:
        reference = names[0]
    _validate.one_of(names, reference=reference)

    rng = np.random.default_rng(seed)
    found: dict[Any, dict[str, Any]] = {}
    for name in names:
        idx = np.flatnonzero(g == name)
        stat = binary_stat(y[idx], p[idx], threshold)
        n = len(idx)
        boot = rng.multinomial(n, np.full(n, 1 / n), size=n_bootstrap).astype(float)  # (B, n)
        found[name] = {
            "n": n,
            "n_positive": int(y[idx].sum()),
            "value": {m: float(v[0]) for m, v in stat(np.ones((1, n))).items()},
            "boot": _in_chunks(stat, boot),
            # Jackknife: row i leaves example i out (BCa's acceleration).
            "jack": _in_chunks(stat, 1.0 - np.eye(n)) if method == "bca" else None,
        }

    def interval(reps, estimate, jack):
        return confidence_interval(
            reps, estimate, confidence=confidence, method=method, jackknife=jack
        )

    rows = []
    for name in names:
        f = found[name]
        for m in METRICS:
            jack = f["jack"][m] if f["jack"] is not None else None
            low, high = interval(f["boot"][m], f["value"][m], jack)
            rows.append(("group", name, "", m, f["value"][m], low, high, f["n"], f["n_positive"]))
    ref = found[reference]
    for name in names:
        if name == reference:
            continue
        f = found[name]
        for m in METRICS:
            value = f["value"][m] - ref["value"][m]
            jack = None
            if method == "bca":  # leave one example of either group out
                jack = np.concatenate(
                    [f["jack"][m] - ref["value"][m], f["value"][m] - ref["jack"][m]]
                )
            low, high = interval(f["boot"][m] - ref["boot"][m], value, jack)
            rows.append(
                (
                    "gap",
                    name,
                    reference,
                    m,
                    value,
                    low,
                    high,
                    f["n"] + ref["n"],
                    f["n_positive"] + ref["n_positive"],
                )
            )
    columns = [
        "kind",
        "group",
        "reference",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "n",
        "n_positive",
    ]
    return pd.DataFrame(rows, columns=columns)
