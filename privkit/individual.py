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

from privkit import _prv, _search, _validate, accounting, budget, data, randomness
from privkit.mechanism import Mechanism, check_delta, steps_of
from privkit.train import TrainConfig, TrainResult, stream_identity, train_many

_BATCH_TOLERANCE = 1e-3  # relative: the expected batch is at least batch_size and within 0.1% of it
# relative: each group's epsilon within 0.025% of its budget, finer than the batch's tolerance so
# that the expected batch, a sum of the groups' rates, is monotone in sigma at its scale
_EPSILON_TOLERANCE = 2.5e-4
_MAX_NOISE = 1e3  # far beyond any useful noise multiplier
_MIN_RATE = 1e-12  # far below any useful sample rate
_GROUPS_STREAM = 0x67726F757073  # "groups": assign_groups' random stream


@dataclass(frozen=True)
class IndividualPlan:
    """A :class:`privkit.mechanism.Mechanism` per group, strictest first: one noise multiplier,
    clipping norm, step count and delta; each group's Poisson rate and epsilon (<= its target)."""

    groups: tuple[str, ...]
    sizes: tuple[int, ...]
    targets: tuple[float, ...]  # each group's epsilon budget
    mechanisms: tuple[Mechanism, ...]  # what one record of each group sees

    @property
    def noise_multiplier(self) -> float:
        return self.mechanisms[0].noise_multiplier

    @property
    def steps(self) -> int:
        return self.mechanisms[0].steps

    @property
    def delta(self) -> float:
        return self.mechanisms[0].delta

    @property
    def accountant(self) -> str:
        return self.mechanisms[0].accountant

    @property
    def sample_rates(self) -> tuple[float, ...]:
        return tuple(m.sample_rate for m in self.mechanisms)

    @property
    def epsilons(self) -> tuple[float, ...]:
        return tuple(m.epsilon for m in self.mechanisms)

    @property
    def expected_batch_size(self) -> float:
        return sum(n * q for n, q in zip(self.sizes, self.sample_rates))

    def epsilon(self, group: str) -> float:
        return self.mechanism(group).epsilon

    def mechanism(self, group: str) -> Mechanism:
        """The mechanism that one record of ``group`` sees."""
        return self.mechanisms[self.groups.index(group)]


@dataclass
class IndividualResult:
    """A model trained with individualised privacy and the plan it was trained under."""

    result: TrainResult  # its ``mechanism`` is the least strict group's, which bounds everyone's
    plan: IndividualPlan


def _largest_rate(
    sigma: float, target: float, *, steps: int, delta: float, accountant: str, guess: float
) -> tuple[float, float]:
    """The largest Poisson rate q with epsilon(sigma, q, steps) <= target (within 0.025%), and that
    epsilon, searched from ``guess`` (:func:`privkit._search.solve_below` on log q).

    Raises:
        ValueError: If not even a vanishing rate keeps epsilon within ``target``.
    """

    def log_ratio(log_q: float) -> float:  # log(epsilon / target): smooth and increasing in log q
        eps = accounting.epsilon(
            noise_multiplier=sigma,
            sample_rate=math.exp(log_q),
            steps=steps,
            delta=delta,
            accountant=accountant,
        )
        return math.log(eps / target) if eps > 0 else -math.inf

    found = _search.solve_below(
        log_ratio,
        math.log(guess),
        scale=1.0,
        tolerance=_EPSILON_TOLERANCE,
        low=math.log(_MIN_RATE),
        high=0.0,
    )
    if found is None:
        raise ValueError(
            f"No sample rate >= {_MIN_RATE:g} keeps epsilon <= {target!r} at noise_multiplier={sigma!r} "
            f"with accountant={accountant!r}: an epsilon this small cannot be certified."
        )
    q = math.exp(found[0])  # and its epsilon, from the accountant's cache:
    return q, accounting.epsilon(
        noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant=accountant
    )


def _rdp_integer_rate(sigma: float, target: float, *, steps: int, delta: float) -> float:
    """Where RDP at integer orders (:func:`privkit._prv.rdp_one_step`, microseconds) reaches the
    target: a starting point for :func:`_largest_rate`, which every accountant refines."""

    def log_ratio(log_q: float) -> float:
        eps = _prv.rdp_epsilon(_prv.rdp_one_step(sigma, math.exp(log_q)) * steps, delta)
        return math.log(eps / target) if eps > 0 else -math.inf

    found = _search.solve_below(
        log_ratio, -3.0, scale=1.0, tolerance=1e-3, low=math.log(_MIN_RATE), high=0.0
    )
    return _MIN_RATE if found is None else math.exp(found[0])


def plan(
    *,
    group_epsilons: Mapping[str, float],
    group_sizes: Mapping[str, int],
    batch_size: int,
    steps: int,
    delta: float,
    accountant: str = "prv",
    max_grad_norm: float = 1.0,
) -> IndividualPlan:
    """Noise multiplier and per-group sample rates for individualised DP-SGD.

    For a noise multiplier sigma, each group gets the largest rate q_g(sigma) whose epsilon after
    ``steps`` stays within its budget; sigma is searched until sum_g n_g q_g(sigma) matches
    ``batch_size`` (a larger sigma allows larger rates). Boenisch et al. (2023), Algorithm 2.

    Args:
        group_epsilons: each group's epsilon budget, > 0 and finite.
        group_sizes: each group's number of training records, > 0; the same groups.
        batch_size: the expected batch size, at most the number of records.
        steps: the number of DP-SGD steps.
        delta: the delta of every group's guarantee.
        accountant: one of ``privkit.accounting.ACCOUNTANTS``.
        max_grad_norm: the clipping norm the noise is scaled by, > 0.

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
        _validate.in_range(
            0,
            math.inf,
            low_inclusive=False,
            high_inclusive=False,
            **{f"group_epsilons[{g!r}]": group_epsilons[g]},
        )
        _validate.positive_int(**{f"group_sizes[{g!r}]": group_sizes[g]})
    sizes = tuple(int(group_sizes[g]) for g in groups)
    targets = tuple(float(group_epsilons[g]) for g in groups)
    _validate.positive_int(steps=steps)
    _validate.in_range(1, sum(sizes), batch_size=batch_size)
    _validate.in_range(0, 1, low_inclusive=False, high_inclusive=False, delta=delta)
    _validate.one_of(accounting.ACCOUNTANTS, accountant=accountant)
    _validate.in_range(
        0, math.inf, low_inclusive=False, high_inclusive=False, max_grad_norm=max_grad_norm
    )

    rates, sigma = _solve_plan(targets, sizes, batch_size, steps, delta, accountant)
    return IndividualPlan(  # each epsilon is the accountant's for that group's rate (the search's)
        groups=groups,
        sizes=sizes,
        targets=targets,
        mechanisms=tuple(
            Mechanism(sigma, q, steps, max_grad_norm, delta, accountant, eps) for q, eps in rates
        ),
    )


@functools.lru_cache(maxsize=64)  # each evaluation runs the accountant: plan once per setting
def _solve_plan(
    targets: tuple[float, ...],
    sizes: tuple[int, ...],
    batch_size: int,
    steps: int,
    delta: float,
    accountant: str,
) -> tuple[tuple[tuple[float, float], ...], float]:
    """Per-group (rate, epsilon) and the noise multiplier: the search behind :func:`plan`.

    Two nested searches (:func:`privkit._search.solve_below`): over log sigma for the expected
    batch size, and at each sigma over each group's log rate for its epsilon. They start from
    the same plan under RDP at integer orders (a closed form, microseconds) and its slopes
    (d log rate / d log sigma); a group's rate is then guessed by a power law through its last
    two sigmas, so that the accountant is asked about 10 times per group in all.
    """

    def fast(sigma: float, target: float, i: int) -> tuple[float, float]:  # (rate, no epsilon)
        return _rdp_integer_rate(sigma, target, steps=steps, delta=delta), math.nan

    fast_rates = _plan_rates(targets, fast)
    guess = _smallest_sigma(fast_rates, sizes, batch_size, guess=1.0, scale=0.3)
    h = 0.02  # d log sigma for the slopes, as differences
    log_q = [[math.log(q) for q, _ in fast_rates(guess * math.exp(-d))] for d in (0.0, h)]
    slopes = [(a - b) / h for a, b in zip(*log_q)]  # of each group's log rate
    batch = [math.log(sum(n * math.exp(x) for n, x in zip(sizes, row))) for row in log_q]
    batch_slope = max((batch[0] - batch[1]) / h, 0.1)
    seen: list[list[tuple[float, float]]] = [
        [] for _ in targets
    ]  # each group's (log sigma, log rate) so far

    def solve(sigma: float, target: float, i: int) -> tuple[float, float]:
        x, past = math.log(sigma), seen[i][-2:]
        if not past:
            guess = fast(sigma, target, i)[0]
        else:  # log rate linear in log sigma, through the last two or with the fast plan's slope
            slope = (
                (past[1][1] - past[0][1]) / (past[1][0] - past[0][0])
                if len(past) == 2
                else slopes[i]
            )
            guess = math.exp(min(0.0, past[-1][1] + slope * (x - past[-1][0])))
        guess = max(guess * math.exp(-_EPSILON_TOLERANCE / 2), _MIN_RATE)  # aimed just below
        q, eps = _largest_rate(
            sigma, target, steps=steps, delta=delta, accountant=accountant, guess=guess
        )
        seen[i].append((x, math.log(q)))
        return q, eps

    rates = _plan_rates(targets, solve)
    sigma = _smallest_sigma(rates, sizes, batch_size, guess=guess, scale=1 / batch_slope)
    return rates(sigma), sigma


def _plan_rates(
    targets: tuple[float, ...], solve: Callable[[float, float, int], tuple[float, float]]
) -> Callable[[float], tuple]:
    """sigma -> each group's (rate, epsilon) by ``solve(sigma, target, group index)``, cached."""

    @functools.cache
    def rates(sigma: float) -> tuple[tuple[float, float], ...]:
        return tuple(solve(sigma, t, i) for i, t in enumerate(targets))

    return rates


def _smallest_sigma(
    rates: Callable[[float], tuple],
    sizes: tuple[int, ...],
    batch_size: int,
    *,
    guess: float,
    scale: float,
) -> float:
    """The smallest sigma (within 0.1%) whose rates give an expected batch of at least ``batch_size``;
    ``scale``: a guess of d log sigma / d log batch."""

    def log_shortfall(
        x: float,
    ) -> float:  # log(batch_size / expected batch) at sigma = e^-x: increasing in x
        return math.log(batch_size / sum(n * q for n, (q, _) in zip(sizes, rates(math.exp(-x)))))

    found = _search.solve_below(
        log_shortfall,
        -math.log(guess),
        scale=scale,
        tolerance=_BATCH_TOLERANCE,
        low=-math.log(_MAX_NOISE),
    )
    if found is None:
        raise ValueError(f"No noise multiplier up to {_MAX_NOISE} reaches batch_size={batch_size}.")
    return math.exp(-found[0])


def assign_groups(n: int, fractions: Mapping[str, float], *, seed: int = 0) -> np.ndarray:
    """A seeded random assignment of ``n`` records to groups in the given proportions.

    For simulations: in practice each patient (or hospital) states their own preference.

    >>> g = assign_groups(10, {"strict": 0.3, "relaxed": 0.7})
    >>> sorted(g.tolist()).count("strict")
    3
    """
    _validate.positive_int(n=n)
    total = sum(fractions.values())
    if (
        not fractions
        or any(f <= 0 for f in fractions.values())
        or not math.isclose(total, 1.0, abs_tol=1e-6)
    ):
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
        raise ValueError(
            f"Expected groups of shape ({n},), one per training record, got {labels.shape}."
        )
    names, counts = np.unique(labels, return_counts=True)
    missing = sorted(set(names.tolist()) - set(group_epsilons))
    if missing:
        raise ValueError(
            f"Groups {missing} have no epsilon in group_epsilons={dict(group_epsilons)}."
        )
    bad = [g for g in names if not re.fullmatch(r"[A-Za-z0-9_.-]+", g)]
    if bad:
        raise ValueError(f"Expected group names of letters, digits, '_', '.', '-', got {bad}.")
    config.check_against(n)
    check_delta(delta=config.delta, n=n, who="training examples")
    p = plan(
        group_epsilons={g: group_epsilons[g] for g in names.tolist()},
        group_sizes=dict(zip(names.tolist(), counts.tolist())),
        batch_size=config.batch_size,
        steps=steps_of(n=n, batch_size=config.batch_size, epochs=config.epochs),
        delta=config.delta,
        accountant=config.accountant,
        max_grad_norm=config.max_grad_norm,
    )
    run = dataclasses.replace(config, epsilon=None, noise_multiplier=p.noise_multiplier)
    if ledger is not None:
        run_id = f"{config.model}-individual-seed{config.seed}-{uuid.uuid4().hex[:8]}"
        tag = randomness.ledger_tag(randomness=run.randomness, identity=stream_identity(run))
        for g in p.groups:
            ledger.charge(
                [budget.Scope(config.dataset, group=g)],
                p.mechanism(g),
                run_id=run_id,
                actor=budget.default_actor(),
                randomness=tag,
                allow_seeded=allow_seeded,
            )
    rate_of = dict(zip(p.groups, p.sample_rates))
    rates = torch.tensor([rate_of[g] for g in labels], dtype=torch.float64)[None]  # (1, n)
    [result] = train_many([run], dataset=dataset, sample_rates=rates, progress=progress)
    return IndividualResult(result=result, plan=p)
