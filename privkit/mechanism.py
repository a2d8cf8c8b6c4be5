"""One DP mechanism type: the Poisson-subsampled Gaussian mechanism, run for some steps.

Everything privkit releases with differential privacy is this mechanism: a DP-SGD run (each
step keeps every record with probability ``sample_rate``, clips its gradient to
``max_grad_norm`` and adds Gaussian noise of standard deviation ``noise_multiplier *
max_grad_norm`` to the sum), a hospital's local training over all federated rounds, the
server's Gaussian sum of clipped site updates (site-level DP, one "record" per site), a noisy
bisection on held-out scores (``sample_rate = 1``, sensitivity 1), and the noise of a shared
update in the reconstruction experiment. :class:`Mechanism` is that value, immutable, with the
epsilon the accountant certifies for it; :func:`plan` is the one place where noise is
calibrated to a budget. The planner, the ledger, the provenance and the figures all read it.

References: the ``DpEvent`` of Google's dp_accounting (``PoissonSampledDpEvent`` of a
``GaussianDpEvent``, ``SelfComposedDpEvent`` over steps) and jax_privacy's ``dpsgd_event``;
Abadi et al. 2016 (https://arxiv.org/abs/1607.00133) for DP-SGD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from privkit import _validate, accounting


@dataclass(frozen=True)
class Mechanism:
    """``steps`` Poisson-subsampled Gaussian steps, as the accountant sees them.

    ``noise_multiplier = 0`` (with ``epsilon = inf``) means no privacy; ``max_grad_norm`` is
    the sensitivity the noise is scaled by (the clipping norm, a site update's bound, or 1).

    >>> Mechanism(1.02, 0.0136, 1104, 1.0, 1e-5, "prv", 4.0)
    Mechanism(σ=1.02, q=0.0136, 1104 steps, C=1, ε=4 at δ=1e-05, prv)
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    accountant: str
    epsilon: float  # certified after all steps; inf without noise

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0

    @property
    def event(self) -> tuple[float, float, int]:
        """``(noise_multiplier, sample_rate, steps)``, what :func:`privkit.accounting.compose`
        composes."""
        return (self.noise_multiplier, self.sample_rate, self.steps)

    def __repr__(self) -> str:
        return (
            f"Mechanism(σ={self.noise_multiplier:.4g}, q={self.sample_rate:.4g}, "
            f"{self.steps} steps, C={self.max_grad_norm:g}, ε={self.epsilon:.4g} at "
            f"δ={self.delta:g}, {self.accountant})"
        )


def steps_of(*, n: int, batch_size: int, epochs: int) -> int:
    """DP-SGD steps of ``epochs`` passes over ``n`` records at expected batch ``batch_size``:
    ``epochs * max(1, round(n / batch_size))``.

    >>> steps_of(n=4708, batch_size=256, epochs=30)
    540
    """
    _validate.positive_int(n=n)
    _validate.positive_int(batch_size=batch_size)
    _validate.positive_int(epochs=epochs)
    return epochs * max(1, round(n / batch_size))


def plan(
    *,
    sample_rate: float,
    steps: int,
    delta: float,
    epsilon: float | None = None,
    noise_multiplier: float | None = None,
    max_grad_norm: float = 1.0,
    accountant: str = "prv",
    n: int | None = None,
    who: str = "",
) -> Mechanism:
    """The mechanism that spends at most ``epsilon`` (noise calibrated), or the one with the
    given ``noise_multiplier`` (its epsilon certified).

    The epsilon is :func:`privkit.accounting.upper_bound`'s: ``accountant``'s, or RDP's where
    the PRV cannot certify so weak a guarantee; ``Mechanism.accountant`` names the one used.

    Give exactly one of ``epsilon`` (``math.inf``: no noise) and ``noise_multiplier`` (``0``: no
    noise). ``n``, the number of records (sites, examples) the guarantee protects, checks
    ``delta < 1/n``: a larger delta allows releasing a whole record. ``who`` names them in
    that error (``"site 'h1'"``).

    Raises:
        ValueError: an argument out of range (the message names it), ``delta >= 1/n`` for a
            private mechanism, or an ``epsilon`` that no noise can certify.

    >>> m = plan(sample_rate=256 / 4708, steps=370, delta=1e-5, epsilon=8.0, n=4708)
    >>> round(m.noise_multiplier, 3), m.epsilon <= 8.0
    (0.94, True)
    >>> plan(sample_rate=0.5, steps=10, delta=1e-5, epsilon=math.inf).private
    False
    """
    _validate.in_range(0, 1, low_inclusive=False, sample_rate=sample_rate)
    _validate.positive_int(steps=steps)
    _validate.in_range(0, 1, low_inclusive=False, high_inclusive=False, delta=delta)
    _validate.in_range(
        0, math.inf, low_inclusive=False, high_inclusive=False, max_grad_norm=max_grad_norm
    )
    _validate.one_of(accounting.UPPER_BOUNDS, accountant=accountant)
    if (epsilon is None) == (noise_multiplier is None):
        raise ValueError(
            f"Give exactly one of epsilon={epsilon!r} and noise_multiplier={noise_multiplier!r}."
        )
    if epsilon is not None:
        _validate.positive(epsilon=epsilon)
    else:
        _validate.in_range(0, math.inf, high_inclusive=False, noise_multiplier=noise_multiplier)
    private = noise_multiplier != 0 if epsilon is None else math.isfinite(epsilon)
    if private and n is not None:
        check_delta(delta=delta, n=n, who=who)
    if not private:
        return Mechanism(0.0, sample_rate, steps, max_grad_norm, delta, accountant, math.inf)
    sigma = (
        accounting.calibrate_noise(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
        if noise_multiplier is None
        else float(noise_multiplier)
    )
    spent, used = accounting.upper_bound(
        [(sigma, sample_rate, steps)], delta=delta, accountant=accountant
    )
    return Mechanism(sigma, sample_rate, steps, max_grad_norm, delta, used, spent)


def check_delta(*, delta: float, n: int, who: str = "") -> None:
    """Refuse ``delta >= 1/n`` for a guarantee over ``n`` records: such a delta allows
    releasing a whole record. ``who`` names the records in the message.

    >>> check_delta(delta=1e-3, n=2000, who="validation split")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected delta=0.001 < 1/n = 0.0005 (validation split: n = 2000): a larger ...
    """
    _validate.positive_int(n=n)
    if delta >= 1 / n:
        raise ValueError(
            f"Expected delta={delta} < 1/n = {1 / n:.3g} ({who + ': ' if who else ''}"
            f"n = {n}): a larger delta allows releasing whole records."
        )
