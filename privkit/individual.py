"""Individualised privacy: patients in groups that each choose their own epsilon.

Boenisch et al. (2023), "Have it your way: individualized privacy assignment for DP-SGD"
(their *Sample* method): every group shares one noise multiplier and clipping norm, and a group
with a stricter budget is sampled less often. A record of group g joins a batch with
probability q_g, independently of every other record, so for that record DP-SGD is the
Poisson-subsampled Gaussian mechanism (sigma, q_g, steps), accounted like any other run. The
noise multiplier is the one at which the groups' expected batch sizes add up to ``batch_size``:
records that accept more risk are seen more often, and everyone gets less noise than if all
were trained at the strictest epsilon.

Group membership is treated as public (as in the paper): it changes each record's sampling
rate, so it must not itself be a secret. Each group's mechanism is charged to the ledger scope
``dataset:<name>/group:<group>``; groups are disjoint, so their spends do not add up in any one
patient (parallel composition).

>>> p = plan(group_epsilons={"strict": 1.0, "relaxed": 8.0}, group_sizes={"strict": 2354,
...          "relaxed": 2354}, batch_size=256, steps=180, delta=1e-5, accountant="rdp")
>>> [round(p.epsilon(g), 1) for g in p.groups], p.sample_rates[0] < 256 / 4708 < p.sample_rates[1]
([1.0, 8.0], True)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from privkit import _validate, accounting, budget, data, randomness
from privkit.train import Mechanism, TrainConfig, TrainResult, stream_identity, train_many
from privkit.train import plan as plan_run

_RELATIVE_TOLERANCE = 1e-3  # of each sample rate and of the expected batch size
_MAX_NOISE = 1e3  # far beyond any useful noise multiplier
_GROUPS_STREAM = 0x67726F757073  # "groups": assign_groups' random stream


@dataclass(frozen=True)
class IndividualPlan:
    """One noise multiplier and step count; a Poisson rate and an epsilon per group."""

    groups: tuple[str, ...]
    sizes: tuple[int, ...]
    targets: tuple[float, ...]  # each group's epsilon budget
    sample_rates: tuple[float, ...]
    epsilons: tuple[float, ...]  # what the accountant reports for each group, <= its target
    noise_multiplier: float
    steps: int
    delta: float
    accountant: str

    @property
    def expected_batch_size(self) -> float:
        return sum(n * q for n, q in zip(self.sizes, self.sample_rates))

    def epsilon(self, group: str) -> float:
        return self.epsilons[self.groups.index(group)]

    def mechanism(self, group: str, max_grad_norm: float) -> Mechanism:
        """The mechanism that one record of ``group`` sees, as :class:`privkit.train.Mechanism`."""
        i = self.groups.index(group)
        return Mechanism(self.noise_multiplier, self.sample_rates[i], self.steps, max_grad_norm,
                         self.delta, self.accountant, self.epsilons[i])  # fmt: skip


@dataclass
class IndividualResult:
    """A model trained with individualised privacy and the plan it was trained under."""

    result: TrainResult  # its ``mechanism`` is that of the least strict group: the dataset's
    plan: IndividualPlan


def _solve(f: Callable[[float], float], lo: float, hi: float, *, tolerance: float) -> tuple[float, float]:
    """The root of an increasing ``f`` in [lo, hi] from below: ``x`` with -tolerance < f(x) <= 0.

    Regula falsi with the Illinois modification (a few evaluations where bisection needs ten
    or more); the bracket keeps f(lo) <= 0 < f(hi), so the answer never overshoots.
    """
    f_lo, f_hi, side = f(lo), f(hi), 0
    while f_lo <= -tolerance and hi - lo > 1e-12 * hi:
        x = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        x = min(max(x, lo + 1e-3 * (hi - lo)), hi - 1e-3 * (hi - lo))  # stay inside
        f_x = f(x)
        if f_x <= 0:
            lo, f_lo = x, f_x
            f_hi, side = (f_hi / 2, 0) if side == -1 else (f_hi, -1)
        else:
            hi, f_hi = x, f_x
            f_lo, side = (f_lo / 2, 0) if side == 1 else (f_lo, 1)
    return lo, f_lo


def _largest_rate(sigma: float, target: float, *, steps: int, delta: float, accountant: str) -> tuple[float, float]:
    """The largest Poisson rate q with epsilon(sigma, q, steps) <= target, and that epsilon."""

    def log_ratio(log_q: float) -> float:  # log(epsilon / target): smooth and increasing in log q
        eps = accounting.epsilon(noise_multiplier=sigma, sample_rate=math.exp(log_q), steps=steps,
                                 delta=delta, accountant=accountant)  # fmt: skip
        return math.log(eps / target) if eps > 0 else -math.inf

    at_one = log_ratio(0.0)
    if at_one <= 0:
        return 1.0, target * math.exp(at_one)
    log_lo = -1.0
    while log_ratio(log_lo) > 0:  # bracket from below by halving
        log_lo -= 2.0
    log_q, f = _solve(log_ratio, log_lo, 0.0, tolerance=_RELATIVE_TOLERANCE)
    return math.exp(log_q), target * math.exp(f)


def plan(
    *,
    group_epsilons: Mapping[str, float],
    group_sizes: Mapping[str, int],
    batch_size: int,
    steps: int,
    delta: float,
    accountant: str = "prv",
) -> IndividualPlan:
    """Noise multiplier and per-group sample rates for individualised DP-SGD.

    For a noise multiplier sigma, each group gets the largest rate q_g(sigma) whose epsilon after
    ``steps`` stays within its budget; sigma is bisected until sum_g n_g q_g(sigma) matches
    ``batch_size`` (a larger sigma allows larger rates). Boenisch et al. (2023), Algorithm 2.

    Args:
        group_epsilons: each group's epsilon budget, > 0 and finite.
        group_sizes: each group's number of training records, > 0; the same groups.
        batch_size: the expected batch size, at most the number of records.
        steps: the number of DP-SGD steps.
        delta: the delta of every group's guarantee.
        accountant: one of ``privkit.accounting.ACCOUNTANTS``.

    Returns:
        The plan; each group's epsilon is at most its budget.
    """
    if set(group_epsilons) != set(group_sizes):
        raise ValueError(
            f"Expected the same groups in group_epsilons={sorted(group_epsilons)} and "
            f"group_sizes={sorted(group_sizes)}."
        )
    if not group_epsilons:
        raise ValueError("Expected at least one group in group_epsilons.")
    groups = tuple(sorted(group_epsilons, key=lambda g: (group_epsilons[g], g)))  # strictest first
    for g in groups:
        _validate.in_range(0, math.inf, low_inclusive=False, high_inclusive=False,
                           **{f"group_epsilons[{g!r}]": group_epsilons[g]})  # fmt: skip
        _validate.positive_int(**{f"group_sizes[{g!r}]": group_sizes[g]})
    sizes = tuple(int(group_sizes[g]) for g in groups)
    targets = tuple(float(group_epsilons[g]) for g in groups)
    _validate.positive_int(steps=steps)
    _validate.in_range(1, sum(sizes), batch_size=batch_size)
    _validate.in_range(0, 1, low_inclusive=False, high_inclusive=False, delta=delta)
    _validate.one_of(accounting.ACCOUNTANTS, accountant=accountant)

    rates, sigma = _solve_plan(targets, sizes, batch_size, steps, delta, accountant)
    return IndividualPlan(
        groups=groups, sizes=sizes, targets=targets, sample_rates=tuple(q for q, _ in rates),
        epsilons=tuple(e for _, e in rates), noise_multiplier=sigma, steps=steps, delta=delta,
        accountant=accountant,
    )  # fmt: skip


@functools.lru_cache(maxsize=64)  # each evaluation runs the accountant: plan once per setting
def _solve_plan(targets: tuple[float, ...], sizes: tuple[int, ...], batch_size: int, steps: int, delta: float,
                accountant: str) -> tuple[tuple[tuple[float, float], ...], float]:
    """Per-group (rate, epsilon) and the noise multiplier: the search behind :func:`plan`."""

    @functools.lru_cache(maxsize=None)
    def rates(sigma: float) -> tuple[tuple[float, float], ...]:
        return tuple(_largest_rate(sigma, t, steps=steps, delta=delta, accountant=accountant) for t in targets)

    def batch(sigma_rates: tuple[tuple[float, float], ...]) -> float:
        return sum(n * q for n, (q, _) in zip(sizes, sigma_rates))

    hi = 1.0  # bracket the noise multiplier: batch(lo) < batch_size <= batch(hi)
    while batch(rates(hi)) < batch_size:
        if hi >= _MAX_NOISE:
            raise ValueError(f"No noise multiplier up to {_MAX_NOISE} reaches batch_size={batch_size}.")
        hi *= 2
    lo = hi / 2
    while batch(rates(lo)) >= batch_size:
        lo /= 2
    # The smallest sigma whose rates give at least batch_size (log-scale, from above).
    neg_sigma, _ = _solve(lambda x: math.log(batch_size / batch(rates(-x))), -hi, -lo,
                          tolerance=_RELATIVE_TOLERANCE)  # fmt: skip
    sigma = -neg_sigma
    return rates(sigma), sigma


def assign_groups(n: int, fractions: Mapping[str, float], *, seed: int = 0) -> np.ndarray:
    """A seeded random assignment of ``n`` records to groups in the given proportions.

    For simulations: in practice each patient (or hospital) states their own preference.

    >>> g = assign_groups(10, {"strict": 0.3, "relaxed": 0.7})
    >>> sorted(g.tolist()).count("strict")
    3
    """
    _validate.positive_int(n=n)
    total = sum(fractions.values())
    if not fractions or any(f <= 0 for f in fractions.values()) or not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"Expected fractions={dict(fractions)} to be positive and add up to 1.")
    names = list(fractions)
    counts = np.floor(np.array([fractions[g] for g in names]) * n).astype(int)
    counts[np.argmax(counts)] += n - counts.sum()  # rounding goes to the largest group
    labels = np.repeat(np.array(names, dtype=object), counts)
    # A stream of its own: a data file shuffled with default_rng(seed) must not line up with it.
    return np.random.default_rng([seed, _GROUPS_STREAM]).permutation(labels)


def train(
    config: TrainConfig,
    *,
    groups: Sequence[str] | np.ndarray,
    group_epsilons: Mapping[str, float],
    dataset: data.Dataset | None = None,
    ledger: budget.Ledger | None = None,
    allow_seeded: bool = False,
    progress: bool = True,
) -> IndividualResult:
    """Train one model with individualised DP-SGD (backend ``fast``).

    Every group's mechanism is charged to ``dataset:<name>/group:<group>`` before any record is
    read. A refused group leaves the groups charged before it charged (never under-counts).

    Args:
        config: everything but the privacy budget: its ``epsilon`` (or ``noise_multiplier``) is
            not used; each group's epsilon comes from ``group_epsilons``.
        groups: (n_train,) each training record's group, in the order of the training split.
        group_epsilons: each group's epsilon budget (the groups' delta is ``config.delta``).
        dataset: already loaded data; loaded from ``config`` otherwise (after the charges).
        ledger: the privacy-budget ledger to charge, if any.
        allow_seeded: let the ledger charge a ``randomness="seeded"`` config (public data only).
        progress: show a progress bar.
    """
    _validate.one_of(("fast",), backend=config.backend)
    n = len(dataset.train) if dataset else data.train_size(config.dataset, root=config.data_root)
    labels = np.asarray(groups).astype(str)
    if labels.shape != (n,):
        raise ValueError(f"Expected groups of shape ({n},), one per training record, got {labels.shape}.")
    names, counts = np.unique(labels, return_counts=True)
    missing = sorted(set(names.tolist()) - set(group_epsilons))
    if missing:
        raise ValueError(f"Groups {missing} have no epsilon in group_epsilons={dict(group_epsilons)}.")
    bad = [g for g in names if not re.fullmatch(r"[A-Za-z0-9_.-]+", g)]
    if bad:
        raise ValueError(f"Expected group names of letters, digits, '_', '.', '-', got {bad}.")
    uniform = plan_run(dataclasses.replace(config, epsilon=None, noise_multiplier=1.0), n)  # checks delta < 1/n
    p = plan(
        group_epsilons={g: group_epsilons[g] for g in names.tolist()},
        group_sizes=dict(zip(names.tolist(), counts.tolist())), batch_size=config.batch_size,
        steps=uniform.steps, delta=config.delta, accountant=config.accountant,
    )  # fmt: skip
    run = dataclasses.replace(config, epsilon=None, noise_multiplier=p.noise_multiplier)
    if ledger is not None:
        run_id = f"{config.model}-individual-seed{config.seed}-{uuid.uuid4().hex[:8]}"
        tag = randomness.ledger_tag(randomness=run.randomness, identity=stream_identity(run))
        for g, q in zip(p.groups, p.sample_rates):
            ledger.charge([str(budget.Scope(config.dataset, group=g))], noise_multiplier=p.noise_multiplier,
                          sample_rate=q, steps=p.steps, delta=p.delta, run_id=run_id,
                          actor=budget.default_actor(), accountant=config.accountant, randomness=tag,
                          allow_seeded=allow_seeded)  # fmt: skip
    rate_of = dict(zip(p.groups, p.sample_rates))
    rates = torch.tensor([rate_of[g] for g in labels], dtype=torch.float64)[None]  # (1, n)
    [result] = train_many([run], dataset=dataset, sample_rates=rates, progress=progress)
    result.mechanism = p.mechanism(p.groups[-1], config.max_grad_norm)
    return IndividualResult(result=result, plan=p)
