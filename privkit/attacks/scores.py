"""How well a membership attack works, from its scores: arrays in, named metrics out.

An attack gives every candidate record a score (higher: "more likely a member"); sweeping a
threshold over the scores traces the ROC curve of the hypothesis test "member or not". The
field reads it at low false-positive rates, on log-log axes (Carlini et al. 2022,
"Membership inference attacks from first principles", https://arxiv.org/abs/2112.03570,
Sec. 3): an attack that confidently identifies a few patients matters even if its ROC AUC is
near 0.5. Pure functions: no files, no logging.

>>> m = attack_metrics([0.9, 0.8, 0.3, 0.2, 0.1], [1, 1, 0, 1, 0], fprs=(0.5,))
>>> {k: round(v, 3) for k, v in m.items()}
{'auc': 0.833, 'balanced_accuracy': 0.833, 'tpr_at_fpr_0.5': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import beta
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as _sk_roc_curve

from privkit import _validate

DEFAULT_FPRS = (0.01, 0.001)  # the FPRs the field reports (Carlini et al. 2022, Table 1)


def _check(scores: Any, membership: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 scores and bool membership of equal length, both classes present."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    m = np.asarray(membership).ravel()
    if s.shape != m.shape:
        raise ValueError(
            f"Expected scores and membership of equal size, got {s.size} and {m.size}."
        )
    if not np.isin(m, (0, 1)).all():
        raise ValueError("Expected membership of 0/1 or bool values.")
    m = m.astype(bool)
    if m.all() or not m.any():
        raise ValueError(
            f"Expected both members and non-members, got {int(m.sum())} of {m.size} members."
        )
    if np.isnan(s).any():
        raise ValueError(f"Expected scores without NaN, got {int(np.isnan(s).sum())} NaN.")
    return s, m


def roc_curve(scores: Any, membership: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The attack's ROC curve: a record is called a member when its score is >= the threshold.

    Args:
        scores: (n,) attack scores, higher meaning "member".
        membership: (n,) 1/True for members, 0/False for non-members.

    Returns:
        ``fpr``, ``tpr``, ``thresholds``, each (k,), FPR increasing from 0 to 1 (every
        threshold is kept: low FPRs need them all).

    >>> fpr, tpr, _ = roc_curve([3, 2, 1], [1, 0, 0])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 1.0])
    """
    s, m = _check(scores, membership)
    return _sk_roc_curve(m, s, drop_intermediate=False)


def _best_index(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> int:
    """The ROC point with the highest TPR among those with FPR <= max_fpr."""
    allowed = np.flatnonzero(fpr <= max_fpr)  # never empty: fpr[0] == 0
    return int(allowed[np.argmax(tpr[allowed])])


def tpr_at_fpr(scores: Any, membership: Any, *, fpr: float) -> float:
    """The highest TPR at a threshold whose FPR is at most ``fpr``.

    >>> tpr_at_fpr([4, 3, 2, 1], [1, 0, 1, 0], fpr=0.0)
    0.5
    """
    _validate.in_range(0, 1, fpr=fpr)
    f, t, _ = roc_curve(scores, membership)
    return float(t[_best_index(f, t, fpr)])


def attack_metrics(
    scores: Any, membership: Any, *, fprs: Sequence[float] = DEFAULT_FPRS
) -> dict[str, float]:
    """ROC AUC, best balanced accuracy and the TPR at each FPR in ``fprs``.

    Args:
        scores: (n,) attack scores, higher meaning "member".
        membership: (n,) 1/True for members, 0/False for non-members.
        fprs: the false-positive rates to read the TPR at.

    Returns:
        ``auc`` (ROC AUC), ``balanced_accuracy`` (``(TPR + 1 - FPR) / 2`` at the best
        threshold: the attack's accuracy on a balanced set) and ``tpr_at_fpr_<fpr>`` (e.g.
        ``tpr_at_fpr_0.001``) for each requested FPR.
    """
    for f in fprs:
        _validate.in_range(0, 1, fpr=f)
    s, m = _check(scores, membership)
    fpr, tpr, _ = _sk_roc_curve(m, s, drop_intermediate=False)
    out = {
        "auc": float(roc_auc_score(m, s)),
        "balanced_accuracy": float(np.max((tpr + 1 - fpr) / 2)),
    }
    for f in fprs:
        out[f"tpr_at_fpr_{f:g}"] = float(tpr[_best_index(fpr, tpr, f)])
    return out


def clopper_pearson(
    successes: int, trials: int, *, confidence: float = 0.95
) -> tuple[float, float]:
    """Exact two-sided confidence interval for a binomial proportion (Clopper & Pearson 1934).

    Each side holds with probability at least ``1 - (1 - confidence) / 2``; the interval is
    the set of proportions p not rejected by a binomial test, from beta quantiles.

    Args:
        successes: k, an integer in [0, trials].
        trials: n, an integer >= 1.
        confidence: the coverage, in (0, 1).

    Returns:
        ``(low, high)``; ``low = 0`` when k = 0 and ``high = 1`` when k = n.

    >>> [round(x, 4) for x in clopper_pearson(0, 10)]  # high = 1 - 0.025 ** (1 / 10)
    [0.0, 0.3085]
    """
    _validate.in_range(0, 1, low_inclusive=False, high_inclusive=False, confidence=confidence)
    _validate.positive_int(trials=trials)
    integer = isinstance(successes, (int, np.integer)) and not isinstance(successes, bool)
    if not integer or not 0 <= successes <= trials:
        raise ValueError(f"Expected successes={successes!r} to be an integer in [0, {trials}].")
    alpha = 1 - confidence
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = (
        1.0
        if successes == trials
        else float(beta.isf(alpha / 2, successes + 1, trials - successes))
    )
    return low, high


def tpr_at_fpr_interval(
    scores: Any, membership: Any, *, fpr: float, confidence: float = 0.95
) -> dict[str, float]:
    """TPR and FPR at the threshold :func:`tpr_at_fpr` picks, with Clopper-Pearson intervals.

    The intervals give the statistical error of a finite number of records (the threshold
    is treated as fixed). A private model's attack "stays within its statistical error of
    the FPR" when ``tpr_low <= fpr``: the TPR found is compatible with random guessing.

    Returns:
        ``tpr``, ``tpr_low``, ``tpr_high``, ``fpr`` (the FPR actually reached, <= the one
        asked for), ``fpr_low``, ``fpr_high``, ``members``, ``non_members`` (the counts).

    >>> r = tpr_at_fpr_interval([4, 3, 2, 1], [1, 0, 1, 0], fpr=0.0)
    >>> r["tpr"], round(r["tpr_low"], 4), r["members"]
    (0.5, 0.0126, 2)
    """
    _validate.in_range(0, 1, fpr=fpr)
    s, m = _check(scores, membership)
    f, t, _ = _sk_roc_curve(m, s, drop_intermediate=False)
    i = _best_index(f, t, fpr)
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    tp, fp = int(round(t[i] * n_pos)), int(round(f[i] * n_neg))
    tpr_low, tpr_high = clopper_pearson(tp, n_pos, confidence=confidence)
    fpr_low, fpr_high = clopper_pearson(fp, n_neg, confidence=confidence)
    return {
        "tpr": tp / n_pos,
        "tpr_low": tpr_low,
        "tpr_high": tpr_high,
        "fpr": fp / n_neg,
        "fpr_low": fpr_low,
        "fpr_high": fpr_high,
        "members": n_pos,
        "non_members": n_neg,
    }


def attack_report(
    scores: Any, membership: Any, *, fprs: Sequence[float] = DEFAULT_FPRS, confidence: float = 0.95
) -> dict[str, float]:
    """:func:`attack_metrics` plus, for each FPR, the TPR's Clopper-Pearson interval.

    Returns:
        The keys of :func:`attack_metrics` and, per FPR f, ``tpr_at_fpr_<f>_low`` and
        ``tpr_at_fpr_<f>_high`` (from :func:`tpr_at_fpr_interval` at ``confidence``).

    >>> r = attack_report([4, 3, 2, 1], [1, 0, 1, 0], fprs=(0.0,))
    >>> sorted(r)
    ['auc', 'balanced_accuracy', 'tpr_at_fpr_0', 'tpr_at_fpr_0_high', 'tpr_at_fpr_0_low']
    """
    out = attack_metrics(scores, membership, fprs=fprs)
    for f in fprs:
        interval = tpr_at_fpr_interval(scores, membership, fpr=f, confidence=confidence)
        out[f"tpr_at_fpr_{f:g}_low"] = interval["tpr_low"]
        out[f"tpr_at_fpr_{f:g}_high"] = interval["tpr_high"]
    return out
