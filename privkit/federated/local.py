"""What runs inside a hospital: DP-SGD on the site's own records, from the model it received.

Each site runs the DP-SGD of Abadi et al. (2016) with its own budget: every local step draws a
Poisson batch of its records at ``sample_rate = batch_size / n_site``, clips each example's
gradient to ``max_grad_norm``, adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` and divides by the expected batch size, through privkit's
engine (:func:`privkit.engine.per_sample.clipped_sum`, :func:`privkit.engine.sampling.poisson_indices`).
The noise is calibrated so that the site's steps over *all* rounds reach at most its epsilon:
what leaves the site is then a post-processing of a DP-SGD run on its records (sample-level
DP; Truex et al. 2020, "LDP-Fed"; Kairouz et al. 2021, "Advances and open problems in
federated learning", section 4.3). As in DP-SGD itself, the site's record count is treated as
public.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

from privkit import _validate, accounting
from privkit.engine import per_sample_loss
from privkit.engine.per_sample import Params, clipped_sum, per_sample_grad_fn
from privkit.engine.sampling import poisson_indices
from privkit.federated.sites import Site


@dataclass(frozen=True)
class SitePlan:
    """A site's DP-SGD mechanism over the whole federated training (what its ledger is charged).

    ``noise_multiplier = 0`` and ``epsilon = inf`` mean no sample-level privacy.
    """

    site: str
    n_records: int
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    max_grad_norm: float
    delta: float
    accountant: str
    epsilon: float  # spent after all rounds

    @property
    def steps(self) -> int:
        return self.steps_per_round * self.rounds

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0


def plan_site(
    name: str,
    n_records: int,
    *,
    epsilon: float,
    delta: float,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    max_grad_norm: float,
    accountant: str = "prv",
) -> SitePlan:
    """Poisson rate, steps and calibrated noise of one site's DP-SGD over ``rounds`` rounds.

    ``sample_rate = min(1, batch_size / n_records)``; ``local_epochs * round(n / batch_size)``
    steps per round (at least 1). ``epsilon = inf`` plans no noise.

    Raises:
        ValueError: on ``delta >= 1 / n_records`` for a private site (it would allow leaking
            whole records), or an argument out of range.

    >>> p = plan_site("h1", 1000, epsilon=8.0, delta=1e-5, batch_size=250, local_epochs=1,
    ...               rounds=10, max_grad_norm=1.0)
    >>> p.sample_rate, p.steps, p.epsilon <= 8.0
    (0.25, 40, True)
    """
    _validate.positive_int(n_records=n_records)
    _validate.positive(epsilon=epsilon)
    _validate.positive_int(batch_size=batch_size)
    _validate.positive_int(local_epochs=local_epochs)
    _validate.positive_int(rounds=rounds)
    sample_rate = min(1.0, batch_size / n_records)
    steps_per_round = local_epochs * max(1, round(n_records / batch_size))
    noise, spent = 0.0, math.inf
    if math.isfinite(epsilon):
        if delta >= 1 / n_records:
            raise ValueError(
                f"Expected delta={delta} < 1/n = {1 / n_records:.3g} for site {name!r} "
                f"(n = {n_records} records): a larger delta allows leaking whole records."
            )
        steps = steps_per_round * rounds
        noise = accounting.calibrate_noise(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
        spent = accounting.epsilon(
            noise_multiplier=noise,
            sample_rate=sample_rate,
            steps=steps,
            delta=delta,
            accountant=accountant,
        )
    return SitePlan(
        name,
        n_records,
        noise,
        sample_rate,
        steps_per_round,
        rounds,
        max_grad_norm,
        delta,
        accountant,
        spent,
    )


def local_training(
    model: nn.Module,
    params: Params,
    site: Site,
    plan: SitePlan,
    *,
    lr: float,
    momentum: float,
    generator: torch.Generator,
    momentum_buffer: Params | None = None,
) -> tuple[Params, Params, float]:
    """One round at one site: ``plan.steps_per_round`` DP-SGD steps (momentum SGD) from ``params``.

    Args:
        model: the architecture (its own weights are not used; ``params`` are).
        params: the model received, name -> tensor; not modified.
        site: the site whose records are read (the only place they are).
        plan: the site's mechanism, from :func:`plan_site`.
        lr, momentum: local SGD (``torch.optim.SGD``'s momentum, dampening 0).
        generator: the site's random generator (Poisson draws and noise).
        momentum_buffer: the momentum to continue from (``None``: start at zero).

    Returns:
        The trained parameters, the momentum buffer, and the mean loss per expected example.
    """
    if plan.n_records != len(site):
        raise ValueError(
            f"Plan for n_records={plan.n_records} given site {site!r} of {len(site)} records."
        )
    params = {k: v.detach().clone() for k, v in params.items()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    expected = plan.sample_rate * plan.n_records  # the expected batch size divides the sum
    clip = plan.max_grad_norm if plan.private else math.inf
    per_sample = per_sample_grad_fn(model)
    total_loss = 0.0
    for _ in range(plan.steps_per_round):
        idx = poisson_indices(len(site), plan.sample_rate, generator)
        x, y = site.train.images[idx], site.train.labels[idx]
        if plan.private:
            grads, losses = per_sample(params, buffers, x, y) if len(idx) else _empty(params)
            summed = (
                clipped_sum(grads, clip, torch.ones(len(idx), device=x.device))
                if len(idx)
                else grads
            )
            noise = _gaussian(params, plan.noise_multiplier * plan.max_grad_norm, generator)
            summed = {k: summed[k] + noise[k] for k in summed}
            loss = float(losses.sum()) if len(idx) else 0.0
        else:
            summed, loss = _summed_gradient(model, params, buffers, x, y)
        step = {k: g / expected for k, g in summed.items()}
        if momentum_buffer is None:
            momentum_buffer = {k: g.clone() for k, g in step.items()}
        else:
            momentum_buffer = {k: momentum * momentum_buffer[k] + step[k] for k in step}
        params = {k: p - lr * momentum_buffer[k] for k, p in params.items()}
        total_loss += loss
    return params, momentum_buffer, total_loss / (plan.steps_per_round * expected)


def _empty(params: Params) -> tuple[Params, Tensor]:
    """The clipped sum of an empty Poisson batch (zero), and no losses."""
    return {k: torch.zeros_like(v) for k, v in params.items()}, torch.zeros(0)


def _gaussian(params: Params, std: float, generator: torch.Generator) -> Params:
    return {
        k: torch.randn(v.shape, generator=generator, device=v.device, dtype=v.dtype) * std
        for k, v in params.items()
    }


def _summed_gradient(
    model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor
) -> tuple[Params, float]:
    """Gradient of the summed loss (no clipping, no noise): the non-private local step."""
    if len(x) == 0:
        return {k: torch.zeros_like(v) for k, v in params.items()}, 0.0

    def loss(p: Params) -> Tensor:
        return per_sample_loss(functional_call(model, (p, buffers), (x,)), y).sum()

    grads, value = grad_and_value(loss)(params)
    return grads, float(value)
