"""Privacy accounting for DP-SGD, i.e. the Poisson-subsampled Gaussian mechanism.

Each DP-SGD step keeps every example with probability ``sample_rate`` and adds Gaussian
noise of standard deviation ``noise_multiplier * max_grad_norm`` to the summed clipped
gradients. :func:`epsilon` turns ``(noise_multiplier, sample_rate, steps, delta)`` into
epsilon; :func:`calibrate_noise` goes the other way. Both are pure: every evaluation builds
its accountant afresh from plain values; nothing is cached or mutated.

Accountants, all from Opacus:

* ``"prv"`` (default): numerical composition of privacy loss random variables (Gopi, Lee &
  Wutschitz 2021, https://arxiv.org/abs/2106.02848). Reports the upper end of its error
  band, estimate + 0.01, so it never reports less than about 0.01.
* ``"rdp"``: Rényi DP of the sampled Gaussian (Mironov 2017, https://arxiv.org/abs/1702.07476;
  Mironov, Talwar & Zhang 2019, https://arxiv.org/abs/1908.10530), Opacus's default orders
  (1.1 to 63) and the conversion of Balle et al. 2020. A valid but looser bound; the order
  cap of 63 keeps it above about 0.1 at ``delta=1e-5``.
* ``"gdp"``: Gaussian DP via the central limit theorem (Dong, Roth & Su 2019,
  https://arxiv.org/abs/1905.02383). An asymptotic approximation, not a bound: it can
  under-report epsilon for few steps or large sample rates, and warns whenever used.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import gdp as _gdp
from opacus.accountants.analysis import rdp as _rdp

from privkit._validate import in_range, one_of, positive, positive_int

ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp", "gdp")
UPPER_BOUNDS: tuple[str, ...] = ("prv", "rdp")  # what a result reports and a ledger charges as spent
MAX_NOISE_MULTIPLIER: float = 1e4  # calibrate_noise gives up above this sigma

_PRV_MAX_GRID = 2e7  # PRV grid points; each million costs ~1 s and 8 MB per array
_GDP_MAX_EPSILON = 500.0  # the bracket Opacus's eps_from_mu searches in
_GDP_WARNING = (
    "accountant='gdp' is a central-limit approximation (Dong, Roth & Su 2019) and can "
    "under-report epsilon for few steps or large sample rates; report 'prv' or 'rdp'."
)


def _rdp_epsilon(
    sigma: float, q: float, steps: int, delta: float, orders: list[float] | None = None
) -> float:
    orders = RDPAccountant.DEFAULT_ALPHAS if orders is None else orders
    rdp = _rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    return float(_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


def _prv_composed(history: list[tuple[float, float, int]], delta: float) -> float:
    """PRV epsilon (its error band's upper end) of (sigma, q, steps) entries composed."""
    eps_error, delta_error = 0.01, delta / 1000  # Opacus's defaults, spelled out
    orders = RDPAccountant.DEFAULT_ALPHAS
    total = sum(n for _, _, n in history)
    # Quiet: RDP "optimal order" warnings from the domain sizing, log(1 - q) for q = 1.
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.filterwarnings("ignore", "Optimal order", UserWarning)
        # PRVAccountant's grid spans +-(RDP epsilon + 3) at this mesh; over-estimate it
        # cheaply with integer orders, as weak privacy would exhaust memory (sigma=0.01,
        # q=0.01, 100 steps: Opacus asks for 3.5e9 points).
        ints = [a for a in orders if a == int(a)]
        rdp = sum(_rdp.compute_rdp(q=q, noise_multiplier=s, steps=n, orders=ints) for s, q, n in history)
        half_width = 3 + max(
            _rdp.get_privacy_spent(orders=ints, rdp=rdp, delta=delta_error / 4)[0],
            *(_rdp_epsilon(s, q, 1, delta_error / (8 * total), ints) for s, q, _ in history),
        )
        grid = 2 * half_width * math.sqrt(total * math.log(12 / delta_error) / 2) / eps_error
        problem = f"{grid:.3g} grid points needed" if grid > _PRV_MAX_GRID else ""
        if not problem:
            prv = PRVAccountant()
            prv.history = history
            try:
                return float(prv.get_epsilon(delta, eps_error=eps_error))
            except RuntimeError as error:
                problem = str(error)
    raise RuntimeError(
        f"Opacus's PRV accountant cannot compose mechanisms={history!r} at delta={delta!r} "
        f"({problem}); such weak privacy (epsilon in the hundreds) needs accountant='rdp'."
    )


def _prv_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    return _prv_composed([(sigma, q, steps)], delta)


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
    As in dp_accounting, sigma is bracketed by doubling (or halving) from 1, then bisected
    (geometrically), with a fresh accountant for every evaluation: ~10 evaluations.

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

    def eps(sigma: float) -> float:
        with warnings.catch_warnings():  # Opacus's "optimal order is the largest alpha"
            warnings.filterwarnings("ignore", "Optimal order", UserWarning)  # at probes
            try:
                return _EPSILON[accountant](sigma, sample_rate, steps, target_delta)
            except RuntimeError:  # "prv" fails only for epsilon in the hundreds
                return math.inf

    # Invariant: eps(lo) > target_epsilon >= eps(hi) == e_hi (sigma = 0 has eps = inf).
    lo, hi, e_hi = 0.0, 1.0, eps(1.0)
    while e_hi > target_epsilon:  # too little noise: double
        if hi >= MAX_NOISE_MULTIPLIER:
            raise ValueError(
                f"No noise_multiplier <= {MAX_NOISE_MULTIPLIER:g} reaches target_epsilon="
                f"{target_epsilon!r} with accountant={accountant!r} (epsilon there is "
                f"{e_hi:.4g}); this accountant cannot certify so small an epsilon."
            )
        lo, hi = hi, min(2 * hi, MAX_NOISE_MULTIPLIER)
        e_hi = eps(hi)
    while e_hi < (1 - tolerance) * target_epsilon:  # halve while lo == 0, then bisect
        mid = hi / 2 if lo == 0.0 else math.sqrt(lo * hi)
        if not lo < mid < hi:  # bracket exhausted in floating point; hi is still safe
            break
        e_mid = eps(mid)
        if e_mid > target_epsilon:
            lo = mid
        else:
            hi, e_hi = mid, e_mid
    return hi


def compose(
    mechanisms: Sequence[tuple[float, float, int]], *, delta: float, accountant: str = "prv"
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
            :func:`epsilon`.
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
    orders = RDPAccountant.DEFAULT_ALPHAS
    if accountant == "rdp":
        rdp = sum(_rdp.compute_rdp(q=q, noise_multiplier=s, steps=n, orders=orders) for s, q, n in history)
        return float(_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])
    return _prv_composed(history, delta)
