"""Temperature scaling with differential privacy for the held-out patients it reads.

:func:`privkit.calibration.fit_temperature` fits T on the validation split without noise, so the
validation patients' privacy is spent and accounted nowhere. :func:`fit_temperature_dp` spends
a stated (epsilon, delta) instead: a noisy bisection whose queries are one
:class:`privkit.mechanism.Mechanism` (full batches, sensitivity 1), planned by
:func:`privkit.mechanism.plan`, noised by :mod:`privkit.engine.gaussian` and charged to a ledger
when given one. It lives above the ledger; :mod:`privkit.calibration` measures calibration and
imports no accountant, ledger or randomness.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from privkit import _validate, budget, mechanism
from privkit._arrays import as_array
from privkit.calibration import TEMPERATURE_BOUNDS, _check_bounds, _labels_logits, _slope
from privkit.engine.gaussian import gaussian_sum
from privkit.mechanism import Mechanism
from privkit.randomness import MODES, ledger_tag, torch_generator


@dataclass(frozen=True)
class PrivateTemperature:
    """A temperature fitted with differential privacy, and the mechanism that spent it.

    The mechanism is ``steps`` Gaussian queries on the whole set (``sample_rate = 1``), each
    of sensitivity 1 (``max_grad_norm = 1``) under adding or removing one example; its
    ``epsilon`` is what the accountant reports for all of them.
    """

    temperature: float
    mechanism: Mechanism


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
    scopes: Sequence[budget.Scope | str] | None = None,
    allow_seeded: bool = False,
) -> PrivateTemperature:
    """Temperature scaling with (epsilon, delta)-differential privacy for the held-out examples.

    A noisy bisection for the T at which the mean top-label confidence equals the accuracy
    (``calibration.fit_temperature(objective="confidence")``): each of ``steps`` queries sums,
    over the examples, top-label confidence minus correctness at the bracket's middle, a number
    in [-1, 1] per example, and adds Gaussian noise of standard deviation ``noise_multiplier``;
    the noisy sum's sign halves the bracket of log(1/T), which starts from ``bounds``, and
    the result is the bracket's geometric middle. Adding or removing one example moves each
    sum by at most 1, so the queries are Gaussian mechanisms of sensitivity 1 composed
    adaptively; :func:`privkit.mechanism.plan` calibrates the noise (sampling rate 1) so that
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
        scopes: the ledger scopes charged (``budget.Scope`` values); required with ``ledger``.
        allow_seeded: let the ledger charge a seeded fit (public data only).

    Returns:
        A :class:`PrivateTemperature`.

    >>> y, z = [0, 1, 1, 0] * 100, [-2.0, 2.0, 1.0, 1.0] * 100
    >>> fit = fit_temperature_dp(y, z, epsilon=2.0, delta=1e-5, randomness="seeded")
    >>> fit.mechanism
    Mechanism(σ=5.669, q=1, 8 steps, C=1, ε=1.999 at δ=1e-05, prv)
    >>> round(fit.temperature, 1)
    1.3
    """
    _validate.one_of(MODES, randomness=randomness)
    low, high = _check_bounds(bounds)
    plan = mechanism.plan(
        sample_rate=1.0,
        steps=steps,
        delta=delta,
        epsilon=epsilon,
        max_grad_norm=1.0,
        accountant=accountant,
        n=len(as_array(labels)),
        who="held-out examples",
    )
    if ledger is not None and not scopes:
        raise ValueError(
            f"Expected scopes (e.g. [budget.Scope('pneumoniamnist')]) with a ledger; got "
            f"scopes={scopes!r}."
        )
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
            plan,
            run_id=f"temperature-{uuid.uuid4().hex[:8]}",
            actor=budget.default_actor(),
            randomness=ledger_tag(randomness=randomness, identity=identity),
            allow_seeded=allow_seeded,
        )
    terms = _slope("confidence", y, z)
    generator = torch_generator(randomness=randomness, identity=identity)
    std = plan.noise_multiplier * plan.max_grad_norm
    a, b = -math.log(high), -math.log(low)  # bracket of log(1/T)
    for _ in range(steps):
        mid = (a + b) / 2
        noisy = gaussian_sum(torch.from_numpy(terms(mid)), std=std, generator=generator)
        if noisy.item() > 0:  # over-confident at mid: lower 1/T
            b = mid
        else:
            a = mid
    return PrivateTemperature(temperature=math.exp(-(a + b) / 2), mechanism=plan)
