"""What runs inside a hospital: DP-SGD on the site's own records, from the model it received.

Each site runs the DP-SGD of Abadi et al. (2016) with its own budget: every local step draws a
Poisson batch of its records at ``sample_rate = batch_size / n_site``, clips each example's
gradient to ``max_grad_norm``, adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` to the sum and divides by the expected batch size. The step
is the engine's (:class:`privkit.engine.fast.FastStack`, the same code as centralised
training, compiled on a GPU), and the hospitals of a round train as one stack: K sites, K
stacked models, each with its own records, rate, noise and generator. The noise is calibrated
so that the site's steps over *all* rounds reach at most its epsilon (:func:`plan_site`): what
leaves the site is then a post-processing of a DP-SGD run on its records (sample-level DP;
Truex et al. 2020, "LDP-Fed"; Kairouz et al. 2021, "Advances and open problems in federated
learning", section 4.3). As in DP-SGD itself, the site's record count is treated as public.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from privkit import mechanism
from privkit.engine.fast import FastStack, max_batch_size, padded_poisson
from privkit.engine.per_sample import Params
from privkit.federated.sites import Site
from privkit.mechanism import Mechanism


@dataclass(frozen=True)
class SitePlan:
    """A site's DP-SGD over the whole federated training: the :class:`Mechanism` its ledger is
    charged with (``mechanism.steps = steps_per_round * rounds``), named by the site."""

    site: str
    n_records: int
    steps_per_round: int
    mechanism: Mechanism


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

    ``sample_rate = min(1, batch_size / n_records)``; :func:`privkit.mechanism.steps_of` steps
    per round; the noise from :func:`privkit.mechanism.plan`. ``epsilon = inf`` plans no noise.

    Raises:
        ValueError: on ``delta >= 1 / n_records`` for a private site (it would allow leaking
            whole records), or an argument out of range.

    >>> p = plan_site("h1", 1000, epsilon=8.0, delta=1e-5, batch_size=250, local_epochs=1,
    ...               rounds=10, max_grad_norm=1.0)
    >>> p.mechanism.sample_rate, p.mechanism.steps, p.mechanism.epsilon <= 8.0
    (0.25, 40, True)
    """
    steps_per_round = mechanism.steps_of(n=n_records, batch_size=batch_size, epochs=local_epochs)
    return SitePlan(
        name,
        n_records,
        steps_per_round,
        mechanism.plan(
            sample_rate=min(1.0, batch_size / n_records),
            steps=steps_per_round * rounds,
            delta=delta,
            epsilon=epsilon,
            max_grad_norm=max_grad_norm,
            accountant=accountant,
            n=n_records,
            who=f"site {name!r}",
        ),
    )


class SiteStack:
    """The local training of K sites as one :class:`~privkit.engine.fast.FastStack`.

    Built once per run (the compiled step is reused), started each round from the model the
    sites receive. Every site draws its own Poisson sample of its own records with its own
    generator, exactly as it would training alone (the engine's :func:`padded_poisson` on its
    ``n`` records), so a site's result does not depend on who else is in the stack.

    Args:
        model: the architecture (its weights are not used).
        sites, plans, generators: one each per site; the plans' ``steps_per_round`` must agree.
        lr, momentum: local SGD (``torch.optim.SGD``'s momentum, dampening 0).
        compile: compile the step (default: on CUDA, see :func:`privkit.engine.fast.compile_by_default`).
    """

    def __init__(
        self,
        model: nn.Module,
        sites: Sequence[Site],
        plans: Sequence[SitePlan],
        generators: Sequence[torch.Generator],
        *,
        lr: float,
        momentum: float,
        compile: bool | None = None,
    ) -> None:
        if not len(sites) == len(plans) == len(generators) > 0:
            raise ValueError(
                f"Expected one plan and generator per site, got {len(sites)} sites, "
                f"{len(plans)} plans, {len(generators)} generators."
            )
        for site, plan in zip(sites, plans):
            if plan.n_records != len(site) or plan.site != site.name:
                raise ValueError(
                    f"Plan for site {plan.site!r} of n_records={plan.n_records} given site "
                    f"{site!r} of {len(site)} records."
                )
        steps = {p.steps_per_round for p in plans}
        if len(steps) != 1:
            raise ValueError(f"A stack's sites must run as many steps per round, got {steps}.")
        self.steps = steps.pop()
        self.sites, self.plans, self.generators = list(sites), list(plans), list(generators)
        mechs = [p.mechanism for p in plans]
        self.expected = [m.sample_rate * p.n_records for m, p in zip(mechs, plans)]
        self.stack = FastStack(
            [copy.deepcopy(model) for _ in sites],
            noise_multipliers=[m.noise_multiplier for m in mechs],
            max_grad_norms=[m.max_grad_norm if m.private else math.inf for m in mechs],
            expected_batch_sizes=self.expected,
            lr=lr,
            momentum=momentum,
            generators=self.generators,
            max_batch=max(max_batch_size(len(s), m.sample_rate) for s, m in zip(sites, mechs)),
            compile=compile,
        )
        self.rates = [  # float64, as privkit.engine.sampling explains
            torch.full((1, len(s)), m.sample_rate, dtype=torch.float64, device=g.device)
            for s, m, g in zip(sites, mechs, generators)
        ]

    def train(
        self, params: Params, momentum_buffers: Sequence[Params | None] | None = None
    ) -> tuple[list[Params], list[Params], list[float]]:
        """One round: every site's ``steps_per_round`` DP-SGD steps from ``params``.

        Args:
            params: the model the sites received, name -> tensor; not modified.
            momentum_buffers: each site's momentum to continue from (``None``: from zero).

        Returns:
            Each site's trained parameters and momentum buffer, and its mean loss per expected
            example.
        """
        k = len(self.sites)
        stacked = {n: v.detach().unsqueeze(0).repeat(k, *[1] * v.dim()) for n, v in params.items()}
        given = [m for m in momentum_buffers or [] if m is not None]
        if given and len(given) != k:
            raise ValueError("Give every site's momentum buffer, or none.")
        momenta = {n: torch.stack([m[n] for m in given]) for n in params} if given else None
        self.stack.restart(stacked, momenta)
        loss = torch.zeros(k, device=self.stack.device)
        for _ in range(self.steps):
            idx, weights = self._batches()  # (K, W), into each site's own records
            images = torch.stack([s.train.images[i] for s, i in zip(self.sites, idx)])
            labels = torch.stack([s.train.labels[i] for s, i in zip(self.sites, idx)])
            loss += self.stack.step(images, labels, weights)  # images (K, W, C, H, W')
        params_k = [{n: v[i] for n, v in self.stack.params.items()} for i in range(k)]
        momenta_k = [{n: v[i] for n, v in self.stack.momentum_buffers.items()} for i in range(k)]
        losses = [float(x) / (self.steps * e) for x, e in zip(loss.tolist(), self.expected)]
        return params_k, momenta_k, losses

    def _batches(self) -> tuple[list[Tensor], Tensor]:
        """Each site's padded Poisson sample of its own records, padded to one width W: the
        indices (W,) per site, and the weights (K, W)."""
        drawn = [
            padded_poisson(rates, [g], self.stack.max_batch)
            for rates, g in zip(self.rates, self.generators)
        ]  # each site: (1, W_k)
        width = max(idx.shape[1] for idx, _ in drawn)
        pad = lambda t: nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
        idx = [pad(i)[0].to(s.train.images.device) for (i, _), s in zip(drawn, self.sites)]
        return idx, torch.cat([pad(w) for _, w in drawn]).to(self.stack.device)


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
    """One round at one site (a :class:`SiteStack` of one): ``plan.steps_per_round`` DP-SGD
    steps (momentum SGD) from ``params``.

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
    stack = SiteStack(model, [site], [plan], [generator], lr=lr, momentum=momentum)
    [new], [buffer], [loss] = stack.train(params, [momentum_buffer])
    return new, buffer, loss
