"""Privacy audit: an empirical lower bound on epsilon, to catch a DP implementation that leaks.

An accountant's epsilon is an upper bound that holds only if the code really clips and adds
noise as it claims. An audit plants canaries (records built to be easy to detect), includes
each in training or not at random, and asks how well an attack tells which were included. A
successful attack proves, at a stated confidence, that the training run was NOT
(epsilon, delta)-DP for epsilon below a lower bound. A lower bound above the accountant's
epsilon therefore means a bug in the kit (or a failure of probability 1 - confidence).

* One training run (Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1) training
  run", NeurIPS, https://arxiv.org/abs/2305.08846): m canaries, each included with
  probability 1/2; the auditor guesses "in" for the k highest scores (and "out" for the
  lowest, if asked); :func:`one_run_epsilon` turns r guesses with v correct into a bound.
* Many runs (Jagielski, Ullman & Oprea 2020, https://arxiv.org/abs/2006.07709; Nasr et al.
  2021, https://arxiv.org/abs/2101.04535): Clopper-Pearson bounds on the attack's TPR and
  FPR, :func:`epsilon_from_counts`.

Canaries (:func:`make_canaries`): mislabeled training records, or out-of-distribution images
with random labels; scores are minus each canary's loss under the trained model (input-space,
black-box: the weakest auditor, so the bound is conservative).

>>> round(one_run_epsilon(m=1000, r=100, v=100, delta=0.0), 3)  # logit(0.05 ** (1 / 100))
3.493
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import binom
from torch import Tensor

from privkit import _validate, data
from privkit.attacks.membership import loss_scores
from privkit.attacks.scores import clopper_pearson
from privkit.mechanism import steps_of
from privkit.train import TrainConfig, TrainResult, train_many
from privkit.train import logits as model_logits

CANARY_KINDS = ("mislabeled", "ood")


def one_run_p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Chance of >= v correct guesses out of r if training was (epsilon, delta)-DP.

    The (epsilon, delta) bound of Steinke, Nasr & Jagielski 2023, as their Algorithm 2
    evaluates it: with m canaries each included with probability 1/2 and r guesses, the
    number W of correct guesses satisfies ``P[W >= v] <= P[Bin(r, q) >= v] + 2 m delta alpha``
    with ``q = e^eps / (1 + e^eps)`` (the accuracy of eps-randomised response) and
    ``alpha = max_{1 <= i <= v} P[v - i <= Bin(r, q) < v] / i``.

    Args:
        m: number of canaries, >= 1. r: guesses made, in [0, m]. v: correct ones, in [0, r].
        epsilon: >= 0. delta: in [0, 1].

    Returns:
        The p-value, in [0, 1].
    """
    _counts(m, r, v)
    _validate.in_range(0, math.inf, high_inclusive=False, epsilon=epsilon)
    _validate.in_range(0, 1, delta=delta)
    q = 1 / (1 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))  # P[Bin(r, q) >= v]
    alpha = 0.0
    if delta > 0 and v > 0:
        below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))  # i-1 -> P[v-i <= Bin < v]
        alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * alpha)


def one_run_epsilon(*, m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon rejected at ``confidence`` by v correct of r guesses on m canaries.

    Every (epsilon, delta)-DP training run passes the audit (reports a bound below its
    epsilon) with probability >= ``confidence`` (Steinke et al. 2023, Algorithm 2: the p-value
    of :func:`one_run_p_value` grows with epsilon; bisection finds where it reaches
    ``1 - confidence``).

    Returns:
        The lower bound on epsilon, >= 0 (0 when nothing is rejected); accurate to 1e-6.

    >>> round(one_run_epsilon(m=100, r=10, v=10, delta=0.0), 4)  # logit(0.05 ** 0.1)
    1.0519
    """
    _counts(m, r, v)
    _validate.in_range(0, 1, delta=delta)
    _validate.in_range(0, 1, low_inclusive=False, high_inclusive=False, confidence=confidence)
    level = 1 - confidence

    def rejected(eps: float) -> bool:
        return one_run_p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) < level

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0  # invariant: rejected(low), not rejected(high)
    while rejected(high):  # ends: as epsilon grows the p-value tends to 1
        low, high = high, 2 * high
    while high - low > 1e-6:
        mid = (low + high) / 2
        low, high = (mid, high) if rejected(mid) else (low, mid)
    return low


def _counts(m: int, r: int, v: int) -> None:
    _validate.positive_int(m=m)
    for name, value, top in (("r", r, m), ("v", v, r)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or not 0 <= value <= top
        ):
            raise ValueError(f"Expected {name}={value!r} to be an integer in [0, {top}].")


def one_run_audit(
    scores: Any,
    included: Any,
    *,
    delta: float,
    k_values: Sequence[int] = (10, 20, 50, 100),
    k_neg: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Epsilon lower bound from the canary scores of one training run (Steinke et al. 2023).

    For each k in ``k_values`` the auditor guesses "in" for the k highest-scoring canaries
    (and "out" for the ``k_neg`` lowest) and abstains on the rest; the best bound over the
    ``len(k_values)`` tries is reported, each computed at confidence
    ``1 - (1 - confidence) / len(k_values)`` (Bonferroni), so the result holds at ``confidence``.

    Args:
        scores: (m,) canary scores, higher meaning "included".
        included: (m,) bool, which canaries were in the training data (each with prob. 1/2).
        delta: the delta of the guarantee being audited.
        k_values: numbers of "in" guesses to try (each <= m - k_neg).
        k_neg: number of "out" guesses (lowest scores).
        confidence: the audit's confidence, in (0, 1).

    Returns:
        ``epsilon_lower_bound``, and the ``k``, ``guesses`` (r) and ``correct`` (v) behind it.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    inc = np.asarray(included, dtype=bool).ravel()
    if s.shape != inc.shape or s.size == 0:
        raise ValueError(
            f"Expected scores and included of equal, non-zero size; got {s.size} and {inc.size}."
        )
    m = s.size
    if not k_values:
        raise ValueError("Expected at least one k in k_values.")
    if not isinstance(k_neg, int) or not 0 <= k_neg < m:
        raise ValueError(f"Expected k_neg={k_neg!r} to be an integer in [0, {m - 1}].")
    for k in k_values:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= m - k_neg:
            raise ValueError(
                f"Expected each k in k_values={list(k_values)} to be an integer in [1, {m - k_neg}]."
            )
    order = np.argsort(-s, kind="stable")  # highest score first
    level = 1 - (1 - confidence) / len(k_values)
    best = {"epsilon_lower_bound": 0.0, "k": 0, "guesses": 0, "correct": 0}
    for k in k_values:
        correct = int(inc[order[:k]].sum()) + (
            int((~inc[order[m - k_neg :]]).sum()) if k_neg else 0
        )
        eps = one_run_epsilon(m=m, r=int(k) + k_neg, v=correct, delta=delta, confidence=level)
        if eps > best["epsilon_lower_bound"] or best["k"] == 0:
            best = {
                "epsilon_lower_bound": eps,
                "k": int(k),
                "guesses": int(k) + k_neg,
                "correct": correct,
            }
    return best


def epsilon_from_counts(
    *, tp: int, fn: int, fp: int, tn: int, delta: float, confidence: float = 0.95
) -> float:
    """Epsilon lower bound from an attack's confusion counts over independent training runs.

    (epsilon, delta)-DP forces ``TPR <= e^eps FPR + delta`` and ``1 - FPR <= e^eps (1 - TPR) +
    delta`` (Kairouz et al. 2015), so ``eps >= max(log((TPR - delta) / FPR),
    log((1 - FPR - delta) / (1 - TPR)))``. Both grow with TPR and fall with FPR, so a lower
    Clopper-Pearson bound on the TPR and an upper one on the FPR (each one-sided at
    ``(1 - confidence) / 2``: together they hold with probability >= ``confidence``) give
    ``max(log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo)))``, a
    lower bound at ``confidence`` (Jagielski et al. 2020, Nasr et al. 2021). Valid when each
    counted trial comes from its own training run and the attack's threshold was fixed before
    looking at them.

    Returns:
        The lower bound, >= 0.

    >>> round(epsilon_from_counts(tp=100, fn=0, fp=0, tn=100, delta=0.0), 3)  # 0.025 ** 0.01
    3.281
    """
    for name, value in (("tp", tp), ("fn", fn), ("fp", fp), ("tn", tn)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"Expected {name}={value!r} to be an integer >= 0.")
    _validate.in_range(0, 1, delta=delta)
    _validate.in_range(0, 1, low_inclusive=False, high_inclusive=False, confidence=confidence)
    tpr_lo = clopper_pearson(int(tp), _positive(tp + fn, "tp + fn"), confidence=confidence)[0]
    fpr_hi = clopper_pearson(int(fp), _positive(fp + tn, "fp + tn"), confidence=confidence)[1]
    bounds = [0.0]
    if tpr_lo - delta > 0:
        bounds.append(math.log((tpr_lo - delta) / fpr_hi))
    if 1 - fpr_hi - delta > 0:
        bounds.append(math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    return max(bounds)


def _positive(n: int, name: str) -> int:
    if n < 1:
        raise ValueError(f"Expected {name} >= 1, got {n}.")
    return int(n)


@dataclass(frozen=True, eq=False)
class Canaries:
    """Records planted to be detected: mislabeled training records or out-of-distribution images.

    Attributes:
        images: (m, C, H, W) the canary images.
        labels: (m, L) their labels (wrong ones, for mislabeled canaries; random for ``ood``).
        source: indices of the training records they were made from (left out of training, so
            the correctly labelled original cannot mask its canary); empty for ``ood``.
    """

    images: Tensor
    labels: Tensor
    source: np.ndarray

    def __len__(self) -> int:
        return self.images.shape[0]


def make_canaries(dataset: data.Dataset, *, m: int, kind: str = "ood", seed: int = 0) -> Canaries:
    """``m`` canaries for ``dataset``.

    * ``mislabeled``: m training records with every label flipped (Jagielski et al. 2020 use
      such "poisoned" records): the model can fit them only by memorising each one.
    * ``ood``: images of independent random pixels in {-1, +1} (the data's range) with random
      labels: far from every X-ray, so the model can only fit them by memorising them, and
      their gradients do not average out with the X-rays'.

    Args:
        dataset: the data the canaries will be mixed into.
        m: number of canaries, >= 1 (at most the training-set size for ``mislabeled``).
        kind: one of :data:`CANARY_KINDS`.
        seed: draws the canaries.
    """
    _validate.positive_int(m=m)
    _validate.one_of(CANARY_KINDS, kind=kind)
    train = dataset.train
    g = torch.Generator().manual_seed(seed)
    if kind == "mislabeled":
        _validate.in_range(1, len(train), m=m)
        source = torch.randperm(len(train), generator=g)[:m].sort().values
        at = source.to(train.images.device)
        return Canaries(train.images[at], 1 - train.labels[at], source.numpy())
    shape = (m, *train.images.shape[1:])
    images = torch.randint(0, 2, shape, generator=g).float() * 2 - 1
    labels = torch.randint(0, 2, (m, train.labels.shape[1]), generator=g).float()
    device = train.images.device
    return Canaries(images.to(device), labels.to(device), np.zeros(0, dtype=np.int64))


@dataclass
class AuditRun:
    """One training run with canaries, and the attack's scores on them.

    Attributes:
        result: the run's ``TrainResult`` (its mechanism holds the accountant's epsilon).
        included: (m,) bool, which canaries were in the training data.
        scores: (m,) minus each canary's loss under the trained model (higher: "included").
    """

    result: TrainResult = field(repr=False)
    included: np.ndarray
    scores: np.ndarray

    def audit(
        self,
        *,
        k_values: Sequence[int] = (10, 20, 50, 100),
        k_neg: int = 0,
        confidence: float = 0.95,
    ) -> dict[str, float]:
        """:func:`one_run_audit` of this run at its own delta, with its accountant's epsilon.

        k values above the number of canaries (less ``k_neg``) are capped there.
        """
        m = len(self.scores)
        ks = sorted({min(k, m - k_neg) for k in k_values})
        out = one_run_audit(
            self.scores,
            self.included,
            delta=self.result.mechanism.delta,
            k_values=ks,
            k_neg=k_neg,
            confidence=confidence,
        )
        return {**out, "epsilon": self.result.mechanism.epsilon}


def train_with_canaries(
    configs: Sequence[TrainConfig],
    *,
    canaries: Canaries,
    dataset: data.Dataset,
    train_records: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[AuditRun]:
    """Train each config once on the training split plus a random half of the canaries.

    Each canary is included independently with probability 1/2, separately for each run
    (run k draws with ``seed + k``), as Steinke et al. (2023) require; the records the
    canaries were made from are left out. Runs that plan the same number of steps train
    together (``train_many``), so all must share ``privkit.train.STACK_FIELDS`` and use
    ``backend='fast'``.

    Args:
        configs: the runs to audit.
        canaries: from :func:`make_canaries` on ``dataset``.
        dataset: the data; the canaries are added to its training split.
        train_records: train on only the first this many training records (a quicker audit).
        seed: draws which canaries each run includes.
        progress: show a progress bar.

    Returns:
        One :class:`AuditRun` per config, in order.
    """
    train = dataset.train
    n, m = len(train), len(canaries)
    if train_records is not None:
        _validate.in_range(1, n, train_records=train_records)
    mixed = dataclasses.replace(
        dataset,
        train=data.Split(
            torch.cat([train.images, canaries.images]), torch.cat([train.labels, canaries.labels])
        ),
    )
    included = np.stack(
        [np.random.default_rng(seed + k).random(m) < 0.5 for k in range(len(configs))]
    )
    members = torch.ones(len(configs), n + m, dtype=torch.bool)
    members[:, train_records or n : n] = False
    members[:, torch.as_tensor(canaries.source, dtype=torch.long)] = False
    members[:, n:] = torch.as_tensor(included)
    # Runs that include different numbers of canaries may plan different step counts, and a
    # stack steps together: train each step count as its own stack.
    sizes = members.sum(dim=1).tolist()
    steps = [
        steps_of(n=n, batch_size=c.batch_size, epochs=c.epochs) for c, n in zip(configs, sizes)
    ]
    results: list[TrainResult | None] = [None] * len(configs)
    for count in sorted(set(steps)):
        group = [k for k, s in enumerate(steps) if s == count]
        trained = train_many(
            [configs[k] for k in group], dataset=mixed, members=members[group], progress=progress
        )
        for k, result in zip(group, trained):
            results[k] = result
    return [
        AuditRun(
            result=r,
            included=inc,
            scores=loss_scores(model_logits(r.model, canaries.images), canaries.labels),
        )
        for r, inc in zip(results, included)
    ]
