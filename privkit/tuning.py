"""Hyperparameter tuning that pays for itself in epsilon (Papernot & Steinke 2022).

Training many models on the same private data and keeping the best leaks more than one model
does: the choice itself depends on the data. Papernot & Steinke (2022), "Hyperparameter tuning
with Renyi differential privacy", https://arxiv.org/abs/2110.03620, bound that leak when the
number of trials is itself random: draw K ~ Poisson(mu), run K trials with random
hyperparameters, release only the best. Theorem 6: if one trial is (lambda, eps)-RDP and
(eps_hat, delta_hat)-DP, the search is (lambda, eps + mu * delta_hat + log(mu) / (lambda - 1))-RDP
with eps_hat = log(1 + 1 / (lambda - 1)). A fixed number of trials has no such bound short of
composing them all.

What this covers: the training records of every trial. The validation records that score the
trials are read without noise; keep them out of the data the guarantee must protect.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from opacus.accountants.analysis import rdp as _rdp

from privkit import _validate, data
from privkit.randomness import numpy_generator
from privkit.train import TrainConfig, TrainResult, plan, train

# Renyi orders: Opacus's default grid, extended (long searches push the optimum up).
ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *range(12, 64),
    80,
    96,
    128,
    192,
    256,
    384,
    512,
)


def _log_delta(orders: np.ndarray, rdp: np.ndarray, epsilon: float) -> float:
    """log delta of an RDP curve at ``epsilon``: the KL bound for small orders and
    Canonne, Kamath & Steinke (2020), Proposition 12, above 1.01 (as in dp_accounting)."""
    with np.errstate(divide="ignore"):
        kl = np.where(rdp > 0, 0.5 * np.log1p(-np.exp(-rdp)), -np.inf)
        bound = (orders - 1) * (rdp - epsilon + np.log1p(-1 / orders)) - np.log(orders)
    return float(np.min(np.where(orders > 1.01, np.minimum(kl, bound), kl)))


def tuning_epsilon(
    mechanisms: Sequence[tuple[float, float, int]], *, delta: float, mean_trials: float
) -> float:
    """Epsilon of a random search: K ~ Poisson(``mean_trials``) DP-SGD trials, each with one of
    ``mechanisms`` (its hyperparameters chosen at random), only the best released.

    Args:
        mechanisms: ``(noise_multiplier, sample_rate, steps)`` of every candidate; a trial is
            charged the worst of them, order by order.
        delta: Target delta, in (0, 1).
        mean_trials: The Poisson mean mu, >= 1.

    Returns:
        Epsilon of the whole search (Papernot & Steinke 2022, Theorem 6), via RDP.

    >>> one = (1.0, 256 / 4708, 370)  # alone: epsilon 7.07 (PRV), 7.81 (RDP)
    >>> round(tuning_epsilon([one], delta=1e-5, mean_trials=1), 2)
    8.43
    >>> round(tuning_epsilon([one], delta=1e-5, mean_trials=10), 2)
    14.93
    """
    _validate.in_range(0, 1, low_inclusive=False, high_inclusive=False, delta=delta)
    _validate.in_range(1, math.inf, high_inclusive=False, mean_trials=mean_trials)
    if not mechanisms:
        raise ValueError("Expected at least one mechanism (noise_multiplier, sample_rate, steps).")
    orders = np.array(ORDERS)
    curves = []
    for i, (sigma, q, steps) in enumerate(mechanisms):
        _validate.in_range(
            0,
            math.inf,
            low_inclusive=False,
            high_inclusive=False,
            **{f"mechanisms[{i}].noise_multiplier": sigma},
        )
        _validate.in_range(0, 1, low_inclusive=False, **{f"mechanisms[{i}].sample_rate": q})
        _validate.positive_int(**{f"mechanisms[{i}].steps": steps})
        curves.append(
            _rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(ORDERS))
        )
    rdp = np.max(curves, axis=0)  # one trial, whichever candidate it draws
    delta_hat = np.array(
        [math.exp(_log_delta(orders, rdp, math.log1p(1 / (a - 1)))) for a in orders]
    )
    searched = rdp + mean_trials * delta_hat + math.log(mean_trials) / (orders - 1)
    with warnings.catch_warnings():  # "optimal order is the smallest/largest alpha"
        warnings.filterwarnings("ignore", "Optimal order", UserWarning)
        return float(_rdp.get_privacy_spent(orders=list(ORDERS), rdp=searched, delta=delta)[0])


@dataclass
class SearchResult:
    best: TrainResult | None  # None if K = 0 trials were drawn
    trials: list[TrainResult]  # scored on the validation split; never release them all
    epsilon: float  # of the whole search
    delta: float
    mean_trials: float


def draw_trials(n_candidates: int, *, mean_trials: float) -> list[int]:
    """The candidates a search trains: K ~ Poisson(``mean_trials``) indices drawn uniformly,
    from the OS's entropy (Papernot & Steinke 2022 need K random and unknown to the attacker).
    """
    _validate.positive_int(n_candidates=n_candidates)
    _validate.positive(mean_trials=mean_trials)
    rng = numpy_generator(randomness="secure", identity={})  # never from a recorded seed
    return [int(i) for i in rng.integers(n_candidates, size=rng.poisson(mean_trials))]


def random_search(
    candidates: Sequence[TrainConfig],
    *,
    mean_trials: float,
    metric: str = "auc",
    dataset: data.Dataset | None = None,
    progress: bool = True,
) -> SearchResult:
    """Private hyperparameter search: K ~ Poisson(``mean_trials``) trials, each a candidate
    drawn uniformly, the best by validation ``metric`` kept, epsilon by :func:`tuning_epsilon`.

    Candidates must share ``dataset``, ``delta`` and ``data_root``; each plans its own noise
    (give ``epsilon`` to calibrate every trial to the same per-run budget). The bound holds
    only while K and the trials' noise are unknown to the attacker: K and the choice of
    candidates are drawn from the OS's entropy, and every candidate must train with
    ``randomness="secure"`` (a seeded candidate drawn twice would repeat its noise).
    """
    if not candidates:
        raise ValueError("Expected at least one candidate TrainConfig.")
    seeded = [i for i, c in enumerate(candidates) if c.randomness != "secure"]
    if seeded:
        raise ValueError(
            f"candidates {seeded} have randomness='seeded'; a private search needs independent, secret "
            "trials: expected randomness='secure' for every candidate."
        )
    shared = {(c.dataset, c.delta, c.data_root) for c in candidates}
    if len(shared) > 1:
        raise ValueError(
            f"Candidates must share dataset, delta and data_root, got {sorted(shared, key=str)}."
        )
    first = candidates[0]
    n = len(dataset.train) if dataset else data.train_size(first.dataset, root=first.data_root)
    mechanisms = [plan(c, n) for c in candidates]
    epsilon = tuning_epsilon(
        [(m.noise_multiplier, m.sample_rate, m.steps) for m in mechanisms],
        delta=first.delta,
        mean_trials=mean_trials,
    )
    drawn = draw_trials(len(candidates), mean_trials=mean_trials)
    trials = [train(candidates[i], dataset=dataset, progress=progress) for i in drawn]
    best = max(trials, key=lambda r: r.metrics["val"][metric], default=None)
    return SearchResult(best, trials, epsilon, first.delta, mean_trials)
