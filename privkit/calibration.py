"""Calibration: does a model's "90% sure" come true 90% of the time? Measure it and fix it.

* :func:`expected_calibration_error` and :func:`reliability_bins`: the gap between confidence
  and accuracy, binned (Naeini et al. 2015; Guo et al. 2017, "On calibration of modern neural
  networks": 15 equal-width bins of the top-label confidence, the default here), or bins of
  equal mass (Nixon et al. 2019).
* :func:`brier_score`: mean squared error of the predicted probability (Brier 1950).
* :func:`fit_temperature`: temperature scaling (Guo et al. 2017), one scalar ``T`` fitted by
  maximum likelihood on held-out data; ``sigmoid(logit / T)`` keeps the ranking (AUC) and
  moves the probabilities. Fitting it reads the validation split, which is private data too:
  :func:`fit_temperature` spends privacy that no accountant sees;
  :func:`privkit.private_calibration.fit_temperature_dp` spends a stated (epsilon, delta),
  charged to a ledger when given one (above the ledger: this module imports none).
* :func:`confidence_statement`: "pneumonia, 93% confident", from a calibrated probability.

>>> round(expected_calibration_error([1, 0, 1, 1], [0.9, 0.2, 0.6, 0.4]), 3)
0.125
>>> confidence_statement(0.934)
'pneumonia, 93% confident'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit

from privkit import _validate
from privkit._arrays import as_array, binary_pair, check_labels
from privkit.fairness import CLASS_NAMES

BINNINGS = ("equal-width", "equal-mass")
VIEWS = ("top-label", "positive-class")
TEMPERATURE_BOUNDS = (0.05, 20.0)


def reliability_bins(
    labels: Any,
    probabilities: Any,
    *,
    n_bins: int = 15,
    binning: str = "equal-width",
    view: str = "top-label",
) -> pd.DataFrame:
    """Confidence and accuracy per bin, the numbers behind a reliability diagram and the ECE.

    Views of a binary model's probability p of class 1:
        ``top-label`` (Guo et al. 2017): the confidence is that of the predicted class,
        max(p, 1 - p) in [0.5, 1], and the accuracy is the share of correct predictions
        (p >= 0.5 predicts class 1).
        ``positive-class``: the confidence is p itself and the "accuracy" the observed
        frequency of class 1, over the whole range [0, 1].

    Binnings:
        ``equal-width``: bin m of M holds confidences in (m/M, (m+1)/M]; the first also holds
        0. Empty bins are kept (n = 0, NaN confidence and accuracy).
        ``equal-mass``: the examples sorted by confidence and cut into M bins of sizes
        differing by at most one (``np.array_split``); equal confidences may fall in
        neighbouring bins. ``low`` and ``high`` are a bin's smallest and largest confidence.

    Args:
        labels: (n,) or (n, 1) 0/1.
        probabilities: (n,) or (n, 1) predicted probabilities of class 1.
        n_bins: number of bins M, >= 1.
        binning: ``"equal-width"`` or ``"equal-mass"``.
        view: ``"top-label"`` or ``"positive-class"``.

    Returns:
        One row per bin: ``bin, low, high, n, confidence`` (mean confidence), ``accuracy``.
    """
    _validate.positive_int(n_bins=n_bins)
    _validate.one_of(BINNINGS, binning=binning)
    _validate.one_of(VIEWS, view=view)
    y, p = binary_pair(labels, probabilities, scores_name="probabilities")
    if view == "top-label":
        conf = np.maximum(p, 1 - p)
        hit = ((p >= 0.5) == (y == 1)).astype(float)
    else:
        conf, hit = p, y.astype(float)
    if binning == "equal-width":
        which = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)  # (n,)
        n = np.bincount(which, minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf = np.bincount(which, conf, n_bins) / n
            mean_hit = np.bincount(which, hit, n_bins) / n
        edges = np.arange(n_bins + 1) / n_bins
        low, high = edges[:-1], edges[1:]
    else:
        order = np.argsort(conf, kind="stable")
        parts = [part for part in np.array_split(order, n_bins) if len(part)]
        n = np.array([len(part) for part in parts])
        mean_conf = np.array([conf[part].mean() for part in parts])
        mean_hit = np.array([hit[part].mean() for part in parts])
        low = np.array([conf[part].min() for part in parts])
        high = np.array([conf[part].max() for part in parts])
    return pd.DataFrame(
        {
            "bin": np.arange(len(n)),
            "low": low,
            "high": high,
            "n": n,
            "confidence": mean_conf,
            "accuracy": mean_hit,
        }
    )


def expected_calibration_error(
    labels: Any,
    probabilities: Any,
    *,
    n_bins: int = 15,
    binning: str = "equal-width",
    view: str = "top-label",
) -> float:
    """Expected calibration error: sum over bins of (n_b / n) |accuracy_b - confidence_b|.

    Defaults as in Guo et al. (2017): 15 equal-width bins of the top-label confidence. See
    :func:`reliability_bins` for the bins and views. 0 for a perfectly calibrated model (up to
    sampling noise, which biases the ECE upward on small sets), at most 1.

    >>> round(expected_calibration_error([1, 1, 0, 0], [0.8, 0.8, 0.8, 0.8]), 6)  # 80% sure, 50% right
    0.3
    """
    bins = reliability_bins(labels, probabilities, n_bins=n_bins, binning=binning, view=view)
    full = bins[bins["n"] > 0]
    return float(
        np.sum(full["n"] * np.abs(full["accuracy"] - full["confidence"])) / full["n"].sum()
    )


def brier_score(labels: Any, probabilities: Any) -> float:
    """Brier score (Brier 1950): mean of (p - y)^2; 0 is perfect, 0.25 is p = 0.5 always.

    >>> round(brier_score([1, 0], [0.9, 0.4]), 6)
    0.085
    """
    y, p = binary_pair(labels, probabilities, scores_name="probabilities")
    return float(np.mean((p - y) ** 2))


def negative_log_likelihood(labels: Any, logits: Any, *, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / temperature)``, computed stably.

    >>> round(negative_log_likelihood([1, 0], [0.0, 0.0]), 4)  # log 2
    0.6931
    """
    y, z = _labels_logits(labels, logits)
    _validate.in_range(
        0, math.inf, low_inclusive=False, high_inclusive=False, temperature=temperature
    )
    s = z / temperature
    return float(np.mean(np.logaddexp(0, s) - y * s))


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / temperature)``, shaped like ``logits``.

    >>> apply_temperature([0.0, 2.0], 2.0).round(4).tolist()
    [0.5, 0.7311]
    """
    _validate.in_range(
        0, math.inf, low_inclusive=False, high_inclusive=False, temperature=temperature
    )
    return expit(np.asarray(as_array(logits), dtype=np.float64) / temperature)


def _labels_logits(labels: Any, logits: Any) -> tuple[np.ndarray, np.ndarray]:
    y, z = as_array(labels), np.asarray(as_array(logits), dtype=np.float64)
    y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    z = z[:, 0] if z.ndim == 2 and z.shape[1] == 1 else z
    if y.ndim != 1 or z.shape != y.shape or len(y) == 0:
        raise ValueError(
            f"Expected labels and logits shaped (n,) or (n, 1) alike, n >= 1; got "
            f"labels.shape={as_array(labels).shape}, logits.shape={as_array(logits).shape}."
        )
    if not np.isfinite(z).all():
        raise ValueError(
            f"Expected finite logits; found {int((~np.isfinite(z)).sum())} that are not."
        )
    return check_labels(y).astype(np.float64), z


def _check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = bounds
    _validate.in_range(0, math.inf, low_inclusive=False, high_inclusive=False, low_temperature=low)
    _validate.in_range(
        low, math.inf, low_inclusive=False, high_inclusive=False, high_temperature=high
    )
    return low, high


OBJECTIVES = ("nll", "confidence")


def _slope(objective: str, y: np.ndarray, z: np.ndarray) -> Callable[[float], np.ndarray]:
    """Per-example terms whose sum has its root at the fitted 1/T, each increasing in 1/T.

    ``nll``: the derivative of the NLL in beta = 1/T, (sigmoid(beta z) - y) z.
    ``confidence``: top-label confidence minus correctness, (sigmoid(beta z) - y) sign(z);
    for z > 0 that is p - y, for z < 0 it is (1 - p) - (1 - y). The sum is zero when the mean
    confidence equals the accuracy (which T does not change), each term lies in [-1, 1].
    """
    weight = z if objective == "nll" else np.sign(z)
    return lambda log_beta: (expit(math.exp(log_beta) * z) - y) * weight  # (n,)


def fit_temperature(
    labels: Any,
    logits: Any,
    *,
    objective: str = "nll",
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """Temperature scaling: the T for which ``sigmoid(logits / T)`` fits held-out labels best.

    Fit it on held-out data (the validation split), never on the test split. T > 1 softens an
    over-confident model, T < 1 sharpens an under-confident one; predictions and AUC do not
    change. Objectives:
        ``nll`` (Guo et al. 2017): T minimising the mean negative log-likelihood. The NLL is
        convex in 1/T; its derivative mean((sigmoid(z / T) - y) z) increases with 1/T.
        ``confidence``: T at which the mean top-label confidence equals the accuracy (a
        one-bin ECE of zero); the non-private counterpart of
        :func:`privkit.private_calibration.fit_temperature_dp`.
    Either root is found by Brent's method on log(1/T), and T is kept within ``bounds``
    (returned at a bound when the optimum lies beyond it, e.g. when the logits separate the
    labels perfectly). Both are consistent for the true T when the labels follow
    ``sigmoid(z / T)``.

    Privacy: this reads the labels and logits of every held-out example, with no noise; the
    privacy it spends is accounted nowhere. See
    :func:`privkit.private_calibration.fit_temperature_dp`.

    Args:
        labels: (n,) or (n, 1) 0/1 of the held-out examples.
        logits: (n,) or (n, 1) the model's logits for them (not probabilities).
        objective: ``"nll"`` or ``"confidence"``.
        bounds: the smallest and largest temperature allowed.

    Returns:
        The temperature.

    >>> z = np.array([-4.0, -2.0, 2.0, 4.0, 3.0, -3.0])
    >>> y = np.array([0, 0, 1, 1, 0, 1])  # confident and often wrong: T > 1
    >>> round(fit_temperature(y, z), 2)
    4.62
    """
    _validate.one_of(OBJECTIVES, objective=objective)
    y, z = _labels_logits(labels, logits)
    low, high = _check_bounds(bounds)
    terms = _slope(objective, y, z)

    def slope(log_beta: float) -> float:
        return float(np.sum(terms(log_beta)))

    a, b = -math.log(high), -math.log(low)  # log beta of the largest and smallest T
    if slope(a) >= 0:
        return high
    if slope(b) <= 0:
        return low
    return 1.0 / math.exp(brentq(slope, a, b, xtol=1e-10))


def confidence_statement(
    probability: float, *, class_names: Sequence[str] = CLASS_NAMES, threshold: float = 0.5
) -> str:
    """One case's prediction in words: the predicted class and how sure the model is.

    The class is ``class_names[1]`` when ``probability >= threshold``, else ``class_names[0]``;
    the confidence is the probability of that class (``probability`` or ``1 - probability``),
    in whole percent, shown as "more than 99%" rather than rounded up to a certainty. Only a
    calibrated probability (after temperature scaling, checked on held-out data) should be
    shown this way: an uncalibrated "93%" may come true far less often.

    Args:
        probability: calibrated probability of class 1 for one case, in [0, 1].
        class_names: names of class 0 and class 1.
        threshold: decision threshold.

    >>> confidence_statement(0.07)
    'normal, 93% confident'
    >>> confidence_statement(0.9996)
    'pneumonia, more than 99% confident'
    """
    _validate.in_range(0, 1, probability=float(probability))
    _validate.in_range(0, 1, threshold=threshold)
    if len(class_names) != 2:
        raise ValueError(f"Expected two class names (class 0, class 1); got {list(class_names)}.")
    positive = probability >= threshold
    confidence = probability if positive else 1.0 - probability
    name = class_names[1] if positive else class_names[0]
    percent = round(100 * confidence)
    percent = "more than 99%" if percent >= 100 else f"{percent}%"
    return f"{name}, {percent} confident"
