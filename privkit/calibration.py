"""Calibration: does a model's "90% sure" come true 90% of the time? Measure it and fix it.

* :func:`expected_calibration_error` and :func:`reliability_bins`: the gap between confidence
  and accuracy, binned (Naeini et al. 2015; Guo et al. 2017, "On calibration of modern neural
  networks": 15 equal-width bins of the top-label confidence, the default here), or bins of
  equal mass (Nixon et al. 2019).
* :func:`brier_score`: mean squared error of the predicted probability (Brier 1950).
* :func:`fit_temperature`: temperature scaling (Guo et al. 2017), one scalar ``T`` fitted by
  maximum likelihood on held-out data; ``sigmoid(logit / T)`` keeps the ranking (AUC) and
  moves the probabilities. Fitting it reads the validation split, which is private data too:
  :func:`fit_temperature` spends privacy that no accountant sees, :func:`fit_temperature_dp`
  spends a stated (epsilon, delta), charged to a ledger when given one.
* :func:`confidence_statement`: "pneumonia, 93% confident", from a calibrated probability.

>>> round(expected_calibration_error([1, 0, 1, 1], [0.9, 0.2, 0.6, 0.4]), 3)
0.125
>>> confidence_statement(0.934)
'pneumonia, 93% confident'
"""

from __future__ import annotations

import functools
import hashlib
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit

from privkit import _validate, accounting, budget
from privkit._arrays import as_array, binary_pair, check_labels
from privkit.fairness import CLASS_NAMES
from privkit.randomness import MODES, ledger_tag, numpy_generator

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
        one-bin ECE of zero); the non-private counterpart of :func:`fit_temperature_dp`.
    Either root is found by Brent's method on log(1/T), and T is kept within ``bounds``
    (returned at a bound when the optimum lies beyond it, e.g. when the logits separate the
    labels perfectly). Both are consistent for the true T when the labels follow
    ``sigmoid(z / T)``.

    Privacy: this reads the labels and logits of every held-out example, with no noise; the
    privacy it spends is accounted nowhere. See :func:`fit_temperature_dp`.

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


@dataclass(frozen=True)
class PrivateTemperature:
    """A temperature fitted with differential privacy, and the mechanism that spent it.

    The mechanism is ``steps`` Gaussian queries on the whole set (``sample_rate = 1``), each
    of sensitivity 1 under adding or removing one example, with noise standard deviation
    ``noise_multiplier``; ``epsilon`` is what the accountant reports for it.
    """

    temperature: float
    epsilon: float
    delta: float
    noise_multiplier: float
    steps: int
    accountant: str


def fit_temperature_dp(
    labels: Any,
    logits: Any,
    *,
    epsilon: float,
    delta: float,
    steps: int = 8,
    accountant: str = "prv",
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    randomness: str = "secure",
    seed: int = 0,
    ledger: budget.Ledger | None = None,
    scopes: Sequence[str] | None = None,
    allow_seeded: bool = False,
) -> PrivateTemperature:
    """Temperature scaling with (epsilon, delta)-differential privacy for the held-out examples.

    A noisy bisection for the T at which the mean top-label confidence equals the accuracy
    (``fit_temperature(objective="confidence")``): each of ``steps`` queries sums, over the
    examples, top-label confidence minus correctness at the bracket's middle, a number in
    [-1, 1] per example, and adds Gaussian noise of standard deviation ``noise_multiplier``;
    the noisy sum's sign halves the bracket of log(1/T), which starts from ``bounds``, and
    the result is the bracket's geometric middle. Adding or removing one example moves each
    sum by at most 1, so the queries are Gaussian mechanisms of sensitivity 1 composed
    adaptively; the noise is calibrated with ``privkit.accounting`` (sampling rate 1) so that
    all of them together spend at most ``epsilon`` (Dwork & Roth 2014 for the Gaussian
    mechanism; Gopi et al. 2021 for the PRV accountant).

    Why not the NLL of Guo et al. (2017): its per-example slope (sigmoid(z / T) - y) z is
    bounded only by the logit, and clipping it to 1 moved T by a quarter to a third on
    PneumoniaMNIST models; the confidence terms are bounded without clipping. The logits come
    from a trained model that is not touched: the privacy here is that of the held-out
    examples. The default 8 halvings of the default bounds end within 1.2% of the noisy
    search's target; the noise, not the halvings, limits the precision.

    Whose privacy: the held-out (validation) patients. If they are not training patients,
    this spend and the training's compose in parallel (each patient is in one of the two);
    if a patient can be in both, they compose sequentially. Charging a ledger scope
    ``dataset:<name>`` composes them sequentially (never under-counting).

    Args:
        labels: (n,) or (n, 1) 0/1 of the held-out examples.
        logits: (n,) or (n, 1) the model's logits for them.
        epsilon: privacy budget of the fit, > 0.
        delta: its delta, in (0, 1), below 1/n.
        steps: number of noisy bisection steps (queries), >= 1.
        accountant: ``"prv"`` or ``"rdp"`` (see ``privkit.accounting``).
        bounds: the smallest and largest temperature allowed.
        randomness: ``"secure"`` (noise from the OS) or ``"seeded"`` (replayable research
            mode: the noise follows from ``seed``, the mechanism and the inputs; see
            :mod:`privkit.randomness`).
        seed: seed of the noise with ``randomness="seeded"``; unused otherwise.
        ledger: charge the mechanism here before reading ``labels`` (refusal raises
            ``budget.BudgetExceededError`` and reads nothing).
        scopes: the ledger scopes charged; required with ``ledger``.
        allow_seeded: let the ledger charge a seeded fit (public data only).

    Returns:
        A :class:`PrivateTemperature`.

    >>> y, z = [0, 1, 1, 0] * 100, [-2.0, 2.0, 1.0, 1.0] * 100
    >>> fit = fit_temperature_dp(y, z, epsilon=2.0, delta=1e-5, randomness="seeded")
    >>> round(fit.epsilon, 2), round(fit.noise_multiplier, 1), round(fit.temperature, 1)
    (2.0, 5.7, 1.2)
    """
    _validate.positive(epsilon=epsilon)
    _validate.in_range(0, 1, low_inclusive=False, high_inclusive=False, delta=delta)
    _validate.positive_int(steps=steps)
    _validate.one_of(accounting.UPPER_BOUNDS, accountant=accountant)
    _validate.one_of(MODES, randomness=randomness)
    low, high = _check_bounds(bounds)
    n = len(as_array(labels))
    if delta >= 1 / max(n, 1):
        raise ValueError(
            f"Expected delta={delta} < 1/n = {1 / max(n, 1):.3g} (n = {n} held-out examples)."
        )
    if ledger is not None and not scopes:
        raise ValueError(
            f"Expected scopes (e.g. ['dataset:pneumoniamnist']) with a ledger; got scopes={scopes!r}."
        )
    sigma, spent = _noise(epsilon, delta, steps, accountant)
    y, z = _labels_logits(labels, logits)
    identity = {
        "stream": "temperature",
        "seed": seed,
        "epsilon": epsilon,
        "delta": delta,
        "steps": steps,
        "bounds": [low, high],
        "inputs": hashlib.sha256(y.tobytes() + z.tobytes()).hexdigest(),
    }  # seeded: two fits on different scores or budgets never share their noise
    if ledger is not None:  # before the fit uses a single label
        ledger.charge(
            list(scopes),
            noise_multiplier=sigma,
            sample_rate=1.0,
            steps=steps,
            delta=delta,
            run_id=f"temperature-{uuid.uuid4().hex[:8]}",
            actor=budget.default_actor(),
            accountant=accountant,
            randomness=ledger_tag(randomness=randomness, identity=identity),
            allow_seeded=allow_seeded,
        )
    terms = _slope("confidence", y, z)
    rng = numpy_generator(randomness=randomness, identity=identity)
    a, b = -math.log(high), -math.log(low)  # bracket of log(1/T)
    for _ in range(steps):
        mid = (a + b) / 2
        if terms(mid).sum() + rng.normal(0.0, sigma) > 0:  # over-confident at mid: lower 1/T
            b = mid
        else:
            a = mid
    return PrivateTemperature(
        temperature=math.exp(-(a + b) / 2),
        epsilon=spent,
        delta=delta,
        noise_multiplier=sigma,
        steps=steps,
        accountant=accountant,
    )


@functools.lru_cache(maxsize=64)
def _noise(epsilon: float, delta: float, steps: int, accountant: str) -> tuple[float, float]:
    """Noise multiplier of ``steps`` full-batch Gaussian queries spending at most ``epsilon``,
    and the epsilon spent."""
    sigma = accounting.calibrate_noise(
        target_epsilon=epsilon,
        target_delta=delta,
        sample_rate=1.0,
        steps=steps,
        accountant=accountant,
    )
    spent = accounting.epsilon(
        noise_multiplier=sigma, sample_rate=1.0, steps=steps, delta=delta, accountant=accountant
    )
    return sigma, spent


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
