"""Privacy accounting for DP-SGD, i.e. the Poisson-subsampled Gaussian mechanism.

Each DP-SGD step keeps every example with probability ``sample_rate`` and adds Gaussian
noise of standard deviation ``noise_multiplier * max_grad_norm`` to the summed clipped
gradients. :func:`epsilon` turns ``(noise_multiplier, sample_rate, steps, delta)`` into
epsilon, :func:`epsilon_curve` does so at many step counts at once (epsilon over training);
:func:`calibrate_noise` goes the other way. All are pure functions of plain values: nothing
is mutated, and results are cached (``functools.lru_cache``), so asking again is free.

Accountants:

* ``"prv"`` (default): numerical composition of privacy loss random variables (Gopi, Lee &
  Wutschitz 2021, https://arxiv.org/abs/2106.02848), with Opacus's PRV, discretisation and
  read-out on a finer or equal grid (:mod:`privkit._prv`) shared by step counts up to the
  same power of two. Reports the upper end of its error band, estimate + 0.01, plus 5e-4 (see
  ``_PRV_MARGIN``), so it never reports less than about 0.01.
* ``"rdp"``: Rényi DP of the sampled Gaussian (Mironov 2017, https://arxiv.org/abs/1702.07476;
  Mironov, Talwar & Zhang 2019, https://arxiv.org/abs/1908.10530), Opacus's default orders
  (1.1 to 63) and the conversion of Balle et al. 2020. A valid but looser bound; the order
  cap of 63 keeps it above about 0.1 at ``delta=1e-5``.
* ``"gdp"``: Gaussian DP via the central limit theorem (Dong, Roth & Su 2019,
  https://arxiv.org/abs/1905.02383). An asymptotic approximation, not a bound: it can
  under-report epsilon for few steps or large sample rates, and warns whenever used.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import gdp as _gdp
from opacus.accountants.analysis import rdp as _rdp

from privkit import _prv, _search
from privkit._validate import in_range, one_of, positive, positive_int

if TYPE_CHECKING:
    from privkit.mechanism import Mechanism

ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp", "gdp")
UPPER_BOUNDS: tuple[str, ...] = (
    "prv",
    "rdp",
)  # what a result reports and a ledger charges as spent
MAX_NOISE_MULTIPLIER: float = 1e4  # calibrate_noise gives up above this sigma

_ORDERS = RDPAccountant.DEFAULT_ALPHAS  # Opacus's RDP orders, 1.1 to 63
_EPS_ERROR = 0.01  # the PRV error band in epsilon, Opacus's default (delta's is delta / 1000)
# Added to the PRV's upper end. Opacus's grid for exactly ``steps`` and ours (finer, wider)
# give estimates that differ by discretisation noise, either way: by at most 1.3e-4 where
# epsilon > 0.05 and 2.5e-4 below, over the 196 settings of tests/data/accounting_reference.json
# and 550 random ones (sigma 0.5 to 30, q 1e-4 to 1, 1 to 5000 steps, delta 1e-8 to 1e-3). The
# margin keeps every epsilon at or above what one Opacus PRVAccountant reports for it.
_PRV_MARGIN = 5e-4
_GDP_MAX_EPSILON = 500.0  # the bracket Opacus's eps_from_mu searches in
_GDP_WARNING = (
    "accountant='gdp' is a central-limit approximation (Dong, Roth & Su 2019) and can "
    "under-report epsilon for few steps or large sample rates; report 'prv' or 'rdp'."
)


@functools.lru_cache(maxsize=4096)
def _rdp_one_step(sigma: float, q: float) -> np.ndarray:
    """Opacus's RDP of one step at its default orders: ``compute_rdp`` is this times ``steps``."""
    rdp = np.asarray(_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=_ORDERS))
    rdp.flags.writeable = False
    return rdp


def _rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    rdp = _rdp_one_step(sigma, q) * steps  # as Opacus's compute_rdp(..., steps=steps)
    return float(_rdp.get_privacy_spent(orders=_ORDERS, rdp=rdp, delta=delta)[0])


def _prv_composed(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """PRV epsilon (its error band's upper end) of (sigma, q, steps) entries composed."""
    try:
        with np.errstate(divide="ignore"):  # Opacus's read-out takes log(0) far out
            return _prv.epsilon(history, delta, _EPS_ERROR) + _PRV_MARGIN
    except RuntimeError as error:
        problem = str(error)
    raise RuntimeError(
        f"The PRV accountant cannot compose mechanisms={list(history)!r} at delta={delta!r} "
        f"({problem}); such weak privacy (epsilon in the hundreds) needs accountant='rdp'."
    )


@functools.lru_cache(maxsize=4096)
def _prv_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    return _prv_composed(((sigma, q, steps),), delta)


def _gdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    with np.errstate(over="ignore"):  # exp(sigma**-2) overflows for tiny sigma: mu = inf
        mu = float(_gdp.compute_mu_poisson(steps=steps, noise_multiplier=sigma, sample_rate=q))
    if mu == 0.0 or _gdp.delta_eps_mu(eps=0.0, mu=mu) <= delta:  # outside eps_from_mu's
        return 0.0  # bracket [0, 500] on either side
    if not math.isfinite(mu) or _gdp.delta_eps_mu(eps=_GDP_MAX_EPSILON, mu=mu) > delta:
        return math.inf
    return float(_gdp.eps_from_mu(mu=mu, delta=delta))


_EPSILON: dict[str, Callable[[float, float, int, float], float]] = {
    "prv": _prv_epsilon,
    "rdp": _rdp_epsilon,
    "gdp": _gdp_epsilon,
}


def epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "prv",
) -> float:
    """Epsilon spent by ``steps`` steps of the Poisson-subsampled Gaussian mechanism.

    Args:
        noise_multiplier: Noise standard deviation over the clipping norm (sigma), >= 0.
        sample_rate: Probability that an example is in a batch, in (0, 1].
        steps: Number of noisy steps, an integer >= 0.
        delta: Target delta, in (0, 1).
        accountant: One of :data:`ACCOUNTANTS`; ``"gdp"`` may under-report and warns.

    Returns:
        Epsilon; ``math.inf`` if ``noise_multiplier == 0``, ``0.0`` if ``steps == 0``.

    Raises:
        ValueError: If an argument is out of range (the message names it).
        RuntimeError: If ``"prv"`` cannot handle the setting (epsilon in the hundreds).

    >>> round(epsilon(noise_multiplier=1.0, sample_rate=256 / 4708, steps=370, delta=1e-5), 2)
    7.07
    """
    in_range(0, math.inf, high_inclusive=False, noise_multiplier=noise_multiplier)
    in_range(0, 1, low_inclusive=False, sample_rate=sample_rate)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"Expected steps={steps!r} to be an integer >= 0.")
    in_range(0, 1, low_inclusive=False, high_inclusive=False, delta=delta)
    one_of(ACCOUNTANTS, accountant=accountant)
    if accountant == "gdp":
        warnings.warn(_GDP_WARNING, UserWarning, stacklevel=2)
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    return _EPSILON[accountant](noise_multiplier, sample_rate, steps, delta)


def epsilon_curve(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: Sequence[int],
    delta: float,
    accountant: str = "prv",
) -> np.ndarray:
    """Epsilon after each of several step counts of one mechanism: epsilon over training.

    Equal to :func:`epsilon` at each step count, and at the cost of a few: ``"prv"`` shares
    one discretised privacy loss distribution among all step counts up to the same power of
    two and composes it by one inverse FFT per point (:mod:`privkit._prv`); ``"rdp"`` scales
    one step's Rényi curve. About 0.3 s for 30 epochs at q = 0.054 on a laptop CPU, where
    30 separate Opacus accountants took 10 s.

    Args:
        noise_multiplier: Noise standard deviation over the clipping norm (sigma), >= 0.
        sample_rate: Probability that an example is in a batch, in (0, 1].
        steps: Step counts, integers >= 0, in any order (repeats allowed).
        delta: Target delta, in (0, 1).
        accountant: One of :data:`ACCOUNTANTS`; ``"gdp"`` may under-report and warns.

    Returns:
        Epsilons, shape ``(len(steps),)``, in the order of ``steps``.

    Raises:
        ValueError: If an argument is out of range (the message names it).
        RuntimeError: If ``"prv"`` cannot handle a step count (epsilon in the hundreds).

    >>> curve = epsilon_curve(noise_multiplier=1.0, sample_rate=256 / 4708,
    ...                       steps=[18 * e for e in (1, 10, 20)], delta=1e-5)
    >>> curve.round(2).tolist()
    [2.08, 4.96, 6.97]
    """
    in_range(0, math.inf, high_inclusive=False, noise_multiplier=noise_multiplier)
    in_range(0, 1, low_inclusive=False, sample_rate=sample_rate)
    steps = list(steps)
    for i, n in enumerate(steps):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"Expected steps[{i}]={n!r} to be an integer >= 0.")
    in_range(0, 1, low_inclusive=False, high_inclusive=False, delta=delta)
    one_of(ACCOUNTANTS, accountant=accountant)
    if accountant == "gdp":
        warnings.warn(_GDP_WARNING, UserWarning, stacklevel=2)
    values = {}
    for n in sorted({int(n) for n in steps}):  # grouped by bucket: each grid is built once
        if n == 0 or noise_multiplier == 0:
            values[n] = 0.0 if n == 0 else math.inf
        else:
            values[n] = _EPSILON[accountant](noise_multiplier, sample_rate, n, delta)
    return np.array([values[int(n)] for n in steps], dtype=float)


def calibrate_noise(
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    tolerance: float = 0.01,
) -> float:
    """Noise multiplier that spends at most, and nearly all of, ``target_epsilon``.

    The sigma returned is one at which epsilon was evaluated, so ``epsilon(sigma) <=
    target_epsilon`` always holds, and ``epsilon(sigma) >= (1 - tolerance) * target_epsilon``.
    The search starts where RDP at integer orders (a closed form, microseconds) reaches the
    target, brackets sigma from there and closes in by regula falsi on log sigma
    (:func:`privkit._search.solve_below`): 3 to 6 evaluations of the accountant, where
    bisection from 1 (as in dp_accounting) needs about 10.

    Args:
        target_epsilon: Privacy budget, > 0; ``math.inf`` gives ``0.0`` (no noise).
        target_delta: Target delta, in (0, 1).
        sample_rate: Probability that an example is in a batch, in (0, 1].
        steps: Number of noisy steps, an integer >= 1.
        accountant: One of :data:`ACCOUNTANTS` (see :func:`epsilon`).
        tolerance: Relative slack allowed below the target, in (0, 1).

    Returns:
        The noise multiplier sigma.

    Raises:
        ValueError: If an argument is out of range, or if not even
            ``MAX_NOISE_MULTIPLIER`` brings epsilon down to ``target_epsilon``.

    >>> sigma = calibrate_noise(target_epsilon=1.0, target_delta=1e-5,
    ...                         sample_rate=256 / 4708, steps=370)
    >>> round(sigma, 2)
    4.09
    """
    positive(target_epsilon=target_epsilon)
    in_range(0, 1, low_inclusive=False, high_inclusive=False, target_delta=target_delta)
    in_range(0, 1, low_inclusive=False, sample_rate=sample_rate)
    positive_int(steps=steps)
    one_of(ACCOUNTANTS, accountant=accountant)
    in_range(0, 1, low_inclusive=False, high_inclusive=False, tolerance=tolerance)
    if accountant == "gdp":
        warnings.warn(_GDP_WARNING, UserWarning, stacklevel=2)
    if math.isinf(target_epsilon):
        return 0.0

    def log_ratio(x: float) -> float:  # log(epsilon / target) at sigma = e^-x: increasing in x
        with warnings.catch_warnings():  # Opacus's "optimal order is the largest alpha"
            warnings.filterwarnings("ignore", "Optimal order", UserWarning)  # at probes
            try:
                eps = _EPSILON[accountant](math.exp(-x), sample_rate, steps, target_delta)
            except RuntimeError:  # "prv" fails only for epsilon in the hundreds
                return math.inf
        return math.log(eps / target_epsilon) if eps > 0 else -math.inf

    low = -math.log(MAX_NOISE_MULTIPLIER)
    x0 = -math.log(_rdp_integer_sigma(target_epsilon, target_delta, sample_rate, steps))
    # A tenth of the slack allowed: a regula falsi step or two more for 1% less noise on average.
    found = _search.solve_below(
        log_ratio, x0, scale=1.0, tolerance=-math.log1p(-tolerance) / 10, low=low
    )
    if found is None:
        raise ValueError(
            f"No noise_multiplier <= {MAX_NOISE_MULTIPLIER:g} reaches target_epsilon="
            f"{target_epsilon!r} with accountant={accountant!r} (epsilon there is "
            f"{target_epsilon * math.exp(log_ratio(low)):.4g}); this accountant cannot certify so small "
            "an epsilon."
        )
    return math.exp(-found[0])


def _rdp_integer_sigma(target_epsilon: float, delta: float, q: float, steps: int) -> float:
    """Where RDP at integer orders (:func:`privkit._prv.rdp_one_step`) spends the target: a
    starting point for searches with any accountant, found in microseconds."""

    def log_ratio(x: float) -> float:
        eps = _prv.rdp_epsilon(_prv.rdp_one_step(math.exp(-x), q) * steps, delta)
        return math.log(eps / target_epsilon) if eps > 0 else -math.inf

    low = -math.log(
        MAX_NOISE_MULTIPLIER
    )  # sigma <= MAX_NOISE_MULTIPLIER, and >= e^-30 (finite RDP)
    found = _search.solve_below(log_ratio, 0.0, scale=1.0, tolerance=1e-3, low=low, high=30.0)
    return MAX_NOISE_MULTIPLIER if found is None else math.exp(-found[0])


def compose(
    mechanisms: Sequence[tuple[float, float, int] | Mechanism],
    *,
    delta: float,
    accountant: str = "prv",
) -> float:
    """Epsilon of several Poisson-subsampled Gaussian mechanisms run one after another.

    Sequential composition with a fresh accountant, tighter than adding the runs' epsilons
    (which stays a valid bound: basic composition, at the sum of their deltas). ``"prv"``
    convolves the privacy loss distributions of all runs; as composition does not depend on
    the order, runs with equal ``(noise_multiplier, sample_rate)`` are merged into one entry
    with their steps added, as Opacus's accountant does step by step. ``"rdp"`` adds the
    runs' Rényi curves and converts once. ``"gdp"`` is not offered: it is an approximation.

    Args:
        mechanisms: ``(noise_multiplier, sample_rate, steps)`` of each run, checked as in
            :func:`epsilon`, or the run's :class:`privkit.mechanism.Mechanism` (its ``event``).
        delta: Target delta of the composition, in (0, 1).
        accountant: ``"prv"`` or ``"rdp"``.

    Returns:
        Epsilon; ``0.0`` without steps, ``math.inf`` if a run with steps had no noise.

    Raises:
        ValueError: If an argument is out of range (the message names it).
        RuntimeError: If ``"prv"`` cannot handle the setting (epsilon in the hundreds).

    >>> run = (1.0, 256 / 4708, 370)
    >>> round(compose([run, run], delta=1e-5), 2)
    10.24
    >>> round(epsilon(noise_multiplier=1.0, sample_rate=256 / 4708, steps=740, delta=1e-5), 2)
    10.24
    """
    one_of(("prv", "rdp"), accountant=accountant)
    in_range(0, 1, low_inclusive=False, high_inclusive=False, delta=delta)
    merged: dict[tuple[float, float], int] = {}
    for i, mechanism in enumerate(mechanisms):
        mechanism = getattr(mechanism, "event", mechanism)  # a privkit.mechanism.Mechanism
        if not isinstance(mechanism, (tuple, list)) or len(mechanism) != 3:
            raise ValueError(
                f"Expected mechanisms[{i}]={mechanism!r} to be (noise_multiplier, sample_rate, steps)."
            )
        sigma, q, steps = mechanism
        in_range(0, math.inf, high_inclusive=False, **{f"mechanisms[{i}].noise_multiplier": sigma})
        in_range(0, 1, low_inclusive=False, **{f"mechanisms[{i}].sample_rate": q})
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"Expected mechanisms[{i}].steps={steps!r} to be an integer >= 0.")
        if steps > 0:
            merged[(float(sigma), float(q))] = merged.get((float(sigma), float(q)), 0) + steps
    if not merged:
        return 0.0
    if any(sigma == 0 for sigma, _ in merged):
        return math.inf
    history = [(sigma, q, steps) for (sigma, q), steps in sorted(merged.items())]
    if len(history) == 1:
        return _EPSILON[accountant](*history[0], delta)
    if accountant == "rdp":
        rdp = sum(_rdp_one_step(s, q) * n for s, q, n in history)  # as Opacus's compute_rdp
        return float(_rdp.get_privacy_spent(orders=_ORDERS, rdp=rdp, delta=delta)[0])
    return _prv_composed(tuple(history), delta)


def upper_bound(
    mechanisms: Sequence[tuple[float, float, int] | Mechanism],
    *,
    delta: float,
    accountant: str = "prv",
) -> tuple[float, str]:
    """The tightest epsilon that can be certified for ``mechanisms`` composed, and the
    accountant that certified it: ``accountant``'s, or RDP's where the PRV cannot handle so
    weak a guarantee (epsilon in the hundreds, :func:`compose` raises). The one place where
    privkit falls back from one accountant to another; both are upper bounds.

    Args:
        mechanisms: ``(noise_multiplier, sample_rate, steps)`` of each run, or its
            :class:`privkit.mechanism.Mechanism`, as in :func:`compose`.
        delta: Target delta, in (0, 1).
        accountant: ``"prv"`` or ``"rdp"``.

    >>> upper_bound([(0.01, 0.01, 1000)], delta=1e-5)[1]
    'rdp'
    >>> upper_bound([(1.0, 0.05, 50)], delta=1e-5) == (compose([(1.0, 0.05, 50)], delta=1e-5), "prv")
    True
    """
    one_of(UPPER_BOUNDS, accountant=accountant)
    if accountant == "prv":
        try:
            return compose(mechanisms, delta=delta, accountant="prv"), "prv"
        except RuntimeError:  # "prv" fails only for epsilon in the hundreds
            pass
    with warnings.catch_warnings():  # Opacus's "optimal order is the smallest alpha" far out
        warnings.filterwarnings("ignore", "Optimal order", UserWarning)
        return compose(mechanisms, delta=delta, accountant="rdp"), "rdp"


def cache_clear() -> None:
    """Forget every cached accounting result (for cold timings); being pure, none can go stale.

    >>> cache_clear()
    """
    for cached in (_prv_epsilon, _rdp_one_step, _prv.rdp_one_step, _prv.transform):
        cached.cache_clear()
