"""What a DP guarantee means for attacks on patients: membership inference and reconstruction.

Membership inference is a hypothesis test (Wasserman & Zhou 2010; Kairouz, Oh & Viswanath
2015, https://arxiv.org/abs/1311.0776; Dong, Roth & Su 2019, https://arxiv.org/abs/1905.02383):
H0 "the patient was not in the training data" against H1 "they were". The false-positive rate
(FPR) is the share of non-members accused, the true-positive rate (TPR) the share of members
found; random guessing gets TPR = FPR. DP caps the TPR of every attack at each FPR:
:func:`tpr_bound` from one (epsilon, delta), :func:`tpr_bound_mechanism` (tighter) from the
DP-SGD mechanism's whole privacy profile :func:`delta_bound`, for adding or removing the patient
or for replacing them by another; :func:`tpr_against_bound` sets a measured attack against it,
with its statistical error. :func:`gaussian_tpr` is the exact curve of mu-Gaussian DP;
:func:`mu_from_mechanism` an approximation, for illustration only.
:func:`reconstruction_bound` caps reconstructing an image; :func:`summary` says it in words.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.signal import lfilter
from scipy.special import log_ndtr, ndtr, ndtri

from privkit import _prv
from privkit._validate import in_range, one_of, positive_int
from privkit.attacks.scores import tpr_at_fpr_interval

_EPS_ERROR = 0.005  # PRV error band in epsilon (half Opacus's default)
_DELTA_ERROR = 1e-9  # PRV error band in delta: far below any FPR a report quotes

# What the two training sets being told apart differ by: one patient added (or removed), the
# relation the accountant's epsilon is for; or one patient replaced by another, as between two
# training sets of equal size (the shadow models of privkit.attacks.membership).
NEIGHBOURS = ("add_remove", "substitution")


def _fpr(fpr: float | np.ndarray) -> np.ndarray:
    try:
        a = np.asarray(fpr, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"Expected fpr={fpr!r} to be a number or array in [0, 1].") from None
    bad = ~((a >= 0) & (a <= 1))  # NaN is bad too
    if bad.any():
        in_range(0, 1, fpr=float(a[bad].flat[0]))  # raises naming the first bad value
    return a


def _out(values: np.ndarray, like: float | np.ndarray) -> float | np.ndarray:
    return float(values) if np.ndim(like) == 0 else values


def _mechanism(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    in_range(
        0, math.inf, low_inclusive=False, high_inclusive=False, noise_multiplier=noise_multiplier
    )
    in_range(0, 1, low_inclusive=False, sample_rate=sample_rate)
    positive_int(steps=steps)


def tpr_bound(fpr: float | np.ndarray, *, epsilon: float, delta: float) -> float | np.ndarray:
    """Highest TPR any membership-inference attack reaches at ``fpr`` under (epsilon, delta)-DP.

    The (epsilon, delta)-DP region (Kairouz, Oh & Viswanath 2015, Thm 2.1; the trade-off
    function f_{eps,delta} of Dong, Roth & Su 2019), tight for some mechanism:
    ``TPR <= min(1, e^eps fpr + delta, 1 - e^-eps (1 - delta - fpr))``.

    Args:
        fpr: False-positive rate(s) in [0, 1], a float or an array of any shape.
        epsilon: Epsilon >= 0; 0 (with ``delta=0``) is the no-leak reference TPR = FPR.
        delta: Delta in [0, 1).

    Returns:
        The TPR bound, shaped like ``fpr`` (a float for a float).

    Raises:
        ValueError: If an argument is out of range (the message names it).

    >>> round(tpr_bound(0.001, epsilon=1.0, delta=1e-5), 5)
    0.00273
    >>> tpr_bound(np.array([0.0, 0.3, 1.0]), epsilon=0.0, delta=0.0)
    array([0. , 0.3, 1. ])
    """
    alpha = _fpr(fpr)
    in_range(0, math.inf, high_inclusive=False, epsilon=epsilon)
    in_range(0, 1, high_inclusive=False, delta=delta)
    with np.errstate(over="ignore", invalid="ignore"):  # e^eps = inf for eps > 709
        rise = np.where(alpha > 0, np.exp(epsilon) * alpha, 0.0) + delta
    # 1 - e^-eps (1 - delta - fpr), written so that it is exactly fpr at eps = delta = 0
    level = -math.expm1(-epsilon) + math.exp(-epsilon) * (delta + alpha)
    return _out(np.minimum(1.0, np.minimum(rise, level)), fpr)


def gaussian_tpr(fpr: float | np.ndarray, *, mu: float) -> float | np.ndarray:
    """TPR of the optimal test at ``fpr`` for mu-Gaussian DP: ``Phi(Phi^-1(fpr) + mu)``.

    The trade-off curve G_mu of Dong, Roth & Su 2019 is that of telling N(0, 1)
    from N(mu, 1); one Gaussian mechanism with noise multiplier sigma is exactly 1/sigma-GDP.

    Args:
        fpr: False-positive rate(s) in [0, 1].
        mu: The GDP parameter, >= 0 (0: TPR = FPR).

    Returns:
        The TPR, shaped like ``fpr``.

    >>> round(gaussian_tpr(0.001, mu=1.0), 4)
    0.0183
    """
    alpha = _fpr(fpr)
    in_range(0, math.inf, high_inclusive=False, mu=mu)
    return _out(ndtr(ndtri(alpha) + mu) if mu > 0 else alpha, fpr)


def mu_from_mechanism(*, noise_multiplier: float, sample_rate: float, steps: int) -> float:
    """Central-limit mu of DP-SGD, ``q sqrt(T (e^(1/sigma^2) - 1))``: an APPROXIMATION.

    Dong, Roth & Su 2019 (central limit theorem) and Bu, Dong, Long & Su 2020
    (https://arxiv.org/abs/1911.11607) show the composed mechanism tends to mu-GDP as steps
    grow with ``q sqrt(T)`` fixed. It is not a bound and can under-state the risk (few steps,
    large q): use it for illustration; use :func:`tpr_bound_mechanism` to report.

    >>> round(mu_from_mechanism(noise_multiplier=1.0, sample_rate=256 / 4708, steps=540), 3)
    1.656
    """
    _mechanism(noise_multiplier, sample_rate, steps)
    try:
        return sample_rate * math.sqrt(steps * math.expm1(noise_multiplier**-2))
    except OverflowError:  # tiny sigma
        return math.inf


def _prv_sums(sigma: float, q: float, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The composed discrete PRV of (sigma, q, steps) on a grid at least as fine and wide as
    Opacus's PRVAccountant's for these errors (:mod:`privkit._prv`, shared with the accountant).

    Returns the grid ``t`` (N,), ``d1[j] = P(Y >= t_j)`` and ``d2[j] = E[e^(t_j - Y);
    Y >= t_j]`` (N,), so that Opacus's ``compute_delta_estimate(t_j) = d1[j] - d2[j]``.
    """
    history = ((sigma, q, steps),)
    try:
        grid = _prv.grid(history, eps_error=_EPS_ERROR, delta_error=_DELTA_ERROR)
    except RuntimeError as error:
        raise RuntimeError(
            f"The PRV needs {error} for noise_multiplier={sigma!r}, sample_rate={q!r}, steps={steps!r} "
            "(epsilon in the hundreds); use tpr_bound with accounting.epsilon(accountant='rdp')."
        ) from None
    dprv = _prv.composed(history, grid)
    t, p = dprv.domain.ts, np.maximum(dprv.pmf, 0.0)  # (N,); drop FFT round-off below 0
    d1 = np.cumsum(p[::-1])[::-1]
    # d2[j] = p[j] + e^-dt d2[j+1], a stable recursion that never forms e^t (t may be > 709)
    d2 = lfilter([1.0], [1.0, -math.exp(-grid.dt)], p[::-1])[::-1]
    return t, d1, d2


def delta_bound(
    epsilon: float | np.ndarray, *, noise_multiplier: float, sample_rate: float, steps: int
) -> float | np.ndarray:
    """Upper bound on DP-SGD's privacy profile delta(epsilon), for any real epsilon.

    delta(eps) = sup_S P1(S) - e^eps P0(S), P1 the output with the patient and P0 without:
    the Poisson-subsampled Gaussian composed ``steps`` times (the dominating pair Opacus's PRV
    describes). ``sample_rate == 1`` is exact: the mu-GDP profile, mu = sqrt(steps)/sigma
    (Dong, Roth & Su 2019, Cor. 2.13; Balle & Wang 2018). Otherwise Opacus's PRV estimate
    (``DiscretePRV.compute_delta_estimate``, which may fall below the truth) becomes a bound
    by the error theorem of Gopi, Lee & Wutschitz 2021 (https://arxiv.org/abs/2106.02848),
    on a grid at least as fine and wide as Opacus's PRVAccountant picks for these errors:
    ``delta(eps) <= estimate(eps - 0.005) + 1e-9`` for every real eps. This is the guarantee
    behind ``privkit.accounting.epsilon(accountant="prv")``, which reports ``eps_upper``, and
    it inherits Opacus's domain size (a FIXME in ``compute_safe_domain_size``: fine for
    eps_error < 1).

    >>> round(delta_bound(2.0, noise_multiplier=1.0, sample_rate=256 / 4708, steps=540), 3)
    0.174
    """
    _mechanism(noise_multiplier, sample_rate, steps)
    eps = np.asarray(epsilon, dtype=float)
    if not np.isfinite(eps).all():
        raise ValueError(f"Expected epsilon={epsilon!r} to be finite.")
    if sample_rate == 1:
        mu = math.sqrt(steps) / noise_multiplier
        with np.errstate(over="ignore"):
            d = ndtr(-eps / mu + mu / 2) - np.exp(eps + log_ndtr(-eps / mu - mu / 2))
        return _out(np.clip(d, 0.0, 1.0), epsilon)
    t, d1, d2 = _prv_sums(noise_multiplier, sample_rate, steps)
    x = eps - _EPS_ERROR
    j = np.searchsorted(t, x, side="left")  # first grid point >= x: as compute_delta_estimate
    k = np.minimum(j, len(t) - 1)
    with np.errstate(over="ignore", invalid="ignore"):
        est = np.where(j < len(t), d1[k] - np.exp(x - t[k]) * d2[k], 0.0)
    return _out(np.clip(est + _DELTA_ERROR, 0.0, 1.0), epsilon)


def tpr_bound_mechanism(
    fpr: float | np.ndarray,
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    neighbours: str = "add_remove",
) -> float | np.ndarray:
    """Highest TPR of any membership-inference attack on DP-SGD, from its whole profile.

    ``neighbours="add_remove"``: the patient is in the training set or not, all else equal.
    Each (eps, delta(eps)) caps the TPR by ``e^eps fpr + delta(eps)``; the infimum over all
    real eps is the exact trade-off curve of the pair (convex duality, as in Dong, Roth & Su
    2019, Prop. 2.12). Taken over the PRV grid with :func:`delta_bound`'s upper bounds, each
    line stays valid; the result is above the exact curve by about a factor e^0.005.
    ``sample_rate == 1`` is exactly mu-GDP, mu = sqrt(steps)/sigma: :func:`gaussian_tpr`.

    ``neighbours="substitution"``: the patient or another one is in the training set, as when
    training sets have a fixed size. Replacing k by j goes through the set holding neither (or
    both): remove k, then add j (or add j, then remove k), so the cap is the add/remove cap
    applied after that of removal, its reverse test, whose lines ``1 - e^-eps (1 - delta(eps)
    - fpr)`` come from the same profile (the chain behind group privacy in Dong, Roth & Su
    2019, Thm 2.14); the lower of both orders. Far weaker than the add/remove cap (48% against
    7.3% below). Valid, so above the optimal test of two records whose gradients point
    opposite ways at every step (dp_accounting's REPLACE_ONE PLD), which a run attains; but
    loose at low FPR (9.4% against that pair's 5.4% at FPR 0.1%, sigma 0.92, q 0.25, 8
    steps): the profile's error band, 0.005 in epsilon, costs the removal step up to
    1 - e^-0.005 = 0.5% in absolute terms. ``sample_rate == 1`` is exact: the sum moves by up
    to 2C, 2 mu-GDP.

    Args:
        fpr: False-positive rate(s) in [0, 1], a float or an array of any shape.
        noise_multiplier: sigma, > 0. sample_rate: q, in (0, 1]. steps: an integer >= 1.
        neighbours: one of :data:`NEIGHBOURS`.

    Returns:
        The TPR bound, shaped like ``fpr``; a fraction of a second for 540 steps at q = 0.054.

    Raises:
        ValueError: If an argument is out of range (the message names it).
        RuntimeError: If the PRV cannot handle the setting (epsilon in the hundreds).

    >>> kw = dict(noise_multiplier=1.0, sample_rate=256 / 4708, steps=540)  # epsilon 8.62
    >>> round(tpr_bound_mechanism(0.001, **kw), 4)  # vs 0.9998 from (8.62, 1e-5) alone
    0.0733
    >>> round(tpr_bound_mechanism(0.001, **kw, neighbours="substitution"), 4)
    0.4847
    """
    alpha = _fpr(fpr)
    _mechanism(noise_multiplier, sample_rate, steps)
    one_of(NEIGHBOURS, neighbours=neighbours)
    if sample_rate == 1:
        mu = math.sqrt(steps) / noise_multiplier
        return gaussian_tpr(fpr, mu=mu if neighbours == "add_remove" else 2 * mu)
    lines = _Lines(*_prv_sums(noise_multiplier, sample_rate, steps))
    if neighbours == "add_remove":
        return _out(lines.add(alpha), fpr)
    return _out(np.minimum(lines.add(lines.remove(alpha)), lines.remove(lines.add(alpha))), fpr)


class _Lines:
    """The lines (eps_j, delta_j) of the profile on the PRV grid, and the caps they give.

    Built from :func:`_prv_sums`: the lines sit at eps_j = t_j + _EPS_ERROR, plus one past the
    grid where the estimate is 0, (N + 1,). Any line is a valid cap; each cap reads the few
    around the best one.
    """

    def __init__(self, t: np.ndarray, d1: np.ndarray, d2: np.ndarray) -> None:
        self.t = np.append(t, t[-1] + (t[-1] - t[0]) / (len(t) - 1))
        self.d1, self.d2 = np.append(d1, 0.0), np.append(d2, 0.0)
        self.delta = np.maximum(self.d1 - self.d2, 0.0) + _DELTA_ERROR

    def _near(self, i: np.ndarray) -> np.ndarray:
        return np.clip(i[..., None] + np.arange(-2, 3), 0, len(self.t) - 1)  # (..., 5)

    def add(self, alpha: np.ndarray) -> np.ndarray:
        """TPR cap of telling "without" (H0) from "with" (H1): min_j e^eps_j alpha + delta_j."""
        with np.errstate(divide="ignore"):
            # the line at j beats j+1 once P0(Y >= t_j) = e^-t_j d2[j] <= e^_EPS_ERROR alpha
            key = np.minimum.accumulate(np.log(self.d2) - self.t)  # nonincreasing
            log_a = np.log(alpha)
        i = np.searchsorted(-key, -(_EPS_ERROR + log_a.ravel()), side="left").reshape(log_a.shape)
        j = self._near(i)
        with np.errstate(over="ignore"):
            lines = np.exp(self.t[j] + _EPS_ERROR + log_a[..., None]) + self.delta[j]
        return np.minimum(1.0, lines.min(axis=-1))

    def remove(self, alpha: np.ndarray) -> np.ndarray:
        """TPR cap of the reverse test, "with" (H0) from "without" (H1): the same hockey stick
        on the complement of the rejection region, min_j 1 - e^-eps_j (1 - delta_j - alpha)."""
        # the line at j beats j+1 once P1(Y >= t_j) = d1[j] <= 1 - alpha - _DELTA_ERROR
        target = 1 - alpha - _DELTA_ERROR
        i = np.searchsorted(-self.d1, -target.ravel(), side="left").reshape(alpha.shape)
        j = self._near(i)
        with np.errstate(over="ignore", invalid="ignore"):
            lines = 1 - np.exp(-self.t[j] - _EPS_ERROR) * np.maximum(
                1 - self.delta[j] - alpha[..., None], 0
            )
        return np.clip(lines.min(axis=-1), alpha, 1.0)  # never below guessing: any line >= alpha


def tpr_against_bound(
    scores: Any,
    membership: Any,
    *,
    fpr: float,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    neighbours: str = "add_remove",
    confidence: float = 0.95,
) -> dict[str, float | bool]:
    """An attack's TPR at ``fpr``, with its statistical error, against the DP cap of the mechanism.

    The threshold is :func:`privkit.attacks.scores.tpr_at_fpr`'s; its true rates lie, with
    probability >= ``confidence``, at TPR >= ``tpr_low`` and FPR <= ``fpr_high`` (each side of
    a Clopper-Pearson interval at ``confidence``: one-sided at (1 - confidence) / 2, as in
    Jagielski, Ullman & Oprea 2020). The cap grows with the FPR, so DP allows at most
    ``bound`` = :func:`tpr_bound_mechanism` at ``fpr_high``; ``above_bound`` (``tpr_low >
    bound``) says the attack beats DP beyond its statistical error: a bug in the mechanism,
    its accounting or the attack's evaluation. A few records cannot measure a low FPR: with
    384 non-members and none accused, ``fpr_high`` is 0.96%, not 0.1%. Approximate when
    counted trials share a trained model (pooled targets) and because the threshold is chosen
    on the same scores; :mod:`privkit.audit` counts independent runs.

    Args:
        scores: (n,) attack scores, higher meaning "member" (pooled targets: flatten them).
        membership: (n,) 1/True for members.
        fpr: the false-positive rate to read the TPR at, in [0, 1].
        noise_multiplier, sample_rate, steps, neighbours: the mechanism, as in
            :func:`tpr_bound_mechanism`: ``"substitution"`` for training sets of fixed size.
        confidence: of the joint statement, in (0, 1).

    Returns:
        :func:`privkit.attacks.scores.tpr_at_fpr_interval`'s keys (``tpr``, ``tpr_low``,
        ``tpr_high``, ``fpr``, ``fpr_low``, ``fpr_high``, ``members``, ``non_members``), plus
        ``bound`` (the cap at ``fpr_high``) and ``above_bound``.

    >>> r = tpr_against_bound([4, 3, 2, 1], [1, 0, 1, 0], fpr=0.0, noise_multiplier=1.0,
    ...                       sample_rate=1.0, steps=1)
    >>> r["tpr"], round(r["fpr_high"], 3), round(r["bound"], 3), r["above_bound"]
    (0.5, 0.842, 0.977, False)
    """
    out: dict[str, float | bool] = dict(
        tpr_at_fpr_interval(scores, membership, fpr=fpr, confidence=confidence)
    )
    out["bound"] = float(
        tpr_bound_mechanism(
            out["fpr_high"],
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            neighbours=neighbours,
        )
    )
    out["above_bound"] = bool(out["tpr_low"] > out["bound"])
    return out


def reconstruction_bound(
    *,
    prior: float,
    noise_multiplier: float | None = None,
    sample_rate: float | None = None,
    steps: int | None = None,
    epsilon: float | None = None,
    delta: float | None = None,
) -> float:
    """Highest chance that an informed adversary reconstructs a training image.

    ``prior`` (kappa) is the adversary's chance of success without the model, e.g. 1 / the
    number of candidate images. Hayes, Mahloujifar & Balle 2023 ("Bounding Training Data
    Reconstruction in DP-SGD", NeurIPS, https://arxiv.org/abs/2302.07225) bound the success
    by sup{P1(E) : P0(E) <= kappa} over the outputs with (P1) and without (P0) the target;
    Kaissis, Hayes, Ziller & Rueckert 2023 (https://arxiv.org/abs/2307.03928) write it as
    ``1 - f(kappa)`` for f-DP. Both are the TPR cap at FPR = kappa, so this returns
    :func:`tpr_bound_mechanism` (given the mechanism: tighter) or :func:`tpr_bound` (given
    ``epsilon`` and ``delta``) at ``fpr=prior``. Pass one set, not both.

    Raises:
        ValueError: If an argument is out of range, or not exactly one set is given.

    >>> round(reconstruction_bound(prior=0.01, epsilon=1.0, delta=1e-5), 4)
    0.0272
    """
    in_range(0, 1, low_inclusive=False, high_inclusive=False, prior=prior)
    mech = {"noise_multiplier": noise_multiplier, "sample_rate": sample_rate, "steps": steps}
    dp = {"epsilon": epsilon, "delta": delta}
    given = [k for k, v in {**mech, **dp}.items() if v is not None]
    if set(given) == set(mech):
        return tpr_bound_mechanism(prior, **mech)
    if set(given) == set(dp):
        return tpr_bound(prior, **dp)
    raise ValueError(
        f"Expected either noise_multiplier, sample_rate and steps, or epsilon and delta; "
        f"got {', '.join(given) or 'none'}."
    )


def _pct(x: float) -> str:
    """A probability as a percentage rounded UP (a stated cap must not understate)."""
    v = max(100 * x, 1e-12)
    digits = 0 if v >= 10 else 1 if v >= 1 else 2 - math.floor(math.log10(v))
    up = math.ceil(v * 10**digits * (1 - 1e-12)) / 10**digits  # 1e-12: float noise only
    return f"{up:.{digits}f}%"


def summary(
    *,
    epsilon: float,
    delta: float,
    noise_multiplier: float | None = None,
    sample_rate: float | None = None,
    steps: int | None = None,
    n_patients: int | None = None,
) -> str:
    """One plain-language paragraph on what (epsilon, delta) means, for a data protection officer.

    Args:
        epsilon: Epsilon >= 0. delta: Delta in [0, 1).
        noise_multiplier, sample_rate, steps: The DP-SGD mechanism (all three or none); if
            given, the caps are also computed with the tighter :func:`tpr_bound_mechanism`.
        n_patients: Number of training patients; adds the cap on singling out and
            reconstructing one of them (prior 1 / n_patients).

    Returns:
        The paragraph; its percentages (from :func:`tpr_bound`, equal to
        :func:`reconstruction_bound` at the same prior) are rounded up.

    >>> print(summary(epsilon=1.0, delta=1e-5))  # doctest: +ELLIPSIS
    The model was trained with differential privacy at epsilon = 1 and delta = 1e-05. ...
    """
    mech = {"noise_multiplier": noise_multiplier, "sample_rate": sample_rate, "steps": steps}
    missing = [k for k, v in mech.items() if v is None]
    if 0 < len(missing) < 3:
        raise ValueError(
            f"Expected noise_multiplier, sample_rate and steps together; "
            f"missing {', '.join(missing)}."
        )
    if n_patients is not None:
        positive_int(n_patients=n_patients)
    priors = np.array([1e-3] + ([1 / n_patients] if n_patients and n_patients > 1 else []))
    caps = tpr_bound(priors, epsilon=epsilon, delta=delta)  # validates epsilon and delta
    source = "epsilon and delta alone"
    if not missing:
        _mechanism(noise_multiplier, sample_rate, steps)
        try:  # both caps hold for the same model: keep the lower
            caps = np.minimum(caps, tpr_bound_mechanism(priors, **mech))
            source = (
                f"the training settings (noise multiplier {noise_multiplier:g}, sampling "
                f"rate {sample_rate:.3g}, {steps} steps), tighter than epsilon alone"
            )
        except RuntimeError:  # the PRV cannot (epsilon in the hundreds): keep (eps, delta)
            pass
    factor = math.exp(epsilon)  # rounded up, as the percentages
    factor_text = (
        f"{math.ceil(factor * 100) / 100:g}"
        if factor < 100
        else f"{math.ceil(factor):,}"
        if factor < 1e6
        else f"10^{math.ceil(epsilon / math.log(10))}"
    )
    text = [
        f"The model was trained with differential privacy at epsilon = {epsilon:.3g} and "
        f"delta = {delta:.3g}.",
        "Epsilon limits how much any one patient's X-ray can change what the model does: "
        f"no outcome becomes more than {factor_text} times more likely because of it.",
        f"Delta is the small chance, here {delta:.3g}, that this limit does not hold.",
        "In practice: an attacker who wrongly accuses 1 in 1,000 people who were not in the "
        f"training data can correctly identify at most {_pct(caps[0])} of those who were "
        "(random guessing: 0.1%).",
        "An attacker trying to rebuild a patient's X-ray, who would be right 1 time in 1,000 "
        f"by guessing, succeeds at most {_pct(caps[0])} of the time.",
    ]
    if len(caps) > 1:
        text.append(
            f"Picking one of the {n_patients:,} training patients (1 in {n_patients:,} "
            f"by guessing), an attacker succeeds at most {_pct(caps[1])} of the time."
        )
    text.append(f"These are worst-case limits for the strongest attacker, computed from {source}.")
    return " ".join(text)
