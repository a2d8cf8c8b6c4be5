"""Classification metrics for binary and multi-label chest X-ray models: arrays in, named metrics out.

Subgroup reports (per-group sensitivity, specificity, AUC and their gaps, with bootstrap CIs)
live in ``privkit.fairness`` and calibration metrics (ECE, Brier score) in
``privkit.calibration``; both are re-exported here.

Pure functions: no files, no logging, no global state. Labels are 0/1, scores are predicted
probabilities in [0, 1] (a sigmoid output, not a logit). ROC AUC comes from scikit-learn's
``roc_auc_score`` (Hanley & McNeil, 1982: the probability that a random positive scores above a
random negative, ties counting one half); the thresholded metrics are counted here.

>>> r = evaluate([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], task="binary")
>>> {k: round(v, 3) for k, v in r.items()}
{'auc': 0.75, 'accuracy': 0.75, 'balanced_accuracy': 0.75, 'sensitivity': 0.5, 'specificity': 1.0}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from privkit import _validate
from privkit._arrays import as_array as _as_array
from privkit._arrays import check_labels as _check_labels
from privkit._arrays import check_scores as _check_scores
from privkit.calibration import brier_score, expected_calibration_error
from privkit.fairness import class_groups, subgroup_report

__all__ = [
    "evaluate",
    "subgroup_report",
    "class_groups",
    "expected_calibration_error",
    "brier_score",
]

TASKS = ("binary", "multi-label")


def evaluate(
    labels: Any,
    scores: Any,
    *,
    task: str,
    threshold: float = 0.5,
    label_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """ROC AUC, accuracy, balanced accuracy (and more) of predicted probabilities.

    Binary (``task="binary"``; labels and scores shaped (n,) or (n, 1)) returns:
        ``auc`` (ROC AUC), ``accuracy``, ``balanced_accuracy`` (mean of sensitivity and
        specificity), ``sensitivity`` (recall of class 1, true-positive rate) and
        ``specificity`` (recall of class 0, true-negative rate). A score ``>= threshold``
        predicts class 1. If the labels hold only one class (tiny test sets can), ``auc``,
        ``balanced_accuracy`` and the recall of the missing class are ``nan`` rather than an
        error.

    Multi-label (``task="multi-label"``; labels and scores shaped (n, n_labels)) returns:
        ``auc``: macro ROC AUC, the unweighted mean over the labels that have both classes
        present; labels with a single class present are skipped (their AUC is undefined), and
        ``nan`` if no label has both. ``accuracy``: the mean over all labels of the per-label
        accuracy. ``balanced_accuracy``: the mean per-label balanced accuracy over the same
        labels as ``auc``. ``auc_<name>`` for each label: its ROC AUC, ``nan`` when skipped;
        ``<name>`` is ``label_names[k]`` when given, else the column index ``k``.

    Args:
        labels: 0/1 ground truth; a numpy array, a torch tensor, or anything ``np.asarray``
            takes (bool, integer or float 0.0/1.0).
        scores: predicted probabilities in [0, 1], the same shape as ``labels``.
        task: ``"binary"`` or ``"multi-label"``.
        threshold: probability at or above which a score counts as a positive prediction.
        label_names: one name per label column, used in the ``auc_<name>`` keys (multi-label
            only; ignored for binary).

    Returns:
        A dict from metric name to a float (``nan`` where undefined, as described above).

    Raises:
        ValueError: an unknown ``task``; ``threshold`` outside [0, 1]; ``labels`` and ``scores``
            of different shapes or of a shape the task does not take; labels other than 0/1;
            scores outside [0, 1] or NaN; ``label_names`` of the wrong length or with repeats.

    >>> r = evaluate([[0, 1, 0], [1, 1, 0]], [[0.2, 0.9, 0.1], [0.7, 0.4, 0.3]],
    ...              task="multi-label", label_names=["effusion", "mass", "hernia"])
    >>> r["auc"], r["accuracy"], r["auc_effusion"], r["auc_hernia"]
    (1.0, 0.8333333333333334, 1.0, nan)
    >>> evaluate([0, 2], [0.1, 0.9], task="binary")
    Traceback (most recent call last):
    ...
    ValueError: Expected labels to hold only 0 and 1; found 2.
    """
    _validate.one_of(TASKS, task=task)
    _validate.in_range(0, 1, threshold=threshold)
    y = _as_array(labels)
    p = _as_array(scores)
    _check_shapes(y, p, task=task)
    y = _check_labels(y)
    _check_scores(p)
    if task == "binary":
        return _binary(y.reshape(-1), p.reshape(-1), threshold)  # (n,)
    return _multi_label(y, p, threshold, label_names)  # (n, n_labels)


def _check_shapes(y: np.ndarray, p: np.ndarray, *, task: str) -> None:
    if y.shape != p.shape:
        raise ValueError(
            f"Expected scores of the same shape as labels; got labels.shape={y.shape}, "
            f"scores.shape={p.shape}."
        )
    if task == "binary":
        ok, allowed = (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)), "(n,) or (n, 1)"
    else:
        ok, allowed = y.ndim == 2 and y.shape[1] >= 1, "(n, n_labels)"
    if not ok:
        raise ValueError(f"Expected labels.shape={y.shape} to be {allowed} for task={task!r}.")
    if y.shape[0] == 0:
        raise ValueError(f"Expected at least one example; got labels.shape={y.shape}.")


def _binary(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Metrics of one 0/1 label column y (n,) against scores p (n,)."""
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    fp = int(np.sum(pred & (y == 0)))
    sensitivity = tp / (tp + fn) if tp + fn else math.nan
    specificity = tn / (tn + fp) if tn + fp else math.nan
    both = tp + fn > 0 and tn + fp > 0
    return {
        "auc": float(roc_auc_score(y, p)) if both else math.nan,
        "accuracy": (tp + tn) / len(y),
        "balanced_accuracy": (sensitivity + specificity) / 2,  # nan unless both classes present
        "sensitivity": sensitivity,
        "specificity": specificity,
    }


def _multi_label(
    y: np.ndarray, p: np.ndarray, threshold: float, label_names: Sequence[str] | None
) -> dict[str, float]:
    n_labels = y.shape[1]
    if label_names is None:
        names = [str(k) for k in range(n_labels)]
    else:
        names = [str(name) for name in label_names]
        if len(names) != n_labels:
            raise ValueError(
                f"Expected {n_labels} label_names (one per label column); got {len(names)}."
            )
        if len(set(names)) != len(names):
            raise ValueError(f"Expected distinct label_names; got {names}.")
    per_label = [_binary(y[:, k], p[:, k], threshold) for k in range(n_labels)]
    aucs = [m["auc"] for m in per_label]
    defined = [k for k, a in enumerate(aucs) if not math.isnan(a)]  # both classes present
    out = {
        "auc": float(np.mean([aucs[k] for k in defined])) if defined else math.nan,
        "accuracy": float(np.mean([m["accuracy"] for m in per_label])),
        "balanced_accuracy": (
            float(np.mean([per_label[k]["balanced_accuracy"] for k in defined]))
            if defined
            else math.nan
        ),
    }
    out.update({f"auc_{name}": auc for name, auc in zip(names, aucs)})
    return out
